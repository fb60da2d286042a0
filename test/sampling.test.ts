// Sampling: the drawn distribution of both paths (the TypeScript full-vocabulary path, and the step's device path
// on its CPU reference) against a direct implementation of the definition, determinism, logprobs, parameter
// validation, stop strings. Large-vocabulary and in-the-step tests are in sampling_device.test.ts.
import { describe, expect, it } from 'vitest';
import { resolveSampling, SamplingParamError, type SamplingParams } from '../src/sampling/params.js';
import { loadAddon } from '../src/native.js';
import { SamplingBatch } from '../src/sampling/device.js';
import { SequenceSampler, type LogitsRow } from '../src/sampling/sampler.js';
import { StopStrings } from '../src/sampling/stop.js';

/** Deterministic synthetic logits (a mulberry32 stream scaled to a realistic spread). */
function syntheticLogits(vocab: number, seed: number, spread = 4): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = spread * (u * 2 - 1) + (i % 17 === 0 ? 2 : 0);
  }
  return out;
}

/** A native-like row: narrowed to K candidates, with the full logits attached when asked. */
function makeRow(logits: Float32Array, k: number, full: boolean): LogitsRow {
  const ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  let s = 0;
  for (const v of logits) s += Math.exp(v - m);
  const topIds = new Int32Array(k).fill(-1);
  const topLogits = new Float32Array(k).fill(-Infinity);
  for (let j = 0; j < Math.min(k, ids.length); j++) {
    topIds[j] = ids[j];
    topLogits[j] = logits[ids[j]];
  }
  return { argmax: ids[0], maxLogit: logits[ids[0]], logsumexp: m + Math.log(s), topIds, topLogits, logits: full ? logits : undefined };
}

/** The definition, written out directly over the whole vocabulary: the probability of each token. */
function referenceProbs(logits: Float32Array, p: SamplingParams, prompt: number[], output: number[]): Float64Array {
  const r = resolveSampling(p, logits.length, () => 0);
  const counts = new Map<number, number>();
  for (const t of output) counts.set(t, (counts.get(t) ?? 0) + 1);
  const seen = new Set([...prompt, ...output]);
  const a = Array.from(logits, (l, i) => {
    let x = l + (r.logitBias.get(i) ?? 0);
    if (seen.has(i)) x = x > 0 ? x / r.repetitionPenalty : x * r.repetitionPenalty;
    const c = counts.get(i) ?? 0;
    if (c > 0) x -= r.frequencyPenalty * c + r.presencePenalty;
    return x;
  });
  const order = a.map((_, i) => i).sort((x, y) => a[y] - a[x] || x - y);
  const probs = new Float64Array(logits.length);
  if (r.greedy) {
    probs[order[0]] = 1;
    return probs;
  }
  const s = a.map((x) => x / r.temperature);
  const smax = s[order[0]];
  let kept = order.filter((i) => Math.exp(s[i] - smax) >= r.minP);
  if (r.topK > 0) kept = kept.slice(0, r.topK);
  let z = kept.reduce((acc, i) => acc + Math.exp(s[i] - smax), 0);
  const nucleus: number[] = [];
  let cum = 0;
  for (const i of kept) {
    if (cum >= r.topP * z) break;
    nucleus.push(i);
    cum += Math.exp(s[i] - smax);
  }
  z = nucleus.reduce((acc, i) => acc + Math.exp(s[i] - smax), 0);
  for (const i of nucleus) probs[i] = Math.exp(s[i] - smax) / z;
  return probs;
}

function newSampler(p: SamplingParams, vocab: number, prompt: number[], output: number[], seed: number): SequenceSampler {
  const s = new SequenceSampler(resolveSampling({ ...p, seed }, vocab, () => 0), prompt);
  for (const t of output) s.accept(t);
  return s;
}

