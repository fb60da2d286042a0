// Prefix caching on the real CPU backend (tiny model): the logits after a cache hit, at the first token and through
// decode, are bit-identical to a cold run of the same prompt with caching off, and the pool is whole at the end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type StepModel } from '../src/engine/engine.js';
import { loadDefaults, loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import type { NativeStepInput } from '../src/native.js';
import { resolveSampling } from '../src/sampling/params.js';

let model: LoadedModel;
const BS = loadDefaults('cpu').blockSize;
const NUM_BLOCKS = 64;

beforeAll(async () => {
  model = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', numBlocks: NUM_BLOCKS, maxSeqs: 4, maxBatchTokens: 256 });
}, 120_000);

afterAll(() => model?.close());

/** The model with every sampled row's full logits recorded (the step asks for them all). */
class Recorder implements StepModel {
  rows: Float32Array[] = [];
  async step(input: NativeStepInput) {
    const out = await model.step({ ...input, fullLogits: new Uint8Array(input.seqLens.length).fill(1) });
    for (let i = 0; i < out.logitsRows.length; i++) this.rows.push(out.logits.slice(i * out.vocab, (i + 1) * out.vocab));
    return out;
  }
}

function engine(rec: Recorder, prefixCaching: boolean) {
  return new Engine(rec, { vocabSize: model.config.vocabSize, numBlocks: NUM_BLOCKS, blockSize: BS, maxSeqs: 4, maxBatchTokens: 256, contextLength: NUM_BLOCKS * BS, prefixCaching });
}

async function run(e: Engine, prompt: number[], maxTokens: number) {
  const tokens: number[] = [];
  const r = await e.generate({ prompt, sampling: resolveSampling({ temperature: 0 }, model.config.vocabSize, () => 0), maxTokens, stopTokenIds: new Set(), onToken: (t) => void tokens.push(t.token) });
  return { tokens, cached: r.cachedTokens };
}

const ids = (n: number, mul: number, add = 0) => Array.from({ length: n }, (_, i) => 1000 + ((i * mul + add) % 5000));

describe('prefix caching on the CPU backend', () => {
  it('logits after a cache hit equal a cold prefill bit for bit, through decode', async () => {
    const shared = ids(3 * BS + 2, 7);
    const prompt = [...shared, ...ids(9, 13)];
    const other = [...shared, ...ids(5, 17)];

    const coldRec = new Recorder();
    const cold = await run(engine(coldRec, false), prompt, 4);
    expect(cold.cached).toBe(0);

    const hotRec = new Recorder();
    const hot = engine(hotRec, true);
    await run(hot, other, 2);
    hotRec.rows = [];
    const warm = await run(hot, prompt, 4);
    expect(warm.cached).toBe(3 * BS);
    expect(warm.tokens).toEqual(cold.tokens);
    expect(hotRec.rows).toHaveLength(4);
    hotRec.rows.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(coldRec.rows[i].buffer))).toBe(true));

    // The same prompt again: every block but the last prompt token's is shared.
    hotRec.rows = [];
    const again = await run(hot, prompt, 4);
    expect(again.cached).toBe(Math.floor((prompt.length - 1) / BS) * BS);
    hotRec.rows.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(coldRec.rows[i].buffer))).toBe(true));
    expect(hot.freeBlocks).toBe(NUM_BLOCKS);
    expect(hot.pool.cachedBlocks).toBeGreaterThan(0);
  }, 120_000);
});
