// Reproducible numbers on the CUDA backend (docs/reproducibility.md), gpt-oss-20b shapes with dummy weights:
//   run to run   the same step twice gives the same bits (prefill 1..4096 tokens, decode at batch 1..256), always;
//   invariance   a sequence's logits alone vs beside up to 255 others, a prompt in one chunk vs several, and a long
//                mixed batch (a prompt's chunks beside 200 decoding sequences, each sequence against itself alone):
//                bit-identical with HARMONIUM_BATCH_INVARIANT=1; without it the measured difference is printed;
//   the CLI      `harmonium run --temperature 0` twice prints the same text.
// Skips without a CUDA device.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gpuCount } from '../helpers/gpu.js';
import { diffBits, diffRows, fullRow, loadReproModel, prompt, rowBits, step, type ReproModel, type SeqPart } from '../helpers/repro.js';

const gpus = gpuCount();
const ctx = (s: number) => 16 + ((s * 37) % 200); // sequence s's context before the decode checks

/** Fills slots 0..S-1 with ctx(s) tokens each, prefilled in steps of up to 4096 tokens. */
async function fillContexts(m: ReproModel, S: number): Promise<void> {
  const V = m.config.vocabSize;
  let batch: SeqPart[] = [];
  let n = 0;
  for (let s = 0; s < S; s++) {
    batch.push({ slot: s, tokens: prompt(ctx(s), 1000 + s, V), pos0: 0 });
    n += ctx(s);
    if (s === S - 1 || n + ctx(s + 1) > 4096) {
      await step(m, batch, 1);
      batch = [];
      n = 0;
    }
  }
}

const decodeParts = (m: ReproModel, B: number): SeqPart[] =>
  Array.from({ length: B }, (_, s) => ({ slot: s, tokens: Int32Array.of((s * 131 + 7) % m.config.vocabSize), pos0: ctx(s) }));

/** Slot `slot`'s prompt P prefilled in chunks ending at `cuts` (then at P's end), beside `others`: its last row. */
async function chunkedLast(m: ReproModel, slot: number, P: Int32Array, cuts: number[], others: SeqPart[] = []) {
  let at = 0;
  let last: Float32Array | undefined;
  for (const c of [...cuts, P.length]) {
    const o = await step(m, [{ slot, tokens: P.slice(at, c), pos0: at }, ...others], 8, [0]);
    last = fullRow(o, 0).slice();
    at = c;
  }
  return last!;
}