/** The device path on the CPU reference (the addon's sampleLogits): one row per sampler, every row `logits`. */
function drawDevice(samplers: SequenceSampler[], logits: Float32Array): { sampled: Int32Array; sampledLogit: Float32Array } {
  let entries = 0;
  for (const s of samplers) entries += s.entries().length;
  const batch = new SamplingBatch(samplers.length, entries);
  for (const s of samplers) batch.push(s);
  const rows = new Float32Array(samplers.length * logits.length);
  for (let r = 0; r < samplers.length; r++) rows.set(logits, r * logits.length);
  return loadAddon().sampleLogits(rows, logits.length, batch.finish());
}

/** Chi-square statistic over bins with expected count >= 5 (the rest pooled), and its degrees of freedom. */
function chiSquare(observed: Float64Array, expected: Float64Array): { stat: number; df: number } {
  let stat = 0;
  let df = -1;
  let poolO = 0;
  let poolE = 0;
  for (let i = 0; i < expected.length; i++) {
    if (expected[i] >= 5) {
      stat += (observed[i] - expected[i]) ** 2 / expected[i];
      df++;
    } else {
      poolO += observed[i];
      poolE += expected[i];
      if (expected[i] === 0 && observed[i] > 0) return { stat: Infinity, df: 1 };
    }
  }
  if (poolE >= 5) {
    stat += (poolO - poolE) ** 2 / poolE;
    df++;
  }
  return { stat, df: Math.max(df, 1) };
}

/** Upper 1e-4 quantile of chi-square(df), Wilson-Hilferty. */
function chiCritical(df: number): number {
  const z = 3.719;
  const c = 2 / (9 * df);
  return df * (1 - c + z * Math.sqrt(c)) ** 3;
}

const CASES: { name: string; p: SamplingParams; prompt?: number[]; output?: number[] }[] = [
  { name: 'temperature 1', p: { temperature: 1 } },
  { name: 'temperature 0.6, top_k 12', p: { temperature: 0.6, top_k: 12 } },
  { name: 'temperature 1.4, top_p 0.7', p: { temperature: 1.4, top_p: 0.7 } },
  { name: 'min_p 0.2, temperature 0.8', p: { min_p: 0.2, temperature: 0.8 } },
  { name: 'top_k 20, top_p 0.85, min_p 0.05', p: { top_k: 20, top_p: 0.85, min_p: 0.05 } },
  {
    name: 'penalties that lower',
    p: { repetition_penalty: 1.4, frequency_penalty: 0.7, presence_penalty: 0.4, top_k: 16 },
    prompt: [0, 17, 34, 5],
    output: [17, 17, 51, 2],
  },
  {
    name: 'penalties that raise',
    p: { repetition_penalty: 0.7, frequency_penalty: -0.5, presence_penalty: -0.3 },
    prompt: [1, 2, 3],
    output: [3, 3, 9],
  },
  { name: 'logit_bias', p: { logit_bias: { '3': 6, '17': -100, '40': 2.5 }, top_p: 0.9 } },
  {
    name: 'greedy with penalties and a bias',
    p: { temperature: 0, repetition_penalty: 1.3, frequency_penalty: 0.5, logit_bias: { '40': 1.5 } },
    prompt: [17, 34],
    output: [17, 51],
  },
];

function check(observed: Float64Array, expected: Float64Array, draws: number): void {
  const { stat, df } = chiSquare(observed, expected.map((q) => q * draws));
  expect(stat).toBeLessThan(chiCritical(df));
  let tv = 0;
  for (let i = 0; i < expected.length; i++) tv += Math.abs(observed[i] / draws - expected[i]) / 2;
  expect(tv).toBeLessThan(0.03);
}

describe('sampling distribution matches the full-vocabulary definition', () => {
  const vocab = 96;
  const logits = syntheticLogits(vocab, 7, 3);
  const draws = 12000;
  for (const c of CASES) {
    const prompt = c.prompt ?? [];
    const output = c.output ?? [];
    const expected = referenceProbs(logits, c.p, prompt, output);
    it(`${c.name}: full path`, () => {
      const observed = new Float64Array(vocab);
      for (let d = 0; d < draws; d++) {
        const s = newSampler(c.p, vocab, prompt, output, 1000 + d);
        const plan = s.plan();
        expect(plan.mode).toBe('device');
        observed[s.sample({ ...makeRow(logits, 1, true), sampled: undefined }, { ...plan, mode: 'full' }).token]++;
      }
      check(observed, expected, draws);
    });
    it(`${c.name}: device path (CPU reference)`, () => {
      const samplers = Array.from({ length: draws }, (_, d) => newSampler(c.p, vocab, prompt, output, 1000 + d));
      const { sampled, sampledLogit } = drawDevice(samplers, logits);
      const observed = new Float64Array(vocab);
      sampled.forEach((t, d) => {
        observed[t]++;
        expect(sampledLogit[d]).toBe(logits[t]);
      });
      check(observed, expected, draws);
    });
  }
});

