#!/usr/bin/env bash
# The serving benchmark on the GPU machine: for each dummy model (random weights of the real shape: this measures
# speed, not quality), `harmonium serve` in the background, wait for /health 200, then `harmonium bench serve`
# random 1024/128 with --ignore-eos at concurrency 1, 16, 64 and 256, then stop the server. Logs and result JSON go
# to $OUT (or ./gpu-logs). Needs dist/ and build/ carried (the GPU machine has no npm).
#   bench/serve_gpu.sh [gpt-oss-20b] [gpt-oss-120b]      (default: both; about 2-4 minutes per model)
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
CLI="node bin/harmonium.js"
PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(gpt-oss-20b gpt-oss-120b)

for model in "${models[@]}"; do
  log="$OUT/serve_$model.log"
  $CLI serve --dummy-weights "$model" --backend cuda --port "$PORT" --max-num-seqs "$MAX_NUM_SEQS" > "$log" 2>&1 &
  pid=$!
  ok=0
  for _ in $(seq 1 600); do
    node -e "fetch('$URL/health').then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))" && { ok=1; break; }
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  if [ $ok -ne 1 ]; then echo "$model: the server did not become healthy; see $log"; kill $pid 2>/dev/null; continue; fi
  # Prompt counts sized so that each model's four runs take about two minutes on an H200.
  for pair in 1:16 16:64 64:128 256:256; do
    c=${pair%%:*}; n=${pair##*:}
    echo "== $model concurrency $c, $n prompts" | tee -a "$OUT/bench_serve_$model.txt"
    timeout 300 $CLI bench serve --base-url "$URL" --endpoint /v1/completions --dataset-name random \
      --random-input-len 1024 --random-output-len 128 --ignore-eos --num-prompts "$n" --max-concurrency "$c" \
      --disable-tqdm --save-result "$OUT/bench_serve_${model}_c$c.json" 2>&1 | tee -a "$OUT/bench_serve_$model.txt"
    echo "bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/bench_serve_$model.txt"
  done
  node -e "fetch('$URL/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))" | grep -E '^vllm:(num_requests|kv_cache|num_preemptions|generation_tokens)' > "$OUT/metrics_$model.txt"
  kill -INT $pid; wait $pid; echo "serve rc=$?" >> "$log"
done
