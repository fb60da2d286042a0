// Sampling at decode speed: decode tok/s through the library's own engine path (Engine over loadModel with dummy
// weights on CUDA) for greedy and each sampling combination of issue 9, at several numbers of sequences in flight,
// and how many rows fell back to full logits on the host (the engine's stats.fullLogitRows).
//
//   node node_modules/vite-node/vite-node.mjs bench/sampling.ts [--quick] [--models 20b,120b] [--seqs 1,8,64,256]
//        [--prompt 128] [--decode 128] [--runs 1] [--json FILE]
// --quick: --seqs 1,64 --decode 64 (the "Done when" cells; about a minute of GPU time per model).
// --models tiny --backend cpu: the embedded tiny model on the CPU backend, a smoke run of this script without a GPU.
// Env: BENCH_MODELS, BENCH_SEQS, BENCH_PROMPT, BENCH_DECODE, BENCH_RUNS (flags win); HARMONIUM_BUILD_DIR.
// Decode tok/s counts the tokens produced after every request has its first token, over the time they took.
import { writeFileSync } from 'node:fs';
import { Engine } from '../src/engine/engine.js';
import type { DummyModelName } from '../src/model/dummy.js';
import { loadModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';

const COMBOS: { name: string; p: SamplingParams }[] = [
  { name: 'greedy', p: { temperature: 0 } },
  { name: 't=1', p: { temperature: 1 } },
  { name: 't=1 top_p=0.9', p: { temperature: 1, top_p: 0.9 } },
  { name: 't=0.7 top_k=50 min_p=0.05', p: { temperature: 0.7, top_k: 50, min_p: 0.05 } },
  { name: 't=1 pres=0.5 freq=0.5 rep=1.1', p: { temperature: 1, presence_penalty: 0.5, frequency_penalty: 0.5, repetition_penalty: 1.1 } },
  { name: 't=1 logprobs top_logprobs=5', p: { temperature: 1, logprobs: true, top_logprobs: 5 } },
];

const argv = process.argv.slice(2);
const flag = (name: string, env: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : (process.env[env] ?? def);
};
const quick = argv.includes('--quick');
const models = flag('models', 'BENCH_MODELS', '20b,120b')
  .split(',')
  .map((m) => (m === 'tiny' ? m : (`gpt-oss-${m.replace(/^gpt-oss-/, '')}` as DummyModelName)));
const backend = flag('backend', 'BENCH_BACKEND', 'cuda') as 'cpu' | 'cuda';
const seqsList = flag('seqs', 'BENCH_SEQS', quick ? '1,64' : '1,8,64,256').split(',').map(Number);
const PROMPT = Number(flag('prompt', 'BENCH_PROMPT', '128'));
const DECODE = Number(flag('decode', 'BENCH_DECODE', quick ? '64' : '128'));
const RUNS = Number(flag('runs', 'BENCH_RUNS', '1'));
const jsonFile = argv.includes('--json') ? argv[argv.indexOf('--json') + 1] : undefined;

interface Cell { model: string; seqs: number; combo: string; tokPerS: number; ofGreedy: number; fallbacks: number; deviceRows: number }

async function run(engine: Engine, vocab: number, seqs: number, p: SamplingParams, seed: number): Promise<number> {
  const stamps: number[] = [];
  const firsts: number[] = [];
  await Promise.all(
    Array.from({ length: seqs }, (_, s) => {
      const prompt = Array.from({ length: PROMPT }, (_, i) => (i * 7919 + s * 104729 + 13) % vocab);
      let first = true;
      return engine.generate({
        prompt,
        sampling: resolveSampling({ ...p, seed: seed + s }, vocab, () => 0),
        maxTokens: DECODE,
        stopTokenIds: new Set(),
        onToken: () => {
          const t = performance.now();
          if (first) firsts.push(t), (first = false);
          stamps.push(t);
        },
      });
    }),
  );
  const start = Math.max(...firsts);
  const after = stamps.filter((t) => t > start);
  return after.length / ((Math.max(...after) - start) / 1000);
}

const cells: Cell[] = [];
for (const name of models) {
  const maxSeqs = Math.max(...seqsList);
  const common = { backend, blockSize: 16, maxSeqs, maxBatchTokens: 2048, windowKv: true };
  const model =
    name === 'tiny'
      ? await loadModel({ model: await ensureTinyModel(), ...common })
      : await loadModel({ dummy: name, expertFormat: 'mxfp4', seed: 1, ...common });
  const cfg = model.config;
  try {
    const info = model.info();
    const engine = new Engine(model, {
      vocabSize: cfg.vocabSize,
      numBlocks: info.numBlocks,
      blockSize: info.blockSize,
      maxSeqs,
      maxBatchTokens: 2048,
      contextLength: PROMPT + DECODE + 16,
      maxSampleEntries: info.limits.maxSampleEntries,
      kvWindow: info.limits.kvWindow,
    });
    for (const seqs of seqsList) {
      await run(engine, cfg.vocabSize, seqs, COMBOS[0].p, 1); // warm-up: CUDA graphs of this batch shape
      let greedy = 0;
      for (const c of COMBOS) {
        const before = { ...engine.stats };
        let best = 0;
        for (let r = 0; r < RUNS; r++) best = Math.max(best, await run(engine, cfg.vocabSize, seqs, c.p, 1000 * r + 7));
        if (c.name === 'greedy') greedy = best;
        const cell: Cell = {
          model: name,
          seqs,
          combo: c.name,
          tokPerS: best,
          ofGreedy: best / greedy,
          fallbacks: engine.stats.fullLogitRows - before.fullLogitRows,
          deviceRows: engine.stats.deviceRows - before.deviceRows,
        };
        cells.push(cell);
        console.log(
          `${name.padEnd(13)} seqs=${String(seqs).padEnd(4)} ${c.name.padEnd(30)} ${cell.tokPerS.toFixed(1).padStart(9)} tok/s  ` +
            `${(100 * cell.ofGreedy).toFixed(1).padStart(6)}% of greedy  host fallbacks ${cell.fallbacks} (device rows ${cell.deviceRows})`,
        );
      }
    }
  } finally {
    await model.close();
  }
}
console.log(`\n${backend}: prompt ${PROMPT} tokens, ${DECODE} decoded per sequence, best of ${RUNS} run(s); total host fallbacks: ${cells.reduce((a, c) => a + c.fallbacks, 0)}`);
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ prompt: PROMPT, decode: DECODE, runs: RUNS, cells }, null, 2));
