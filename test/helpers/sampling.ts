// Shared by the sampling suites (CPU and GPU): the combinations, the definition's kept set written out
// with a sort, the margin rule, and a binned chi-square for draws over a whole vocabulary.
import type { NativeSampling, NativeStepInput } from '../../src/native.js';
import { SamplingBatch } from '../../src/sampling/device.js';
import { resolveSampling, type SamplingParams } from '../../src/sampling/params.js';
import type { StepNoise } from '../../src/sampling/rng.js';
import type { SequenceSampler } from '../../src/sampling/sampler.js';

/** The combinations of issue 9's "Done when". */
export const COMBOS: { name: string; p: SamplingParams }[] = [
  { name: 'temperature 1', p: { temperature: 1 } },
  { name: 'temperature 1 + top_p 0.9', p: { temperature: 1, top_p: 0.9 } },
  { name: 'temperature 0.7 + top_k 50 + min_p 0.05', p: { temperature: 0.7, top_k: 50, min_p: 0.05 } },
  { name: 'temperature 1 + presence 0.5 + frequency 0.5 + repetition 1.1', p: { temperature: 1, presence_penalty: 0.5, frequency_penalty: 0.5, repetition_penalty: 1.1 } },
  { name: 'temperature 1 + logprobs + top_logprobs 5', p: { temperature: 1, logprobs: true, top_logprobs: 5 } },
];

/** The step's sampling arrays for these samplers (undefined: a row not sampled in the step). */
export function samplingOf(samplers: (SequenceSampler | undefined)[]): NativeSampling {
  let entries = 0;
  for (const s of samplers) entries += s?.entries().length ?? 0;
  const batch = new SamplingBatch(samplers.length, entries);
  for (const s of samplers) batch.push(s);
  return batch.finish();
}

export interface Kept {
  ids: number[];
  s: Float64Array;
  probs: Float64Array;
}

/** The definition's kept set, s = a / T, and the probabilities, over a full row (fp64, with a sort). */
export function keptSet(logits: Float32Array, p: SamplingParams, prompt: number[], output: number[]): Kept {
  const V = logits.length;
  const r = resolveSampling(p, V, () => 0);
  const counts = new Map<number, number>();
  for (const t of output) counts.set(t, (counts.get(t) ?? 0) + 1);
  const seen = new Set([...prompt, ...output]);
  const s = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    let a = logits[i] + (r.logitBias.get(i) ?? 0);
    if (r.repetitionPenalty !== 1 && seen.has(i)) a = a > 0 ? a / r.repetitionPenalty : a * r.repetitionPenalty;
    const c = counts.get(i) ?? 0;
    if (c > 0) a -= r.frequencyPenalty * c + r.presencePenalty;
    s[i] = a / r.temperature;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((x, y) => s[y] - s[x] || x - y);
  const top = s[order[0]];
  let kept = order.filter((i) => s[i] >= top + Math.log(r.minP));
  if (r.topK > 0) kept = kept.slice(0, r.topK);
  const z = kept.reduce((acc, i) => acc + Math.exp(s[i] - top), 0);
  const ids: number[] = [];
  let cum = 0;
  for (const i of kept) {
    if (!(cum < r.topP * z)) break;
    ids.push(i);
    cum += Math.exp(s[i] - top);
  }
  const probs = new Float64Array(V);
  const zk = ids.reduce((acc, i) => acc + Math.exp(s[i] - top), 0);
  for (const i of ids) probs[i] = Math.exp(s[i] - top) / zk;
  return { ids, s, probs };
}

/** The gap between the best and second Gumbel score over the kept set: below it, fp32 and fp64 may disagree. */
export function margin(kept: Kept, noise: StepNoise): number {
  let a = -Infinity;
  let b = -Infinity;
  for (const i of kept.ids) {
    const v = kept.s[i] + noise.gumbel(i);
    if (v > a) (b = a), (a = v);
    else if (v > b) b = v;
  }
  return a - b;
}

/** Upper 1e-4 quantile of chi-square(df), Wilson-Hilferty. */
export const chiCritical = (df: number) => df * (1 - 2 / (9 * df) + 3.719 * Math.sqrt(2 / (9 * df))) ** 3;

/** Chi-square of draws over `bins` bins of about equal mass in the kept set's canonical order, and its df. */
export function binnedChiSquare(kept: Kept, draws: ArrayLike<number>, bins = 10): { stat: number; df: number } {
  const binOf = new Map<number, number>();
  const expected = new Float64Array(bins);
  let cum = 0;
  for (const i of kept.ids) {
    const b = Math.min(bins - 1, Math.floor(cum * bins));
    binOf.set(i, b);
    expected[b] += kept.probs[i] * draws.length;
    cum += kept.probs[i];
  }
  const observed = new Float64Array(bins);
  for (let d = 0; d < draws.length; d++) {
    const b = binOf.get(draws[d]);
    if (b === undefined) return { stat: Infinity, df: 1 };
    observed[b]++;
  }
  let stat = 0;
  let df = -1;
  for (let b = 0; b < bins; b++)
    if (expected[b] > 0) {
      stat += (observed[b] - expected[b]) ** 2 / expected[b];
      df++;
    }
  return { stat, df: Math.max(df, 1) };
}

/**
 * One step prefilling `samplers.length` copies of `prompt` (sequence j in KV block j, so the prompt must fit one
 * block), each sequence with its own sampling; `fullRows` also returns those sequences' full logits.
 */
export function promptCopiesStep(prompt: number[], samplers: (SequenceSampler | undefined)[], fullRows: number[] = []): NativeStepInput {
  const n = samplers.length;
  const fullLogits = new Uint8Array(n);
  for (const r of fullRows) fullLogits[r] = 1;
  return {
    tokens: Int32Array.from({ length: n * prompt.length }, (_, i) => prompt[i % prompt.length]),
    positions: Int32Array.from({ length: n * prompt.length }, (_, i) => i % prompt.length),
    seqLens: new Int32Array(n).fill(prompt.length),
    blockTables: Int32Array.from({ length: n }, (_, j) => j),
    maxBlocksPerSeq: 1,
    fullLogits,
    topK: 5,
    sampling: samplingOf(samplers),
  };
}
