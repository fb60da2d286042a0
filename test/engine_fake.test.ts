// The engine's scheduling on a fake model that detects KV bookkeeping mistakes (test/helpers/fake_model.ts):
// batching, preemption under a small cache, abort, bad input, a failing step. The same behaviour on the real CPU
// backend is in engine.test.ts.
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { Engine, EngineRequestError, type GenerationResult } from '../src/engine/engine.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';
import { FakeModel } from './helpers/fake_model.js';

const VOCAB = 300;

function setup(numBlocks = 64, blockSize = 4, maxBatchTokens = 64, contextLength = 200, window = 0) {
  const model = new FakeModel(VOCAB, numBlocks, blockSize, window);
  const engine = new Engine(model, { vocabSize: VOCAB, numBlocks, blockSize, maxSeqs: 8, maxBatchTokens, contextLength, kvWindow: window });
  return { model, engine };
}

function request(engine: Engine, prompt: number[], p: SamplingParams, maxTokens: number, signal?: AbortSignal) {
  const tokens: number[] = [];
  const done = engine.generate({
    prompt,
    sampling: resolveSampling(p, VOCAB, () => 0),
    maxTokens,
    stopTokenIds: new Set([299]),
    signal,
    onToken: (t) => void tokens.push(t.token),
  });
  return { tokens, done };
}

const prompts = [
  Array.from({ length: 37 }, (_, i) => (i * 7) % 290),
  [5, 6, 7],
  Array.from({ length: 90 }, (_, i) => (i * 13) % 290),
  [42],
];
const params: SamplingParams[] = [{ temperature: 0 }, { seed: 1, top_k: 20 }, { seed: 2, top_p: 0.9 }, { seed: 3, repetition_penalty: 1.3 }];

async function solo(i: number, maxTokens: number, window = 0): Promise<number[]> {
  const { engine } = setup(64, 4, 64, 200, window);
  const r = request(engine, prompts[i], params[i], maxTokens);
  await r.done;
  return r.tokens;
}

