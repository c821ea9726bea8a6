"""Stepped kernels (fastreg/cpu/_jit.py): compiled once, run serially or in shares by the
parallel driver, which calls them through their address."""
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
        with pytest.raises(RuntimeError, match="raised in a parallel share"):
            _jit.launch(_toy, 2, *_args(x, out, (0, 2, _jit.NO_STEP)))


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
    """The parallel version runs the serial version's compiled code (its signatures are the
    kernel's), and compile(sig) prepares the driver for a signature the kernel has (warmup)."""
    if not hasattr(_toy.serial, "signatures"):
        pytest.skip("NUMBA_DISABLE_JIT: nothing is compiled")
    x = np.ones(10, np.float32)
    _jit.launch(_toy, 1, *_args(x, np.empty_like(x), (0, _jit.NO_STEP, _jit.NO_STEP)))
    f32 = [s for s in _toy.serial.signatures if s[0].dtype.dtype == _jit.numba.float32]
    assert len(f32) == 1
    _toy.parallel.compile(f32[0])
    assert [s for s in _toy.serial.signatures if s[0].dtype.dtype == _jit.numba.float32] == f32
    assert f32[0] in _toy.parallel.signatures
    driver = [s for s in _jit._stepped_driver.signatures if s[1:7] == f32[0][:6]]
    assert len(driver) == 1, _jit._stepped_driver.signatures
