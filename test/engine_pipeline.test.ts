// The engine's pipelined decode (a step submitted while the one before it runs, its tokens named as that step's
// rows) against the unpipelined engine with the tiny model, on the CPU backend and (with a GPU) the CUDA one: the
// same tokens and logprobs for greedy and seeded requests, the same ends (stop token, a stop the caller signals,
// max_tokens, abort) with the extra token of a stopped sequence discarded, and every KV block free afterwards.
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

describe.each(backends)('pipelined engine decode (%s backend, tiny model)', (backend) => {
  beforeAll(async () => {
    model = await loadModel({ model: await ensureTinyModel(), backend, maxSeqs: 8, blockSize: 16, numBlocks: 64 });
  }, 120_000);
  afterAll(() => model?.close());

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

  it('a request with output penalties is not pipelined (its step needs the token) and gives the same tokens', async () => {
    const { ahead } = await compare([{ prompt: prompt(8, 8), p: { temperature: 0.9, seed: 3, presence_penalty: 0.5, repetition_penalty: 1.2 }, maxTokens: 6 }]);
    expect(ahead).toBe(0);
  }, 120_000);
});
