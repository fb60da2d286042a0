// The CPU build's C++ test programs (hm_plan_test, hm_layout_test): run one from the build folder, print its
// report, and expect its summary line and a zero exit.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { packageRoot } from '../../src/util/package_root.js';

export function expectHostProgramPasses(name: string, summary: RegExp, timeoutMs: number): void {
  const buildDir = process.env.HARMONIUM_BUILD_DIR ?? join(packageRoot(), 'build');
  const bin = join(buildDir, name);
  expect(existsSync(bin), `${bin} is missing: build with cmake-js (HARMONIUM_BUILD_TESTS on)`).toBe(true);
  const r = spawnSync(bin, [], { encoding: 'utf8', timeout: timeoutMs });
  console.log(r.stdout);
  expect(r.stdout).toMatch(summary);
  expect(r.status).toBe(0);
}
