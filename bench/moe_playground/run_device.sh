#!/bin/bash
# One device call: the MoE op tests (standalone binaries with only the MoE cases: the default build and the one
# with -DHM_MOE_PREFILL_V2), a memcheck of the small cases, and the timing playground. Binaries are built on the
# build machine into build-moe/ (see moe_bench.cu for the command).
set -u
OUT=${OUT:-/tmp/moe_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
for b in hm_op_test_moe hm_op_test_moe_v2; do
  [ -x ./build-moe/$b ] || continue
  timeout 200 ./build-moe/$b router > "$OUT/${b}_router.log" 2>&1; tail -1 "$OUT/${b}_router.log"
  timeout 200 ./build-moe/$b moe > "$OUT/${b}_moe.log" 2>&1; grep -E "FAIL|passed" "$OUT/${b}_moe.log"
  if command -v compute-sanitizer >/dev/null; then
    timeout 90 compute-sanitizer --tool memcheck ./build-moe/$b moe_experts_small > "$OUT/${b}_memcheck.log" 2>&1
    tail -2 "$OUT/${b}_memcheck.log"
  fi
done
timeout 200 ./build-moe/moe_bench > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
