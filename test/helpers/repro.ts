// Reproducibility probes on the CUDA backend (test/gpu/repro.test.ts, bench/repro.ts): a gpt-oss config with dummy
// weights (optionally fewer layers and a smaller vocabulary, same kernel shapes), raw steps over sequences that each
// own a range of KV blocks, and bit-level comparison of their output rows.
import { configFromJson } from '../../src/model/config.js';
import { dummyTensors, publishedConfigJson, type DummyModelName } from '../../src/model/dummy.js';
import type { ModelConfig } from '../../src/model/types.js';
import { loadAddon, type NativeModel, type NativeStepOutput } from '../../src/native.js';

export const BLOCK = 16;

export interface ReproModel {
  model: NativeModel;
  config: ModelConfig;
  /** KV blocks per sequence slot: sequence slot s owns blocks [s * blocksPerSeq, (s + 1) * blocksPerSeq). */
  blocksPerSeq: number;
}

/** gpt-oss-20b/120b shapes with dummy weights; `layers` / `vocab` shrink the model for quick or sanitizer runs. */
export async function loadReproModel(
  name: DummyModelName,
  opts: { layers?: number; vocab?: number; maxSeqs?: number; maxContext?: number; maxBatchTokens?: number } = {},
): Promise<ReproModel> {
  const json = publishedConfigJson(name);
  if (opts.layers) {
    json.num_hidden_layers = opts.layers;
    json.layer_types = Array.from({ length: opts.layers }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  }
  if (opts.vocab) json.vocab_size = opts.vocab;
  const config = configFromJson(json, `<repro ${name}>/config.json`);
  const maxSeqs = opts.maxSeqs ?? 256;
  const blocksPerSeq = Math.ceil((opts.maxContext ?? 4224) / BLOCK);
  const model = await loadAddon().loadModel(config, dummyTensors(config), {
    backend: 'cuda',
    dummy: true,
    seed: 1,
    blockSize: BLOCK,
    numBlocks: maxSeqs * blocksPerSeq,
    maxSeqs,
    maxBatchTokens: opts.maxBatchTokens ?? 4096,
  });
  return { model, config, blocksPerSeq };
}

/** One sequence's part of a step: its slot (which KV blocks it owns), its tokens and the position of the first. */
export interface SeqPart {
  slot: number;
  tokens: Int32Array;
  pos0: number;
}

/** One step over the given sequence parts; full logits for the parts listed in `full`. */
export function step(m: ReproModel, parts: SeqPart[], topK = 8, full: number[] = []): Promise<NativeStepOutput> {
  const T = parts.reduce((n, p) => n + p.tokens.length, 0);
  const mbps = Math.max(...parts.map((p) => Math.ceil((p.pos0 + p.tokens.length) / BLOCK)));
  const tokens = new Int32Array(T);
  const positions = new Int32Array(T);
  const blockTables = new Int32Array(parts.length * mbps);
  let t = 0;
  parts.forEach((p, s) => {
    tokens.set(p.tokens, t);
    for (let i = 0; i < p.tokens.length; i++) positions[t + i] = p.pos0 + i;
    t += p.tokens.length;
    for (let b = 0; b < mbps; b++) blockTables[s * mbps + b] = p.slot * m.blocksPerSeq + b;
  });
  return m.model.step({
    tokens,
    positions,
    seqLens: Int32Array.from(parts, (p) => p.tokens.length),
    blockTables,
    maxBlocksPerSeq: mbps,
    topK,
    fullLogits: Uint8Array.from(parts, (_, s) => (full.includes(s) ? 1 : 0)),
  });
}

/** Deterministic pseudo-random prompt tokens (a different stream per seed). */
export function prompt(length: number, seed: number, vocab: number): Int32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  return Int32Array.from({ length }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % vocab;
  });
}

/** Everything a step returns about row r (narrowed results), as bits. */
export function rowBits(o: NativeStepOutput, r: number): Uint32Array {
  const k = o.topK;
  const f = new Float32Array(3 + 2 * k);
  const u = new Uint32Array(f.buffer);
  u[0] = o.argmax[r] >>> 0;
  f[1] = o.maxLogit[r];
  f[2] = o.logsumexp[r];
  for (let i = 0; i < k; i++) {
    u[3 + i] = o.topIds[r * k + i] >>> 0;
    f[3 + k + i] = o.topLogits[r * k + i];
  }
  return u;
}

export interface Diff {
  /** Elements whose bits differ. */
  count: number;
  /** Largest |a - b| over them, and the largest |b| (for a relative figure). */
  maxAbs: number;
  scale: number;
}

export function diffBits(a: Float32Array, b: Float32Array): Diff {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let count = a.length === b.length ? 0 : Math.abs(a.length - b.length);
  let maxAbs = 0;
  let scale = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    scale = Math.max(scale, Math.abs(b[i]));
    if (ua[i] !== ub[i]) {
      count++;
      maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    }
  }
  return { count, maxAbs, scale };
}

/** Row r's full logits of one output (its index among the rows that asked for them). */
export function fullRow(o: NativeStepOutput, i: number): Float32Array {
  return o.logits.subarray(i * o.vocab, (i + 1) * o.vocab);
}

/** Differing narrowed results over all rows of two outputs of the same step shape. */
export function diffRows(a: NativeStepOutput, b: NativeStepOutput): number {
  let n = 0;
  for (let r = 0; r < a.numRows; r++) {
    const x = rowBits(a, r);
    const y = rowBits(b, r);
    for (let i = 0; i < x.length; i++) n += x[i] === y[i] ? 0 : 1;
  }
  return n;
}