for (const invariant of [false, true]) {
  describe.skipIf(gpus === 0)(`CUDA reproducibility (HARMONIUM_BATCH_INVARIANT=${invariant ? 1 : 0})`, () => {
    let m: ReproModel;
    beforeAll(async () => {
      if (invariant) process.env.HARMONIUM_BATCH_INVARIANT = '1';
      try {
        m = await loadReproModel('gpt-oss-20b', { maxSeqs: 257 });
      } finally {
        delete process.env.HARMONIUM_BATCH_INVARIANT;
      }
      await fillContexts(m, 256);
    }, 300_000);
    afterAll(() => m?.model.close());

    it('the same prefill twice gives the same bits (1..4096 tokens)', async () => {
      for (const T of [1, 2, 9, 16, 64, 256, 1024, 4096]) {
        const p: SeqPart[] = [{ slot: 256, tokens: prompt(T, T, m.config.vocabSize), pos0: 0 }];
        const a = await step(m, p, 8, [0]);
        const b = await step(m, p, 8, [0]);
        expect({ T, ...diffBits(fullRow(a, 0), fullRow(b, 0)) }).toMatchObject({ T, count: 0 });
      }
    });

    it('the same decode step twice gives the same bits (batch 1..256)', async () => {
      for (const B of [1, 2, 8, 9, 16, 64, 256]) {
        const a = await step(m, decodeParts(m, B), 8, [0]);
        const b = await step(m, decodeParts(m, B), 8, [0]);
        expect({ B, rows: diffRows(a, b), row0: diffBits(fullRow(a, 0), fullRow(b, 0)).count }).toEqual({ B, rows: 0, row0: 0 });
      }
    });

    it(`a sequence alone vs beside others: ${invariant ? 'the same bits' : 'the measured difference'}`, async () => {
      const alone = fullRow(await step(m, decodeParts(m, 1), 8, [0]), 0).slice();
      const P = prompt(256, 77, m.config.vocabSize);
      const one = await chunkedLast(m, 256, P, []);
      const diffs: Record<string, ReturnType<typeof diffBits>> = {};
      for (const B of [2, 16, 64, 256]) diffs[`decode beside ${B - 1}`] = diffBits(fullRow(await step(m, decodeParts(m, B), 8, [0]), 0), alone);
      // a sequence in the middle of the batch: its rows sit elsewhere in the experts' groups than when alone
      const mid = decodeParts(m, 256)[100];
      const midAlone = fullRow(await step(m, [mid], 8, [0]), 0).slice();
      diffs['decode of sequence 100 of 256'] = diffBits(fullRow(await step(m, decodeParts(m, 256), 8, [100]), 0), midAlone);
      for (const cuts of [[128], [64, 128, 192], [16], [200, 255]]) diffs[`chunks ${cuts.join(',')}`] = diffBits(await chunkedLast(m, 256, P, cuts), one);
      diffs['prompt beside a prefill'] = diffBits(await chunkedLast(m, 256, P, [], [{ slot: 0, tokens: prompt(100, 5, m.config.vocabSize), pos0: ctx(0) + 1 }]), one);
      diffs['prompt beside 63 decodes'] = diffBits(await chunkedLast(m, 256, P, [], decodeParts(m, 63)), one);
      // the last prompt token decoded (a 1-token step) vs prefilled with the rest
      diffs['last token decoded'] = diffBits(await chunkedLast(m, 256, P, [255]), one);
      for (const [k, d] of Object.entries(diffs)) {
        console.log(`invariance ${invariant ? 'on' : 'off'}: ${k}: ${d.count} logits differ, max |diff| ${d.maxAbs.toExponential(2)} of max |logit| ${d.scale.toFixed(2)}`);
      }
      if (invariant) for (const [k, d] of Object.entries(diffs)) expect({ k, count: d.count }).toEqual({ k, count: 0 });
    });

    it(`a long mixed batch, prompt chunks beside 200 decodes, each vs alone: ${invariant ? 'the same bits' : 'the measured difference'}`, async () => {
      const dec = decodeParts(m, 200);
      const alone: Float32Array[] = [];
      for (const d of dec) alone.push(new Float32Array(rowBits(await step(m, [d]), 0).buffer));
      const P = prompt(512, 91, m.config.vocabSize);
      const one = await chunkedLast(m, 256, P, []);
      // The prompt in chunks of 128, every chunk's step beside the same 200 decode rows (rows 1..200 of the step).
      let at = 0;
      let last: Float32Array | undefined;
      const differ = new Set<number>();
      let maxAbs = 0;
      for (const c of [128, 256, 384, P.length]) {
        const o = await step(m, [{ slot: 256, tokens: P.slice(at, c), pos0: at }, ...dec], 8, [0]);
        last = fullRow(o, 0).slice();
        dec.forEach((_, s) => {
          const d = diffBits(new Float32Array(rowBits(o, 1 + s).buffer), alone[s]);
          if (d.count) differ.add(s);
          if (Number.isFinite(d.maxAbs)) maxAbs = Math.max(maxAbs, d.maxAbs);
        });
        at = c;
      }
      const p = diffBits(last!, one);
      console.log(
        `invariance ${invariant ? 'on' : 'off'}: mixed batch: ${differ.size} of ${dec.length} decoding sequences differ from alone ` +
          `(narrowed results, max |diff| ${maxAbs.toExponential(2)}); the prompt: ${p.count} logits differ, max |diff| ` +
          `${p.maxAbs.toExponential(2)} of max |logit| ${p.scale.toFixed(2)}`,
      );
      if (invariant) expect({ prompt: p.count, decodes: differ.size }).toEqual({ prompt: 0, decodes: 0 });
    });
  });
}

describe.skipIf(gpus === 0)('harmonium run on the GPU', () => {
  it('--temperature 0 twice prints the same text', () => {
    const bin = join(import.meta.dirname, '../../bin/harmonium.js');
    const run = () =>
      execFileSync(process.execPath, [bin, 'run', '--backend', 'cuda', '--dummy-weights', 'gpt-oss-20b', '--temperature', '0', '--max-tokens', '48', 'Tell me about reproducible numbers.'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      });
    const a = run();
    expect(a.length).toBeGreaterThan(0);
    expect(run()).toBe(a);
  }, 300_000);
});
