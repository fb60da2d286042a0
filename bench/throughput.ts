// The throughput benchmark (issue 11): batched decode and prefill through the library's engine (Engine over
// loadModel, dummy weights on CUDA, greedy), each figure beside its bound and the peers' (docs/performance.md,
// ../shared/spec/peers.md).
//   decode   S requests of BENCH_PROMPT tokens (1024) and BENCH_DECODE (128) generated, S in BENCH_SEQS (1, 8, 64,
//            256). Run 1 reads the prompts cold and gives the vLLM-style serving metrics (TTFT, TPOT, ITL p50/p99,
//            output and total throughput); run 2 submits the same prompts again, served from the prefix cache (each
//            prefills 1-16 tokens), and its aggregate decode tok/s counts the tokens produced after every request
//            has its first one, over the time they took (prefill excluded). Beside it: the target, the byte
//            bound (the experts the batch touches, attention, router, lm_head and the KV cache read once per step at
//            4.56 TB/s), llama.cpp's batched-bench rate at the nearest batch, TensorRT-LLM's best published rate.
//   prefill  one request of N tokens in BENCH_PREFILL (512, 2048, 8192), one generated: N / TTFT, beside llama.cpp
//            (pp512 / 2048 / 8192) and the compute bound.
//
//   node node_modules/vite-node/vite-node.mjs bench/throughput.ts [20b|120b ...] [--json FILE]
// Env: BENCH_MODELS (20b,120b; arguments win), BENCH_SEQS, BENCH_PROMPT, BENCH_DECODE, BENCH_PREFILL, BENCH_RUNS (1:
// decode run 2 and each prefill repeated, the best kept), BENCH_STEP_TOKENS (maxBatchTokens and the scheduler's
// step budget; default the CUDA load default, buildInfo().defaults.cuda), BENCH_PREFILL_CHUNK (default: the step
// budget), BENCH_WINDOW_KV=0 (one block table for every layer instead of window KV); HARMONIUM_BUILD_DIR picks the
// addon; HARMONIUM_MOE_PREFILL=wgmma the wgmma GEMMs; HARMONIUM_CUDA_GRAPHS=0 compares without graphs;
// HARMONIUM_PROFILE=1 (GPU time per op family, graphs off) or HARMONIUM_PROFILE=2 (GPU time, host work and graph
// captures per step) print their shares when each model closes.
// Without a CUDA device it says so and exits 0 (a benchmark, not a test).
import { writeFileSync } from 'node:fs';
import { Engine } from '../src/engine/engine.js';
import { dummyConfig, type DummyModelName } from '../src/model/dummy.js';
import { cudaDeviceCount, loadDefaults, loadModel } from '../src/model/load.js';
import { decodeBytesPerStep, modelSizes } from '../src/model/sizes.js';
import { resolveSampling } from '../src/sampling/params.js';

const BANDWIDTH = 4.56e12; // the H200's streaming read (docs/performance.md)
// Issue 11's targets, llama.cpp v0.5.0 on the same H200 (batched-bench decode rates by batch; pp by prompt),
// TensorRT-LLM's published best output rate on one H200 (1k in / 1k out), the compute bound of prefill.
const TARGET: Record<DummyModelName, Record<number, number>> = {
  'gpt-oss-20b': { 64: 12000, 256: 25000 },
  'gpt-oss-120b': { 64: 4000, 256: 10000 },
};
const LLAMA_DECODE: Record<DummyModelName, Record<number, number>> = {
  'gpt-oss-20b': { 1: 301, 4: 654, 16: 970, 64: 2450, 128: 3364 },
  'gpt-oss-120b': { 1: 211, 4: 445, 16: 412, 64: 616 },
};
const LLAMA_PP: Record<DummyModelName, Record<number, number>> = {
  'gpt-oss-20b': { 512: 10900, 2048: 12000, 8192: 12100 },
  'gpt-oss-120b': { 512: 2700, 2048: 2800, 8192: 2800 },
};
const TRTLLM: Record<DummyModelName, number> = { 'gpt-oss-20b': 13858, 'gpt-oss-120b': 6868 };
const COMPUTE_PP: Record<DummyModelName, number> = { 'gpt-oss-20b': 80000, 'gpt-oss-120b': 55000 };

