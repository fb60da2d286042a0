// Sampling in the step, at the real vocabulary: the device path (its CPU reference, native/sample_ref.cpp) against
// the TypeScript full-vocabulary definition on a flat 201,088-entry row (random weights' worst case) for each
// combination the issue names; then, through the CPU backend's step on the tiny model, logprobs against
// log-softmax of the full row and the same token whatever else is in the batch.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { loadAddon } from '../src/native.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';
import { SequenceSampler } from '../src/sampling/sampler.js';
import { binnedChiSquare, chiCritical, COMBOS, keptSet, margin, promptCopiesStep, samplingOf } from './helpers/sampling.js';

const V = 201088;

/** A nearly flat row, as random weights give: uniform in +-1.5 with a few raised tokens. */
function flatLogits(seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296) * 3 - 1.5 + (i % 9973 === 0 ? 3 : 0);
  }
  return out;
}

const PROMPT = Array.from({ length: 64 }, (_, i) => (i * 3001) % V);
const OUTPUT = [PROMPT[3], 17, 17, 9973 * 2, PROMPT[5]];

function sampler(p: SamplingParams, seed: number): SequenceSampler {
  const s = new SequenceSampler(resolveSampling({ ...p, seed }, V, () => 0), PROMPT);
  for (const t of OUTPUT) s.accept(t);
  return s;
}

function drawDevice(samplers: SequenceSampler[], logits: Float32Array) {
  const rows = new Float32Array(samplers.length * V);
  for (let r = 0; r < samplers.length; r++) rows.set(logits, r * V);
  return loadAddon().sampleLogits(rows, V, samplingOf(samplers));
}

describe('device path (CPU reference) vs the full-vocabulary definition, flat 201,088-entry row', () => {
  const logits = flatLogits(5);
  for (const c of COMBOS) {
    it(c.name, () => {
      const kept = keptSet(logits, c.p, PROMPT, OUTPUT);
      // Same seed, same token as the TypeScript full path, wherever the winning margin is above fp32 noise (1e-4).
      const seeds = 40;
      const samplers = Array.from({ length: seeds }, (_, d) => sampler(c.p, 7000 + d));
      const dev = drawDevice(samplers, logits);
      let compared = 0;
      for (let d = 0; d < seeds; d++) {
        const s = samplers[d];
        expect(kept.probs[dev.sampled[d]]).toBeGreaterThan(0);
        expect(dev.sampledLogit[d]).toBe(logits[dev.sampled[d]]);
        if (margin(kept, s.noise()) < 1e-4) continue;
        compared++;
        expect(dev.sampled[d]).toBe(s.sampleFull(logits));
      }
      expect(compared).toBeGreaterThan(seeds - 3);
      // The distribution: 10 bins of about equal mass in canonical order, 500 draws.
      const many = drawDevice(Array.from({ length: 500 }, (_, d) => sampler(c.p, 90000 + d)), logits);
      const { stat, df } = binnedChiSquare(kept, many.sampled);
      expect(stat).toBeLessThan(chiCritical(df));
    }, 120_000);
  }
});

describe('sampling in the CPU backend step (tiny model)', () => {
  let model: LoadedModel;
  beforeAll(async () => {
    model = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 32, blockSize: 16, numBlocks: 256 });
  }, 120_000);
  afterAll(() => model?.close());

  const prompt = [200006, 1428, 200008, 3086, 17, 999, 4242];
  const stepOf = (samplers: (SequenceSampler | undefined)[], fullRows?: number[]) => promptCopiesStep(prompt, samplers, fullRows);
  const mk = (p: SamplingParams, seed: number) => new SequenceSampler(resolveSampling({ ...p, seed }, V, () => 0), prompt);

  it('logprobs agree with log-softmax of the full row to 1e-4', async () => {
    const out = await model.step(stepOf([undefined, mk({ temperature: 1, logprobs: true, top_logprobs: 5 }, 3)], [0]));
    const full = out.logits.subarray(0, V);
    let m = -Infinity;
    for (const v of full) m = Math.max(m, v);
    let z = 0;
    for (const v of full) z += Math.exp(v - m);
    const lse = m + Math.log(z);
    const t = out.sampled![1];
    expect(t).toBeGreaterThanOrEqual(0);
    expect(Math.abs(out.sampledLogit![1] - out.logsumexp[1] - (full[t] - lse))).toBeLessThan(1e-4);
    for (let j = 0; j < 5; j++) expect(Math.abs(out.topLogits[5 + j] - out.logsumexp[1] - (full[out.topIds[5 + j]] - lse))).toBeLessThan(1e-4);
  }, 60_000);

  it('the same logits, seed and parameters give the same token with 0 and with 16 other sequences in the batch', async () => {
    for (const c of COMBOS) {
      const alone = await model.step(stepOf([mk(c.p, 11)]));
      const others = COMBOS.flatMap((o, j) => [mk(o.p, 100 + j), mk({ ...o.p, temperature: 0.5 + j / 10 }, 200 + j), mk({ top_k: 3 + j }, j)]);
      const crowd = [...others.slice(0, 8), mk(c.p, 11), ...others.slice(8, 16)];
      const out = await model.step(stepOf(crowd));
      expect(out.sampled![8], c.name).toBe(alone.sampled![0]);
      expect(out.sampledLogit![8]).toBe(alone.sampledLogit![0]);
    }
  }, 120_000);

  it('reads step.sampling strictly and checks it in validate_step (bad rows refused before the step runs)', async () => {
    const good = stepOf([mk({ temperature: 1 }, 1)]);
    const withSampling = (sampling: object) => model.step({ ...good, sampling } as never);
    await expect(withSampling({ ...good.sampling, frobnicate: 1 })).rejects.toThrow(/step\.sampling\.frobnicate: unknown key/);
    const { topP: _, ...missing } = good.sampling!;
    await expect(withSampling(missing)).rejects.toThrow(/step\.sampling\.topP: missing/);
    await expect(withSampling({ ...good.sampling, topP: Float32Array.of(1.5) })).rejects.toThrow(/parameter out of range/);
    await expect(model.step({ ...good, allPositions: true })).rejects.toThrow(/not allPositions/);
  });
});
