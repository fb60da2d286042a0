// Shared by the window-KV suites (window_kv_cpu.test.ts, gpu/window_kv.test.ts): an engine over a loaded model
// with its window from info(), and three requests longer than the 128-token window, greedy and seeded, run side by
// side with every sampled token's logprobs recorded.
import { expect } from 'vitest';
import { Engine, type GenerationRequest } from '../../src/engine/engine.js';
import type { LoadedModel } from '../../src/model/load.js';
import { resolveSampling, type SamplingParams } from '../../src/sampling/params.js';
import type { SampledToken } from '../../src/sampling/sampler.js';

export const V = 201088;

/** numBlocks: a smaller pool than the model's (prefix caching off then, so it preempts rather than evicts). */
export function windowEngine(model: LoadedModel, numBlocks?: number): Engine {
  const info = model.info();
  return new Engine(model, {
    vocabSize: V,
    numBlocks: numBlocks ?? info.numBlocks,
    blockSize: info.blockSize,
    maxSeqs: info.limits.maxSeqs,
    maxBatchTokens: info.limits.maxBatchTokens,
    stepTokens: 96,
    contextLength: 600,
    prefixCaching: numBlocks === undefined,
    kvWindow: info.limits.kvWindow,
  });
}

const prompt = (n: number, k: number) => Array.from({ length: n }, (_, i) => (i * 7919 + k * 104729) % V);

export const LONG_CASES: { prompt: number[]; p: SamplingParams; maxTokens: number }[] = [
  { prompt: prompt(300, 1), p: { temperature: 0, logprobs: true, top_logprobs: 2 }, maxTokens: 40 },
  { prompt: prompt(170, 2), p: { temperature: 0.8, seed: 3, logprobs: true }, maxTokens: 60 },
  { prompt: prompt(140, 3), p: { temperature: 0, logprobs: true }, maxTokens: 30 },
];

export async function runCases(e: Engine, cases = LONG_CASES): Promise<SampledToken[][]> {
  return Promise.all(
    cases.map(async (c) => {
      const tokens: SampledToken[] = [];
      const req: GenerationRequest = { prompt: c.prompt, sampling: resolveSampling(c.p, V, () => 0), maxTokens: c.maxTokens, stopTokenIds: new Set(), onToken: (t) => void tokens.push(t) };
      await e.generate(req);
      return tokens;
    }),
  );
}

/**
 * LONG_CASES on the one-table model, then on the window-KV model with its whole pool and with `tight` blocks
 * (preempting): the same tokens and logprobs each time, and every block free after.
 */
export async function expectLayoutsAgree(shared: LoadedModel, windowed: LoadedModel, tight: number): Promise<void> {
  const want = await runCases(windowEngine(shared));
  const roomy = windowEngine(windowed);
  expect(await runCases(roomy)).toEqual(want);
  expect(roomy.freeBlocks).toBe(windowed.info().numBlocks);
  const small = windowEngine(windowed, tight);
  expect(await runCases(small)).toEqual(want);
  expect(small.preemptions).toBeGreaterThan(0);
  expect(small.freeBlocks).toBe(tight);
}
