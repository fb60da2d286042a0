// Prefix caching on the real CPU backend (tiny model): the logits after a cache hit, at the first token and through
// decode, are bit-identical to a cold run of the same prompt with caching off, and the pool is whole at the end.
// The same on the GPU (within bf16 noise) is test/gpu/prefix_cache.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { hitVsCold } from './helpers/prefix_logits.js';

let model: LoadedModel;
const NUM_BLOCKS = 64;

beforeAll(async () => {
  model = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', numBlocks: NUM_BLOCKS, maxSeqs: 4, maxBatchTokens: 256 });
}, 120_000);

afterAll(() => model?.close());

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe('prefix caching on the CPU backend', () => {
  it('logits after a cache hit equal a cold prefill bit for bit, through decode', async () => {
    const r = await hitVsCold(model, NUM_BLOCKS);
    expect(r.cachedWarm).toBe(3 * r.blockSize);
    // The same prompt again: every block but the last prompt token's is shared.
    expect(r.cachedAgain).toBe(Math.floor((r.promptLength - 1) / r.blockSize) * r.blockSize);
    expect(r.tokens.warm).toEqual(r.tokens.cold);
    expect(r.tokens.again).toEqual(r.tokens.cold);
    expect(r.cold).toHaveLength(4);
    for (const rows of [r.warm, r.again]) {
      expect(rows).toHaveLength(4);
      rows.forEach((row, i) => expect(same(row, r.cold[i])).toBe(true));
    }
    expect(r.engine.freeBlocks).toBe(NUM_BLOCKS);
    expect(r.engine.pool.cachedBlocks).toBeGreaterThan(0);
  }, 120_000);
});
