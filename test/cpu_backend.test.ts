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
import { TINY, writeTinyCheckpoint } from './tiny_checkpoint.js';

const BLOCK = 4;

/** Runs `tokens` as one sequence and returns its logits [T * V]; the KV lives in `blocks`. */
async function sequenceLogits(
  model: LoadedModel,
  tokens: number[],
  mode: 'prefill' | 'decode' | 'half',
  blocks: number[],
): Promise<Float32Array> {
  const V = model.config.vocabSize;
  const out = new Float32Array(tokens.length * V);
  const blockTables = Int32Array.from(blocks);
  const run = async (start: number, end: number) => {
    const r = await model.step({
      tokens: Int32Array.from(tokens.slice(start, end)),
      positions: Int32Array.from({ length: end - start }, (_, i) => start + i),
      seqLens: Int32Array.of(end - start),
      blockTables,
      maxBlocksPerSeq: blocks.length,
      allPositions: true,
      fullLogits: Uint8Array.of(1),
    });
    expect(r.numRows).toBe(end - start);
    out.set(r.logits, start * V);
  };
  const split = mode === 'prefill' ? tokens.length : mode === 'half' ? Math.floor(tokens.length / 2) : 0;
  if (split > 0) await run(0, split);
  for (let t = split; t < tokens.length; t++) await run(t, t + 1);
  return out;
}

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

const blocksFor = (tokens: number, first = 0) => Array.from({ length: Math.ceil(tokens / BLOCK) }, (_, i) => first + i);

// ---------------------------------------------------------------------------------------------------------------
const fixturesDir = join(import.meta.dirname, 'fixtures');
const cases = existsSync(fixturesDir)
  ? readdirSync(fixturesDir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && existsSync(join(fixturesDir, d.name, 'case.json')))
      .map((d) => d.name)
      .sort()
  : [];

describe('CPU backend vs transformers fp32 (oracle fixtures)', () => {
  it.skipIf(cases.length > 0)('has fixtures to check', () => {
    console.log(`no oracle fixtures under ${fixturesDir}: nothing compared`);
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
    await writeTinyCheckpoint(dir);
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

  it('refuses dummy weights too large for the CPU reference', async () => {
    await expect(loadModel({ dummy: 'gpt-oss-20b', backend: 'cpu' })).rejects.toThrow(/GiB in fp32/);
  });
});
