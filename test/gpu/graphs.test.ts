// CUDA graphs of padded decode steps (native/step_plan.h) against the eager, unpadded path (HARMONIUM_CUDA_GRAPHS=0):
//   raw steps   gpt-oss-20b shapes (4 layers, small vocabulary, dummy weights), decode batches 1..256 crossing the
//               bucket edges, every output row's narrowed results and two full rows: the same bits with
//               HARMONIUM_BATCH_INVARIANT=1; without it the difference is printed and the argmax must agree but at
//               near-ties (a bucket's attention split and expert groups may differ from the exact batch's);
//   the engine  the tiny model, 70 greedy requests finishing at different lengths (the batch shrinks through
//               every bucket from 72 down to 1, pipelined steps on): the same tokens, graphs on or off, with and
//               without batch invariance.
// Skips without a CUDA device.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../../src/engine/engine.js';
import { loadModel } from '../../src/model/load.js';
import { ensureTinyModel } from '../../src/model/tiny.js';
import { resolveSampling } from '../../src/sampling/params.js';
import { gpuCount } from '../helpers/gpu.js';
import { diffBits, diffRows, fullRow, loadReproModel, prompt, step, type ReproModel, type SeqPart } from '../helpers/repro.js';

const gpus = gpuCount();
const ctx = (s: number) => 16 + ((s * 37) % 200);
// Past 256 (maxSeqs 300: buckets up to 320, lm_head passes of 256 rows) a graph holds two logits chunks: those
// steps ask for no full rows (a full row's copy must run between chunks, which sends the step eager).
const BATCHES = [1, 5, 8, 9, 16, 17, 33, 64, 65, 100, 129, 200, 255, 256, 257, 300];

/** Loads with the given environment switches set during the load only (the backend reads them then). */
async function withEnv<T>(env: Record<string, string>, load: () => Promise<T>): Promise<T> {
  Object.assign(process.env, env);
  try {
    return await load();
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
  }
}

async function fill(m: ReproModel, S: number): Promise<void> {
  for (let s0 = 0; s0 < S; s0 += 16) {
    const parts: SeqPart[] = [];
    for (let s = s0; s < Math.min(S, s0 + 16); s++) parts.push({ slot: s, tokens: prompt(ctx(s), 1000 + s, m.config.vocabSize), pos0: 0 });
    await step(m, parts, 1);
  }
}

const decodeParts = (m: ReproModel, B: number): SeqPart[] =>
  Array.from({ length: B }, (_, s) => ({ slot: s, tokens: Int32Array.of((s * 131 + 7) % m.config.vocabSize), pos0: ctx(s) }));

for (const invariant of [true, false]) {
  const inv: Record<string, string> = invariant ? { HARMONIUM_BATCH_INVARIANT: '1' } : {};
  describe.skipIf(gpus === 0)(`decode graphs vs eager, raw steps (HARMONIUM_BATCH_INVARIANT=${invariant ? 1 : 0})`, () => {
    let on: ReproModel;
    let off: ReproModel;
    beforeAll(async () => {
      const opts = { layers: 4, vocab: 16384, maxSeqs: 300, maxContext: 512, maxBatchTokens: 4096 };
      on = await withEnv(inv, () => loadReproModel('gpt-oss-20b', opts));
      off = await withEnv({ ...inv, HARMONIUM_CUDA_GRAPHS: '0' }, () => loadReproModel('gpt-oss-20b', opts));
      await fill(on, 300);
      await fill(off, 300);
    }, 300_000);
    afterAll(async () => {
      await on?.model.close();
      await off?.model.close();
    });

    it(`batches ${BATCHES.join(', ')}: ${invariant ? 'the same bits' : 'the same argmax, difference printed'}`, async () => {
      for (const B of BATCHES) {
        const full = B <= 256 ? [0, B - 1] : [];
        const a = await step(on, decodeParts(on, B), 8, full);
        const b = await step(off, decodeParts(off, B), 8, full);
        expect(a.numRows).toBe(B);
        const rows = diffRows(a, b);
        const none = { count: 0, maxAbs: 0, scale: 0 };
        const d0 = full.length ? diffBits(fullRow(a, 0), fullRow(b, 0)) : none;
        const dl = full.length && B > 1 ? diffBits(fullRow(a, 1), fullRow(b, 1)) : none; // output row B - 1
        console.log(`graphs vs eager, invariance ${invariant ? 'on' : 'off'}, B=${B}: ${rows} rows differ; row 0 ${d0.count} logits (max ${d0.maxAbs.toExponential(2)}), row ${B - 1} ${dl.count}`);
        if (invariant) expect({ B, rows, row0: d0.count, last: dl.count }).toEqual({ B, rows: 0, row0: 0, last: 0 });
        else {
          // an argmax may differ only at a near-tie (the eager top two within 1e-4 of the largest logit)
          const k = b.topK;
          const flips = Array.from(a.argmax).filter((t, r) => t !== b.argmax[r] && b.topLogits[r * k] - b.topLogits[r * k + 1] > 1e-4 * Math.abs(b.maxLogit[r]));
          expect({ B, flips }).toEqual({ B, flips: [] });
        }
      }
    }, 300_000);
  });
}

for (const invariant of [false, true]) {
  const inv: Record<string, string> = invariant ? { HARMONIUM_BATCH_INVARIANT: '1' } : {};
  describe.skipIf(gpus === 0)(`decode graphs vs eager, the engine on the tiny model (HARMONIUM_BATCH_INVARIANT=${invariant ? 1 : 0})`, () => {
    it('70 greedy requests finishing at different lengths: the same tokens', async () => {
      const run = async (env: Record<string, string>) => {
        const dir = await ensureTinyModel();
        const model = await withEnv(env, () => loadModel({ model: dir, backend: 'cuda', maxSeqs: 70, maxBatchTokens: 1024, blockSize: 16, numBlocks: 1024 }));
        try {
          const engine = new Engine(model, {
            vocabSize: model.config.vocabSize,
            numBlocks: 1024,
            blockSize: 16,
            maxSeqs: 70,
            maxBatchTokens: 1024,
            contextLength: 256,
          });
          const sampling = resolveSampling({ temperature: 0 }, model.config.vocabSize, () => 0);
          const outs = await Promise.all(
            Array.from({ length: 70 }, (_, i) => {
              const tokens: number[] = [];
              return engine
                .generate({
                  prompt: Array.from({ length: 5 + ((i * 13) % 60) }, (_, j) => (j * 7919 + i * 104729 + 13) % model.config.vocabSize),
                  sampling,
                  maxTokens: 4 + ((i * 7) % 90),
                  stopTokenIds: new Set(),
                  onToken: (t) => void tokens.push(t.token),
                })
                .then(() => tokens);
            }),
          );
          return { outs, ahead: engine.stats.aheadSteps };
        } finally {
          await model.close();
        }
      };
      const a = await run(inv);
      const b = await run({ ...inv, HARMONIUM_CUDA_GRAPHS: '0' });
      expect(a.ahead).toBeGreaterThan(0);
      const differ = a.outs.filter((t, i) => t.join() !== b.outs[i].join()).length;
      expect(differ).toBe(0);
    }, 300_000);
  });
}