describe('top_p over a large vocabulary (bucketed nucleus)', () => {
  it('matches the definition', () => {
    const vocab = 4000;
    const logits = syntheticLogits(vocab, 5, 6);
    const p: SamplingParams = { temperature: 0.7, top_p: 0.5 };
    const expected = referenceProbs(logits, p, [], []);
    const draws = 4000;
    const observed = new Float64Array(vocab);
    for (let d = 0; d < draws; d++) observed[newSampler(p, vocab, [], [], 50000 + d).sampleFull(logits)]++;
    const { stat, df } = chiSquare(observed, expected.map((q) => q * draws));
    expect(stat).toBeLessThan(chiCritical(df));
  });
});

describe('plans', () => {
  const vocab = 1000;
  it('greedy without adjustments takes the native argmax; everything else is drawn in the step', () => {
    const logits = syntheticLogits(vocab, 1);
    const row = makeRow(logits, 0, false);
    const s = newSampler({ temperature: 0 }, vocab, [1, 2], [], 0);
    const plan = s.plan();
    expect(plan).toEqual({ mode: 'argmax', topK: 0 });
    expect(s.sample(row, plan).token).toBe(row.argmax);
    for (const p of [{ temperature: 1 }, { top_p: 0.9 }, { temperature: 0, repetition_penalty: 1.2 }, { logit_bias: { '5': 3 } }])
      expect(newSampler(p, vocab, [1, 2], [], 0).plan().mode).toBe('device');
    expect(newSampler({ logprobs: true, top_logprobs: 7 }, vocab, [], [], 0).plan()).toEqual({ mode: 'device', topK: 7 });
    // a step ahead: a greedy penalty has no entry yet, but the token in flight will be one (countPrevious)
    const penalized = newSampler({ temperature: 0, frequency_penalty: 1 }, vocab, [1, 2], [], 0);
    expect([penalized.plan().mode, penalized.plan(true).mode, s.plan(true).mode]).toEqual(['argmax', 'device', 'argmax']);
  });
  it('entries: the touched tokens by id, with bias, counts and the prompt flag', () => {
    const s = newSampler({ repetition_penalty: 1.1, frequency_penalty: 0.2, logit_bias: { '9': -2, '400': 1 } }, vocab, [7, 3, 7], [3, 500, 3], 0);
    const t = s.entries();
    expect(Array.from(t.ids.subarray(0, t.length))).toEqual([3, 7, 9, 400, 500]);
    expect(Array.from(t.counts.subarray(0, t.length))).toEqual([2, 0, 0, 0, 1]);
    expect(Array.from(t.inPrompt.subarray(0, t.length))).toEqual([1, 1, 0, 0, 0]);
    expect(Array.from(t.bias.subarray(0, t.length))).toEqual([0, 0, -2, 1, 0]);
    expect(newSampler({ temperature: 1 }, vocab, [1, 2], [3], 0).entries().length).toBe(0);
  });
});

