#!/usr/bin/env bash
# Everything GPU in one script: the op-test table, the GPU vitest files, the decode benchmark (default, 4k context,
# without CUDA graphs, without PDL), a per-op profile, the throughput rows and the CLI end to end (about 20 minutes
# on the H200: more than one 10-minute device call, so run its parts in separate calls). Logs go to $OUT (default
# ./gpu-logs, which git ignores: run logs are not committed; the figures that matter go to docs/performance.md). Expects
# HARMONIUM_BUILD_DIR to hold Release/harmonium.node and hm_op_test.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
BIN=${HARMONIUM_BUILD_DIR:?set HARMONIUM_BUILD_DIR}
VITEST="node node_modules/vitest/vitest.mjs"
BENCH="node node_modules/vite-node/vite-node.mjs bench/decode.ts"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/summary.txt" 2>&1

# The table runs directly (6,687 cases, about 130 s on the H200 on 2026-12-01), so the GPU vitest files leave out its
# wrapper (test/gpu/ops.test.ts runs the same table again).
timeout 240 "$BIN/hm_op_test" > "$OUT/op_test.log" 2>&1; echo "hm_op_test rc=$?" >> "$OUT/op_test.log"
timeout 300 $VITEST run test/gpu --exclude test/gpu/ops.test.ts > "$OUT/vitest.log" 2>&1; rc=$?; echo "vitest rc=$rc" >> "$OUT/vitest.log"
if [ $rc -ne 0 ]; then  # isolate: the same model tests without graphs, then without graphs and PDL
  for v in HARMONIUM_CUDA_GRAPHS=0 "HARMONIUM_CUDA_GRAPHS=0 HARMONIUM_PDL=0"; do
    env $v timeout 120 $VITEST run test/gpu/model.test.ts >> "$OUT/vitest.log" 2>&1; echo "[$v] vitest rc=$?" >> "$OUT/vitest.log"
  done
fi
timeout 150 $BENCH --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1; echo "bench rc=$?" >> "$OUT/bench.log"
BENCH_PROMPT=4096 timeout 90 $BENCH gpt-oss-20b >> "$OUT/bench.log" 2>&1; echo "bench 4k rc=$?" >> "$OUT/bench.log"
HARMONIUM_CUDA_GRAPHS=0 timeout 90 $BENCH gpt-oss-20b >> "$OUT/bench.log" 2>&1; echo "bench no-graphs rc=$?" >> "$OUT/bench.log"
HARMONIUM_CUDA_GRAPHS=0 HARMONIUM_PDL=0 timeout 90 $BENCH gpt-oss-20b >> "$OUT/bench.log" 2>&1; echo "bench no-graphs no-pdl rc=$?" >> "$OUT/bench.log"
HARMONIUM_PROFILE=1 BENCH_RUNS=1 timeout 120 $BENCH > "$OUT/profile.log" 2>&1; echo "profile rc=$?" >> "$OUT/profile.log"
timeout 240 node node_modules/vite-node/vite-node.mjs bench/sampling.ts --quick --json "$OUT/sampling.json" > "$OUT/sampling.log" 2>&1; echo "sampling rc=$?" >> "$OUT/sampling.log"

# The tensor-core kernels of steps above 8 tokens: the lab's MoE prefill rows (each checked against the CPU twin
# before it is timed), the dense GEMMs and the decode and prefill attention kernels alone (HM_OP_BENCH), then issue
# 11's rows through the engine (both models: decode at 1 / 8 / 64 / 256 requests, prefill to 32k), and an A/B of the
# older dense GEMM, expert GEMMs and prefill attention (HARMONIUM_DENSE=mma, HARMONIUM_MOE_PREFILL=mma,
# HARMONIUM_ATTN_PREFILL=mma) and of 2048-token steps (BENCH_STEP_TOKENS=2048, the default before session 9) on the
# 20b.
if [ -x "$BIN/hm_moe_lab" ]; then
  MOE_PREFILL_ONLY=1 timeout 240 "$BIN/hm_moe_lab" > "$OUT/moe_prefill.log" 2>&1; echo "moe lab prefill rc=$?" >> "$OUT/moe_prefill.log"
fi
if [ -x "$BIN/hm_stage_probe" ]; then  # the one-token experts' staged design, memory and barrier only (NOTES.md)
  timeout 60 "$BIN/hm_stage_probe" > "$OUT/stage_probe.log" 2>&1; echo "stage probe rc=$?" >> "$OUT/stage_probe.log"
