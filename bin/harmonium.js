#!/usr/bin/env node
// Thin launcher: the CLI lives in src/cli (compiled to dist/cli) so that the library and the CLI share one build.
// main() reports every error itself and sets the exit code.
import { cli } from '../dist/cli/main.js';
await cli(process.argv);
