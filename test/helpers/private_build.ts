// A private compiled copy of the command for the suites that run it as a user does (compiled, through
// bin/harmonium.js): tsc into build-<name>-test/dist with copies of the launcher and package.json, so a suite
// neither depends on nor disturbs the shared dist/ (npm pack reads it: test/package.test.ts) nor another suite's
// copy while test files run side by side. The copy has no addon of its own: `env` points at the checkout's.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const root = join(import.meta.dirname, '..', '..');

export interface PrivateBuild {
  /** The copied launcher: run it with process.execPath. */
  bin: string;
  /** The environment the command needs (the checkout's addon). */
  env: NodeJS.ProcessEnv;
}

export function privateBuild(name: string): PrivateBuild {
  const outDir = join(root, `build-${name}-test`);
  // tsc reports other modules' type errors too; emitting still succeeds, and only the entry point matters here.
  try {
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', root, '--outDir', join(outDir, 'dist')], { stdio: 'pipe' });
  } catch (err) {
    if (!existsSync(join(outDir, 'dist', 'cli', 'main.js'))) throw err;
  }
  mkdirSync(join(outDir, 'bin'), { recursive: true });
  const bin = join(outDir, 'bin', 'harmonium.js');
  copyFileSync(join(root, 'bin', 'harmonium.js'), bin);
  copyFileSync(join(root, 'package.json'), join(outDir, 'package.json'));
  return { bin, env: { ...process.env, HARMONIUM_BUILD_DIR: process.env.HARMONIUM_BUILD_DIR ?? join(root, 'build') } };
}