fi
HM_OP_BENCH=1 timeout 120 "$BIN/hm_op_test" bench_dense_gemm > "$OUT/kernel_bench.log" 2>&1; echo "bench_dense_gemm rc=$?" >> "$OUT/kernel_bench.log"
HM_OP_BENCH=1 timeout 150 "$BIN/hm_op_test" bench_attention_decode >> "$OUT/kernel_bench.log" 2>&1; echo "bench_attention_decode rc=$?" >> "$OUT/kernel_bench.log"
HM_OP_BENCH=1 timeout 150 "$BIN/hm_op_test" bench_attention_prefill >> "$OUT/kernel_bench.log" 2>&1; echo "bench_attention_prefill rc=$?" >> "$OUT/kernel_bench.log"
TP="node node_modules/vite-node/vite-node.mjs bench/throughput.ts"
BENCH_PREFILL=512,2048,8192,32768 timeout 300 $TP --json "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1; echo "throughput rc=$?" >> "$OUT/throughput.log"
for v in HARMONIUM_DENSE=mma HARMONIUM_MOE_PREFILL=mma HARMONIUM_ATTN_PREFILL=mma BENCH_STEP_TOKENS=2048; do
  env $v BENCH_MODELS=20b BENCH_SEQS=64,256 BENCH_PREFILL=2048,8192,32768 timeout 200 $TP >> "$OUT/prefill_ab.log" 2>&1; echo "[$v] throughput rc=$?" >> "$OUT/prefill_ab.log"
done

# The CLI end to end on the GPU (needs dist/ carried: the GPU machine has no TypeScript compiler).
CLI="node bin/harmonium.js"
{
  echo "== run, dummy gpt-oss-20b, greedy"
  timeout 120 $CLI run --dummy-weights gpt-oss-20b --backend cuda --temperature 0 --max-tokens 128 "hi" </dev/null; echo "run rc=$?"
  echo "== run, dummy gpt-oss-20b, temperature 1 top_p 0.9 (sampled in the step)"
  timeout 120 $CLI run --dummy-weights gpt-oss-20b --backend cuda --top-p 0.9 --seed 1 --max-tokens 128 "hi" </dev/null; echo "run rc=$?"
  echo "== score on a fixture, cuda vs cpu"
  f=test/fixtures/window128-gqa; toks=$(python3 -c "import json;print(','.join(map(str,json.load(open('$f/case.json'))['tokens'][:64])))")
  timeout 60 $CLI score --model $f --tokens $toks --backend cuda | tail -2; echo "score cuda rc=$?"
  timeout 60 $CLI score --model $f --tokens $toks --backend cpu | tail -2; echo "score cpu rc=$?"
  echo "== out of GPU memory at load: gpt-oss-120b with bf16 experts (does not fit), then 20b must still load"
  timeout 120 node --input-type=module -e "
    const { loadModel } = await import('./dist/model/load.js');
    try { await loadModel({ dummy: 'gpt-oss-120b', backend: 'cuda', expertFormat: 'bf16' }); console.log('UNEXPECTED: loaded'); }
    catch (e) { console.log('error:', e.message); }
    const m = await loadModel({ dummy: 'gpt-oss-20b', backend: 'cuda' }); console.log('20b after OOM:', JSON.stringify(m.info())); m.close();
  "; echo "oom rc=$?"
} > "$OUT/cli.log" 2>&1

{
  cat "$OUT/summary.txt"
  grep -E "FAIL|NaN|cases passed|rc=" "$OUT/op_test.log"
  grep -E "^oracle|mixed batch:|Tests |FAIL|AssertionError|Error:|rc=" "$OUT/vitest.log" | cut -c1-400
  grep -vE "^\s*$" "$OUT/bench.log" | grep -vE "^\s+at " | tail -60
  grep -E "harmonium profile|^  [a-z]" "$OUT/profile.log"
  grep -vE "^\s*$" "$OUT/cli.log" | cut -c1-400 | tail -40
  grep -E "prefill n=|twin|FAIL|rc=" "$OUT/moe_prefill.log" 2>/dev/null | cut -c1-200
  grep -E "wgmma auto|mma.sync|summary|planned|\(default\)|rc=" "$OUT/kernel_bench.log" 2>/dev/null | cut -c1-200
  grep -E "^gpt|prefill pp|decode S=|rc=" "$OUT/throughput.log" 2>/dev/null | cut -c1-200
  grep -E "prefill|decode|rc=" "$OUT/prefill_ab.log" 2>/dev/null | cut -c1-200
} > "$OUT/digest.txt"
cat "$OUT/digest.txt"
