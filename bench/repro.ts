// Reproducibility probe (issue 13) on the CUDA backend, dummy weights: for each check one line of JSON.
//   prefill_repeat  the same prompt prefilled twice into the same KV blocks: differing logits of its last row
//   decode_repeat   a decode step at batch B repeated on the same KV: differing narrowed results over all rows
//   decode_alone_vs sequence 0's logits decoded alone vs beside B-1 others (batch invariance)
//   chunked_vs      a prompt prefilled in one chunk vs in several, and beside other sequences (batch invariance)
//   time            decode step at batch 1/64/256 and a 2048-token prefill, median ms
//
//   node node_modules/vite-node/vite-node.mjs bench/repro.ts [gpt-oss-20b|gpt-oss-120b] [--layers N] [--vocab V]
//        [--quick]   (--quick: small sizes only, for compute-sanitizer runs)
import type { DummyModelName } from '../src/model/dummy.js';
import { diffBits, diffRows, fullRow, loadReproModel, prompt, rowBits, step, type SeqPart } from '../test/helpers/repro.js';

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : undefined;
};
const name = (args.find((a) => a.startsWith('gpt-oss-')) ?? 'gpt-oss-20b') as DummyModelName;
const quick = args.includes('--quick');
const out = (o: Record<string, unknown>) => console.log(JSON.stringify(o));

const m = await loadReproModel(name, { layers: opt('--layers'), vocab: opt('--vocab'), maxSeqs: quick ? 8 : 256 });
const V = m.config.vocabSize;
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
try {
  // Prefill repeat.
  for (const T of quick ? [1, 9, 64] : [1, 2, 8, 9, 16, 64, 256, 1024, 4096]) {
    const p: SeqPart[] = [{ slot: 0, tokens: prompt(T, T, V), pos0: 0 }];
    const a = await step(m, p, 8, [0]);
    const b = await step(m, p, 8, [0]);
    out({ check: 'prefill_repeat', T, ...diffBits(fullRow(a, 0), fullRow(b, 0)) });
  }

  // Contexts for the decode checks: sequence s holds ctx(s) tokens, prefilled in steps of up to 4096 tokens.
  const S = quick ? 8 : 256;
  const ctx = (s: number) => 16 + ((s * 37) % 200);
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
  const decodeParts = (B: number): SeqPart[] =>
    Array.from({ length: B }, (_, s) => ({ slot: s, tokens: Int32Array.of((s * 131 + 7) % V), pos0: ctx(s) }));
  const alone = await step(m, decodeParts(1), 8, [0]);
  for (const B of quick ? [1, 8] : [1, 2, 8, 16, 64, 256]) {
    const a = await step(m, decodeParts(B), 8, [0]);
    const b = await step(m, decodeParts(B), 8, [0]);
    out({ check: 'decode_repeat', B, rows_differing: diffRows(a, b), row0: diffBits(fullRow(a, 0), fullRow(b, 0)) });
    const r0 = rowBits(a, 0);
    const ra = rowBits(alone, 0);
    out({
      check: 'decode_alone_vs',
      B,
      narrowed_differing: r0.reduce((k, v, i) => k + (v === ra[i] ? 0 : 1), 0),
      ...diffBits(fullRow(a, 0), fullRow(alone, 0)),
    });
  }

  // Chunked prefill: the last row of a prompt in slot S (fresh blocks) prefilled in one chunk, in several, and
  // beside other sequences' rows.
  const L = quick ? 40 : 256;
  const P = prompt(L, 77, V);
  const slot = S - 1;
  const chunked = async (cuts: number[], others: SeqPart[] = []) => {
    let o = null;
    let at = 0;
    for (const c of [...cuts, L]) {
      const part: SeqPart = { slot, tokens: P.slice(at, c), pos0: at };
      o = await step(m, [part, ...others], 8, [0]);
      at = c;
    }
    return fullRow(o!, 0).slice();
  };
  const one = await chunked([]);
  for (const cuts of quick ? [[16]] : [[128], [64, 128, 192], [16], [200, 255]]) {
    out({ check: 'chunked_vs', cuts, ...diffBits(await chunked(cuts), one) });
  }
  const beside: SeqPart[] = [{ slot: 0, tokens: prompt(quick ? 20 : 100, 5, V), pos0: ctx(0) + 1 }];
  out({ check: 'chunked_vs', beside: 'a prefill', ...diffBits(await chunked([], beside), one) });
  const dec = decodeParts(quick ? 4 : 63).slice(0, quick ? 4 : 63);
  out({ check: 'chunked_vs', beside: `${dec.length} decode rows`, ...diffBits(await chunked([], dec), one) });

  if (!quick) {
    for (const B of [1, 64, 256]) {
      const ms: number[] = [];
      for (let i = 0; i < 12; i++) {
        const t0 = performance.now();
        await step(m, decodeParts(B), 1);
        ms.push(performance.now() - t0);
      }
      out({ check: 'time', what: `decode B=${B}`, ms: median(ms.slice(2)) });
    }
    const ms: number[] = [];
    for (let i = 0; i < 4; i++) {
      const t0 = performance.now();
      await step(m, [{ slot: 0, tokens: prompt(2048, 9, V), pos0: 0 }], 1);
      ms.push(performance.now() - t0);
    }
    out({ check: 'time', what: 'prefill T=2048', ms: median(ms.slice(1)) });
  }
} finally {
  await m.model.close();
}
