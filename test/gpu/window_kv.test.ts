// Window KV on the CUDA backend: the sliding layers' KV in blocks of their own (given back and reused as each
// window passes, cached as twins of the full blocks), read by the same attention kernels through the window
// tables. Tiny model under HARMONIUM_BATCH_INVARIANT=1 (a row's logits do not depend on its batch or on which
// blocks hold its KV): long requests, several at once and preempted, give exactly the tokens and logprobs of the
// one-table layout. Dummy gpt-oss-20b: a prefix-cache hit past the window matches a cold prefill within bf16 noise.
// Skips without a CUDA device; the CPU twin is test/window_kv_cpu.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ensureTinyModel } from '../../src/model/tiny.js';
import { gpuCount } from '../helpers/gpu.js';
import { hitVsCold, relMaxDiff } from '../helpers/prefix_logits.js';
import { expectLayoutsAgree } from '../helpers/window_kv.js';

const gpus = gpuCount();

async function withInvariance<T>(f: () => Promise<T>): Promise<T> {
  const before = process.env.HARMONIUM_BATCH_INVARIANT;
  process.env.HARMONIUM_BATCH_INVARIANT = '1'; // read by the CUDA backend when it is created
  try {
    return await f();
  } finally {
    if (before === undefined) delete process.env.HARMONIUM_BATCH_INVARIANT;
    else process.env.HARMONIUM_BATCH_INVARIANT = before;
  }
}

describe.skipIf(gpus === 0)('window KV on the CUDA backend', () => {
  let shared: LoadedModel;
  let windowed: LoadedModel;
  beforeAll(async () => {
    const dir = await ensureTinyModel();
    const opts = { model: dir, backend: 'cuda' as const, maxSeqs: 4, blockSize: 16, numBlocks: 96, maxBatchTokens: 256 };
    shared = await withInvariance(() => loadModel(opts));
    windowed = await withInvariance(() => loadModel({ ...opts, windowKv: true }));
  }, 300_000);
  afterAll(async () => {
    await shared?.close();
    await windowed?.close();
  });

  it('long requests, several at once and preempted, give the tokens and logprobs of one table', async () => {
    expect(windowed.info().limits.kvWindow).toBe(128);
    expect(windowed.info().kvBytes * 2).toBe(shared.info().kvBytes);
    await expectLayoutsAgree(shared, windowed, 50);
  }, 300_000);
});

describe.skipIf(gpus === 0)('window KV prefix caching on the CUDA backend (dummy gpt-oss-20b)', () => {
  const NUM_BLOCKS = 128;
  let model: LoadedModel;
  beforeAll(async () => {
    model = await loadModel({ dummy: 'gpt-oss-20b', backend: 'cuda', numBlocks: NUM_BLOCKS, maxSeqs: 4, maxBatchTokens: 256, windowKv: true });
  }, 300_000);
  afterAll(() => model?.close());

  it('a hit past the window matches a cold prefill', async () => {
    const r = await hitVsCold(model, NUM_BLOCKS, 4, 10);
    expect(r.cachedWarm).toBe(10 * r.blockSize);
    const diffs = [r.warm[0], r.again[0]].map((row) => relMaxDiff(r.cold[0], row));
    console.log(`window KV prefix cache on CUDA: max |hit - cold| / max |cold| at the first token: ${diffs.map((d) => d.toExponential(2)).join(', ')}`);
    for (const d of diffs) expect(d).toBeLessThan(2e-2);
    expect(r.engine.freeBlocks).toBe(NUM_BLOCKS);
  }, 300_000);
});
