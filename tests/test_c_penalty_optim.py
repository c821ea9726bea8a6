"""Backend "c" penalty and optimizer kernels (csrc/penalty.c, csrc/optim.c) against the NumPy
reference: bit for bit (any NaN matching any NaN, see assert_bits), except penalty_sums (rtol
1e-12) and group_lasso (a few ulp, exact zeros where the reference has zeros).

Both element-loop paths are held to the reference: AVX2 (where the CPU has it) and portable C;
and the three streaming-store modes for the ops with one output. Sizes cross the vector widths,
the 64-byte head, the tiles (64 KiB of output) and the OpenMP threshold (32768); views start off
the 64-byte alignment (x[1:]) or off the dtype's alignment (through an aligned copy).
"""
import itertools
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastreg.c as fc
from fastreg import reference

if fc.unavailable_reason() is not None:
    pytest.skip(f"C backend unavailable: {fc.unavailable_reason()}", allow_module_level=True)

# the reference overflows and makes NaNs from inf - inf on the special values, as it should
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SIZES = [0, 1, 7, 1000, 100003]
FLOATS = [np.float32, np.float64]


def bits(a):
    """The bit patterns of a float array (so -0.0 != +0.0 and NaN == NaN of the same bits)."""
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bits(got, expected, msg=""):
    """Bit for bit, except that a NaN matches any NaN.

    Which NaN an operation on two NaNs returns (the sign and payload of the first or of the
    second operand) is not fixed even within NumPy: its SIMD loop and its remainder loop give
    different answers for the same pair. Where the reference has a NaN the kernel must have one
    too, and every other element, signed zeros included, must have the reference's exact bits.
    """
    assert got.dtype == expected.dtype
    nan = np.isnan(expected)
    assert_array_equal(np.isnan(got), nan, err_msg=f"NaN positions differ: {msg}")
    assert_array_equal(bits(got[~nan]), bits(expected[~nan]), err_msg=msg)


def special_values(n, dtype, seed=0, scale=1.0):
    """Random normals sprinkled with +-0, +-inf, NaNs of both signs, subnormals, tiny and huge."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale).astype(dtype)
    info = np.finfo(dtype)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, info.tiny, -info.tiny,
                         info.smallest_subnormal, -info.smallest_subnormal * 3, info.max,
                         -info.max, 1.0, -1.0, 0.5, -0.5], dtype)
    if n:
        idx = rng.choice(n, size=min(n, 64), replace=False)
        x[idx] = specials[np.arange(idx.size) % specials.size]
        if n >= 16:  # a run of specials, so that they also fall inside vectors
            x[3:3 + specials.size] = specials[:min(specials.size, n - 3)]
    return x


def unaligned_copy(a):
    """A copy of the 1-D array ``a`` whose data is not aligned for its dtype."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    view = raw[1:].view(a.dtype)
    view[...] = a
    assert not view.flags.aligned or a.size == 0
    return view


# ------------------------------------------------------------------ penalty_sums

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_penalty_sums(isa, n, dtype):
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(n + 1) * 3).astype(dtype)
    for x in (w[:n], w[1:]):
        expected, got = reference.penalty_sums(x), fc.penalty_sums(x)
        assert isinstance(got[0], float) and isinstance(got[1], float)
        assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert fc.penalty_sums(unaligned_copy(w[:n])) == pytest.approx(
        reference.penalty_sums(w[:n]), rel=1e-12)


