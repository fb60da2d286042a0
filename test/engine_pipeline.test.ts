// The engine's pipelined decode (a step submitted while the one before it runs, its tokens named as that step's
// rows) against the unpipelined engine with the tiny model, on the CPU backend and (with a GPU) the CUDA one: the
// same tokens and logprobs for greedy, seeded and penalized requests, the same ends (stop token, a stop the caller
// signals, max_tokens, abort) with the extra token of a stopped sequence discarded, and every KV block free after.
// Everything is bit-identical, on CUDA too: a pipelined step may hold one row more than its unpipelined twin (a
// stopped sequence's discarded token), and the default CUDA decode kernels are not batch-invariant (a row's logits
// move with its neighbours by bf16 rounding: one top_logprobs entry moved 0.09 nats on the H200), so the CUDA model
// is loaded with HARMONIUM_BATCH_INVARIANT=1 (docs/reproducibility.md), whose rows do not depend on the batch.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type GenerationRequest } from '../src/engine/engine.js';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';
import type { SampledToken } from '../src/sampling/sampler.js';
import { gpuCount } from './helpers/gpu.js';

const V = 201088;
const backends: ('cpu' | 'cuda')[] = gpuCount() > 0 ? ['cpu', 'cuda'] : ['cpu'];
let model: LoadedModel;
let backend: 'cpu' | 'cuda';

function engine(pipeline: boolean): Engine {
  const info = model.info();
  return new Engine(model, {
    vocabSize: V,
    numBlocks: info.numBlocks,
    blockSize: info.blockSize,
    maxSeqs: info.limits.maxSeqs,
    maxBatchTokens: info.limits.maxBatchTokens,
    contextLength: 512,
    pipeline,
  });
}

interface Case {
  prompt: number[];
  p: SamplingParams;
  maxTokens: number;
  stop?: number[];
  /** The caller ends it (a stop string) after this many tokens. */
  stopAfter?: number;
  /** Aborted after this many tokens. */
  abortAfter?: number;
}

interface Run {
  tokens: SampledToken[];
  finish: string;
}

async function run(e: Engine, cases: Case[]): Promise<Run[]> {
  return Promise.all(
    cases.map(async (c) => {
      const tokens: SampledToken[] = [];
      const ac = new AbortController();
      const req: GenerationRequest = {
        prompt: c.prompt,
        sampling: resolveSampling(c.p, V, () => 0),
        maxTokens: c.maxTokens,
        stopTokenIds: new Set(c.stop ?? []),
        signal: ac.signal,
        onToken: (t) => {
          tokens.push(t);
          if (tokens.length === c.abortAfter) ac.abort();
          return tokens.length === c.stopAfter;
        },
      };
      try {
        return { tokens, finish: (await e.generate(req)).finishReason };
      } catch (err) {
        return { tokens, finish: `rejected: ${(err as Error).name}` };
      }
    }),
  );
}

const prompt = (n: number, k: number) => Array.from({ length: n }, (_, i) => (i * 7919 + k * 104729) % V);

async function compare(cases: Case[]): Promise<{ piped: Run[]; plain: Run[]; ahead: number }> {
  const plainEngine = engine(false);
  const plain = await run(plainEngine, cases);
  expect(plainEngine.stats.aheadSteps).toBe(0);
  const pipedEngine = engine(true);
  const piped = await run(pipedEngine, cases);
  expect(piped).toEqual(plain);
  expect(pipedEngine.freeBlocks).toBe(model.info().numBlocks);
  return { piped, plain, ahead: pipedEngine.stats.aheadSteps };
}

