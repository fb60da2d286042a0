#!/usr/bin/env node
// Thin launcher: the CLI lives in src/cli (compiled to dist/cli) so that the library and the CLI share one build.
import { main } from '../dist/cli/main.js';
main(process.argv).catch((err) => {
  process.stderr.write(`harmonium: ${err?.message ?? err}\n`);
  process.exit(1);
});
