#!/bin/bash
# One device call: the MoE op tests (standalone binary with only the MoE cases), a memcheck of the small cases,
# and the timing playground. Binaries are built on the build machine into build-moe/ (see moe_bench.cu).
set -u
OUT=${OUT:-/tmp/moe_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
timeout 200 ./build-moe/hm_op_test_moe router 2>&1 | tee "$OUT/op_test_router.log" | tail -3
timeout 200 ./build-moe/hm_op_test_moe moe 2>&1 | tee "$OUT/op_test_moe.log" | grep -E "FAIL|passed"
if command -v compute-sanitizer >/dev/null; then
  timeout 90 compute-sanitizer --tool memcheck ./build-moe/hm_op_test_moe moe_experts_small > "$OUT/memcheck.log" 2>&1
  tail -3 "$OUT/memcheck.log"
fi
timeout 150 ./build-moe/moe_bench 2>&1 | tee "$OUT/bench.log"
