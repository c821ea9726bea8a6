"""The CUDA penalty and optimizer kernels against the NumPy reference.

Bit for bit (as bit patterns, so signed zeros count) except for the reductions: penalty_sums
within rtol 1e-12 and group_lasso within a few ulp (its float64 norm is summed in another order),
with exact zeros where the reference has zeros. Every op runs on device arrays and on host arrays.

Runs on a GPU or under Numba's simulator on tiny inputs:

    NUMBA_ENABLE_CUDASIM=1 FASTREG_CUDA_TPB=32 python -m pytest tests/test_cuda_penalty_optim.py -q

On a GPU, arithmetic returns a canonical NaN, so there NaNs are compared by position only; under
the simulator their payloads and signs must match too.
"""
import itertools

import numpy as np
import pytest

import fastreg.cuda as fcuda
from fastreg import reference

_REASON = fcuda.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"CUDA backend unavailable: {_REASON}", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: only usable when the backend is)

from fastreg.cuda import philox as cphilox  # noqa: E402

SIM = cphilox._simulated()
# NaN and inf inputs are the point here: NumPy's warnings about them are expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
SIZES = (0, 1, 7, 33, 1000, 4099)
DTYPES = (np.float32, np.float64)
WHERE = ("device", "host")


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setenv("FASTREG_CUDA_TPB", "32")


# --- helpers -------------------------------------------------------------------------------------

