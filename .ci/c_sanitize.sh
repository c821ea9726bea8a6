#!/usr/bin/env bash
# Build the C extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the C backend
# tests under it. Needs an active virtualenv with the test dependencies (numpy, cffi, pytest,
# hypothesis) and gcc. Works in a temporary copy of the repository: the checkout (and its normal
# build in fastreg/c/) is left untouched. Exits non-zero on a test failure or a sanitizer report.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastreg-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# the sources, without built modules or caches
tar -C "$ROOT" --exclude=.git --exclude=build --exclude='*.so' --exclude='*.o' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - . \
    | tar -C "$WORK" -xf -

cd "$WORK"
FASTREG_SANITIZE=1 "$PYTHON" csrc/ffi_build.py

LIBASAN="$(gcc -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
    echo "c_sanitize: gcc has no libasan.so ($LIBASAN)" >&2
    exit 2
fi

# The interpreter is not instrumented, so the ASan runtime must be loaded first (LD_PRELOAD);
# Python's own allocations look like leaks at exit, hence detect_leaks=0. Child processes that
# the tests start inherit all of this.
export LD_PRELOAD="$LIBASAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98"
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"

# -p no:cacheprovider: nothing written next to the sources; --capture=sys: a sanitizer report
# (written to fd 2) is shown, not swallowed by pytest's fd capture when the process dies
"$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys tests/test_c_backend.py \
    tests/test_c_penalty_optim.py tests/test_pool.py

# Tests elsewhere that run the "c" backend (parametrized ids such as [c] or [c-float32]).
others=$(find tests -name 'test_*.py' ! -name test_c_backend.py ! -name test_c_penalty_optim.py \
    ! -name test_pool.py | sort)
if [ -n "$others" ]; then
    set +e
    "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys $others -k "[c] or [c- or -c- or -c]"
    status=$?
    set -e
    # 5: nothing selected, which is fine
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        exit "$status"
    fi
fi
echo "c_sanitize: OK (ASan + UBSan)"
