// Exact sampling for one sequence. The definition (vLLM v1's sampler, which the OpenAI-compatible servers follow):
//   raw logits l (the model's, all 201,088)
//   -> logprobs reported from l itself: l - logsumexp(l)          (vLLM's default logprobs_mode "raw_logprobs")
//   -> a = l + logit_bias                                           (vLLM applies the bias before the penalties)
//   -> repetition penalty on tokens seen in the prompt or output:   a > 0 ? a / r : a * r
//   -> a -= frequency_penalty * count_in_output + presence_penalty * [count_in_output > 0]
//   -> temperature < 1e-5: the best a (lowest id on ties); stop
//   -> s = a / temperature
//   -> min_p: keep s >= max(s) + log(min_p)   (probability >= min_p * the best probability)
//   -> top_k: keep the k best survivors       (order: s descending, then id ascending)
//   -> top_p: keep a survivor while the mass of the kept ones before it is < top_p (renormalised)
//   -> draw from softmax(s) over the kept tokens
// A draw limited by top_k is a Gumbel-max over the kept set with noise hashed from (seed, step, token id) (rng.ts),
// so it does not depend on how many other tokens were examined: the narrowed path and the full path draw the same
// token. A draw without top_k (never narrowed) is an inverse-CDF draw in id order, cheaper over 201,088 tokens.
//
// Narrowing. The native step can return only the K best raw logits per row plus logsumexp. plan() decides BEFORE the
// step whether that provably determines the result:
//   - greedy with no adjustment at all: the native argmax is the answer ('argmax');
//   - a k-limited draw (top_k = k, or greedy as k = 1) where no adjustment can raise any logit and at most L tokens
//     can be lowered, with K >= k + L: at least k candidates keep their raw value, and each of them precedes every
//     non-candidate in the adjusted order (a non-candidate's value can only fall), so the k best adjusted tokens
//     are all candidates; min_p and top_p then act within them ('narrow');
//   - anything else asks the step for this sequence's full logits ('full').
import { maxTopK } from '../native.js';
import type { ResolvedSampling } from './params.js';
import { StepNoise } from './rng.js';
import { argmaxRow, sortCanonical, topKCanonical } from './select.js';

export type SampleMode = 'argmax' | 'narrow' | 'full';

export interface SamplePlan {
  mode: SampleMode;
  /** Candidates per row this sequence needs from the step (narrowing and top_logprobs). */
  topK: number;
}

/** One output row of a native step, as the sampler reads it. */
export interface LogitsRow {
  argmax: number;
  maxLogit: number;
  /** Over the whole vocabulary, temperature 1. */
  logsumexp: number;
  /** The step's K best ids (descending, ties by lower id; -1 padding) and their raw logits. */
  topIds: Int32Array;
  topLogits: Float32Array;
  /** All raw logits, present when the plan was 'full'. */
  logits?: Float32Array;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

export interface SampledToken {
  token: number;
  /** Present when logprobs were requested: the raw model log-probability of the token. */
  logprob?: number;
  /** The top_logprobs most likely tokens of the raw distribution. */
  topLogprobs?: TokenLogprob[];
}

export class SequenceSampler {
  readonly params: ResolvedSampling;
  private readonly promptSet: Set<number>;
  private readonly counts = new Map<number, number>();
  /** Tokens whose logit some adjustment may lower. */
  private readonly lowered = new Set<number>();
  private readonly anyPositiveBias: boolean;
  /** Tokens sampled so far (the step index of the noise). */
  step = 0;

  constructor(params: ResolvedSampling, promptTokens: ArrayLike<number>) {
    this.params = params;
    this.promptSet = params.repetitionPenalty !== 1 ? new Set(Array.from(promptTokens)) : new Set();
    let positive = false;
    for (const [id, b] of params.logitBias) {
      if (b > 0) positive = true;
      else this.lowered.add(id);
    }
    this.anyPositiveBias = positive;
    if (params.repetitionPenalty > 1) for (const id of this.promptSet) this.lowered.add(id);
  }