const argv = process.argv.slice(2);
const jsonAt = argv.indexOf('--json');
const jsonFile = jsonAt >= 0 ? argv[jsonAt + 1] : undefined;
const named = argv.filter((a, i) => /^(gpt-oss-)?(20b|120b)$/.test(a) && i !== jsonAt + 1);
const models = (named.length ? named : (process.env.BENCH_MODELS ?? '20b,120b').split(',')).map(
  (m) => `gpt-oss-${m.replace(/^gpt-oss-/, '')}` as DummyModelName,
);
const list = (env: string, def: string) => (process.env[env] ?? def).split(',').filter((s) => s.trim() !== '').map(Number);  // empty: none
const SEQS = list('BENCH_SEQS', '1,8,64,256');
const PREFILL = list('BENCH_PREFILL', '512,2048,8192');
const PROMPT = Number(process.env.BENCH_PROMPT ?? 1024);
const DECODE = Number(process.env.BENCH_DECODE ?? 128);
const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const STEP_TOKENS = Number(process.env.BENCH_STEP_TOKENS ?? loadDefaults('cuda').maxBatchTokens);
const PREFILL_CHUNK = process.env.BENCH_PREFILL_CHUNK ? Number(process.env.BENCH_PREFILL_CHUNK) : undefined;

const sorted = (v: number[]) => [...v].sort((a, b) => a - b);
const pct = (v: number[], p: number) => (v.length ? sorted(v)[Math.min(v.length - 1, Math.floor((p / 100) * v.length))] : NaN);
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const nearest = (table: Record<number, number>, b: number) => {
  const keys = Object.keys(table).map(Number);
  const k = keys.reduce((best, x) => (Math.abs(Math.log(x / b)) < Math.abs(Math.log(best / b)) ? x : best), keys[0]);
  return `${table[k].toLocaleString('en-US')} at B=${k}`;
};
const fmt = (x: number) => Math.round(x).toLocaleString('en-US');

interface RunStats {
  seconds: number;
  promptTokens: number;
  outputTokens: number;
  ttft: number[]; // ms per request
  tpot: number[]; // ms per request: (finish - first token) / (tokens - 1)
  itl: number[]; // ms between consecutive tokens of a request
  decodeTokPerS: number; // tokens after the last first token, over the time they took
}

/** S requests at once; prompt s is distinct (seeded by `seed + s`), the same for the same seed. */
async function runBatch(engine: Engine, vocab: number, S: number, promptLen: number, maxTokens: number, seed: number): Promise<RunStats> {
  const sampling = resolveSampling({ temperature: 0 }, vocab, () => 0);
  const stamps: number[][] = Array.from({ length: S }, () => []);
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: S }, (_, s) =>
      engine.generate({
        prompt: Array.from({ length: promptLen }, (_, i) => (i * 7919 + (seed + s) * 104729 + 13) % vocab),
        sampling,
        maxTokens,
        stopTokenIds: new Set(),
        onToken: () => void stamps[s].push(performance.now()),
      }),
    ),
  );
  const end = performance.now();
  const lastFirst = Math.max(...stamps.map((v) => v[0]));
  const after = stamps.flat().filter((t) => t > lastFirst);
  return {
    seconds: (end - t0) / 1000,
    promptTokens: S * promptLen,
    outputTokens: results.reduce((n, r) => n + r.completionTokens, 0),
    ttft: results.map((r) => r.firstTokenAt! - r.submittedAt),
    tpot: stamps.filter((v) => v.length > 1).map((v) => (v[v.length - 1] - v[0]) / (v.length - 1)),
    itl: stamps.flatMap((v) => v.slice(1).map((t, i) => t - v[i])),
    decodeTokPerS: after.length ? after.length / ((Math.max(...after) - lastFirst) / 1000) : NaN,
  };
}

