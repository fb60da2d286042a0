#!/usr/bin/env bash
# On the GPU machine: random checkpoints that are NOT in the repository (real widths among them), held against
# transformers by the same bounds as the fixtures: the CPU backend within 1e-3 of the largest logit, the CUDA backend
# (MXFP4 and bf16 experts) by mean KL and top-1 next to transformers-bf16's own. Needs dist/ and the addon
# (HARMONIUM_BUILD_DIR). Writes logs to $OUT.
set -u
OUT=${OUT:-unseen-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CLI="node bin/harmonium.js"
run_case() {  # name, make_case flags...
  local name=$1; shift
  local dir=/tmp/unseen/$name
  echo "== $name: $*"
  CUDA_VISIBLE_DEVICES= timeout 240 python3 test/oracle/make_case.py --out "$dir" --no-spec-check "$@" 2>&1 | grep -E "bf16_vs_fp32|fp32 logits|Error|error" | cut -c1-300
  local toks; toks=$(python3 -c "import json;print(','.join(map(str,json.load(open('$dir/case.json'))['tokens'])))")
  for be in cpu cuda:mxfp4 cuda:bf16; do
    local b=${be%%:*} fmt=${be#*:}; local extra=""
    [ "$b" = cuda ] && extra="--expert-format $fmt"
    timeout 240 $CLI score --model "$dir" --tokens "$toks" --backend $b $extra --out "$dir/$b-$fmt.npy" | sed -n 2,3p
    python3 test/oracle/compare.py "$dir" "$dir/$b-$fmt.npy" | sed "s/^/  [$be] /"
  done
}
{
  run_case realwidth-2880 --layers 2 --hidden 2880 --intermediate 2880 --experts 4 --topk 2 --heads 64 --kv-heads 8 \
    --head-dim 64 --vocab 2048 --sliding-window 128 --seq-len 160 --shards 2 --seed 7
  run_case odd-shape --layers 5 --hidden 160 --intermediate 96 --experts 12 --topk 4 --heads 10 --kv-heads 5 \
    --head-dim 32 --vocab 777 --sliding-window 24 --seq-len 90 --rope-form rope_parameters --yarn-factor 4 \
    --yarn-original 32 --sinks-dtype f32 --seed 11
} 2>&1 | tee "$OUT/unseen.log"