  /** True when some adjustment may raise a token's logit above its raw value. */
  private mayRaise(): boolean {
    const p = this.params;
    if (this.anyPositiveBias) return true;
    if (p.repetitionPenalty < 1 && (this.promptSet.size > 0 || this.counts.size > 0)) return true;
    return (p.frequencyPenalty < 0 || p.presencePenalty < 0) && this.counts.size > 0;
  }

  plan(): SamplePlan {
    const p = this.params;
    const lp = p.logprobs ? p.topLogprobs : 0;
    const raises = this.mayRaise();
    if (p.greedy && !raises && this.lowered.size === 0) return { mode: 'argmax', topK: lp };
    const k = p.greedy ? 1 : p.topK;
    if (k > 0 && !raises && k + this.lowered.size <= maxTopK())
      return { mode: 'narrow', topK: Math.max(k + this.lowered.size, lp) };
    return { mode: 'full', topK: lp };
  }

  /** The adjusted logit of one token (bias, then penalties). */
  private adjust(id: number, raw: number): number {
    const p = this.params;
    let a = raw + (p.logitBias.get(id) ?? 0);
    const c = this.counts.get(id) ?? 0;
    if (p.repetitionPenalty !== 1 && (c > 0 || this.promptSet.has(id)))
      a = a > 0 ? a / p.repetitionPenalty : a * p.repetitionPenalty;
    if (c > 0) a -= p.frequencyPenalty * c + p.presencePenalty;
    return a;
  }

  /** Records a token as generated (penalties and the step counter). sample() calls it. */
  accept(token: number): void {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    const p = this.params;
    if (p.repetitionPenalty > 1 || p.frequencyPenalty > 0 || p.presencePenalty > 0) this.lowered.add(token);
    this.step++;
  }

  /** Draws the next token from a row produced under `plan`, and records it. */
  sample(row: LogitsRow, plan: SamplePlan): SampledToken {
    let token: number;
    let rawLogit: number;
    if (plan.mode === 'argmax') {
      token = row.argmax;
      rawLogit = row.maxLogit;
    } else if (plan.mode === 'narrow') {
      token = this.sampleNarrow(row);
      rawLogit = row.topLogits[row.topIds.indexOf(token)];
    } else {
      if (!row.logits) throw new Error('sampler: full logits were planned but the step returned none');
      token = this.sampleFull(row.logits);
      rawLogit = row.logits[token];
    }
    const out: SampledToken = { token };
    if (this.params.logprobs) {
      out.logprob = rawLogit - row.logsumexp;
      const n = this.params.topLogprobs;
      if (n > 0) {
        out.topLogprobs = [];
        for (let j = 0; j < n && j < row.topIds.length && row.topIds[j] >= 0; j++)
          out.topLogprobs.push({ token: row.topIds[j], logprob: row.topLogits[j] - row.logsumexp });
      }
    }
    this.accept(token);
    return out;
  }

  private sampleNarrow(row: LogitsRow): number {
    const ids: number[] = [];
    const adjusted = new Map<number, number>();
    for (let j = 0; j < row.topIds.length; j++) {
      const id = row.topIds[j];
      if (id < 0) break;
      ids.push(id);
      adjusted.set(id, this.adjust(id, row.topLogits[j]));
    }
    sortCanonical(ids, (id) => adjusted.get(id)!);
    if (this.params.greedy) return ids[0];
    const k = this.params.topK;
    return this.drawOrdered(ids.slice(0, k), (id) => adjusted.get(id)!);
  }

