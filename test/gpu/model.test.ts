// The whole model on the GPU against transformers (the oracle fixtures in test/fixtures): for both expert formats
// (MXFP4 decoded in the matmul, and the bf16 fallback) and three schedules (one prefill, token by token, prefill
// then decode), the mean KL(fp32 oracle || ours) must be at most twice transformers-bf16's own and the top-1
// agreement with the oracle at most 0.05 below transformers-bf16's. Also: a mixed batch (one sequence
// prefilling while another decodes) gives each sequence what it gets alone, and the GPU's narrowed outputs
// (argmax, top-k, logsumexp) agree with its own full logits. Skips without a CUDA device.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/model/load.js';
import { readNpy } from '../../src/util/npy.js';
import { fixtureCases, fixturesDir, sequenceLogits } from '../helpers/fixtures.js';
import { gpuCount } from '../helpers/gpu.js';

const gpus = gpuCount();
const BLOCK = 16;

const cases = fixtureCases();

function logSoftmax(x: Float32Array, off: number, V: number): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < V; i++) m = Math.max(m, x[off + i]);
  let s = 0;
  for (let i = 0; i < V; i++) s += Math.exp(x[off + i] - m);
  const lse = m + Math.log(s);
  const r = new Float64Array(V);
  for (let i = 0; i < V; i++) r[i] = x[off + i] - lse;
  return r;
}
function argmax(x: Float32Array, off: number, V: number): number {
  let b = 0;
  for (let i = 1; i < V; i++) if (x[off + i] > x[off + b]) b = i;
  return b;
}
/** Mean over positions of KL(oracle || ours), and the fraction of positions whose argmax agrees. */
function compare(oracle: Float32Array, ours: Float32Array, T: number, V: number) {
  let kl = 0;
  let agree = 0;
  let finite = true;
  const perToken: number[] = [];
  for (let t = 0; t < T; t++) {
    const p = logSoftmax(oracle, t * V, V);
    const q = logSoftmax(ours, t * V, V);
    let k = 0;
    for (let i = 0; i < V; i++) k += Math.exp(p[i]) * (p[i] - q[i]);
    if (!Number.isFinite(k)) finite = false;
    kl += k;
    perToken.push(k);
    if (argmax(oracle, t * V, V) === argmax(ours, t * V, V)) agree++;
  }
  return { kl: kl / T, top1: agree / T, finite, perToken };
}

