// The prepared MXFP4 layout the CUDA expert kernels read (kernels/mxfp4_layout.h) checked on the CPU by its host
// program: every slot against the checkpoint's decode, the inverse, the E2M1 values (test/host/mxfp4_layout_test.cpp).
import { describe, it } from 'vitest';
import { expectHostProgramPasses } from './helpers/host_program.js';

describe('the prepared MXFP4 layout on the host (hm_layout_test)', () => {
  it('gives the checkpoint decode\'s pairs, undoes exactly, and decodes every nibble to its E2M1 value', () => {
    expectHostProgramPasses('hm_layout_test', /mxfp4 layout: \d+ checks, 0 failed/, 60_000);
  }, 70_000);
});