  private sampleFull(logits: Float32Array): number {
    const p = this.params;
    const a = scratch(0, logits.length);
    a.set(logits);
    const touched = new Set<number>([...p.logitBias.keys(), ...this.counts.keys(), ...this.promptSet]);
    for (const id of touched) a[id] = this.adjust(id, logits[id]);
    const best = argmaxRow(a);
    if (p.greedy) return best;

    const t = p.temperature;
    if (p.topK > 0) {
      const threshold = p.minP > 0 ? a[best] / t + Math.log(p.minP) : -Infinity;
      return this.drawOrdered(topKCanonical(a, p.topK, (i) => a[i] / t >= threshold), (id) => a[id]);
    }

    // Without top_k the kept set can be most of the vocabulary: draw by inverse CDF over it in id order (one exp
    // per token) instead of a Gumbel per token. No narrowed path exists for this case, so nothing to match.
    const aMax = a[best];
    const invT = 1 / t;
    const aMin = p.minP > 0 ? aMax + t * Math.log(p.minP) : -Infinity; // min_p in logit space
    const e = scratch(1, a.length);
    let z = 0;
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      const w = v >= aMin ? Math.exp((v - aMax) * invT) : 0;
      e[i] = w;
      z += w;
    }
    const total = p.topP < 1 ? nucleus(a, e, z * p.topP, aMax) : z;
    const target = new StepNoise(p.seed, this.step).uniform(-1) * total;
    let cum = 0;
    let last = best;
    for (let i = 0; i < e.length; i++) {
      const w = e[i];
      if (w === 0) continue;
      cum += w;
      last = i;
      if (cum > target) return i;
    }
    return last;
  }

  /** min_p, top_p and the draw over ids already in canonical order and already cut to top_k. */
  private drawOrdered(ids: number[], value: (id: number) => number): number {
    const p = this.params;
    const t = p.temperature;
    const sMax = value(ids[0]) / t;
    let kept = ids;
    if (p.minP > 0) {
      const threshold = sMax + Math.log(p.minP);
      kept = kept.filter((id) => value(id) / t >= threshold);
    }
    if (p.topP < 1) {
      let z = 0;
      for (const id of kept) z += Math.exp(value(id) / t - sMax);
      const target = p.topP * z;
      const nucleus: number[] = [];
      let cum = 0;
      for (const id of kept) {
        if (!(cum < target)) break;
        nucleus.push(id);
        cum += Math.exp(value(id) / t - sMax);
      }
      kept = nucleus;
    }
    return this.gumbelArgmax(kept, value, new StepNoise(p.seed, this.step));
  }

  private gumbelArgmax(ids: number[], value: (id: number) => number, noise: StepNoise): number {
    const t = this.params.temperature;
    let best = ids[0];
    let bestScore = -Infinity;
    for (const id of ids) {
      const score = value(id) / t + noise.gumbel(id);
      if (score > bestScore || (score === bestScore && id < best)) {
        bestScore = score;
        best = id;
      }
    }
    return best;
  }
}

/** Reused row-sized buffers (two per process): a full row is 1.6 MB of float64, too much to allocate per token. */
const scratchBuffers: Float64Array[] = [];
function scratch(slot: number, n: number): Float64Array {
  if (!scratchBuffers[slot] || scratchBuffers[slot].length !== n) scratchBuffers[slot] = new Float64Array(n);
  return scratchBuffers[slot];
}

/**
 * top_p without top_k over a whole row (weights e over adjusted logits a, target = top_p times their sum). The
 * kept tokens are a prefix of the canonical order; instead of sorting the vocabulary, tokens are bucketed by
 * value: every bucket before the one where the mass crosses the target is kept whole, every bucket after it is
 * dropped, and only the crossing bucket is sorted. Zeroes the dropped weights and returns the kept mass.
 */
function nucleus(a: Float64Array, e: Float64Array, target: number, aMax: number): number {
  let aLow = aMax;
  for (let i = 0; i < a.length; i++) if (e[i] > 0 && a[i] < aLow) aLow = a[i];
  const buckets = 4096;
  const scale = aMax > aLow ? (buckets - 1) / (aMax - aLow) : 0;
  const mass = new Float64Array(buckets);
  for (let i = 0; i < a.length; i++) if (e[i] > 0) mass[Math.floor((aMax - a[i]) * scale)] += e[i];
  let before = 0;
  let cross = 0;
  while (cross < buckets - 1 && before + mass[cross] < target) before += mass[cross++];
  const inCross: number[] = [];
  for (let i = 0; i < a.length; i++) {
    if (e[i] === 0) continue;
    const b = Math.floor((aMax - a[i]) * scale);
    if (b === cross) inCross.push(i);
    else if (b > cross) e[i] = 0;
  }
  sortCanonical(inCross, (i) => a[i]);
  let cum = before;
  for (const i of inCross) {
    if (cum < target) cum += e[i];
    else e[i] = 0;
  }
  return cum;
}
