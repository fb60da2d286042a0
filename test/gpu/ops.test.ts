// The op-test table on the GPU: every CUDA kernel against its CPU reference twin (test/ops, hm_op_test).
// Skips cleanly on a machine without a CUDA device; otherwise the binary must exit 0 (every case in tolerance).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/util/package_root.js';
import { gpuCount } from '../helpers/gpu.js';

const gpus = gpuCount();

describe('CUDA kernels vs the CPU reference (hm_op_test)', () => {
  it.skipIf(gpus > 0)('skips: no CUDA device', () => {
    console.log('no CUDA device: op tests skipped');
  });
  it.skipIf(gpus === 0)('every op case passes', () => {
    const buildDir = process.env.HARMONIUM_BUILD_DIR ?? join(packageRoot(), 'build');
    const bin = join(buildDir, 'hm_op_test');
    expect(existsSync(bin), `${bin} is missing: build with cmake-js and CUDA`).toBe(true);
    const r = spawnSync(bin, [], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 600_000 });
    console.log(r.stdout);
    if (r.stderr) console.error(r.stderr);
    expect(r.status, `hm_op_test exited with ${r.status} (signal ${r.signal})`).toBe(0);
  }, 660_000);
});