describe('CUDA backend vs transformers (oracle fixtures)', () => {
  it.skipIf(gpus > 0)('skips: no CUDA device', () => {
    console.log('no CUDA device: GPU model tests skipped');
  });
  for (const name of gpus > 0 ? cases : []) {
    for (const expertFormat of ['mxfp4', 'bf16'] as const) {
      it(`${name} (${expertFormat} experts): prefill, decode, prefill+decode within the transformers-bf16 bound`, async () => {
        const dir = join(fixturesDir, name);
        const tokens: number[] = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).tokens;
        const fp32 = await readNpy(join(dir, 'logits_fp32.npy'));
        const bf16 = await readNpy(join(dir, 'logits_bf16.npy'));
        const nblocks = Math.ceil(tokens.length / BLOCK);
        const model = await loadModel({ model: dir, backend: 'cuda', expertFormat, blockSize: BLOCK, numBlocks: nblocks + 2 });
        try {
          const V = model.config.vocabSize;
          const T = tokens.length;
          const ref = compare(fp32.data, bf16.data, T, V);
          const blocks = Array.from({ length: nblocks }, (_, i) => nblocks + 1 - i); // scattered, descending
          const lines: string[] = [];
          const results: ReturnType<typeof compare>[] = [];
          for (const mode of ['prefill', 'decode', 'half'] as const) {
            const ours = compare(fp32.data, await sequenceLogits(model, tokens, mode, blocks), T, V);
            const worst = ours.perToken.map((k, t) => [t, k] as const).sort((a, b) => b[1] - a[1]).slice(0, 3);
            lines.push(
              `${mode}: KL ${ours.kl.toExponential(3)} top1 ${ours.top1.toFixed(3)} ` +
                `(worst tokens ${worst.map(([t, k]) => `${t}:${k.toExponential(1)}`).join(' ')})`,
            );
            results.push(ours);
          }
          console.log(
            `oracle ${name} [${expertFormat}] T=${T} V=${V}: transformers-bf16 KL ${ref.kl.toExponential(3)} top1 ` +
              `${ref.top1.toFixed(3)} | ours ${lines.join(' | ')}`,
          );
          for (const ours of results) {
            expect(ours.finite).toBe(true);
            expect(ours.kl).toBeLessThanOrEqual(2 * ref.kl);
            expect(ours.top1).toBeGreaterThanOrEqual(ref.top1 - 0.05);
          }
        } finally {
          model.close();
        }
      }, 300_000);
    }
  }

  it.skipIf(gpus === 0 || cases.length === 0)('mixed batch: a prefilling and a decoding sequence get what each gets alone; narrowing agrees with the full logits', async () => {
    const dir = join(fixturesDir, cases[0]);
    const tokens: number[] = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')).tokens;
    const model = await loadModel({ model: dir, backend: 'cuda', blockSize: BLOCK, numBlocks: 64 });
    try {
      const V = model.config.vocabSize;
      const n = Math.min(40, tokens.length);
      const A = tokens.slice(0, n);
      const blocksA = [1, 2, 3];
      const blocksB = [10, 11, 12];
      // alone: A prefilled in one step; B prefilled to n-1 then decodes its last token
      const aloneA = await sequenceLogits(model, A, 'prefill', blocksA);
      const aloneB = await sequenceLogits(model, A, 'half', blocksB);
      // mixed: B's cache holds n-1 tokens (from above), A prefilled again in the same step as B's last token
      const r = await model.step({
        tokens: Int32Array.from([...A, A[n - 1]]),
        positions: Int32Array.from([...A.map((_, i) => i), n - 1]),
        seqLens: Int32Array.of(n, 1),
        blockTables: Int32Array.from([...blocksA, ...blocksB]),
        maxBlocksPerSeq: 3,
        fullLogits: Uint8Array.of(1, 1),
        topK: 5,
      });
      expect(r.numRows).toBe(2);
      const rowA = r.logits.subarray(0, V);
      const rowB = r.logits.subarray(V, 2 * V);
      const wantA = aloneA.subarray((n - 1) * V, n * V);
      const wantB = aloneB.subarray((n - 1) * V, n * V);
      let maxA = 0, dA = 0, maxB = 0, dB = 0;
      for (let i = 0; i < V; i++) {
        maxA = Math.max(maxA, Math.abs(wantA[i]));
        dA = Math.max(dA, Math.abs(rowA[i] - wantA[i]));
        maxB = Math.max(maxB, Math.abs(wantB[i]));
        dB = Math.max(dB, Math.abs(rowB[i] - wantB[i]));
      }
      console.log(`mixed batch: max|diff|/max|logit| A ${(dA / maxA).toExponential(2)} B ${(dB / maxB).toExponential(2)}`);
      expect(dA / maxA).toBeLessThanOrEqual(2e-2);
      expect(dB / maxB).toBeLessThanOrEqual(2e-2);
      // narrowed outputs vs the same row's full logits
      for (let row = 0; row < 2; row++) {
        const x = r.logits.subarray(row * V, (row + 1) * V);
        expect(r.argmax[row]).toBe(argmax(x, 0, V));
        const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => x[b] - x[a] || a - b);
        expect(Array.from(r.topIds.subarray(row * 5, row * 5 + 5))).toEqual(order.slice(0, 5));
        let m = -Infinity;
        for (const v of x) m = Math.max(m, v);
        let s = 0;
        for (const v of x) s += Math.exp(v - m);
        expect(Math.abs(r.logsumexp[row] - (m + Math.log(s)))).toBeLessThan(1e-4 * Math.max(1, Math.abs(m)));
      }
    } finally {
      model.close();
    }
  }, 300_000);

  it.skipIf(gpus === 0)('bad input becomes an Error, and the model still works after it', async () => {
    if (cases.length === 0) return;
    const dir = join(fixturesDir, cases[0]);
    const model = await loadModel({ model: dir, backend: 'cuda', blockSize: BLOCK, numBlocks: 4 });
    try {
      const good = { tokens: Int32Array.of(1, 2), positions: Int32Array.of(0, 1), seqLens: Int32Array.of(2), blockTables: Int32Array.of(0), maxBlocksPerSeq: 1 };
      await expect(model.step({ ...good, blockTables: Int32Array.of(99) })).rejects.toThrow(/block/);
      await expect(model.step({ ...good, tokens: Int32Array.of(1, 1 << 30) })).rejects.toThrow(/vocabulary/);
      const r = await model.step(good);
      expect(r.numRows).toBe(1);
      await expect(loadModel({ model: dir, backend: 'cuda', numBlocks: 1 << 30 })).rejects.toThrow(/out of GPU memory/);
    } finally {
      model.close();
    }
  }, 120_000);
});
