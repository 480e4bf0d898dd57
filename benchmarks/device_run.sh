#!/usr/bin/env bash
# One device call: install the carried wheels, build blockzoo (C++/CUDA), check correctness on the GPU,
# run the benchmark suites named as arguments (default: all), and pack the results into $OUT.
#   bash benchmarks/device_run.sh [check] [profile] [parts] [triton] [fused] [sparse] [attention] [attentionfit]
#                                 [compiledparts] [compiledprofile] [e2e] [e2eprofile] [scaling] [packed] [knobs]
#                                 [generate]
# PARALLEL=1 runs the suites at once, suite i on GPU i (several GPUs: nvidia-h200-x2 and up; a+b runs a then b
# on one GPU); each suite's
# time limit is T_<log name> (default SUITE_TIMEOUT, 420 s).
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,9p' "$0" | cut -c3-; exit 0 ;; esac
nvidia-smi -L > /dev/null 2>&1 || { echo "device_run.sh needs a CUDA GPU (nvidia-smi finds none)" >&2; exit 1; }
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; LOGS=/tmp/logs; rm -rf "$LOGS"; mkdir -p "$OUT" "$LOGS"  # $OUT gets only results.tgz (few files come back)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
suites="${*:-check triton fused sparse attention e2e}"
start=$(date +%s)
{ time python3 -m pip install -q --no-build-isolation --no-deps -e . ; } > "$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"; tail -3 "$LOGS/build.log"
python3 -m blockzoo.info 2>&1 | tee "$LOGS/info.txt"
run() { local name=$1; shift; local var="T_${name}"; local t0=$(date +%s)
  timeout "${!var:-${SUITE_TIMEOUT:-420}}" "$@" > "$LOGS/$name.log" 2>&1
  echo "=== $name: rc $?, $(( $(date +%s) - t0 )) s${CUDA_VISIBLE_DEVICES:+ on GPU $CUDA_VISIBLE_DEVICES}"; tail -${TAIL:-40} "$LOGS/$name.log"; }
suite() {
  case $1 in
    check)  # every CUDA test of the suite (pytest -m gpu), the curated record into benchmarks/results/
      run gpu_tests env BLOCKZOO_TEST_RESULTS=benchmarks/results python3 -m pytest -q -m gpu \
        -n "${GPU_TEST_WORKERS:-4}" -p no:cacheprovider ${CHECK_ARGS:-} ;;
    compiledparts) run bench_compiled_parts python3 benchmarks/bench_compiled_parts.py ${COMPILED_ARGS:-} ;;
    compiledprofile) run profile_compiled python3 benchmarks/profile_compiled.py ${PROFILE_ARGS:-} ;;
    triton) run bench_triton python3 benchmarks/bench_triton_norm_softmax.py ;;
    parts) run bench_triton_parts python3 benchmarks/bench_triton_parts.py ;;
    fused) run bench_fused python3 benchmarks/bench_triton_fused.py ;;
    sparse) run bench_sparse python3 benchmarks/bench_sparse_ops.py ;;
    attention) run bench_attention python3 benchmarks/bench_attention.py ${ATTENTION_ARGS:-} ;;
    attentionfit)  # refit the cost table, then the TARGETS rows with it
      run bench_attention_fit python3 benchmarks/bench_attention.py --skip targets,sweep,length
      run bench_attention env BLOCKZOO_ATTENTION_COSTS="$(ls -t benchmarks/results/*-attention-costs.json | head -1)" \
        python3 benchmarks/bench_attention.py --skip fit${ATTENTION_SKIP:+,$ATTENTION_SKIP} ;;
    e2e) run bench_e2e python3 benchmarks/bench_e2e.py ;;
    e2eprofile) run e2e_profile python3 benchmarks/bench_e2e.py --profile ;;
    scaling) run bench_scaling python3 benchmarks/bench_scaling.py ;;
    packed) run bench_packed python3 benchmarks/bench_packed.py ${PACKED_ARGS:-} ;;
    knobs) run bench_knobs python3 benchmarks/bench_knobs.py ${KNOBS_ARGS:-} ;;
    generate)  # KV-cache decoding vs window re-run and HF transformers (needs transformers; T_bench_generate=600)
      run bench_generate python3 benchmarks/bench_generate.py ${GENERATE_ARGS:-} ;;
  esac
}
if [ -n "${PARALLEL:-}" ]; then
  i=0; for s in $suites; do  # a+b: suites a then b on one GPU
    (export CUDA_VISIBLE_DEVICES=$i; for t in ${s//+/ }; do suite "$t"; done) > "$LOGS/suite-$s.txt" 2>&1 &
    i=$((i + 1)); done
  wait; cat "$LOGS"/suite-*.txt
else
  for s in $suites; do suite "$s"; done
fi
tar czf "$OUT/results.tgz" benchmarks/results -C /tmp logs
