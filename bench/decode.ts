// The decode benchmark: batch-1 decode of gpt-oss-20b and gpt-oss-120b with dummy (random) weights on the GPU,
// reported the way peers report it: vLLM-style TTFT / TPOT / ITL / throughput, llama-bench-style pp512 and tg128,
// the fraction of the byte limit (the bytes a token must read: active experts, attention and router weights,
// lm_head, KV cache (src/model/sizes.ts), over the H200's measured 4.56 TB/s streaming read) and of the measured
// floor (ideal read-only kernels in one graph with PDL), with llama.cpp's figures on the same H200 beside ours
// (docs/performance.md). Also: GPU memory used, and KV-cache tokens left. It drives one sequence through the
// library (GreedySequence, src/model/load.ts), one model step per token, one step queued ahead (pipelined).
//
//   node node_modules/vite-node/vite-node.mjs bench/decode.ts [gpt-oss-20b|gpt-oss-120b ...] [--json FILE]
// Env: HARMONIUM_BUILD_DIR picks the addon build; BENCH_PROMPT (512: the context the decode starts from, prefilled
// in chunks of 2048), BENCH_DECODE (128), BENCH_RUNS (3); HARMONIUM_PDL=0 / HARMONIUM_CUDA_GRAPHS=0 to compare.
import { writeFileSync } from 'node:fs';
import { cudaDeviceCount, GreedySequence, loadModel } from '../src/model/load.js';
import { dummyConfig, isDummyModelName, type DummyModelName } from '../src/model/dummy.js';
import { decodeBytesPerStep, modelSizes } from '../src/model/sizes.js';

// The H200 (docs/performance.md): one contiguous read streams 4.56 TB/s; the floor is ideal read-only kernels that
// stream one token's bytes in one CUDA graph with PDL; llama.cpp v0.5.0 measured on the same machine.
const BANDWIDTH = 4.56e12;
const FLOOR_TOK_PER_S: Record<DummyModelName, number> = { 'gpt-oss-20b': 1126, 'gpt-oss-120b': 827 };
const LLAMA_CPP: Record<DummyModelName, { tg128: number; pp512: number }> = {
  'gpt-oss-20b': { tg128: 301, pp512: 10900 },
  'gpt-oss-120b': { tg128: 211, pp512: 2700 },
};
const GiB = 1024 ** 3;

const args = process.argv.slice(2);
const jsonAt = args.indexOf('--json');
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const names = args.filter((a, i) => isDummyModelName(a) && (jsonAt < 0 || i !== jsonAt + 1)) as DummyModelName[];
const models: DummyModelName[] = names.length ? names : ['gpt-oss-20b', 'gpt-oss-120b'];
const PROMPT = Number(process.env.BENCH_PROMPT ?? 512);
const DECODE = Number(process.env.BENCH_DECODE ?? 128);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const BLOCK = 16;

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const pct = (v: number[], p: number) => [...v].sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor((p / 100) * v.length))];
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