async function bench(name: DummyModelName) {
  const cfg = dummyConfig(name);
  const maxSeqs = Math.max(1, ...SEQS);  // 1 when only prefill runs (BENCH_SEQS empty)
  // BENCH_WINDOW_KV=0: every layer in one block table (the layout before window KV), to compare.
  const windowKv = process.env.BENCH_WINDOW_KV !== '0';
  const model = await loadModel({ dummy: name, backend: 'cuda', expertFormat: 'mxfp4', seed: 1, blockSize: 16, maxSeqs, maxBatchTokens: STEP_TOKENS, windowKv });
  const out: Record<string, unknown>[] = [];
  try {
    const info = model.info();
    const engine = new Engine(model, {
      vocabSize: cfg.vocabSize,
      numBlocks: info.numBlocks,
      blockSize: info.blockSize,
      maxSeqs,
      maxBatchTokens: STEP_TOKENS,
      prefillChunk: PREFILL_CHUNK,
      contextLength: Math.max(PROMPT + DECODE, ...PREFILL) + 16,
      maxSampleEntries: info.limits.maxSampleEntries,
      kvWindow: info.limits.kvWindow,
    });
    const budget = { stepTokens: STEP_TOKENS, prefillChunk: PREFILL_CHUNK ?? STEP_TOKENS };
    console.log(
      `\n${name} on ${info.deviceName} (dummy weights, greedy, CUDA graphs ${process.env.HARMONIUM_CUDA_GRAPHS === '0' ? 'off' : 'on'}, ` +
        `step budget ${budget.stepTokens} tokens, prefill chunk ${budget.prefillChunk}, KV ${fmt(info.numBlocks)} blocks of ${info.blockSize}, ${(info.kvBytes / 2 ** 30).toFixed(1)} GiB, ${info.limits.kvWindow ? 'window KV' : 'one table'})`,
    );
    await runBatch(engine, cfg.vocabSize, 1, 64, 8, 999_999); // warm-up: the first kernels and graphs
    const sizes = modelSizes(cfg);
    for (const S of SEQS) {
      const cold = await runBatch(engine, cfg.vocabSize, S, PROMPT, DECODE, 1000 * S);
      let warm = cold;
      for (let r = 0; r < RUNS; r++) {
        const w = await runBatch(engine, cfg.vocabSize, S, PROMPT, DECODE, 1000 * S);
        if (r === 0 || w.decodeTokPerS > warm.decodeTokPerS) warm = w;
      }
      // bytes of one decode step at batch S: the weights it touches plus every sequence's KV at the mean context
      const meanCtx = PROMPT + DECODE / 2;
      const kvPerSeq = sizes.kvBytesPerContextToken * meanCtx + sizes.kvBytesSlidingPerSeq;
      const bound = (S * BANDWIDTH) / (decodeBytesPerStep(cfg, S) + S * kvPerSeq);
      const target = TARGET[name][S];
      const cell = {
        model: name,
        seqs: S,
        decodeTokPerS: warm.decodeTokPerS,
        byteBoundTokPerS: bound,
        target,
        llamaCpp: nearest(LLAMA_DECODE[name], S),
        trtllmMax: TRTLLM[name],
        serving: {
          ttftMsP50: pct(cold.ttft, 50),
          ttftMsP99: pct(cold.ttft, 99),
          tpotMsMean: mean(cold.tpot),
          itlMsP50: pct(cold.itl, 50),
          itlMsP99: pct(cold.itl, 99),
          outputTokPerS: cold.outputTokens / cold.seconds,
          totalTokPerS: (cold.outputTokens + cold.promptTokens) / cold.seconds,
        },
        warmItlMsP50: pct(warm.itl, 50),
        warmItlMsP99: pct(warm.itl, 99),
      };
      out.push(cell);
      const s = cell.serving;
      console.log(
        `  decode S=${String(S).padEnd(3)} ${fmt(cell.decodeTokPerS).padStart(7)} tok/s (ITL p50 ${cell.warmItlMsP50.toFixed(2)} ms, p99 ${cell.warmItlMsP99.toFixed(2)})` +
          `  target ${target ? fmt(target) : '-'}  byte bound ${fmt(bound)} (${((100 * cell.decodeTokPerS) / bound).toFixed(0)}%)` +
          `  llama.cpp ${cell.llamaCpp}  TensorRT-LLM max ${fmt(TRTLLM[name])}\n` +
          `    serving ${PROMPT} in / ${DECODE} out, cold: TTFT p50 ${s.ttftMsP50.toFixed(1)} ms, p99 ${s.ttftMsP99.toFixed(1)}; ` +
          `TPOT ${s.tpotMsMean.toFixed(2)} ms; ITL p50 ${s.itlMsP50.toFixed(2)}, p99 ${s.itlMsP99.toFixed(2)} ms; ` +
          `output ${fmt(s.outputTokPerS)} tok/s, total ${fmt(s.totalTokPerS)} tok/s`,
      );
    }
    for (const N of PREFILL) {
      let best = Infinity;
      for (let r = 0; r < Math.max(1, RUNS); r++) best = Math.min(best, (await runBatch(engine, cfg.vocabSize, 1, N, 1, 7_000_000 + N * 10 + r)).ttft[0]);
      const tokPerS = N / (best / 1000);
      out.push({ model: name, prefill: N, ttftMs: best, tokPerS, llamaCpp: LLAMA_PP[name][N], computeBound: COMPUTE_PP[name] });
      console.log(
        `  prefill pp${String(N).padEnd(5)} ${fmt(tokPerS).padStart(7)} tok/s (TTFT ${best.toFixed(1)} ms)  llama.cpp ${LLAMA_PP[name][N] ? fmt(LLAMA_PP[name][N]) : '-'}` +
          `  compute bound ~${fmt(COMPUTE_PP[name])}`,
      );
    }
    console.log(`  engine: ${engine.stats.steps} steps, ${engine.stats.aheadSteps} submitted ahead, ${engine.preemptions} preemptions`);
  } finally {
    await model.close();
  }
  return out;
}

const devices = cudaDeviceCount();
if (devices.count === 0) {
  console.log(`bench/throughput: no CUDA device (${devices.reason}); skipped (this benchmark needs a GPU)`);
  process.exit(0);
}
const all = [];
for (const name of models) all.push(...(await bench(name)));
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ prompt: PROMPT, decode: DECODE, stepTokens: STEP_TOKENS, prefillChunk: PREFILL_CHUNK, cells: all }, null, 2));
