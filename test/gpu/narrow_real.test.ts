// The CUDA step's narrowed top-k (kernels/logits.cu: argmax, logsumexp, top-k for logprobs) against the same step's
// full fp32 row, on the tiny model's real logits (201,088-token vocabulary) rather than the op tests' random rows:
// for k = 1..20 and batches of 1..6 sequences, the ids must be the row's k largest (ties by lower id) and the
// values the row's. Skips without a CUDA device.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ensureTinyModel } from '../../src/model/tiny.js';
import { gpuCount } from '../helpers/gpu.js';

const gpus = gpuCount();
const V = 201088;

/** The k largest of row r (ties by lower id). */
function topOf(logits: Float32Array, r: number, k: number): number[] {
  const row = logits.subarray(r * V, (r + 1) * V);
  const ids = Array.from({ length: V }, (_, i) => i);
  ids.sort((a, b) => row[b] - row[a] || a - b);
  return ids.slice(0, k);
}

describe.skipIf(gpus === 0)('narrowed top-k on real logits (CUDA, tiny model)', () => {
  let model: LoadedModel;
  beforeAll(async () => {
    model = await loadModel({ model: await ensureTinyModel(), backend: 'cuda', maxSeqs: 8, blockSize: 16, numBlocks: 64 });
  }, 120_000);
  afterAll(async () => {
    await model?.close();
  });

  for (const S of [1, 3, 6])
    it(`${S} sequence(s), k = 1..20`, async () => {
      const blocks = 2;
      const L = 9;
      const tokens = Int32Array.from({ length: S * L }, (_, i) => (i * 7919 + 104729 * (i % S)) % V);
      const positions = Int32Array.from({ length: S * L }, (_, i) => i % L);
      const bad: string[] = [];
      for (const k of [1, 2, 3, 5, 8, 13, 20]) {
        const out = await model.step({
          tokens,
          positions,
          seqLens: Int32Array.from({ length: S }, () => L),
          blockTables: Int32Array.from({ length: S * blocks }, (_, i) => i),
          maxBlocksPerSeq: blocks,
          fullLogits: Uint8Array.from({ length: S }, () => 1),
          topK: k,
        });
        for (let r = 0; r < S; r++) {
          const want = topOf(out.logits, r, k);
          const got = Array.from(out.topIds.subarray(r * k, (r + 1) * k));
          if (got.join() !== want.join())
            bad.push(`k=${k} row ${r}: got ${got.map((t) => `${t}:${out.logits[r * V + t]?.toFixed(4)}`)} want ${want.map((t) => `${t}:${out.logits[r * V + t].toFixed(4)}`)}`);
        }
      }
      expect(bad).toEqual([]);
    }, 120_000);
});
