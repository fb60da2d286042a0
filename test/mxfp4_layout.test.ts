// The prepared MXFP4 layout the CUDA expert kernels read (kernels/mxfp4_layout.h) checked on the CPU by its host
// program: every slot against the checkpoint's decode, the inverse, the E2M1 values (test/host/mxfp4_layout_test.cpp).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../src/util/package_root.js';

describe('the prepared MXFP4 layout on the host (hm_layout_test)', () => {
  it('gives the checkpoint decode\'s pairs, undoes exactly, and decodes every nibble to its E2M1 value', () => {
    const buildDir = process.env.HARMONIUM_BUILD_DIR ?? join(packageRoot(), 'build');
    const bin = join(buildDir, 'hm_layout_test');
    expect(existsSync(bin), `${bin} is missing: build with cmake-js (HARMONIUM_BUILD_TESTS on)`).toBe(true);
    const r = spawnSync(bin, [], { encoding: 'utf8', timeout: 60_000 });
    console.log(r.stdout);
    expect(r.stdout).toMatch(/mxfp4 layout: \d+ checks, 0 failed/);
    expect(r.status).toBe(0);
  }, 70_000);
});
