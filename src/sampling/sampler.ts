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
//   -> draw: the kept token with the largest s + gumbel, the noise a hash of (seed, step, token id) (rng.ts)
// A Gumbel-max over the kept set is a draw from softmax(s) over it, and a token's noise does not depend on which
// other tokens were looked at, so every implementation of the definition draws the same token for the same seed.
//
// Where the work happens. plan() decides before each step, per sequence:
//   - 'argmax': greedy with no adjustment: the step's raw argmax is the answer;
//   - 'device': everything else. The step applies the adjustments to the touched tokens (entries(): logit bias,
//     prompt and output tokens with their counts), finds the thresholds by selection and draws with the same noise
//     (native/sampling.h, the CPU reference and the CUDA kernels); the host reads back one token and its raw logit;
//   - 'full': the step returns the whole row and sample() applies the definition here, over the full vocabulary.
//     The engine falls back to it only when a step's entries overflow the native buffer, and counts it.
import type { ResolvedSampling } from './params.js';
import { StepNoise } from './rng.js';
import { argmaxRow, sortCanonical, topKCanonical } from './select.js';

export type SampleMode = 'argmax' | 'device' | 'full';

export interface SamplePlan {
  mode: SampleMode;
  /** Raw top candidates per row this sequence needs from the step (top_logprobs). */
  topK: number;
}

/** One output row of a native step, as the sampler reads it. */
export interface LogitsRow {
  argmax: number;
  maxLogit: number;
  /** Over the whole vocabulary, temperature 1. */
  logsumexp: number;
  /** The step's K best raw ids (descending, ties by lower id; -1 padding) and their raw logits. */
  topIds: Int32Array;
  topLogits: Float32Array;
  /** The token the step drew and its raw logit, present when the plan was 'device'. */
  sampled?: number;
  sampledLogit?: number;
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

/** The tokens whose logit an adjustment touches, by id ascending (the arrays may be longer than `length`). */
export interface TouchedTokens {
  length: number;
  ids: Int32Array;
  bias: Float32Array;
  counts: Int32Array;
  inPrompt: Uint8Array;
}

export class SequenceSampler {
  readonly params: ResolvedSampling;
  /** Output tokens change the entries (a penalty is on): a step ahead counts its unknown token (countPrevious). */
  readonly tracksOutput: boolean;
  private readonly touched: TouchedTokens;
  /** Tokens sampled so far (the step index of the noise). */
  step = 0;

  constructor(params: ResolvedSampling, promptTokens: ArrayLike<number>) {
    this.params = params;
    this.tracksOutput = params.repetitionPenalty !== 1 || params.frequencyPenalty !== 0 || params.presencePenalty !== 0;
    const prompt = params.repetitionPenalty !== 1 ? new Set(Array.from(promptTokens)) : new Set<number>();
    const sorted = Int32Array.from(new Set([...params.logitBias.keys(), ...prompt])).sort();
    const cap = Math.max(16, sorted.length * 2);
    this.touched = {
      length: sorted.length,
      ids: new Int32Array(cap),
      bias: new Float32Array(cap),
      counts: new Int32Array(cap),
      inPrompt: new Uint8Array(cap),
    };
    this.touched.ids.set(sorted);
    sorted.forEach((id, j) => {
      this.touched.bias[j] = params.logitBias.get(id) ?? 0;
      this.touched.inPrompt[j] = prompt.has(id) ? 1 : 0;
    });
  }

  /** The tokens the step must adjust for this sequence, by id ascending. */
  entries(): TouchedTokens {
    return this.touched;
  }

  /** `ahead`: for a step whose input token is not accepted yet (one more output token, an entry when tracked). */
  plan(ahead = false): SamplePlan {
    const p = this.params;
    const topK = p.logprobs ? p.topLogprobs : 0;
    if (p.greedy && this.touched.length === 0 && !(ahead && this.tracksOutput)) return { mode: 'argmax', topK };
    return { mode: 'device', topK };
  }

