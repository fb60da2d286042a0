// Prefix caching on the CUDA backend (dummy gpt-oss-20b): the logits after a cache hit match a cold prefill of the
// same prompt within the backend's bf16 noise (the cached prefix was computed in another batch shape, so bits may
// differ), and the pool is whole at the end. Skips without a CUDA device. Bit-identical on the CPU: prefix_cache_cpu.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { gpuCount } from '../helpers/gpu.js';
import { hitVsCold, relMaxDiff } from '../helpers/prefix_logits.js';

const gpus = gpuCount();
const NUM_BLOCKS = 64;
let model: LoadedModel;

describe.skipIf(gpus === 0)('prefix caching on the CUDA backend (dummy gpt-oss-20b)', () => {
  beforeAll(async () => {
    model = await loadModel({ dummy: 'gpt-oss-20b', backend: 'cuda', numBlocks: NUM_BLOCKS, maxSeqs: 4, maxBatchTokens: 256 });
  }, 300_000);

  afterAll(() => model?.close());

  it('logits after a hit match a cold prefill', async () => {
    const r = await hitVsCold(model, NUM_BLOCKS);
    expect(r.cachedWarm).toBe(3 * r.blockSize);
    // The first token's row (later rows follow the greedy tokens, which bf16 noise may flip on random weights).
    const diffs = [r.warm[0], r.again[0]].map((row) => relMaxDiff(r.cold[0], row));
    console.log(`prefix cache on CUDA: max |hit - cold| / max |cold| at the first token: ${diffs.map((d) => d.toExponential(2)).join(', ')}`);
    for (const d of diffs) expect(d).toBeLessThan(2e-2);
    expect(r.engine.freeBlocks).toBe(NUM_BLOCKS);
  }, 300_000);
});
