"""Backend "cpu" (Numba) penalty and optimizer kernels against the NumPy reference.

Elementwise ops and optimizer steps are compared bit for bit (signed zeros included); the only
freedom is a NaN's payload and sign, which LLVM may pick from either operand of a commutative
add or multiply where two NaNs meet. penalty_sums and group_lasso's norms are reductions in
another order: a relative tolerance, and group_lasso's exact zeros must stay exact.
Sizes cross the vector widths, the parallel task (2**16) and the streaming-store threshold
(4 MiB); outputs start on and off a 64-byte boundary, so the streaming kernels run with and
without their unaligned head.
"""
import functools

import numpy as np
import pytest

pytest.importorskip("numba")

from fastreg import cpu, reference  # noqa: E402
from fastreg.cpu import penalty as cpu_penalty  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's inf/NaN math

FLOATS = [np.float32, np.float64]
SIZES = [0, 1, 7, 1000, 100003]
BIG = {np.float32: (1 << 20) + 37, np.float64: (1 << 19) + 37}   # just over 4 MiB: streamed


def uint(dtype):
    return np.uint32 if dtype == np.float32 else np.uint64


def assert_same(got, expected):
    """Equal bit patterns, except that any NaN matches any NaN."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan_g, nan_e = np.isnan(got), np.isnan(expected)
    np.testing.assert_array_equal(nan_g, nan_e, err_msg="NaN positions differ")
    u = uint(got.dtype)
    g, e = got.view(u)[~nan_g], expected.view(u)[~nan_e]
    bad = np.flatnonzero(g != e)
    assert bad.size == 0, (f"{bad.size} of {g.size} differ, first: got {got[~nan_g][bad[0]]!r} "
                           f"expected {expected[~nan_e][bad[0]]!r}")


def specials(dtype):
    """The values every kernel must get right: signed zeros, NaN, infinities, subnormals."""
    fi = np.finfo(dtype)
    return np.array([0.0, -0.0, np.nan, np.inf, -np.inf, fi.smallest_subnormal,
                     -fi.smallest_subnormal, fi.tiny, -fi.tiny, fi.max, -fi.max, 1.0, -1.0],
                    dtype)


@functools.lru_cache(maxsize=256)
def _values(n, dtype, seed, scale, special):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * scale).astype(dtype)
    if special and n:
        s = specials(dtype)
        k = min(n, s.size)
        a[:k] = s[:k]
        idx = rng.integers(0, n, size=min(n, 40))
        a[idx] = rng.choice(s, size=idx.size)
    a.flags.writeable = False
    return a


def data(n, dtype, seed=0, scale=1.0, special=True, offset=0):
    """n values (normal, times scale) with the special values at the front and scattered, as a
    fresh view starting ``offset`` elements into its buffer (so off 64-byte alignment)."""
    return copy_at(_values(n, dtype, seed, scale, special), offset)


def copy_at(a, offset):
    """A copy of a, starting ``offset`` elements into a fresh buffer."""
    buf = np.empty(a.size + offset, a.dtype)
    buf[offset:] = a
    return buf[offset:]


def copy_skewed(a, skew):
    """A copy of a whose first element lies ``skew`` elements past a 64-byte boundary."""
    per_line = 64 // a.itemsize
    buf = np.empty(a.size + 2 * per_line, a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + skew
    out = buf[start:start + a.size]
    out[...] = a
    return out


# --- penalty_grad -------------------------------------------------------------------------------

GRAD_COEFS = [(0.01, 0.0), (0.0, 0.003), (0.01, 0.003), (0.0, 0.0), (-0.5, 2.5)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("l1, c2", GRAD_COEFS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_penalty_grad(dtype, n, l1, c2, accumulate):
    w = data(n, dtype)
    start = data(n, dtype, seed=1)
    got, expected = start.copy(), start.copy()
    reference.penalty_grad(w, dtype(l1), dtype(c2), expected, accumulate)
    cpu.penalty_grad(w, dtype(l1), dtype(c2), got, accumulate)
    assert_same(got, expected)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("skew", [0, 3])
@pytest.mark.parametrize("l1, c2", GRAD_COEFS[:3])
@pytest.mark.parametrize("accumulate", [False, True])
def test_penalty_grad_big(dtype, skew, l1, c2, accumulate):
    n = BIG[dtype]
    w = data(n, dtype, offset=1)
    start = data(n, dtype, seed=1)
    expected = start.copy()
    got = copy_skewed(start, skew)
    if cpu_penalty.CAN_STREAM and not accumulate:  # streamed, after a head of this many
        assert cpu_penalty._stream_head(w, got) == (-skew) % (64 // got.itemsize)
    reference.penalty_grad(w, dtype(l1), dtype(c2), expected, accumulate)
    cpu.penalty_grad(w, dtype(l1), dtype(c2), got, accumulate)
    assert_same(got, expected)


def test_penalty_grad_sign_of_zero_and_nan():
    """np.sign's convention, which the kernel copies: sgn(-0) = +0, sgn(NaN) = NaN."""
    w = np.array([-0.0, 0.0, np.nan, -np.nan, 2.0, -3.0], np.float32)
    out = np.empty_like(w)
    cpu.penalty_grad(w, np.float32(0.5), np.float32(0), out, False)
    assert_same(out, np.array([0.0, 0.0, np.nan, np.nan, 0.5, -0.5], np.float32))


