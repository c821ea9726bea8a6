"""Stepped kernels (fastreg/cpu/_jit.py): compiled once, run serially or in shares on Python
threads (_jit._Shares)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastreg.cpu import _jit


@_jit.stepped
def _toy(arrays, a1, a2, a3, a4, tile, steps, t, T):
    """Step 0: tmp = 2 x; step 1: out[i] = tmp[i] + tmp[n - 1 - i] (reads the other shares'
    results of step 0); step 2: raise on a negative x."""
    x, tmp, out = arrays
    n = x.size
    for step in steps:
        if step == _jit.NO_STEP:
            continue
        for i in range(t * n // T, (t + 1) * n // T):
            if step == 0:
                tmp[i] = x[i] * tile[0]
            elif step == 1:
                out[i] = tmp[i] + tmp[n - 1 - i]
            elif step == 2 and x[i] < 0:
                raise ValueError("negative x")


def _args(x, out, steps):
    e = np.empty(0)
    return (x, np.full_like(x, np.nan), out), e, e, e, e, (2.0,), steps


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
@pytest.mark.parametrize("nthreads", [2, 3, 4])
def test_shares_give_the_serial_result_and_steps_are_ordered(n, nthreads):
    """Every share runs, each step starts after the previous one has ended on every thread
    (step 1 reads what other shares wrote in step 0), and the bits equal the serial run's."""
    x = np.random.default_rng(n).standard_normal(n)
    serial, parallel = np.full(n, np.nan), np.full(n, np.nan)
    _jit.launch(_toy, 1, *_args(x, serial, (0, 1, _jit.NO_STEP)))
    before = _jit.launches["parallel"]
    _jit.launch(_toy, nthreads, *_args(x, parallel, (0, 1, _jit.NO_STEP)))
    np.testing.assert_array_equal(serial, 2 * x + (2 * x)[::-1])
    np.testing.assert_array_equal(parallel.view(np.uint64), serial.view(np.uint64))
    if nthreads <= _jit.numba.config.NUMBA_NUM_THREADS and _jit.numba.config.NUMBA_NUM_THREADS > 1:
        assert _jit.launches["parallel"] == before + 1


def test_an_exception_is_raised_serially_and_in_parallel():
    x = np.arange(100.0)
    x[57] = -1.0
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="negative x"):
        _jit.launch(_toy, 1, *_args(x, out, (0, 2, _jit.NO_STEP)))
    if _jit.numba.config.NUMBA_NUM_THREADS > 1:
        with pytest.raises(ValueError, match="negative x"):  # raised by share 1 of 2
            _jit.launch(_toy, 2, *_args(x, out, (0, 2, _jit.NO_STEP)))
        x[57], x[3] = 0.0, -1.0                                  # by share 0
        with pytest.raises(ValueError, match="negative x"):
            _jit.launch(_toy, 2, *_args(x, out, (0, 2, _jit.NO_STEP)))
        x[3] = 0.0   # the workers are free again: the next launch runs in parallel
        before = _jit.launches["parallel"]
        _jit.launch(_toy, 2, *_args(x, out, (0, 1, _jit.NO_STEP)))
        np.testing.assert_array_equal(out, 2 * x + (2 * x)[::-1])
        assert _jit.launches["parallel"] == before + 1


def test_steps_of_another_int_type():
    """The driver passes the steps as int64 whatever ints it was given (the kernel's address is
    looked up for int64 steps)."""
    x = np.random.default_rng(1).standard_normal(100)
    serial, parallel = np.full(100, np.nan), np.full(100, np.nan)
    steps = tuple(np.int32(s) for s in (0, 1, _jit.NO_STEP))
    _jit.launch(_toy, 1, *_args(x, serial, steps))
    _jit.launch(_toy, 2, *_args(x, parallel, steps))
    np.testing.assert_array_equal(serial, 2 * x + (2 * x)[::-1])
    np.testing.assert_array_equal(parallel, serial)


def test_one_kernel_compile_for_both_versions():
    """The parallel launch runs the serial version's compiled code: no second compile."""
    if not hasattr(_toy.serial, "signatures"):
        pytest.skip("NUMBA_DISABLE_JIT: nothing is compiled")
    x = np.ones(10, np.float32)
    _jit.launch(_toy, 1, *_args(x, np.empty_like(x), (0, _jit.NO_STEP, _jit.NO_STEP)))
    f32 = [s for s in _toy.serial.signatures if s[0].dtype.dtype == _jit.numba.float32]
    assert len(f32) == 1
    _jit.launch(_toy, 2, *_args(x, np.empty_like(x), (0, _jit.NO_STEP, _jit.NO_STEP)))
    assert [s for s in _toy.serial.signatures if s[0].dtype.dtype == _jit.numba.float32] == f32


def test_concurrent_launches_from_python_threads():
    """Launches from several Python threads at once: one holds the workers, the others run
    serially on their own thread; every result is right."""
    n, rounds = 4000, 30
    xs = [np.random.default_rng(i).standard_normal(n) for i in range(4)]
    errors = []

    def run(x):
        try:
            for _ in range(rounds):
                out = np.full(n, np.nan)
                _jit.launch(_toy, 2, *_args(x, out, (0, 1, _jit.NO_STEP)))
                np.testing.assert_array_equal(out, 2 * x + (2 * x)[::-1])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(x,)) for x in xs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[0]


_FORK_CHILD = """
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_stepped as m
from fastreg.cpu import _jit
x = np.arange(1000.0)
def check(nthreads):
    out = np.full_like(x, np.nan)
    _jit.launch(m._toy, nthreads, *m._args(x, out, (0, 1, _jit.NO_STEP)))
    assert (out == 2 * x + (2 * x)[::-1]).all()
check(2)                       # the parent's workers are started
pid = os.fork()
if pid == 0:
    try:
        check(2)               # the child's own workers (the parent's did not survive fork)
        check(1)
    except BaseException:
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
check(2)
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_launches_in_parallel():
    """After the parent started its workers, a forked child's parallel launch starts workers of
    its own and completes (fastreg's ops run serially in such a child; _jit itself must not
    hang there either)."""
    code = _FORK_CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


@_jit.split
def _scale(x, out, factor, t, T):
    """A one-step kernel: out = factor * x, share t of T."""
    n = x.size
    for i in range(t * n // T, (t + 1) * n // T):
        out[i] = x[i] * factor


@pytest.mark.parametrize("n", [0, 1, 5, 1000])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_a_split_kernel_runs_its_shares_once(n, nthreads):
    x = np.random.default_rng(n).standard_normal(n)
    out = np.full(n, np.nan)
    before = dict(_jit.launches)
    _jit.launch(_scale, nthreads, x, out, 3.0)
    np.testing.assert_array_equal(out, 3.0 * x)
    parallel = nthreads > 1 and _jit.numba.config.NUMBA_NUM_THREADS > 1
    assert _jit.launches["parallel"] - before["parallel"] == int(parallel)
    assert _jit.launches["serial"] - before["serial"] == int(not parallel)