describe('determinism and logprobs', () => {
  const vocab = 5000;
  const logits = syntheticLogits(vocab, 3, 5);
  function run(seed: number, p: SamplingParams): number[] {
    const s = new SequenceSampler(resolveSampling({ ...p, seed }, vocab, () => 0), [1, 2, 3]);
    const out: number[] = [];
    for (let i = 0; i < 40; i++) {
      const { sampled, sampledLogit } = drawDevice([s], logits);
      out.push(s.sample({ ...makeRow(logits, 0, false), sampled: sampled[0], sampledLogit: sampledLogit[0] }, s.plan()).token);
    }
    return out;
  }
  it('same seed, same tokens; another seed, other tokens', () => {
    const p = { temperature: 1, top_p: 0.95, frequency_penalty: 0.3 };
    expect(run(42, p)).toEqual(run(42, p));
    expect(run(42, p)).not.toEqual(run(43, p));
  });
  it('logprobs come from the raw distribution', () => {
    const s = new SequenceSampler(resolveSampling({ temperature: 0.5, top_k: 3, logprobs: true, top_logprobs: 5, seed: 1 }, vocab, () => 0), []);
    const plan = s.plan();
    expect(plan.topK).toBe(5);
    const row = makeRow(logits, plan.topK, false);
    const { sampled, sampledLogit } = drawDevice([s], logits);
    const out = s.sample({ ...row, sampled: sampled[0], sampledLogit: sampledLogit[0] }, plan);
    expect(out.logprob).toBeCloseTo(logits[out.token] - row.logsumexp, 6);
    expect(out.topLogprobs!.map((t) => t.token)).toEqual(Array.from(row.topIds.slice(0, 5)));
    const total = Array.from(logits).reduce((acc, l) => acc + Math.exp(l - row.logsumexp), 0);
    expect(total).toBeCloseTo(1, 5);
  });
});

describe('parameter validation', () => {
  const bad: [SamplingParams, string][] = [
    [{ temperature: -0.1 }, 'temperature'],
    [{ temperature: 2.5 }, 'temperature'],
    [{ temperature: Number.NaN }, 'temperature'],
    [{ top_p: 0 }, 'top_p'],
    [{ top_p: 1.5 }, 'top_p'],
    [{ top_k: 2.5 }, 'top_k'],
    [{ top_k: -2 }, 'top_k'],
    [{ min_p: 1.2 }, 'min_p'],
    [{ repetition_penalty: 0 }, 'repetition_penalty'],
    [{ frequency_penalty: 3 }, 'frequency_penalty'],
    [{ presence_penalty: -2.5 }, 'presence_penalty'],
    [{ logit_bias: { abc: 1 } }, 'logit_bias'],
    [{ logit_bias: { '999999': 1 } }, 'logit_bias'],
    [{ logit_bias: { '5': 200 } }, 'logit_bias'],
    [{ seed: 1.5 }, 'seed'],
    [{ stop: [''] }, 'stop'],
    [{ stop: Array(17).fill('x') }, 'stop'],
    [{ stop_token_ids: [-1] }, 'stop_token_ids'],
    [{ max_tokens: 0 }, 'max_tokens'],
    [{ max_tokens: 5, max_completion_tokens: 6 }, 'max_tokens'],
    [{ top_logprobs: 3 }, 'top_logprobs'],
    [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
  ];
  for (const [p, param] of bad) {
    it(`${JSON.stringify(p)} -> ${param}`, () => {
      let err: unknown;
      try {
        resolveSampling(p, 1000, () => 0);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SamplingParamError);
      expect((err as SamplingParamError).param).toBe(param);
      expect((err as Error).message.startsWith(`${param}: `)).toBe(true);
    });
  }
  it('defaults', () => {
    const r = resolveSampling({}, 1000, () => 77);
    expect(r).toMatchObject({ temperature: 1, greedy: false, topK: 0, topP: 1, minP: 0, seed: 77, maxTokens: undefined });
    expect(resolveSampling({ top_k: -1, temperature: 0 }, 1000, () => 0)).toMatchObject({ topK: 0, greedy: true });
  });
});

describe('stop strings', () => {
  it('catches a stop string split across deltas and hides it', () => {
    const s = new StopStrings(['END', 'xyz']);
    expect(s.push('hello E')).toBe('hello ');
    expect(s.push('N')).toBe('');
    expect(s.push('Dmore')).toBe('');
    expect(s.stopped).toBe(true);
  });
  it('releases held text that turned out not to stop', () => {
    const s = new StopStrings(['END']);
    expect(s.push('aE')).toBe('a');
    expect(s.push('x')).toBe('Ex');
    expect(s.push('EN')).toBe('');
    expect(s.flush()).toBe('EN');
  });
});