# --- soft_threshold -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("t, s", [(0.5, 1.0), (0.0, 1.0), (0.3, 0.8), (np.inf, 1.0)])
@pytest.mark.parametrize("inplace", [False, True])
def test_soft_threshold(dtype, n, t, s, inplace):
    w = data(n, dtype)
    expected = np.empty_like(w)
    reference.soft_threshold(w, dtype(t), dtype(s), expected)
    if inplace:
        got = w.copy()
        cpu.soft_threshold(got, dtype(t), dtype(s), got)
    else:
        got = np.full_like(w, 7)
        cpu.soft_threshold(w, dtype(t), dtype(s), got)
    assert_same(got, expected)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("skew", [0, 1, 3])
@pytest.mark.parametrize("inplace", [False, True])
def test_soft_threshold_big(dtype, skew, inplace):
    w = data(BIG[dtype], dtype, offset=1)
    expected = np.empty_like(w)
    reference.soft_threshold(w, dtype(0.7), dtype(0.9), expected)
    if inplace:
        got = w
        cpu.soft_threshold(got, dtype(0.7), dtype(0.9), got)
    else:
        got = copy_skewed(np.zeros_like(w), skew)
        if cpu_penalty.CAN_STREAM:
            assert cpu_penalty._stream_head(w, got) == (-skew) % (64 // got.itemsize)
        cpu.soft_threshold(w, dtype(0.7), dtype(0.9), got)
    assert_same(got, expected)


def test_soft_threshold_exact_zeros():
    w = np.array([0.5, -0.5, 0.25, -0.0, 0.0, 0.75, -0.75, np.nan], np.float32)
    out = np.empty_like(w)
    cpu.soft_threshold(w, np.float32(0.5), np.float32(1), out)
    assert_same(out, np.array([0, 0, 0, 0, 0, 0.25, -0.25, np.nan], np.float32))
    assert not np.signbit(out[:5]).any()  # +0 everywhere, the sparse weights are exact


# --- penalty_sums -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES + [(1 << 17) + 3])
@pytest.mark.parametrize("special", [False, True])
def test_penalty_sums(dtype, n, special):
    w = data(n, dtype, special=False, scale=3.0)
    if special and n:
        w[n // 2] = np.inf if n % 2 else -np.inf
        w[0] = -0.0
    got = cpu.penalty_sums(w)
    expected = reference.penalty_sums(w)
    assert all(type(x) is float for x in got)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_penalty_sums_nan_and_tiny(dtype):
    s = specials(dtype)
    got = cpu.penalty_sums(s)
    assert np.isnan(got[0]) and np.isnan(got[1])
    tiny = np.full(1001, np.finfo(dtype).smallest_subnormal, dtype)
    np.testing.assert_allclose(cpu.penalty_sums(tiny), reference.penalty_sums(tiny), rtol=1e-12)


# --- group_lasso --------------------------------------------------------------------------------

def assert_group_close(got, expected, w):
    """Within a few ulp of the dtype relative to |w| (f differs in the last bits of float64,
    then is rounded once to the dtype); exact zeros wherever the reference has zeros."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    eps = np.finfo(w.dtype).eps
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])
    err = np.abs(got[finite].astype(np.float64) - expected[finite])
    assert np.all(err <= 4 * eps * np.abs(w[finite].astype(np.float64)))
    zero = expected == 0
    u = uint(w.dtype)
    np.testing.assert_array_equal(got[zero].view(u), expected[zero].view(u))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0, 4), (1, 1, 1), (7, 5, 1), (2, 1000, 1),
                                   (3, 7, 5), (4, 9, 1030), (1, 3, 2049), (5, 100003 // 5, 1)])
@pytest.mark.parametrize("t", [0.0, 0.8, 3.0])
def test_group_lasso(dtype, shape, t):
    n = int(np.prod(shape))
    w = data(n, dtype, special=False).reshape(shape)
    if n:
        w.reshape(-1)[::11] = 0.0
        w[0] = 0.0          # a zero-norm group
        w[-1] *= 1e-3       # small groups: exact zeros
    expected = np.empty_like(w)
    got = np.full_like(w, 7)
    reference.group_lasso(w, dtype(t), expected)
    cpu.group_lasso(w, dtype(t), got)
    assert_group_close(got, expected, w)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("b", [1, 3])
def test_group_lasso_boundary_and_specials(dtype, b):
    """Norm exactly t (3-4-5 groups: exact in any order) gives exact zeros; NaN and inf groups."""
    base = np.array([[3.0, 4.0], [-3.0, 4.0], [3.0, -4.0], [6.0, 8.0], [np.nan, 1.0],
                     [np.inf, 1.0], [-0.0, 0.0], [1e-30, -0.0]])
    w = np.repeat(base[:, :, None], b, axis=2).astype(dtype)
    expected = np.empty_like(w)
    got = np.empty_like(w)
    reference.group_lasso(w, dtype(5), expected)
    cpu.group_lasso(w, dtype(5), got)
    assert_group_close(got, expected, w)
    assert not np.any(got[:3])
    assert_same(got[:3], expected[:3])


@pytest.mark.parametrize("shape", [(4, 9, 1030), (7, 300, 1)])
def test_group_lasso_inplace(shape):
    w = data(int(np.prod(shape)), np.float32, special=False).reshape(shape)
    expected = np.empty_like(w)
    reference.group_lasso(w, np.float32(3.0), expected)
    cpu.group_lasso(w, np.float32(3.0), w)
    assert_group_close(w, expected, expected)


# --- all_finite ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES + [(1 << 17) + 3])
def test_all_finite(dtype, n):
    w = data(n, dtype, special=False)
    fi = np.finfo(dtype)
    if n:
        w[0] = fi.max
        w[-1] = -fi.smallest_subnormal
        w[n // 2] = -0.0
    assert cpu.all_finite(w) is True
    for where in (sorted({0, n // 3, n - 1}) if n else []):
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            v = w.copy()
            v[where] = bad
            assert cpu.all_finite(v) is False


# --- sgd_step -----------------------------------------------------------------------------------

SGD_CASES = [(mom, nest, wd, decay, l1t)
             for mom in ("none", "first", "later")
             for nest in (False, True) if not (nest and mom == "none")
             for wd in (0.0, 1e-2)
             for decay in (1.0, 0.999)
             for l1t in (0.0, 1e-3)]


def sgd_steps(step, dtype, n, mom, nesterov, wd, decay, l1t, steps=3, special=True):
    """Runs ``steps`` steps of ``step`` and returns the final p and buf."""
    f = dtype
    p = data(n, dtype, seed=2, special=special)
    buf = None if mom == "none" else data(n, dtype, seed=3, scale=0.1, special=special)
    lr, momentum, damp1 = f(0.05), f(0.9 if mom != "none" else 0), f(0.75)
    for k in range(steps):
        g = data(n, dtype, seed=10 + k, scale=0.1, special=special)
        first = mom == "first" and k == 0
        step(p, g, buf, lr, f(wd), f(decay), momentum, damp1, nesterov, first, f(l1t))
    return p, buf


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mom, nesterov, wd, decay, l1t", SGD_CASES)
def test_sgd_step(dtype, mom, nesterov, wd, decay, l1t):
    args = (dtype, 4099, mom, nesterov, wd, decay, l1t)
    p_exp, buf_exp = sgd_steps(reference.sgd_step, *args)
    p_got, buf_got = sgd_steps(cpu.sgd_step, *args)
    assert_same(p_got, p_exp)
    if buf_exp is not None:
        assert_same(buf_got, buf_exp)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 7, 100003])
@pytest.mark.parametrize("mom", ["none", "first", "later"])
def test_sgd_step_sizes(dtype, n, mom):
    args = (dtype, n, mom, mom == "later", 1e-2, 0.999, 1e-3)
    for got, expected in zip(sgd_steps(cpu.sgd_step, *args),
                             sgd_steps(reference.sgd_step, *args)):
        if expected is not None:
            assert_same(got, expected)


def test_sgd_step_l1_makes_exact_zeros():
    p, _ = sgd_steps(cpu.sgd_step, np.float32, 1000, "later", False, 0.0, 1.0, 0.5, special=False)
    assert np.count_nonzero(p == 0) > 100 and not np.signbit(p[p == 0]).any()


# --- adam_step ----------------------------------------------------------------------------------

ADAM_CASES = [(wd, decay, ams) for wd in (0.0, 1e-2) for decay in (1.0, 0.999)
              for ams in (False, True)]


def adam_steps(step, dtype, n, wd, decay, amsgrad, steps=4, special=True):
    """``steps`` Adam steps from t = 1, with the caller-side scalars computed as the public
    wrapper does (in float64, then cast once to the dtype)."""
    f = dtype
    beta1, beta2, lr, eps = 0.9, 0.999, 1e-2, 1e-8
    p = data(n, dtype, seed=4, special=special)
    m = data(n, dtype, seed=5, scale=0.01, special=False)
    v = np.abs(data(n, dtype, seed=6, scale=1e-4, special=False))
    vmax = None
    if amsgrad:
        vmax = np.abs(data(n, dtype, seed=7, scale=1e-4, special=False))
        if n > 3:
            vmax[:3] = [-0.0, np.nan, 0.0]
    for t in range(1, steps + 1):
        g = data(n, dtype, seed=20 + t, scale=0.1, special=special)
        step(p, g, m, v, vmax, f(wd), f(decay), f(1 - beta1), f(beta2), f(1 - beta2), f(eps),
             f(lr / (1 - beta1 ** t)), f(np.sqrt(1 - beta2 ** t)))
    return p, m, v, vmax


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 7, 4099, 100003])
@pytest.mark.parametrize("wd, decay, amsgrad", ADAM_CASES)
def test_adam_step(dtype, n, wd, decay, amsgrad):
    args = (dtype, n, wd, decay, amsgrad)
    for got, expected in zip(adam_steps(cpu.adam_step, *args),
                             adam_steps(reference.adam_step, *args)):
        if expected is not None:
            assert_same(got, expected)


def test_adam_amsgrad_max_convention():
    """np.maximum(vmax, v): ties and v NaN take v, a NaN vmax stays."""
    f = np.float32
    p = np.zeros(4, f)
    g = np.array([0.0, 0.0, np.nan, 1.0], f)
    m = np.zeros(4, f)
    v = np.zeros(4, f)
    vmax = np.array([-0.0, 0.0, 1.0, np.nan], f)
    state = [a.copy() for a in (p, m, v, vmax)]
    scalars = (f(0), f(1), f(0.1), f(0.999), f(0.001), f(1e-8), f(0.01), f(0.5))
    cpu.adam_step(p, g, m, v, vmax, *scalars)
    assert_same(vmax, np.array([0.0, 0.0, np.nan, np.nan], f))
    assert not np.signbit(vmax[0])
    reference.adam_step(state[0], g, *state[1:], *scalars)
    for got, expected in zip((p, m, v, vmax), state):
        assert_same(got, expected)
