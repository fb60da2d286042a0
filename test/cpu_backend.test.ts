// The CPU reference backend end to end: against transformers' fp32 logits on every oracle fixture in
// test/fixtures/ (one prefill, token by token, and prefill then decode), and on a small seeded checkpoint for the
// cache's own promises (paging, batching, bad batches leave the model intact).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { readNpy } from '../src/util/npy.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { configFromJson } from '../src/model/config.js';
import { loadAddon } from '../src/native.js';
import { readTensorBytes } from '../src/model/safetensors.js';
import { writeRandomCheckpoint } from '../src/model/tiny.js';
import type { TensorToWrite } from '../src/model/safetensors_write.js';
import { fixtureCases, fixturesDir, sequenceLogits } from './helpers/fixtures.js';

// A small gpt-oss: 3 layers (sliding, full, sliding) with a window of 6, GQA 2:1, 6 experts top 2, YaRN.
const TINY = { layers: 3, hidden: 64, intermediate: 32, experts: 6, topk: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 200 };
const TINY_JSON = {
  model_type: 'gpt_oss',
  hidden_size: TINY.hidden,
  intermediate_size: TINY.intermediate,
  num_hidden_layers: TINY.layers,
  num_local_experts: TINY.experts,
  num_experts_per_tok: TINY.topk,
  num_attention_heads: TINY.heads,
  num_key_value_heads: TINY.kvHeads,
  head_dim: TINY.headDim,
  vocab_size: TINY.vocab,
  sliding_window: 6,
  layer_types: ['sliding_attention', 'full_attention', 'sliding_attention'],
  max_position_embeddings: 2048,
  rope_theta: 150000,
  rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 64, truncate: false },
  rms_norm_eps: 1e-5,
  swiglu_limit: 7.0,
  quantization_config: { quant_method: 'mxfp4' },
};
const SEED = 11;

const BLOCK = 4;


/** max |a - ref| / max |ref| */
function diffRatio(a: Float32Array, ref: Float32Array): number {
  expect(a.length).toBe(ref.length);
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    d = Math.max(d, Math.abs(a[i] - ref[i]));
    m = Math.max(m, Math.abs(ref[i]));
  }
  return d / m;
}

const FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** MXFP4 [E, rows, cols/32, 16] + scales -> bf16 bytes [E, cols, rows] (transformers' unquantised layout). */
function mxfp4ToBf16Transposed(blocks: Uint8Array, scales: Uint8Array, E: number, rows: number, cols: number): Uint8Array {
  const out = new Uint16Array(E * rows * cols);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let e = 0; e < E; e++)
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const g = (e * rows + r) * (cols / 32) + Math.floor(c / 32);
        const byte = blocks[g * 16 + Math.floor((c % 32) / 2)];
        f[0] = FP4[c % 2 === 0 ? byte & 15 : byte >> 4] * 2 ** (scales[g] - 127);
        out[(e * cols + c) * rows + r] = u[0] >>> 16; // exact: FP4 times a power of two fits bf16
      }
  return new Uint8Array(out.buffer);
}

const blocksFor = (tokens: number, first = 0) => Array.from({ length: Math.ceil(tokens / BLOCK) }, (_, i) => first + i);