def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _assert_bits(got, expected):
    """Same bit patterns; on a GPU, NaNs only at the same places (payload and sign are its own)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if not SIM:
        nan = np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), nan)
        got, expected = got[~nan], expected[~nan]
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def _poison(shape, dtype):
    """All bytes 0xA5, so an element the kernel skipped shows."""
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xA5
    return a


def _neg_nan(dtype):
    """A NaN with the sign bit set and a payload other than the default one."""
    a = np.array([np.nan], dtype)
    _bits(a)[...] |= (1 << (8 * a.itemsize - 1)) | 5
    return a[0]


def _w(n, dtype, rng, specials=True, t=0.5):
    """Random weights; the first elements are special values, +-t among them (soft threshold
    boundaries), and some exact zeros."""
    w = (rng.standard_normal(n) * 0.7).astype(dtype)
    if specials:
        sp = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, t, -t, 1e-40, -1e-310, 3.0],
                      dtype)
        sp = np.concatenate([sp, [_neg_nan(dtype)]])
        k = min(n, len(sp))
        w[:k] = sp[:k]
    return w


def _call(op, where, arrays, *scalars):
    """Run ``op(*arrays, *scalars)`` on device copies (then copied back into ``arrays``) or on
    the host arrays themselves. ``arrays`` may hold None (passed through)."""
    if where == "host":
        return op(*arrays, *scalars)
    dev = [None if a is None else cuda.to_device(a) for a in arrays]
    result = op(*dev, *scalars)
    for a, d in zip(arrays, dev):
        if a is not None:
            d.copy_to_host(a)
    return result


# --- penalty_sums --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_penalty_sums(n, dtype, where):
    rng = np.random.default_rng(n)
    for specials in (False, True):
        w = _w(n, dtype, rng, specials=specials and n > 3)
        expected = reference.penalty_sums(w)
        got = _call(lambda a: fcuda.penalty_sums(a), where, [w])
        assert isinstance(got[0], float) and isinstance(got[1], float)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    if n >= 4:  # inf without NaN: both sums inf
        w = _w(n, dtype, rng, specials=False)
        w[n // 2] = -np.inf
        assert _call(lambda a: fcuda.penalty_sums(a), where, [w]) == (np.inf, np.inf)


# --- penalty_grad --------------------------------------------------------------------------------

L1_C2 = ((0.01, 0.0), (0.0, 0.1), (0.01, 0.1), (0.0, 0.0), (0.03, -0.0))


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_penalty_grad(n, dtype, where):
    rng = np.random.default_rng(100 + n)
    w = _w(n, dtype, rng)
    for (l1, c2), accumulate in itertools.product(L1_C2, (False, True)):
        l1, c2 = dtype(l1), dtype(c2)
        start = _w(n, dtype, rng)[::-1].copy() if accumulate else _poison(n, dtype)
        expected = start.copy()
        reference.penalty_grad(w, l1, c2, expected, accumulate)
        got = start.copy()
        _call(lambda a, o: fcuda.penalty_grad(a, l1, c2, o, accumulate), where, [w, got])
        _assert_bits(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_grad_out_is_w(dtype):
    w = _w(33, dtype, np.random.default_rng(3))
    l1, c2 = dtype(0.01), dtype(0.1)
    expected = w.copy()
    reference.penalty_grad(w, l1, c2, expected, True)
    w_d = cuda.to_device(w)
    fcuda.penalty_grad(w_d, l1, c2, w_d, True)
    _assert_bits(w_d.copy_to_host(), expected)


# --- soft_threshold ------------------------------------------------------------------------------

@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_soft_threshold(n, dtype, where):
    rng = np.random.default_rng(200 + n)
    for t, s in ((0.5, 1.0), (0.5, 1.0 / 1.2), (0.0, 1.0), (3.0, 0.75)):
        t, s = dtype(t), dtype(s)
        w = _w(n, dtype, rng, t=t)
        expected = _poison(n, dtype)
        reference.soft_threshold(w, t, s, expected)
        got = _poison(n, dtype)
        _call(lambda a, o: fcuda.soft_threshold(a, t, s, o), where, [w, got])
        _assert_bits(got, expected)
        in_place = w.copy()  # out is w
        _call(lambda a: fcuda.soft_threshold(a, t, s, a), where, [in_place])
        _assert_bits(in_place, expected)


# --- group_lasso ---------------------------------------------------------------------------------

SHAPES = ((0, 3, 2), (2, 0, 3), (1, 1, 1), (2, 3, 5), (3, 33, 1), (1, 7, 40), (4, 5, 33),
          (2, 130, 3))


def _groups(shape, dtype, rng):
    """Weights of shape (A, L, B) whose groups have norms 0.25, 0.5, 2, 4 or 8 times the
    threshold, returned with it: f = 1 - t / norm is then 0 or at least 1/2, so the float64 norm's
    rounding moves the result by a few ulp at most. Some groups are zero, one holds a NaN, one an
    inf (when there are enough groups)."""
    a, l, b = shape
    w = rng.standard_normal(shape)
    norms = np.sqrt(np.einsum("alb,alb->ab", w, w))[:, None, :]
    w = w / np.where(norms > 0, norms, 1.0) * rng.choice([0.25, 0.5, 2.0, 4.0, 8.0], (a, 1, b))
    w = (w * 0.3).astype(dtype)
    if a * b >= 4 and l >= 1:
        w[0, :, 0] = 0.0
        w[0, :, 1] = -0.0
        w[-1, 0, -1] = np.nan
        w[-1, -1, -2] = -np.inf
    return w, dtype(0.3)


def _assert_close_ulp(got, expected, ulps):
    """Exact where the reference is 0 or not finite, else within ``ulps`` ulp."""
    got, expected = np.asarray(got), np.asarray(expected)
    special = (expected == 0) | ~np.isfinite(expected)
    _assert_bits(got[special], expected[special])
    diff = np.abs(got[~special].astype(np.float64) - expected[~special].astype(np.float64))
    bound = ulps * np.spacing(np.abs(expected[~special])).astype(np.float64)
    assert np.all(diff <= bound), f"max diff {diff.max()} > bound"


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_group_lasso(shape, dtype, where):
    rng = np.random.default_rng(sum(shape))
    w, t = _groups(shape, dtype, rng)
    for tt in (t, dtype(0)):
        expected = _poison(shape, dtype)
        reference.group_lasso(w, tt, expected)
        got = _poison(shape, dtype)
        _call(lambda a, o: fcuda.group_lasso(a, tt, o), where, [w, got])
        _assert_close_ulp(got, expected, 4)
        if tt == t and w.size and shape[0] * shape[2] >= 4:  # both kinds of groups occur
            assert np.any(np.all(expected == 0, axis=1)) and np.any(np.all(expected != 0, axis=1))


# --- all_finite ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_all_finite(n, dtype, where):
    rng = np.random.default_rng(300 + n)
    w = _w(n, dtype, rng, specials=False)
    w[: min(n, 2)] = [-0.0, 1e-40][: min(n, 2)]
    assert _call(lambda a: fcuda.all_finite(a), where, [w]) is True
    assert reference.all_finite(w) is True
    for pos in sorted({0, n // 2, n - 1}) if n else ():
        for bad in (np.nan, np.inf, -np.inf):
            v = w.copy()
            v[pos] = bad
            assert _call(lambda a: fcuda.all_finite(a), where, [v]) is False


# --- sgd_step ------------------------------------------------------------------------------------

def _sgd_cases():
    # (wd, decay, momentum or None, damp1, nesterov, l1t)
    for wd, decay, l1t in itertools.product((0.0, 1e-2), (1.0, 0.99), (0.0, 1e-3)):
        yield wd, decay, None, 1.0, False, l1t
        yield wd, decay, 0.9, 0.9, False, l1t   # dampening 0.1
        yield wd, decay, 0.9, 1.0, True, l1t


def _sgd_steps(p0, grads, buf0, dtype, case, where, op):
    """``len(grads)`` consecutive steps of ``op``; returns (p, buf)."""
    wd, decay, momentum, damp1, nesterov, l1t = case
    p = p0.copy()
    buf = None if momentum is None else buf0.copy()
    d = dtype
    for k, g in enumerate(grads):
        args = (d(0.1), d(wd), d(decay), d(momentum or 0.0), d(damp1), nesterov, k == 0, d(l1t))
        if op is None:
            reference.sgd_step(p, g, buf, *args)
        else:
            _call(op, where, [p, g, buf], *args)
    return p, buf


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step_all_branches(dtype, where):
    rng = np.random.default_rng(7)
    n = 33
    p0 = _w(n, dtype, rng, t=dtype(1e-3))
    grads = [_w(n, dtype, rng, specials=(k == 1)) for k in range(3)]
    buf0 = _poison(n, dtype)  # the first step must overwrite it
    for case in _sgd_cases():
        p_exp, buf_exp = _sgd_steps(p0, grads, buf0, dtype, case, where, None)
        p_got, buf_got = _sgd_steps(p0, grads, buf0, dtype, case, where, fcuda.sgd_step)
        _assert_bits(p_got, p_exp)
        if buf_exp is not None:
            _assert_bits(buf_got, buf_exp)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sgd_step_sizes(n, dtype, where):
    rng = np.random.default_rng(400 + n)
    p0 = _w(n, dtype, rng)
    grads = [_w(n, dtype, rng, specials=False) for _ in range(2)]
    for case in ((1e-2, 0.99, 0.9, 0.9, True, 1e-3), (0.0, 1.0, None, 1.0, False, 0.0)):
        p_exp, buf_exp = _sgd_steps(p0, grads, _poison(n, dtype), dtype, case, where, None)
        p_got, buf_got = _sgd_steps(p0, grads, _poison(n, dtype), dtype, case, where,
                                    fcuda.sgd_step)
        _assert_bits(p_got, p_exp)
        if buf_exp is not None:
            _assert_bits(buf_got, buf_exp)


# --- adam_step -----------------------------------------------------------------------------------

def _adam_steps(p0, grads, dtype, wd, decay, amsgrad, where, op, vmax0=None):
    """Consecutive Adam steps from zero state, scalars as torch.optim.Adam derives them."""
    n = p0.size
    p = p0.copy()
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    vmax = (np.zeros(n, dtype) if vmax0 is None else vmax0.copy()) if amsgrad else None
    lr, beta1, beta2, eps = 1e-3, 0.9, 0.999, 1e-8
    d = dtype
    for k, g in enumerate(grads, start=1):
        args = (d(wd), d(decay), d(1 - beta1), d(beta2), d(1 - beta2), d(eps),
                d(lr / (1 - beta1 ** k)), d(np.sqrt(1 - beta2 ** k)))
        if op is None:
            reference.adam_step(p, g, m, v, vmax, *args)
        else:
            _call(op, where, [p, g, m, v, vmax], *args)
    return p, m, v, vmax


def _assert_adam(got, expected):
    for a, b in zip(got, expected):
        if b is None:
            assert a is None
        else:
            _assert_bits(a, b)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_step_all_branches(dtype, where):
    rng = np.random.default_rng(11)
    n = 33
    p0 = _w(n, dtype, rng)
    grads = [_w(n, dtype, rng, specials=(k == 2)) * dtype(k + 1) for k in range(4)]
    vmax0 = np.abs(_w(n, dtype, rng, specials=False)) * dtype(1e-3)
    vmax0[:4] = [np.nan, -0.0, 0.0, np.inf]  # NaN-propagating max, ties, inf
    for g in grads:  # v stays +0 there: ties with vmax = -0 and +0 (np.maximum gives v)
        g[1:3] = [0.0, -0.0]
    for wd, decay, amsgrad, v0 in itertools.product((0.0, 1e-2), (1.0, 0.99), (False, True),
                                                    (None, vmax0)):
        if v0 is not None and not amsgrad:
            continue
        exp = _adam_steps(p0, grads, dtype, wd, decay, amsgrad, where, None, v0)
        got = _adam_steps(p0, grads, dtype, wd, decay, amsgrad, where, fcuda.adam_step, v0)
        _assert_adam(got, exp)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_adam_step_sizes(n, dtype, where):
    rng = np.random.default_rng(500 + n)
    p0 = _w(n, dtype, rng)
    grads = [_w(n, dtype, rng, specials=False) for _ in range(2)]
    for wd, decay, amsgrad in ((1e-2, 0.99, True), (0.0, 1.0, False)):
        exp = _adam_steps(p0, grads, dtype, wd, decay, amsgrad, where, None)
        got = _adam_steps(p0, grads, dtype, wd, decay, amsgrad, where, fcuda.adam_step)
        _assert_adam(got, exp)


# --- import hygiene ------------------------------------------------------------------------------

def test_no_float64_in_float32_kernels():
    """The kernels' scalars are cast to the array dtype: float32 in, float32 out."""
    w = _w(33, np.float32, np.random.default_rng(1))
    out = cuda.to_device(_poison(33, np.float32))
    fcuda.penalty_grad(cuda.to_device(w), 0.01, 0.1, out, False)  # Python floats are cast
    expected = _poison(33, np.float32)
    reference.penalty_grad(w, np.float32(0.01), np.float32(0.1), expected, False)
    _assert_bits(out.copy_to_host(), expected)