  /** Index of id among the touched tokens, or -(insertion point) - 1. */
  private find(id: number): number {
    const t = this.touched;
    let lo = 0;
    let hi = t.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = t.ids[mid];
      if (v === id) return mid;
      if (v < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return -lo - 1;
  }

  /** Records a token as generated (penalties and the step counter). sample() calls it. */
  accept(token: number): void {
    this.step++;
    if (!this.tracksOutput) return;
    let j = this.find(token);
    if (j < 0) {
      j = -j - 1;
      this.insertAt(j, token);
    }
    this.touched.counts[j]++;
  }

  private insertAt(j: number, id: number): void {
    const t = this.touched;
    if (t.length === t.ids.length) {
      const n = t.ids.length * 2;
      t.ids = grow(t.ids, new Int32Array(n));
      t.bias = grow(t.bias, new Float32Array(n));
      t.counts = grow(t.counts, new Int32Array(n));
      t.inPrompt = grow(t.inPrompt, new Uint8Array(n));
    }
    t.ids.copyWithin(j + 1, j, t.length);
    t.bias.copyWithin(j + 1, j, t.length);
    t.counts.copyWithin(j + 1, j, t.length);
    t.inPrompt.copyWithin(j + 1, j, t.length);
    t.ids[j] = id;
    t.bias[j] = 0;
    t.counts[j] = 0;
    t.inPrompt[j] = 0;
    t.length++;
  }

  /** The noise keys of this step (what the device mixes token ids into). */
  noise(): StepNoise {
    return new StepNoise(this.params.seed, this.step);
  }

  /** Takes the next token from a row produced under `plan`, and records it. */
  sample(row: LogitsRow, plan: SamplePlan): SampledToken {
    let token: number;
    let rawLogit: number;
    if (plan.mode === 'argmax') {
      token = row.argmax;
      rawLogit = row.maxLogit;
    } else if (plan.mode === 'device') {
      if (row.sampled === undefined || row.sampled < 0 || row.sampledLogit === undefined)
        throw new Error('sampler: a device draw was planned but the step returned none');
      token = row.sampled;
      rawLogit = row.sampledLogit;
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

  /** The adjusted logit of touched token j (bias, then penalties), in fp64. */
  private adjust(j: number, raw: number): number {
    const p = this.params;
    const t = this.touched;
    let a = raw + t.bias[j];
    const c = t.counts[j];
    if (p.repetitionPenalty !== 1 && (c > 0 || t.inPrompt[j])) a = a > 0 ? a / p.repetitionPenalty : a * p.repetitionPenalty;
    if (c > 0) a -= p.frequencyPenalty * c + p.presencePenalty;
    return a;
  }

  /** The definition over the full vocabulary: the reference the device path is tested against, and the fallback. */
  sampleFull(logits: Float32Array): number {
    const p = this.params;
    const a = scratch(0, logits.length);
    a.set(logits);
    const t = this.touched;
    for (let j = 0; j < t.length; j++) a[t.ids[j]] = this.adjust(j, logits[t.ids[j]]);
    const best = argmaxRow(a);
    if (p.greedy) return best;

    const invT = 1 / p.temperature;
    const aMax = a[best];
    const aMin = p.minP > 0 ? aMax + p.temperature * Math.log(p.minP) : -Infinity; // min_p in logit space
    const noise = this.noise();
    let pick = best;
    let pickScore = -Infinity;
    const consider = (i: number) => {
      const score = (a[i] - aMax) * invT + noise.gumbel(i);
      if (score > pickScore || (score === pickScore && i < pick)) {
        pickScore = score;
        pick = i;
      }
    };
    if (p.topK > 0) {
      const kept = topKCanonical(a, p.topK, (i) => a[i] >= aMin);
      if (p.topP < 1) {
        let z = 0;
        for (const i of kept) z += Math.exp((a[i] - aMax) * invT);
        let cum = 0;
        for (const i of kept) {
          if (!(cum < p.topP * z)) break;
          consider(i);
          cum += Math.exp((a[i] - aMax) * invT);
        }
      } else for (const i of kept) consider(i);
      return pick;
    }
    const e = scratch(1, a.length);
    let z = 0;
    for (let i = 0; i < a.length; i++) {
      const w = a[i] >= aMin ? Math.exp((a[i] - aMax) * invT) : 0;
      e[i] = w;
      z += w;
    }
    if (p.topP < 1) nucleus(a, e, z * p.topP, aMax);
    for (let i = 0; i < a.length; i++) if (e[i] > 0) consider(i);
    return pick;
  }
}

function grow<A extends Int32Array | Float32Array | Uint8Array>(from: A, to: A): A {
  to.set(from);
  return to;
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
 * dropped, and only the crossing bucket is sorted. Zeroes the dropped weights.
 */
function nucleus(a: Float64Array, e: Float64Array, target: number, aMax: number): void {
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
}
