"""Stepped kernels (fastreg/cpu/_jit.py) and Numba's on-disk cache: the serial call and the
parallel version run one compiled kernel, so one process's compile must serve the other's call.

The serial call compiles through the dispatcher (cache key: the argument types); the parallel
version asked ``get_compile_result(Signature)``, which Numba 0.68 compiles, looks up and saves
under the full ``Signature`` (return type included): a different key, so a kernel compiled by a
small (serial) call, or by ``fastreg warmup``, was compiled again by the first parallel call of
the next process, and the other way round.
"""
import json
import os
import subprocess
import sys

import numba
import pytest

from fastreg.cpu import _jit

pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="needs Numba's compiler")


@_jit.stepped
def _copy_twice(arrays, a1, a2, a3, a4, tile, steps, t, T):
    x, out = arrays
    for step in steps:
        if step == _jit.NO_STEP:
            continue
        for i in range(t * x.size // T, (t + 1) * x.size // T):
            out[i] = x[i] * tile[0]


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_stepped_review as m
from fastreg.cpu import _jit
e = np.empty(0)
for dtype, nthreads in {runs!r}:
    x = np.arange(64, dtype=dtype)
    out = np.zeros_like(x)
    _jit.launch(m._copy_twice, nthreads, (x, out), e, e, e, e, (2,), (0, _jit.NO_STEP, _jit.NO_STEP))
    assert (out == 2 * x).all()
print(json.dumps({{"misses": sum(m._copy_twice.serial.stats.cache_misses.values()),
                  "parallel": _jit.launches["parallel"]}}))
"""


def _child(cache_dir, runs):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), NUMBA_NUM_THREADS="2")
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)), runs=runs)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_kernel_compiled_serially_is_loaded_by_the_parallel_version_and_back(tmp_path):
    """Process 1 compiles the kernel serially for float32 and in parallel for float64; process
    2, with the same cache, runs them the other way round: it must load both, compile none."""
    first = _child(tmp_path, [("float32", 1), ("float64", 2)])
    assert first["misses"] == 2 and first["parallel"] == 1
    second = _child(tmp_path, [("float32", 2), ("float64", 1)])
    assert second["parallel"] == 1
    assert second["misses"] == 0, "the kernel was compiled again instead of loaded"
