#!/usr/bin/env bash
# One device call: install the carried wheels, build blockzoo (C++/CUDA), check correctness on the GPU,
# run the benchmark suites named as arguments (default: all), and pack the results into $OUT.
#   bash benchmarks/device_run.sh [sparsetest] [check] [checkall] [profile] [parts] [triton] [fused] [sparse] [attention] [e2e] [e2eprofile] [scaling]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
suites="${*:-check triton fused sparse attention e2e}"
start=$(date +%s)
{ time python3 -m pip install -q --no-build-isolation --no-deps -e . ; } > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"; tail -3 "$OUT/build.log"
python3 -m blockzoo.info 2>&1 | tee "$OUT/info.txt"
run() { local name=$1; shift; local var="T_${name}"; echo "=== $name"
  timeout "${!var:-${SUITE_TIMEOUT:-420}}" "$@" 2>&1 | tee "$OUT/$name.log" | tail -60; }
for s in $suites; do
  case $s in
    sparsetest) run sparse_tests env TRITON_INTERPRET=0 python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_sparse_ops.py tests/ops/test_sparse_layout.py ;;
    check) run gpu_check python3 benchmarks/gpu_check.py --hang-dump "$(( ${T_gpu_check:-420} - 15 ))" ${CHECK_ARGS:-} --json benchmarks/results/gpu_check.json ;;
    profile) run profile python3 benchmarks/profile_parts.py ;;
    checkall)  # every correctness check at once: one process per group compiles in parallel
      echo "=== checkall"
      for g in attention softmax norms fused,dropout; do
        timeout "${T_checkall:-300}" python3 benchmarks/gpu_check.py --only "$g" --hang-dump "$(( ${T_checkall:-300} - 15 ))" \
          --json "benchmarks/results/gpu_check-${g/,/-}.json" > "$OUT/gpu_check-${g/,/-}.log" 2>&1 &
      done
      timeout "${T_checkall:-300}" env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider tests/ops/test_sparse_ops.py \
        tests/ops/test_sparse_layout.py > "$OUT/sparse_tests.log" 2>&1 &
      wait
      tail -n 3 "$OUT"/gpu_check-*.log "$OUT/sparse_tests.log"
      grep -h "^FAIL" "$OUT"/gpu_check-*.log ;;
    triton) run bench_triton python3 benchmarks/bench_triton_norm_softmax.py ;;
    parts) run bench_triton_parts python3 benchmarks/bench_triton_parts.py ;;
    fused) run bench_fused python3 benchmarks/bench_triton_fused.py ;;
    sparse) run bench_sparse python3 benchmarks/bench_sparse_ops.py ;;
    attention) run bench_attention python3 benchmarks/bench_attention.py ${ATTENTION_ARGS:-} ;;
    e2e) run bench_e2e python3 benchmarks/bench_e2e.py ;;
    e2eprofile) run e2e_profile python3 benchmarks/bench_e2e.py --profile ;;
    scaling) run bench_scaling python3 benchmarks/bench_scaling.py ;;
  esac
done
tar czf "$OUT/results.tgz" benchmarks/results *.log 2>/dev/null || tar czf "$OUT/results.tgz" benchmarks/results