describe.each(backends)('pipelined engine decode (%s backend, tiny model)', (b) => {
  beforeAll(async () => {
    backend = b;
    const invariant = process.env.HARMONIUM_BATCH_INVARIANT;
    if (b === 'cuda') process.env.HARMONIUM_BATCH_INVARIANT = '1'; // read by the CUDA backend when it is created
    try {
      model = await loadModel({ model: await ensureTinyModel(), backend, maxSeqs: 8, blockSize: 16, numBlocks: 64 });
    } finally {
      if (invariant === undefined) delete process.env.HARMONIUM_BATCH_INVARIANT;
      else process.env.HARMONIUM_BATCH_INVARIANT = invariant;
    }
  }, 120_000);
  afterAll(async () => {
    await model?.close();
  });

  it('greedy and seeded requests give the same tokens and logprobs, pipelined or not', async () => {
    const { plain, ahead } = await compare([
      { prompt: prompt(9, 1), p: { temperature: 0, logprobs: true, top_logprobs: 3 }, maxTokens: 10 },
      { prompt: prompt(20, 2), p: { temperature: 0.8, top_p: 0.9, seed: 5, logprobs: true }, maxTokens: 14 },
      { prompt: prompt(5, 3), p: { temperature: 1, top_k: 40, min_p: 0.01, seed: 6, logit_bias: { 17: 5 } }, maxTokens: 7 },
    ]);
    expect(plain.map((r) => r.tokens.length)).toEqual([10, 14, 7]);
    expect(ahead).toBeGreaterThan(8);
  }, 120_000);

  it('stop tokens, stops the caller signals, max_tokens and aborts end mid-pipeline as they do unpipelined', async () => {
    const greedy = { temperature: 0 };
    const first = await run(engine(false), [{ prompt: prompt(12, 4), p: greedy, maxTokens: 8 }]);
    const eos = first[0].tokens[3].token; // the greedy run's 4th token, as a stop token
    const { plain } = await compare([
      { prompt: prompt(12, 4), p: greedy, maxTokens: 8, stop: [eos] },
      { prompt: prompt(10, 5), p: { temperature: 0.7, seed: 9 }, maxTokens: 12, stopAfter: 5 },
      { prompt: prompt(11, 6), p: { temperature: 0.7, seed: 10 }, maxTokens: 12, abortAfter: 4 },
      { prompt: prompt(7, 7), p: greedy, maxTokens: 3 },
    ]);
    expect(plain.map((r) => [r.tokens.length, r.finish])).toEqual([
      [first[0].tokens.findIndex((t) => t.token === eos) + 1, 'stop'],
      [5, 'stop'],
      [4, 'rejected: AbortError'],
      [3, 'length'],
    ]);
  }, 120_000);

  it('requests with output penalties are pipelined (the token in flight counts) and give the same tokens', async () => {
    const { plain, ahead } = await compare([
      { prompt: prompt(8, 8), p: { temperature: 0.9, seed: 3, presence_penalty: 0.5, repetition_penalty: 1.2 }, maxTokens: 12 },
      // greedy with a penalty: no entries before its first token (argmax), then the step counts it (device)
      { prompt: prompt(6, 9), p: { temperature: 0, frequency_penalty: 1.5, logprobs: true, top_logprobs: 2 }, maxTokens: 12 },
      { prompt: prompt(7, 10), p: { temperature: 1, seed: 4, frequency_penalty: 0.5, presence_penalty: 0.5, repetition_penalty: 1.1, logit_bias: { 99: 3 } }, maxTokens: 9, stopAfter: 7 },
    ]);
    expect(plain.map((r) => r.tokens.length)).toEqual([12, 12, 7]);
    expect(ahead).toBeGreaterThan(8);
  }, 120_000);

  it('a greedy penalty changes the tokens, pipelined as unpipelined (the token in flight is counted)', async () => {
    // A bias makes token 99 the greedy choice every step; the penalties take it back after a few occurrences, so
    // a pipelined step that missed the count of the token in flight would pick 99 where the unpipelined one does not.
    const bias = { 99: 20 };
    const cases = [{ prompt: prompt(6, 11), p: { temperature: 0, logit_bias: bias, frequency_penalty: 2, presence_penalty: 2 }, maxTokens: 16 }];
    const { plain } = await compare(cases);
    const free = await run(engine(true), [{ ...cases[0], p: { temperature: 0, logit_bias: bias } }]);
    expect(free[0].tokens.every((t) => t.token === 99)).toBe(true);
    const n99 = plain[0].tokens.filter((t) => t.token === 99).length;
    expect(n99).toBeGreaterThan(1);
    expect(n99).toBeLessThan(16);
  }, 120_000);
});