async function bench(name: DummyModelName) {
  const cfg = dummyConfig(name);
  const t0 = performance.now();
  const model = await loadModel({ dummy: name, backend: 'cuda', expertFormat: 'mxfp4', blockSize: BLOCK, maxSeqs: 8, maxBatchTokens: 2048, seed: 1 });
  const loadMs = performance.now() - t0;
  try {
    const info = model.info();
    const ctx = PROMPT + DECODE;
    const prompt = Int32Array.from({ length: PROMPT }, (_, i) => (i * 7919 + 13) % cfg.vocabSize);
    const runs: { ttft: number; itl: number[]; decodeMs: number }[] = [];
    const CHUNK = 2048; // maxBatchTokens: longer prompts prefill in chunks
    for (let run = 0; run < RUNS + 1; run++) { // run 0 warms up
      const seq = new GreedySequence(model, ctx);
      let t = performance.now();
      for (let c0 = 0; c0 < PROMPT; c0 += CHUNK) await seq.append(prompt.subarray(c0, Math.min(PROMPT, c0 + CHUNK)));
      const ttft = performance.now() - t;
      const itl: number[] = [];
      const d0 = performance.now();
      t = performance.now();
      for await (const _token of seq.decode(DECODE)) {
        const now = performance.now();
        itl.push(now - t);
        t = now;
      }
      const decodeMs = performance.now() - d0;
      if (run > 0) runs.push({ ttft, itl, decodeMs });
    }
    const allItl = runs.flatMap((r) => r.itl);
    const tps = runs.map((r) => (DECODE / r.decodeMs) * 1000);
    const sizes = modelSizes(cfg);
    // bytes a decode token must read: weights (active experts) + the KV cache at the mean context of the decode
    const meanCtx = PROMPT + DECODE / 2;
    const kvBytes = sizes.kvBytesPerContextToken * meanCtx + sizes.kvBytesSlidingPerSeq;
    const bytesPerToken = decodeBytesPerStep(cfg, 1) + kvBytes;
    const tgMedian = median(tps);
    const usedBytes = info.deviceTotalBytes - info.deviceFreeBytes;
    const result = {
      model: name,
      device: info.deviceName,
      pdl: process.env.HARMONIUM_PDL !== '0',
      cudaGraphs: process.env.HARMONIUM_CUDA_GRAPHS !== '0',
      expertFormat: info.expertFormat,
      loadSeconds: loadMs / 1000,
      prompt: PROMPT,
      decode: DECODE,
      runs: RUNS,
      ttftMs: median(runs.map((r) => r.ttft)),
      ppTokPerS: PROMPT / (median(runs.map((r) => r.ttft)) / 1000),
      tpotMs: mean(allItl),
      itlMedianMs: median(allItl),
      itlP99Ms: pct(allItl, 99),
      tgTokPerS: tgMedian,
      tgSpread: [Math.min(...tps), Math.max(...tps)],
      bytesPerToken,
      bandwidthFraction: (tgMedian * bytesPerToken) / BANDWIDTH,
      limitTokPerS: BANDWIDTH / bytesPerToken,
      floorTokPerS: FLOOR_TOK_PER_S[name],
      floorFraction: tgMedian / FLOOR_TOK_PER_S[name],
      llamaCpp: LLAMA_CPP[name],
      weightGiB: info.weightBytes / GiB,
      kvGiB: info.kvBytes / GiB,
      gpuUsedGiB: usedBytes / GiB,
      gpuTotalGiB: info.deviceTotalBytes / GiB,
      kvTokens: info.numBlocks * info.blockSize,
    };
    console.log(
      `\n${name} on ${result.device} (${result.expertFormat} experts, dummy weights, batch 1, load ${result.loadSeconds.toFixed(1)} s, ` +
        `PDL ${result.pdl ? 'on' : 'off'}, CUDA graphs ${result.cudaGraphs ? 'on' : 'off'})\n` +
        `  TTFT (pp${PROMPT})  ${result.ttftMs.toFixed(1)} ms = ${result.ppTokPerS.toFixed(0)} tok/s      llama.cpp pp512 ${result.llamaCpp.pp512} tok/s\n` +
        `  tg${DECODE}           ${tgMedian.toFixed(1)} tok/s (runs ${tps.map((x) => x.toFixed(1)).join(', ')})   llama.cpp tg128 ${result.llamaCpp.tg128} tok/s\n` +
        `  TPOT ${result.tpotMs.toFixed(3)} ms, ITL median ${result.itlMedianMs.toFixed(3)} ms, p99 ${result.itlP99Ms.toFixed(3)} ms\n` +
        `  bytes/token ${(bytesPerToken / 1e9).toFixed(3)} GB -> ${(result.bandwidthFraction * 100).toFixed(1)}% of ${BANDWIDTH / 1e12} TB/s ` +
        `(limit ${result.limitTokPerS.toFixed(0)} tok/s; llama.cpp ${((LLAMA_CPP[name].tg128 * bytesPerToken) / BANDWIDTH * 100).toFixed(1)}%)\n` +
        `  measured floor ${result.floorTokPerS} tok/s -> ${(result.floorFraction * 100).toFixed(1)}% of it ` +
        `(llama.cpp ${((LLAMA_CPP[name].tg128 / result.floorTokPerS) * 100).toFixed(1)}%)\n` +
        `  GPU memory: weights ${result.weightGiB.toFixed(2)} GiB, KV cache ${result.kvGiB.toFixed(2)} GiB ` +
        `(${result.kvTokens} tokens), used ${result.gpuUsedGiB.toFixed(2)} of ${result.gpuTotalGiB.toFixed(2)} GiB`,
    );
    return result;
  } finally {
    await model.close();
  }
}

const devices = cudaDeviceCount();
if (devices.count === 0) {
  console.error(`bench/decode: no CUDA device (${devices.reason}); this benchmark needs a GPU`);
  process.exit(1);
}
const results = [];
for (const name of models) results.push(await bench(name));
if (jsonFile) writeFileSync(jsonFile, JSON.stringify(results, null, 2));