// ---------------------------------------------------------------------------------------------------------------
const fixtureDirs = existsSync(fixturesDir)
  ? readdirSync(fixturesDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort()
  : [];
const cases = fixtureCases();

describe('CPU backend vs transformers fp32 (oracle fixtures)', () => {
  it('has oracle fixtures to check', () => {
    const other = fixtureDirs.filter((name) => !cases.includes(name));
    if (other.length > 0) console.log(`test/fixtures: not oracle cases (no case.json): ${other.join(', ')}`);
    expect(cases.length).toBeGreaterThan(0);
  });
  for (const name of cases) {
    it(`${name}: prefill, decode, and prefill-then-decode within 1e-3 of the largest logit`, async () => {
      const dir = join(fixturesDir, name);
      const tokens: number[] = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).tokens;
      const expected = await readNpy(join(dir, 'logits_fp32.npy'));
      const t0 = performance.now();
      const model = await loadModel({ model: dir, backend: 'cpu', blockSize: 16, numBlocks: Math.ceil(tokens.length / 16) });
      const tLoad = performance.now() - t0;
      try {
        expect(expected.shape).toEqual([tokens.length, model.config.vocabSize]);
        const blocks = Array.from({ length: Math.ceil(tokens.length / 16) }, (_, i) => i);
        const ratios: Record<string, number> = {};
        const ms: Record<string, number> = {};
        for (const mode of ['prefill', 'decode', 'half'] as const) {
          const t = performance.now();
          const logits = await sequenceLogits(model, tokens, mode, blocks);
          ms[mode] = performance.now() - t;
          ratios[mode] = diffRatio(logits, expected.data);
        }
        console.log(
          `fixture ${name}: T=${tokens.length} V=${model.config.vocabSize} layers=${model.config.numLayers} ` +
            `max|diff|/max|logit|: prefill ${ratios.prefill.toExponential(2)}, decode ${ratios.decode.toExponential(2)}, ` +
            `prefill+decode ${ratios.half.toExponential(2)}; ms: load ${tLoad.toFixed(0)}, prefill ${ms.prefill.toFixed(0)}, ` +
            `decode ${ms.decode.toFixed(0)}, prefill+decode ${ms.half.toFixed(0)}`,
        );
        for (const r of Object.values(ratios)) expect(r).toBeLessThanOrEqual(1e-3);
      } finally {
        model.close();
      }
    }, 600_000);
  }
});