describe('engine on a fake model', () => {
  it('batches several requests and each gets what it would get alone', async () => {
    const expected = await Promise.all(prompts.map((_, i) => solo(i, 25)));
    const { engine, model } = setup();
    const rs = prompts.map((p, i) => request(engine, p, params[i], 25));
    const results = await Promise.all(rs.map((r) => r.done));
    rs.forEach((r, i) => expect(r.tokens).toEqual(expected[i]));
    for (const [i, res] of results.entries()) {
      expect(res.promptTokens).toBe(prompts[i].length);
      expect(res.completionTokens).toBe(rs[i].tokens.length);
    }
    expect(Math.max(...model.steps.map((s) => s.seqLens.length))).toBeGreaterThan(1);
    expect(engine.freeBlocks).toBe(64);
  });

  it('a small cache preempts and recomputes without changing any output', async () => {
    const expected = await Promise.all(prompts.map((_, i) => solo(i, 40)));
    const { engine } = setup(40, 4, 32);
    const rs = prompts.map((p, i) => request(engine, p, params[i], 40));
    await Promise.all(rs.map((r) => r.done));
    rs.forEach((r, i) => expect(r.tokens).toEqual(expected[i]));
    expect(engine.preemptions).toBeGreaterThan(0);
    expect(engine.freeBlocks).toBe(40);
  });

  it('an aborted request frees its blocks and the others finish', async () => {
    const expected = await solo(1, 30);
    const { engine, model } = setup();
    model.delayMs = 1;
    const ac = new AbortController();
    const a = request(engine, prompts[0], { temperature: 0, logit_bias: { '299': -100 } }, 1000, ac.signal);
    const b = request(engine, prompts[1], params[1], 30);
    setTimeout(() => ac.abort(), 15);
    await expect(a.done).rejects.toMatchObject({ name: 'AbortError' });
    await b.done;
    expect(b.tokens).toEqual(expected);
    expect(engine.freeBlocks).toBe(64);
    expect(engine.inFlight).toBe(0);
  });

  it('a signal shared by many requests keeps no listener once they settle', async () => {
    const { engine } = setup();
    const ac = new AbortController();
    await Promise.all(Array.from({ length: 20 }, (_, i) => request(engine, [i + 1], { seed: i }, 2, ac.signal).done));
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
  });

  it('an already aborted signal rejects at once', async () => {
    const { engine } = setup();
    await expect(request(engine, [1, 2], {}, 5, AbortSignal.abort()).done).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('refuses a prompt that does not fit the context, and serves the others', async () => {
    const { engine } = setup();
    const ok = request(engine, [1, 2, 3], { temperature: 0 }, 5);
    const long = request(engine, Array(200).fill(3), {}, 5);
    await expect(long.done).rejects.toThrow(EngineRequestError);
    await expect(long.done).rejects.toThrow(/prompt is 200 tokens; the context holds 200/);
    await expect(request(engine, [], {}, 5).done).rejects.toThrow(/no tokens/);
    await expect(request(engine, [VOCAB], {}, 5).done).rejects.toThrow(/outside the vocabulary/);
    expect((await ok.done).completionTokens).toBe(5);
  });

  it('stops at max_tokens, at a stop token, and at the context end', async () => {
    const { engine } = setup(64, 4, 64, 50);
    const r1 = request(engine, [1, 2, 3], { temperature: 0 }, 7);
    expect((await r1.done).finishReason).toBe('length');
    expect(r1.tokens.length).toBe(7);
    const r2 = request(engine, [1, 2, 3], { temperature: 0, logit_bias: { '299': 100 } }, 7);
    const res2: GenerationResult = await r2.done;
    expect(res2).toMatchObject({ finishReason: 'stop', stopToken: 299, completionTokens: 1 });
    const r3 = request(engine, Array(45).fill(9), { seed: 5 }, 1000);
    expect((await r3.done).finishReason).toBe('length');
    expect(r3.tokens.length).toBe(5);
  });

  it('a failing step fails the requests in it and the engine keeps serving', async () => {
    const { engine, model } = setup();
    model.failNext = true;
    await expect(request(engine, [1, 2], {}, 3).done).rejects.toThrow(/fake step failure/);
    const r = request(engine, [1, 2], { temperature: 0 }, 3);
    expect((await r.done).completionTokens).toBe(3);
    expect(engine.freeBlocks).toBe(64);
  });

  it('samples in the step; full logits only when the step\'s entry buffer overflows', async () => {
    const { engine, model } = setup();
    await request(engine, [1, 2], { temperature: 0 }, 3).done;
    await request(engine, [1, 2], { top_k: 10, seed: 1 }, 3).done;
    await request(engine, [1, 2], { temperature: 0.8, top_p: 0.9, seed: 1 }, 3).done;
    await request(engine, [1, 2, 2, 3], { repetition_penalty: 1.2, frequency_penalty: 0.5, seed: 2 }, 3).done;
    expect(model.steps.every((s) => !s.fullLogits?.some((x) => x))).toBe(true);
    expect(engine.stats).toMatchObject({ argmaxRows: 3, deviceRows: 9, fullLogitRows: 0 });
    const penalised = model.steps.at(-1)!.sampling!;
    const ids = Array.from(penalised.entryIds);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    for (const id of [1, 2, 3]) expect(penalised.entryInPrompt[ids.indexOf(id)]).toBe(1);
    expect(penalised.entryCounts.reduce((a, b) => a + b, 0)).toBe(2); // two tokens generated before the last step

    const small = new Engine(model, { vocabSize: VOCAB, numBlocks: 64, blockSize: 4, maxSeqs: 8, maxBatchTokens: 64, contextLength: 200, maxSampleEntries: 2 });
    const tokens: number[] = [];
    await small.generate({
      prompt: [1, 2, 3],
      sampling: resolveSampling({ repetition_penalty: 1.2, seed: 3 }, VOCAB, () => 0),
      maxTokens: 2,
      stopTokenIds: new Set(),
      onToken: (t) => void tokens.push(t.token),
    });
    expect(small.stats.fullLogitRows).toBe(2);
  });
});

// Window KV: the sliding layers' blocks come out of the same pool and go back to it as each window passes (the
// fake model reads the last `window` positions through the window table, in the same block memory).
describe('engine on a fake model with window KV', () => {
  it('batches, and under a small cache preempts and recomputes, each request getting what it gets alone', async () => {
    for (const window of [5, 8, 13]) {
      const expected = await Promise.all(prompts.map((_, i) => solo(i, 40, window)));
      const big = setup(64, 4, 64, 200, window);
      const rs = prompts.map((p, i) => request(big.engine, p, params[i], 40));
      await Promise.all(rs.map((r) => r.done));
      rs.forEach((r, i) => expect(r.tokens).toEqual(expected[i]));
      expect(big.engine.freeBlocks).toBe(64);
      const small = setup(40, 4, 32, 200, window);
      const again = prompts.map((p, i) => request(small.engine, p, params[i], 40));
      await Promise.all(again.map((r) => r.done));
      again.forEach((r, i) => expect(r.tokens).toEqual(expected[i]));
      expect(small.engine.preemptions).toBeGreaterThan(0);
      expect(small.engine.freeBlocks).toBe(40);
    }
  });

  it('a long sequence holds its full blocks and only its window of the others', async () => {
    const { engine, model } = setup(64, 4, 64, 200, 8);
    const held: number[] = [];
    const r = engine.generate({
      prompt: Array.from({ length: 30 }, (_, i) => i + 1),
      sampling: resolveSampling({ temperature: 0, logit_bias: { '299': -100 } }, VOCAB, () => 0),
      maxTokens: 60,
      stopTokenIds: new Set(),
      onToken: () => void held.push(64 - engine.freeBlocks),
    });
    await r;
    // When token i arrives, positions 0 .. c - 1 (c = 30 + i) hold KV: full blocks ceil(c / 4), and the window
    // blocks from the one of position c - 7 (the next step's window) on: exactly the entries in between.
    held.forEach((n, i) => {
      const c = 30 + i;
      const full = Math.ceil(c / 4);
      expect(n - full).toBe(full - Math.floor((c - 7) / 4));
    });
    expect(model.steps.every((s) => s.windowTables!.length === s.blockTables.length)).toBe(true);
    expect(engine.freeBlocks).toBe(64);
  });
});