@pytest.mark.parametrize("dtype", FLOATS)
def test_penalty_sums_special(isa, dtype):
    for n in (7, 1000, 100003):
        x = special_values(n, dtype, seed=n)
        x[np.isnan(x)] = 0           # a NaN-free array with inf: sums are inf
        assert_allclose(fc.penalty_sums(x), reference.penalty_sums(x), rtol=1e-12)
        x[n // 2] = np.nan
        assert np.isnan(fc.penalty_sums(x)).all()
        y = np.zeros(n, dtype)
        y[::3] = -0.0
        assert fc.penalty_sums(y) == (0.0, 0.0)


# ------------------------------------------------------------------ penalty_grad

L1_C2 = [(0.5, 0.0), (0.0, 0.25), (0.5, 0.25), (0.0, 0.0), (-0.0, 0.3), (0.5, -0.0), (1e-3, 2.0)]


def check_penalty_grad(w, l1, c2, out0, accumulate, inplace):
    dt = w.dtype.type
    l1, c2 = dt(l1), dt(c2)
    if inplace:
        expected = w.copy()
        reference.penalty_grad(expected, l1, c2, expected, accumulate)
        got = w.copy()
        fc.penalty_grad(got, l1, c2, got, accumulate)
    else:
        expected = out0.copy()
        reference.penalty_grad(w, l1, c2, expected, accumulate)
        got = out0.copy()
        fc.penalty_grad(w, l1, c2, got, accumulate)
    assert_bits(got, expected, f"n={w.size} l1={l1} c2={c2} acc={accumulate} inplace={inplace}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_penalty_grad(isa, stream_stores, n, dtype):
    w = special_values(n + 1, dtype, seed=n)
    out0 = special_values(n + 1, dtype, seed=n + 1)
    for (l1, c2), accumulate in itertools.product(L1_C2, [False, True]):
        check_penalty_grad(w[:n], l1, c2, out0[:n], accumulate, inplace=False)
        check_penalty_grad(w[1:], l1, c2, out0[:n], accumulate, inplace=False)  # w off 64 B
        check_penalty_grad(w[:n], l1, c2, out0[1:], accumulate, inplace=False)  # out off 64 B
        check_penalty_grad(w[1:], l1, c2, None, accumulate, inplace=True)


def test_penalty_grad_sign_of_zero_and_nan():
    # np.sign(-0.0) is +0.0 and np.sign(NaN) the NaN itself: check the edge values directly
    for dtype in FLOATS:
        w = np.array([-0.0, 0.0, -np.nan, np.nan, -2.0, 3.0, -np.inf, np.inf], dtype)
        for accumulate in (False, True):
            for l1, c2 in [(1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]:
                check_penalty_grad(w, l1, c2, np.full_like(w, -0.0), accumulate, False)


@pytest.mark.parametrize("dtype", FLOATS)
def test_penalty_grad_unaligned(dtype):
    w = special_values(1001, dtype)
    out = unaligned_copy(special_values(1001, dtype, seed=5))
    expected = out.copy()
    reference.penalty_grad(w, dtype(0.5), dtype(0.25), expected, True)
    fc.penalty_grad(unaligned_copy(w), dtype(0.5), dtype(0.25), out, True)
    assert_bits(out, expected)


@pytest.mark.parametrize("dtype", FLOATS)
def test_penalty_grad_large_streams(dtype):
    # over the 4 MiB at which the default mode streams an output that is not read
    n = (1 << 20) + 5 if dtype == np.float32 else (1 << 19) + 5
    w = special_values(n + 1, dtype)[1:]
    expected, got = np.empty(n, dtype), np.full(n + 3, 9, dtype)
    reference.penalty_grad(w, dtype(0.5), dtype(0.25), expected, False)
    fc.penalty_grad(w, dtype(0.5), dtype(0.25), got[3:], False)
    assert_bits(got[3:], expected)
    assert_array_equal(got[:3], 9)


# ------------------------------------------------------------------ soft_threshold

T_S = [(0.5, 1.0), (0.0, 1.0), (0.3, 0.8), (1.0, -1.0), (np.inf, 1.0), (1e-40, 2.0)]


def check_soft(w, t, s, inplace, out_shift=0):
    dt = w.dtype.type
    t, s = dt(t), dt(s)
    expected = np.empty_like(w)
    reference.soft_threshold(w, t, s, expected)
    if inplace:
        got = w.copy()
        fc.soft_threshold(got, t, s, got)
    else:
        buf = np.full(w.size + out_shift, 7, w.dtype)
        got = buf[out_shift:]
        fc.soft_threshold(w, t, s, got)
        assert_array_equal(buf[:out_shift], 7)
    assert_bits(got, expected, f"n={w.size} t={t} s={s} inplace={inplace}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_soft_threshold(isa, stream_stores, n, dtype):
    w = special_values(n + 1, dtype, seed=n)
    if n > 20:  # values exactly at +-t, and one ulp either side
        for k, t in enumerate([0.5, 0.3, 1.0]):
            t = dtype(t)
            w[30 + 6 * k: 36 + 6 * k] = [t, -t, np.nextafter(t, 0), np.nextafter(t, 2),
                                         -np.nextafter(t, 0), -np.nextafter(t, 2)]
    for t, s in T_S:
        check_soft(w[:n], t, s, inplace=False)
        check_soft(w[1:], t, s, inplace=False, out_shift=3)
        check_soft(w[1:], t, s, inplace=True)


@pytest.mark.parametrize("dtype", FLOATS)
def test_soft_threshold_zeros_are_exact(dtype):
    w = np.array([0.2, -0.2, 0.5, -0.5, -0.0, 0.0, 0.7, -0.7] * 100, dtype)
    out = np.empty_like(w)
    fc.soft_threshold(w, dtype(0.5), dtype(1.0), out)
    zero = np.abs(w) <= 0.5
    assert_array_equal(bits(out[zero]), 0)      # +0.0, also for -0.2 and -0.0
    fc.soft_threshold(unaligned_copy(w), dtype(0.5), dtype(1.0), out)
    assert_array_equal(bits(out[zero]), 0)
    u = unaligned_copy(w)
    fc.soft_threshold(u, dtype(0.5), dtype(1.0), u)   # in place, through an aligned copy
    assert_bits(u, out)


# ------------------------------------------------------------------ group_lasso

SHAPES = [(0, 3, 2), (2, 0, 3), (1, 1, 1), (3, 7, 1), (2, 5, 3), (4, 100, 7), (2, 3, 1000),
          (1, 100003, 1), (3, 2, 600), (200, 40, 9)]


def check_group_lasso(w, t, inplace):
    expected = np.empty_like(w)
    reference.group_lasso(w, t, expected)
    if inplace:
        got = w.copy()
        fc.group_lasso(got, t, got)
    else:
        got = np.full_like(w, 7)
        fc.group_lasso(w, t, got)
    zero = expected == 0
    assert_bits(got[zero], expected[zero], f"shape={w.shape} t={t}")  # zeros exact, with sign
    eps = np.finfo(w.dtype).eps
    assert_allclose(got, expected, rtol=4 * eps, atol=0, equal_nan=True,
                    err_msg=f"shape={w.shape} t={t}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_group_lasso(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape).astype(dtype)
    if w.size:
        norms = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1))
        med = dtype(np.median(norms))
        A, L, B = shape
        w[0, :, 0] = 0                      # a zero group
        if B > 1 and L > 1:
            w[-1, 0, -1] = -0.0
            w[-1, 1:, -1] = 0               # a group of +-0: exact zeros with their signs
    else:
        med = dtype(1)
    for t in (dtype(0), med * dtype(0.5), med, med * dtype(10)):
        check_group_lasso(w, t, inplace=False)
        check_group_lasso(w, t, inplace=True)


@pytest.mark.parametrize("dtype", FLOATS)
def test_group_lasso_special(dtype):
    w = special_values(6 * 5 * 4, dtype, seed=3).reshape(6, 5, 4)
    for t in (dtype(0), dtype(0.5), dtype(2)):
        check_group_lasso(w, t, inplace=False)
    # one-element groups with |w| == t exactly: the norm is exact, the group becomes zero
    w = np.array([0.5, -0.5, 0.25, -1.0], dtype).reshape(4, 1, 1)
    got = np.empty_like(w)
    fc.group_lasso(w, dtype(0.5), got)
    assert_bits(got[:2], np.array([0.0, -0.0], dtype).reshape(2, 1, 1))


# ------------------------------------------------------------------ all_finite

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_all_finite(isa, n, dtype):
    rng = np.random.default_rng(n)
    base = rng.standard_normal(n + 1).astype(dtype)
    info = np.finfo(dtype)
    if n > 4:
        base[1:5] = [info.max, -info.max, info.smallest_subnormal, -0.0]
    assert fc.all_finite(base[1:]) is True
    assert fc.all_finite(base[:n]) == reference.all_finite(base[:n])
    if n == 0:
        return
    for bad in (np.nan, np.inf, -np.inf, -np.nan):
        for pos in sorted({0, n // 2, n - 1}):
            x = base[1:].copy()
            x[pos] = bad
            assert fc.all_finite(x) is False, (bad, pos)
            assert fc.all_finite(unaligned_copy(x)) is False


# ------------------------------------------------------------------ sgd_step

# (momentum, nesterov): no buffer; heavy ball; Nesterov
MOMENTA = [(0.0, False), (0.9, False), (0.9, True)]


def sgd_steps(impl, p, g_seq, momentum, nesterov, lr, wd, decay, damp1, l1t):
    dt = p.dtype.type
    p = p.copy()
    buf = np.full_like(p, 123.0) if momentum else None   # junk: the first step overwrites it
    for k, g in enumerate(g_seq):
        impl.sgd_step(p, g, buf, dt(lr), dt(wd), dt(decay), dt(momentum), dt(damp1),
                      nesterov, k == 0, dt(l1t))
    return p, buf


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
@pytest.mark.parametrize("momentum,nesterov", MOMENTA)
def test_sgd_step(isa, n, dtype, momentum, nesterov):
    rng = np.random.default_rng(n)
    p0 = special_values(n + 1, dtype, seed=n)[1:]      # off 64 B
    g_seq = [special_values(n, dtype, seed=n + 10 + k, scale=0.1) for k in range(3)]
    g_seq[1] = (rng.standard_normal(n) * 0.1).astype(dtype)  # a step without specials
    for wd, decay, l1t in itertools.product([0.0, 1e-2], [1.0, 0.999], [0.0, 1e-3]):
        for damp1 in ([1.0, 0.75] if momentum else [1.0]):
            args = (momentum, nesterov, 0.1, wd, decay, damp1, l1t)
            p_ref, b_ref = sgd_steps(reference, p0, g_seq, *args)
            p_c, b_c = sgd_steps(fc, p0, g_seq, *args)
            msg = f"n={n} momentum={momentum} nesterov={nesterov} wd={wd} decay={decay} l1t={l1t}"
            assert_bits(p_c, p_ref, msg)
            if momentum:
                assert_bits(b_c, b_ref, msg)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sgd_step_l1_gives_exact_zeros(dtype):
    p = np.array([1e-4, -1e-4, 0.5, -0.5] * 10, dtype)
    g = np.zeros_like(p)
    fc.sgd_step(p, g, None, dtype(0.1), dtype(0), dtype(1), dtype(0), dtype(1), False, True,
                dtype(1e-3))
    assert_array_equal(bits(p[0::4]), 0)
    assert_array_equal(bits(p[1::4]), 0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sgd_step_unaligned(dtype):
    n = 1001
    p0 = special_values(n, dtype)
    g_seq = [special_values(n, dtype, seed=k + 1) for k in range(2)]
    p_ref, b_ref = sgd_steps(reference, p0, g_seq, 0.9, True, 0.1, 1e-2, 0.999, 0.75, 1e-3)
    p, buf = unaligned_copy(p0), unaligned_copy(np.zeros(n, dtype))
    for k, g in enumerate(g_seq):
        fc.sgd_step(p, unaligned_copy(g), buf, dtype(0.1), dtype(1e-2), dtype(0.999),
                    dtype(0.9), dtype(0.75), True, k == 0, dtype(1e-3))
    assert_bits(p, p_ref)
    assert_bits(buf, b_ref)


# ------------------------------------------------------------------ adam_step

def adam_steps(impl, p, g_seq, wd, decay, amsgrad, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
               state=None):
    """Steps 1, 2, ... with the scalars a wrapper would pass (cast to the dtype)."""
    dt = p.dtype.type
    p = p.copy()
    if state is None:
        m, v = np.zeros_like(p), np.zeros_like(p)
        vmax = np.zeros_like(p) if amsgrad else None
    else:
        m, v, vmax = (None if s is None else s.copy() for s in state)
    for t, g in enumerate(g_seq, start=1):
        step_size = lr / (1 - beta1 ** t)
        bc2_sqrt = np.sqrt(1 - beta2 ** t)
        impl.adam_step(p, g, m, v, vmax, dt(wd), dt(decay), dt(1 - beta1), dt(beta2),
                       dt(1 - beta2), dt(eps), dt(step_size), dt(bc2_sqrt))
    return p, m, v, vmax


def assert_adam_equal(got, expected, msg):
    for name, a, b in zip("p m v vmax".split(), got, expected):
        if b is None:
            assert a is None
        else:
            assert_bits(a, b, f"{name}: {msg}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_step(isa, n, dtype, amsgrad):
    p0 = special_values(n + 1, dtype, seed=n)[1:]
    rng = np.random.default_rng(n)
    g_seq = [special_values(n, dtype, seed=n + 10 + k, scale=0.1) for k in range(3)]
    g_seq[1] = (rng.standard_normal(n) * 0.1).astype(dtype)
    g_seq[2][::5] *= 30                       # v shrinks for some, grows for others
    for wd, decay in itertools.product([0.0, 1e-2], [1.0, 1 - 1e-3 * 1e-2]):
        got = adam_steps(fc, p0, g_seq, wd, decay, amsgrad)
        expected = adam_steps(reference, p0, g_seq, wd, decay, amsgrad)
        assert_adam_equal(got, expected, f"n={n} wd={wd} decay={decay} amsgrad={amsgrad}")


@pytest.mark.parametrize("dtype", FLOATS)
def test_adam_amsgrad_max_is_nan_propagating(isa, dtype):
    # beta2 = 1, omb2 = -0.0: v keeps its bits (v * 1 + -0.0), so vmax = max(vmax, v) sees the
    # pairs below exactly: signed zeros, NaN on either side, NaNs of both signs
    pairs = [(0.0, -0.0), (-0.0, 0.0), (np.nan, 1.0), (1.0, np.nan), (np.nan, -np.nan),
             (-np.nan, np.nan), (2.0, 1.0), (1.0, 2.0), (np.inf, np.nan), (-0.0, -0.0)]
    vmax0 = np.array([a for a, _ in pairs] * 7, dtype)
    v0 = np.array([b for _, b in pairs] * 7, dtype)
    n = v0.size
    p0, g = np.ones(n, dtype), np.full(n, 0.5, dtype)
    outs = []
    for impl in (reference, fc):
        p, m, v, vmax = p0.copy(), np.zeros(n, dtype), v0.copy(), vmax0.copy()
        impl.adam_step(p, g, m, v, vmax, dtype(0), dtype(1), dtype(0.1), dtype(1), dtype(-0.0),
                       dtype(1e-8), dtype(1e-3), dtype(1))
        outs.append((p, m, v, vmax))
    assert_bits(outs[0][2], v0)               # the premise: v unchanged
    assert_adam_equal(outs[1], outs[0], "amsgrad max")


@pytest.mark.parametrize("dtype", FLOATS)
def test_adam_step_unaligned(dtype):
    n = 1001
    p0 = special_values(n, dtype)
    g_seq = [special_values(n, dtype, seed=k + 1, scale=0.1) for k in range(2)]
    expected = adam_steps(reference, p0, g_seq, 1e-2, 0.99, True)
    p = unaligned_copy(p0)
    m, v, vmax = (unaligned_copy(np.zeros(n, dtype)) for _ in range(3))
    for t, g in enumerate(g_seq, start=1):
        fc.adam_step(p, unaligned_copy(g), m, v, vmax, dtype(1e-2), dtype(0.99), dtype(1 - 0.9),
                     dtype(0.999), dtype(1 - 0.999), dtype(1e-8), dtype(1e-3 / (1 - 0.9 ** t)),
                     dtype(np.sqrt(1 - 0.999 ** t)))
    assert_adam_equal((p, m, v, vmax), expected, "unaligned")


# ------------------------------------------------------------------ the C entry points

def test_bad_arguments_give_status_codes():
    ffi, lib = fc.ffi, fc.lib
    x = np.zeros(4, np.float32)
    px = ffi.from_buffer("float[]", x, require_writable=True)
    d = ffi.new("double[2]")
    r = ffi.new("int *")
    FR_ERR_NULL, FR_ERR_SIZE = 1, 2
    assert lib.fr_penalty_sums_f32(px, -1, d, d + 1) == FR_ERR_SIZE
    assert lib.fr_penalty_sums_f32(ffi.NULL, 4, d, d + 1) == FR_ERR_NULL
    assert lib.fr_penalty_grad_f32(px, 1, 0, ffi.NULL, 0, 4) == FR_ERR_NULL
    assert lib.fr_soft_threshold_f32(px, 1, 1, px, -5) == FR_ERR_SIZE
    assert lib.fr_group_lasso_f32(px, 1, px, 2, -1, 2) == FR_ERR_SIZE
    assert lib.fr_all_finite_f32(px, 4, ffi.NULL) == FR_ERR_NULL
    assert lib.fr_sgd_step_f32(px, ffi.NULL, ffi.NULL, 1, 0, 1, 0, 1, 0, 1, 0, 1, 4) == FR_ERR_NULL
    assert lib.fr_adam_step_f32(px, px, px, ffi.NULL, ffi.NULL, 0, 1, 0.1, 0.9, 0.1, 1e-8, 1, 1,
                                1, 4) == FR_ERR_NULL
    assert lib.fr_adam_step_f32(px, px, px, px, ffi.NULL, 0, 1, 0.1, 0.9, 0.1, 1e-8, 1, 1,
                                1, -1) == FR_ERR_SIZE
    # n == 0 with valid pointers is fine
    assert lib.fr_penalty_grad_f32(px, 1, 0, px, 0, 0) == 0
    assert lib.fr_all_finite_f32(px, 0, r) == 0 and r[0] == 1


def test_results_do_not_depend_on_thread_count():
    import subprocess
    import sys
    code = ("import numpy as np, fastreg.c as fc\n"
            "w = np.random.default_rng(1).standard_normal(300001).astype(np.float32)\n"
            "p = w.copy(); buf = np.zeros_like(w)\n"
            "f = np.float32\n"
            "fc.sgd_step(p, w[::-1].copy(), buf, f(0.1), f(0.01), f(0.99), f(0.9), f(1), True,"
            " True, f(1e-3))\n"
            "print(repr(fc.penalty_sums(w)), p.view(np.uint32).sum(dtype=np.uint64))\n")
    outs = set()
    for threads in ("1", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        # run from the directory that holds the fastreg under test (site-packages when
        # installed), so the child imports it and not the sources next to the tests
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(fc.__file__))))
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=root,
                                capture_output=True, text=True).stdout)
    assert len(outs) == 1, outs