// ---------------------------------------------------------------------------------------------------------------
describe('CPU backend on a small seeded checkpoint', () => {
  let dir: string;
  let model: LoadedModel;
  const progress: Array<[number, number]> = [];
  // Longer than the window (6) and several blocks (4 tokens each).
  const tokens = Array.from({ length: 23 }, (_, i) => (i * 37 + 11) % TINY.vocab);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hm-cpu-'));
    await writeRandomCheckpoint(dir, TINY_JSON, SEED);
    model = await loadModel({ model: dir, backend: 'cpu', blockSize: BLOCK, numBlocks: 64, onProgress: (d, t) => progress.push([d, t]) });
  });
  afterAll(async () => {
    model?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('reports load progress and its sizes', () => {
    expect(progress.length).toBeGreaterThan(0);
    const [done, total] = progress[progress.length - 1];
    expect(done).toBe(total);
    const info = model.info();
    expect(info.backend).toBe('cpu');
    expect(info.numBlocks).toBe(64);
    expect(info.blockSize).toBe(BLOCK);
    expect(info.weightBytes).toBeGreaterThanOrEqual(total); // sinks are held in fp32
    expect(info.kvBytes).toBe(2 * TINY.layers * 64 * BLOCK * TINY.kvHeads * TINY.headDim * 4);
  });

  it('gives the same logits as one prefill, token by token, and prefill then decode', async () => {
    const blocks = blocksFor(tokens.length);
    const prefill = await sequenceLogits(model, tokens, 'prefill', blocks);
    const decode = await sequenceLogits(model, tokens, 'decode', blocks);
    const half = await sequenceLogits(model, tokens, 'half', blocks);
    console.log(`tiny checkpoint: decode vs prefill ${diffRatio(decode, prefill)}, half vs prefill ${diffRatio(half, prefill)}`);
    expect(diffRatio(decode, prefill)).toBeLessThanOrEqual(1e-6);
    expect(diffRatio(half, prefill)).toBeLessThanOrEqual(1e-6);
  });

  it('does not depend on which blocks hold the KV', async () => {
    const n = Math.ceil(tokens.length / BLOCK);
    const a = await sequenceLogits(model, tokens, 'prefill', blocksFor(tokens.length));
    const scattered = Array.from({ length: n }, (_, i) => 60 - 3 * i); // descending, non-adjacent
    const b = await sequenceLogits(model, tokens, 'half', scattered);
    expect(diffRatio(b, a)).toBeLessThanOrEqual(1e-6);
  });

  it('gives two sequences in one step the logits each gets alone', async () => {
    const A = tokens.slice(0, 13);
    const B = [5, 9, 150, 3, 3, 77, 101, 8, 42];
    const aBlocks = blocksFor(A.length, 0);
    const bBlocks = blocksFor(B.length, 20);
    const aloneA = await sequenceLogits(model, A, 'prefill', aBlocks);
    const aloneB = await sequenceLogits(model, B, 'prefill', bBlocks);
    const V = TINY.vocab;
    const maxBlocks = Math.max(aBlocks.length, bBlocks.length);
    const table = new Int32Array(2 * maxBlocks);
    table.set(aBlocks, 0);
    table.set(bBlocks, maxBlocks);
    // Step 1: both prefill all but their last token together. Step 2: both decode their last token together.
    const step = (ta: number[], tb: number[], pa: number, pb: number) =>
      model.step({
        tokens: Int32Array.from([...ta, ...tb]),
        positions: Int32Array.from([...ta.map((_, i) => pa + i), ...tb.map((_, i) => pb + i)]),
        seqLens: Int32Array.of(ta.length, tb.length),
        blockTables: table,
        maxBlocksPerSeq: maxBlocks,
        allPositions: true,
        fullLogits: Uint8Array.of(1, 1),
        topK: 3,
      });
    const r1 = await step(A.slice(0, -1), B.slice(0, -1), 0, 0);
    const r2 = await step(A.slice(-1), B.slice(-1), A.length - 1, B.length - 1);
    const batchA = new Float32Array(A.length * V);
    const batchB = new Float32Array(B.length * V);
    batchA.set(r1.logits.subarray(0, (A.length - 1) * V), 0);
    batchB.set(r1.logits.subarray((A.length - 1) * V), 0);
    batchA.set(r2.logits.subarray(0, V), (A.length - 1) * V);
    batchB.set(r2.logits.subarray(V), (B.length - 1) * V);
    expect(diffRatio(batchA, aloneA)).toBeLessThanOrEqual(1e-6);
    expect(diffRatio(batchB, aloneB)).toBeLessThanOrEqual(1e-6);
    // The narrowed outputs agree with the full rows.
    for (let r = 0; r < r2.numRows; r++) {
      const row = r2.logits.subarray(r * V, (r + 1) * V);
      let best = 0;
      for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
      expect(r2.argmax[r]).toBe(best);
      expect(r2.topIds[r * 3]).toBe(best);
      expect(r2.maxLogit[r]).toBe(row[best]);
      let s = 0;
      for (let i = 0; i < V; i++) s += Math.exp(row[i] - row[best]);
      expect(r2.logsumexp[r]).toBeCloseTo(row[best] + Math.log(s), 4);
    }
  });

  it('returns one row per sequence without allPositions, and full logits only where asked', async () => {
    const r = await model.step({
      tokens: Int32Array.of(1, 2, 3, 4, 5),
      positions: Int32Array.of(0, 1, 2, 0, 1),
      seqLens: Int32Array.of(3, 2),
      blockTables: Int32Array.of(30, 31),
      maxBlocksPerSeq: 1,
      fullLogits: Uint8Array.of(0, 1),
      topK: 5,
    });
    expect(r.numRows).toBe(2);
    expect(Array.from(r.logitsRows)).toEqual([1]);
    expect(r.logits.length).toBe(TINY.vocab);
    expect(r.topIds.length).toBe(10);
  });

  it('rejects bad batches with a clear message before touching the cache', async () => {
    const A = tokens.slice(0, 10);
    const blocks = blocksFor(A.length + 1, 40);
    const before = await sequenceLogits(model, A, 'prefill', blocks);
    const bad = (over: Partial<Parameters<LoadedModel['step']>[0]>) =>
      model.step({
        tokens: Int32Array.of(A[A.length - 2], A[A.length - 1]),
        positions: Int32Array.of(A.length - 2, A.length - 1),
        seqLens: Int32Array.of(2),
        blockTables: Int32Array.from(blocks),
        maxBlocksPerSeq: blocks.length,
        ...over,
      });
    await expect(bad({ tokens: Int32Array.of(A[A.length - 2], TINY.vocab) })).rejects.toThrow(
      /sequence 0 token 1: id 200 is outside the vocabulary 0\.\.199/,
    );
    await expect(bad({ blockTables: Int32Array.from([...blocks.slice(0, -2), 64, blocks[blocks.length - 1]]) })).rejects.toThrow(
      /block id 64 is outside the pool 0\.\.63/,
    );
    await expect(bad({ positions: Int32Array.of(A.length - 2, A.length) })).rejects.toThrow(/consecutive/);
    await expect(bad({ maxBlocksPerSeq: 1, blockTables: Int32Array.of(blocks[0]) })).rejects.toThrow(/block table/);
    await expect(bad({ positions: Int32Array.of(2047, 2048) })).rejects.toThrow(/position 2048 is outside/);
    // The cache still holds what the good prefill wrote: decoding one more token matches a fresh prefill.
    const next = [...A, 17];
    const r = await model.step({
      tokens: Int32Array.of(17),
      positions: Int32Array.of(A.length),
      seqLens: Int32Array.of(1),
      blockTables: Int32Array.from(blocks),
      maxBlocksPerSeq: blocks.length,
      fullLogits: Uint8Array.of(1),
    });
    const fresh = await sequenceLogits(model, next, 'prefill', blocksFor(next.length, 50));
    expect(diffRatio(r.logits, fresh.subarray(A.length * TINY.vocab))).toBeLessThanOrEqual(1e-6);
    expect(diffRatio(before, fresh.subarray(0, A.length * TINY.vocab))).toBeLessThanOrEqual(1e-6);
  });

  it('runs an unquantised checkpoint (bf16 experts, [E, in, out]) like the same weights in MXFP4', async () => {
    const bf16Dir = join(dir, 'bf16');
    const { quantization_config: _, ...bf16Json } = TINY_JSON;
    // Same seed, so every non-expert tensor is identical; the experts are the MXFP4 ones decoded and transposed.
    const { tensors } = await openCheckpoint(dir);
    const bytes = async (name: string) => new Uint8Array(await readTensorBytes(tensors.find((t) => t.name === name)!));
    const decoded = new Map<string, Uint8Array>();
    for (let l = 0; l < TINY.layers; l++) {
      const p = `model.layers.${l}.mlp.experts.`;
      decoded.set(`${p}gate_up_proj`, mxfp4ToBf16Transposed(await bytes(`${p}gate_up_proj_blocks`), await bytes(`${p}gate_up_proj_scales`), TINY.experts, 2 * TINY.intermediate, TINY.hidden));
      decoded.set(`${p}down_proj`, mxfp4ToBf16Transposed(await bytes(`${p}down_proj_blocks`), await bytes(`${p}down_proj_scales`), TINY.experts, TINY.hidden, TINY.intermediate));
    }
    await writeRandomCheckpoint(bf16Dir, bf16Json, SEED, {
      edit: (ts: TensorToWrite[]) => ts.map((t) => (decoded.has(t.name) ? { ...t, data: decoded.get(t.name)! } : t)),
    });
    const bf16Model = await loadModel({ model: bf16Dir, backend: 'cpu', blockSize: BLOCK, numBlocks: 16 });
    try {
      expect(bf16Model.info().expertFormat).toBe('bf16');
      const blocks = blocksFor(tokens.length);
      const want = await sequenceLogits(model, tokens, 'prefill', blocks);
      const got = await sequenceLogits(bf16Model, tokens, 'half', blocks);
      expect(diffRatio(got, want)).toBeLessThanOrEqual(1e-5);
    } finally {
      bf16Model.close();
    }
  });

  it('fills dummy weights from the seed: same seed, same logits; finite values', async () => {
    const config = configFromJson({ ...TINY_JSON }, '<test>/config.json');
    const addon = loadAddon();
    const logitsOf = async (seed: number) => {
      const m = await addon.loadModel(config, [], { backend: 'cpu', dummy: true, seed, numBlocks: 8, blockSize: BLOCK });
      try {
        const r = await m.step({
          tokens: Int32Array.of(3, 1, 4, 1, 5),
          positions: Int32Array.of(0, 1, 2, 3, 4),
          seqLens: Int32Array.of(5),
          blockTables: Int32Array.of(0, 1),
          maxBlocksPerSeq: 2,
          fullLogits: Uint8Array.of(1),
        });
        return r.logits;
      } finally {
        m.close();
      }
    };
    const a = await logitsOf(1);
    const b = await logitsOf(1);
    const c = await logitsOf(2);
    expect(a.every(Number.isFinite)).toBe(true);
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(diffRatio(c, a)).toBeGreaterThan(1e-2);
  });

  it('window KV: sliding layers on a ring of window blocks give the logits of one table, and steps are checked', async () => {
    const win = await loadModel({ model: dir, backend: 'cpu', blockSize: BLOCK, numBlocks: 64, windowKv: true });
    try {
      const info = win.info();
      expect(info.limits.kvWindow).toBe(6);
      expect(model.info().limits.kvWindow).toBe(0);
      // 2 sliding layers and 1 full: a block holds two layer slots.
      expect(info.kvBytes).toBe(2 * 2 * 64 * BLOCK * TINY.kvHeads * TINY.headDim * 4);
      const want = await sequenceLogits(model, tokens, 'prefill', blocksFor(tokens.length));
      const V = TINY.vocab;
      const n = Math.ceil(tokens.length / BLOCK);
      const full = Int32Array.from({ length: n }, (_, i) => i);
      // Each step at position p reads positions p - 5 .. p, in at most 3 blocks, so block j lives on page
      // 40 + j % 3: a 10-token prefill fills pages 40..42, and decode reuses each page once the window has left
      // it. Entries the window has left are -1: never read, never checked.
      const got = new Float32Array(tokens.length * V);
      const prefill = 10;
      const w = new Int32Array(n).fill(-1);
      w.set([40, 41, 42]);
      let r = await win.step({
        tokens: Int32Array.from(tokens.slice(0, prefill)),
        positions: Int32Array.from({ length: prefill }, (_, i) => i),
        seqLens: Int32Array.of(prefill),
        blockTables: full,
        windowTables: w,
        maxBlocksPerSeq: n,
        allPositions: true,
        fullLogits: Uint8Array.of(1),
      });
      got.set(r.logits, 0);
      for (let p = prefill; p < tokens.length; p++) {
        const row = new Int32Array(n).fill(-1);
        for (let j = Math.floor(Math.max(0, p - 5) / BLOCK); j <= Math.floor(p / BLOCK); j++) row[j] = 40 + (j % 3);
        r = await win.step({
          tokens: Int32Array.of(tokens[p]),
          positions: Int32Array.of(p),
          seqLens: Int32Array.of(1),
          blockTables: full,
          windowTables: row,
          maxBlocksPerSeq: n,
          allPositions: true,
          fullLogits: Uint8Array.of(1),
        });
        got.set(r.logits, p * V);
      }
      expect(diffRatio(got, want)).toBeLessThanOrEqual(1e-6);

      const step = { tokens: Int32Array.of(1), positions: Int32Array.of(20), seqLens: Int32Array.of(1), blockTables: full, maxBlocksPerSeq: n };
      await expect(win.step(step)).rejects.toThrow(/windowTables missing/);
      await expect(model.step({ ...step, windowTables: full })).rejects.toThrow(/no sliding-window layers/);
      // Position 20 reads 15..20: entries 3..5; entry 3 outside the pool is refused, entries 0..2 are not looked at.
      const bad = Int32Array.of(-1, -1, 99, 64, 5, 6);
      await expect(win.step({ ...step, windowTables: bad })).rejects.toThrow(/block id 64 is outside the pool 0\.\.63 \(windowTables entry 3\)/);
      await expect(win.step({ ...step, windowTables: Int32Array.of(1, 2) })).rejects.toThrow(/windowTables must hold/);
    } finally {
      await win.close();
    }
  });

  it('refuses dummy weights too large for the CPU reference', async () => {
    await expect(loadModel({ dummy: 'gpt-oss-20b', backend: 'cpu' })).rejects.toThrow(/GiB in fp32/);
  });
});
