#!/usr/bin/env bash
# Validate fastreg on an NVIDIA GPU in about 5 minutes, and keep everything it shows in OUTDIR.
#
#   bench/gpu_validate.sh OUTDIR [--quick] [--n N] [--tests "PYTEST ARGS"] [--no-tests] [--no-bench]
#
# Needs a GPU with its driver and fastreg installed with the cuda and test extras
# (pip install ".[cuda,test]"; torch with CUDA for the x torch column). Run it from anywhere: it
# uses this checkout's tests/ and bench/. Steps, each under a time limit (seconds, overridable
# with GPU_VALIDATE_<STEP>_TIMEOUT):
#   env    (30)  fastreg info, nvidia-smi, numba's view of the device      -> env.txt
#   tests  (170) pytest tests -k cuda on the GPU, not the simulator       -> tests.txt, tests.xml
#   agree  (60)  the CUDA backend against the C backend, bit for bit, on 2^24 elements, for
#                every exact op (bench/gpu_validate.py agree)              -> agree.txt, agree.json
#   bench  (60)  GB/s, fraction of a device-to-device copy, x torch CUDA   -> bench.txt, bench.json
# then summary.txt, one line per step: ok, FAIL (exit status) or TIMEOUT, and its seconds.
# Exit status: 0 when every step passed, 1 when one did not, 2 for bad arguments or no GPU.
#
# --quick      2^20 elements and the small batch-norm shapes (a smoke run)
# --n N        elements per array for agree and bench (e.g. 2^26; default 2^24, and 2^24,2^26
#              for bench; 4096 under the simulator)
# --tests ARGS pytest arguments (paths from the checkout root) instead of the default
#              'tests -k "cuda and not gpu_validate"' (under the simulator, pass a short one)
# --no-tests, --no-bench   skip those steps
# Under NUMBA_ENABLE_CUDASIM=1 (how the CPU tests exercise this script) sizes are tiny and the
# timings meaningless. Kernels are compiled once, into OUTDIR/numba-cache (NUMBA_CACHE_DIR).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

out=""
quick=0
run_tests=1
run_bench=1
tests_args=""
n_opt=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --quick) quick=1 ;;
    --no-tests) run_tests=0 ;;
    --no-bench) run_bench=0 ;;
    --n)
      [ $# -ge 2 ] || { echo "gpu_validate: --n needs a number of elements" >&2; exit 2; }
      [[ "$2" =~ ^[0-9]+(\^[0-9]+)?$ ]] ||
        { echo "gpu_validate: --n takes N or 2^K, not '$2'" >&2; exit 2; }
      n_opt="$2"; shift ;;
    --tests)
      [ $# -ge 2 ] || { echo "gpu_validate: --tests needs pytest arguments" >&2; exit 2; }
      tests_args="$2"; shift ;;
    -*) echo "gpu_validate: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
      [ -z "$out" ] || { echo "gpu_validate: one OUTDIR only (got '$out' and '$1')" >&2; exit 2; }
      out="$1" ;;
  esac
  shift
done
if [ -z "$out" ]; then
  echo "usage: bench/gpu_validate.sh OUTDIR [--quick] [--n N] [--tests ARGS] [--no-tests]" \
    "[--no-bench]" >&2
  exit 2
fi
mkdir -p "$out" || { echo "gpu_validate: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$out/numba-cache}
sim=0
case "${NUMBA_ENABLE_CUDASIM:-0}" in ""|0) ;; *) sim=1 ;; esac

: > "$out/summary.txt"
failed=0
started=$(date +%s)

# step NAME TIMEOUT LOG COMMAND...: run it with a time limit, its output to the screen and LOG
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$(date +%s) code status
  echo "== $name (limit ${limit} s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$log"
  code=${PIPESTATUS[0]}
  case $code in
    0) status=ok ;;
    124|137) status=TIMEOUT ;;
    *) status="FAIL (exit $code)" ;;
  esac
  [ "$code" = 0 ] || failed=1
  printf '%-6s %-16s %4d s  %s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$log" \
    | tee -a "$out/summary.txt"
}

env_report() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "checkout: $root ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "simulator: $([ "$sim" = 1 ] && echo 'yes (NUMBA_ENABLE_CUDASIM)' || echo no)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
      --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  "$py" -m fastreg info || return 1
  "$py" - <<'EOF' || return 1
import fastreg
reason = fastreg.available_backends()["cuda"]
if reason is not None:
    raise SystemExit(f"the CUDA backend cannot run here: {reason}")
from numba import config, cuda
if config.ENABLE_CUDASIM:
    print("numba.cuda: simulator")
else:
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    print(f"numba.cuda: {name}, compute capability {dev.compute_capability}, "
          f"{dev.MULTIPROCESSOR_COUNT} SMs")
EOF
}

# run under timeout, which runs programs, not shell functions
export -f env_report
export root sim py

limit() { local var="GPU_VALIDATE_${1}_TIMEOUT"; echo "${!var:-$2}"; }

step env "$(limit ENV 30)" env.txt bash -c env_report
if [ "$failed" = 1 ]; then
  echo "gpu_validate: no usable GPU / CUDA backend (see $out/env.txt)" >&2
  exit 2
fi

n=""; sizes=""; bench_extra=()
if [ $sim = 1 ]; then
  bench_extra=(--layouts tiny_nc)       # simulator: gpu_validate.py's tiny defaults, one BN shape
elif [ $quick = 1 ]; then
  n=$((1 << 20)); sizes=$n; bench_extra=(--quick)
fi
[ -n "$n_opt" ] && { n=$n_opt; sizes=$n_opt; }

if [ $run_tests = 1 ]; then
  if [ -n "$tests_args" ]; then
    eval "set -- $tests_args"
  else
    set -- tests -k "cuda and not gpu_validate"
  fi
  # pytest's own script, run in the checkout: unlike `python -m pytest` it does not put the
  # checkout on sys.path, so the tests import the installed fastreg
  pytest_cmd=("$(dirname "$(command -v "$py")")/pytest")
  [ -x "${pytest_cmd[0]}" ] || pytest_cmd=("$py" -m pytest)
  cd "$root"
  step tests "$(limit TESTS 170)" tests.txt env FASTREG_TEST_REQUIRE=cuda "${pytest_cmd[@]}" \
    -q -p no:cacheprovider -rfE --junitxml "$out/tests.xml" "$@"
  cd - >/dev/null
fi

agree_args=(agree --json "$out/agree.json")
[ -n "$n" ] && agree_args+=(--n "$n")
step agree "$(limit AGREE 60)" agree.txt "$py" "$root/bench/gpu_validate.py" "${agree_args[@]}"

if [ $run_bench = 1 ]; then
  bench_args=(bench --json "$out/bench.json")
  [ -n "$sizes" ] && bench_args+=(--sizes "$sizes")
  bench_args+=("${bench_extra[@]}")
  step bench "$(limit BENCH 60)" bench.txt "$py" "$root/bench/gpu_validate.py" "${bench_args[@]}"
fi

echo "== done in $(( $(date +%s) - started )) s; results in $out"
cat "$out/summary.txt"
exit $failed
