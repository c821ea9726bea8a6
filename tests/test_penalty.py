"""Penalties, their gradients and the proximal steps: every backend vs the reference."""
import math

import numpy as np
import pytest
from conftest import big, bits

import fastreg

SIZES = [0, 1, 7, 1000, 4099]
DTYPES = [np.float32, np.float64]
SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-300, 3.0, -3.0]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def weights(n, dtype, seed=0, special=True):
    w = np.random.default_rng(seed).standard_normal(n).astype(dtype)
    if special and n >= len(SPECIAL):
        w[:len(SPECIAL)] = np.array(SPECIAL).astype(dtype)
    return w


# ---- penalty values -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_values(backend, dtype):
    ws = [weights(n, dtype, seed=n, special=False) for n in (0, 1, 1000, 4099)]
    w64 = np.concatenate([w.astype(np.float64) for w in ws])
    l1 = 0.3 * np.abs(w64).sum()
    l2 = 0.7 * (w64 ** 2).sum()
    # float64 accumulation: only the summation order differs between backends
    assert fastreg.l1_penalty(ws, 0.3, backend=backend) == pytest.approx(l1, rel=1e-12)
    assert fastreg.l2_penalty(ws, 0.7, backend=backend) == pytest.approx(l2, rel=1e-12)
    assert fastreg.elastic_net_penalty(ws, 0.3, 0.7, backend=backend) == pytest.approx(
        l1 + l2, rel=1e-12)
    assert fastreg.l2_penalty(ws[2], 0.7, backend=backend) == pytest.approx(
        0.7 * (ws[2].astype(np.float64) ** 2).sum(), rel=1e-12)


def test_penalty_accumulates_in_float64(backend):
    n = big(backend, 1 << 22)
    w = np.full(n, 0.1, np.float32)
    expected = n * float(np.float32(0.1))
    assert fastreg.l1_penalty(w, 1.0, backend=backend) == pytest.approx(expected, rel=1e-12)


def test_penalty_special_values(backend):
    assert np.isnan(fastreg.l1_penalty(np.array([1.0, np.nan]), 1.0, backend=backend))
    assert fastreg.l2_penalty(np.array([np.inf], np.float32), 1.0, backend=backend) == np.inf
    assert fastreg.l1_penalty(np.zeros(0, np.float32), 1.0, backend=backend) == 0.0


# ---- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["l1", "l2", "elastic"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_grad_vs_reference(kernel_backend, n, dtype, kind, accumulate):
    w = weights(n, dtype)
    g0 = weights(n, dtype, seed=1, special=False)
    fn = {"l1": lambda w, **k: fastreg.l1_grad(w, 0.25, **k),
          "l2": lambda w, **k: fastreg.l2_grad(w, 0.25, **k),
          "elastic": lambda w, **k: fastreg.elastic_net_grad(w, 0.25, 0.125, **k)}[kind]
    expected = g0.copy() if accumulate else None
    expected = fn(w, out=expected, accumulate=accumulate, backend="numpy")
    out = g0.copy() if accumulate else None
    if kernel_backend == "cuda" and out is not None:
        from numba import cuda
        out = cuda.to_device(out)
        got = fn(cuda.to_device(w), out=out, accumulate=True).copy_to_host()
    else:
        got = host(fn(w, out=out, accumulate=accumulate, backend=kernel_backend))
    np.testing.assert_array_equal(bits(got), bits(expected))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the reference's
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1, l2", [(0.1, 1 / 3), (1e-45, 7e-46), (1.0000001, 0.30000001),
                                    (3.3e38, 1.65e38), (0.0, 2.0 ** -126 * 1.5),
                                    # just below the refused 2**128 - 2**103: rounds to the
                                    # largest float32
                                    (float(np.nextafter(2.0 ** 128 - 2.0 ** 103, 0)), 0.0)])
def test_grad_strengths_rounded_as_the_dtype(kernel_backend, dtype, l1, l2):
    """Strengths that the dtype cannot hold exactly (subnormal, next to the largest float32)
    are rounded as the dtype rounds them on every backend (the C backend takes Python floats,
    which cffi rounds): the reference's bits."""
    if kernel_backend == "cuda":
        pytest.skip("host arrays")
    if dtype == np.float32 and max(l1, 2 * l2) >= 2.0 ** 128 - 2.0 ** 103:
        pytest.skip("beyond float32: refused (test_strength_that_overflows_the_dtype)")
    w = weights(1000, dtype)
    for fn in (lambda **k: fastreg.l2_grad(w, l2, **k),
               lambda **k: fastreg.elastic_net_grad(w, l1, l2, **k),
               lambda **k: fastreg.l1_grad(w, l1, **k)):
        np.testing.assert_array_equal(bits(fn(backend=kernel_backend)),
                                      bits(fn(backend="numpy")))


def test_grad_definitions():
    w = np.array([-2.0, -0.0, 0.0, 0.5, np.nan, np.inf])
    np.testing.assert_array_equal(fastreg.l1_grad(w, 0.5, backend="numpy"),
                                  0.5 * np.sign(w))
    np.testing.assert_array_equal(fastreg.l2_grad(w, 0.5, backend="numpy"), 2 * 0.5 * w)
    np.testing.assert_array_equal(fastreg.elastic_net_grad(w[:4], 0.5, 0.25, backend="numpy"),
                                  0.5 * np.sign(w[:4]) + 0.5 * w[:4])
    assert not np.signbit(fastreg.l1_grad(w, 0.5, backend="numpy")[1])  # sign(-0) = +0


def test_grad_matches_finite_differences():
    rng = np.random.default_rng(3)
    w = rng.standard_normal(20)
    w[np.abs(w) < 0.05] = 0.3  # stay away from the kink of |w|
    for f, g in ((lambda v: fastreg.l1_penalty(v, 0.3), fastreg.l1_grad(w, 0.3)),
                 (lambda v: fastreg.l2_penalty(v, 0.3), fastreg.l2_grad(w, 0.3)),
                 (lambda v: fastreg.elastic_net_penalty(v, 0.3, 0.2),
                  fastreg.elastic_net_grad(w, 0.3, 0.2))):
        h = 1e-6
        fd = np.array([(f(w + h * e) - f(w - h * e)) / (2 * h) for e in np.eye(w.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_torch_weight_decay_is_l2_with_half_lambda():
    """SGD(weight_decay=wd) adds wd * w: the gradient of l2_penalty with lam = wd / 2."""
    w = weights(100, np.float64, special=False)
    np.testing.assert_allclose(fastreg.l2_grad(w, 0.01 / 2), 0.01 * w, rtol=0, atol=0)


def test_grad_non_contiguous_and_in_place(backend):
    if backend == "cuda":
        pytest.skip("host strides")
    base = weights(300, np.float32, special=False).reshape(30, 10)
    w = base[::2, ::3]
    expected = fastreg.l2_grad(np.ascontiguousarray(w), 0.5, backend="numpy")
    np.testing.assert_array_equal(fastreg.l2_grad(w, 0.5, backend=backend), expected)
    out = np.ones((30, 10), np.float32)[::2, ::3]
    fastreg.l2_grad(w, 0.5, out=out, accumulate=True, backend=backend)
    np.testing.assert_array_equal(out, expected + np.float32(1))
    v = weights(50, np.float32, special=False)
    ref = fastreg.l1_grad(v, 0.5, backend="numpy")
    assert fastreg.l1_grad(v, 0.5, out=v, backend=backend) is v
    np.testing.assert_array_equal(v, ref)


# ---- proximal steps -------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_prox_vs_reference(kernel_backend, n, dtype):
    for fn in (lambda w, **k: fastreg.prox_l1(w, 0.5, **k),
               lambda w, **k: fastreg.prox_elastic_net(w, 0.5, 0.25, **k)):
        w = weights(n, dtype)
        expected = fn(w.copy(), backend="numpy")
        if kernel_backend == "cuda":
            from numba import cuda
            d = cuda.to_device(w)
            assert fn(d) is d
            got = d.copy_to_host()
        else:
            got = w.copy()
            assert fn(got, backend=kernel_backend) is got
        np.testing.assert_array_equal(bits(got), bits(expected))


def test_prox_l1_exact_zeros_and_survivors(backend):
    w = np.array([-3.0, -0.5, -0.25, 0.0, 0.1, 0.5, 0.75, 2.0, np.nan], np.float64)
    got = host(fastreg.prox_l1(w.copy(), 0.5, backend=backend)) if backend != "cuda" else None
    if got is None:
        from numba import cuda
        d = cuda.to_device(w)
        fastreg.prox_l1(d, 0.5)
        got = d.copy_to_host()
    np.testing.assert_array_equal(got[:8], [-2.5, 0, 0, 0, 0, 0, 0.25, 1.5])
    assert np.all(bits(got[1:6]) == 0)  # exact +0.0
    assert np.isnan(got[8])
    w = np.array([1.0, -1.0, 0.2])
    np.testing.assert_allclose(fastreg.prox_elastic_net(w, 0.5, 0.5, backend="numpy"),
                               [0.25, -0.25, 0.0])


@pytest.mark.parametrize("shape,axis", [((6, 5), 1), ((6, 5), 0), ((3, 4, 5), 1), ((7,), 0),
                                        ((4, 3), -1), ((0, 3), 1), ((3, 0), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_lasso_vs_reference(backend, shape, axis, dtype):
    w = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    if w.ndim >= 2 and w.shape[0] > 1 and w.size:
        w[1] *= 0.01   # some groups fall below the threshold
    expected = fastreg.prox_group_lasso(w.copy(), 0.8, axis, backend="numpy")
    if backend == "cuda":
        from numba import cuda
        d = cuda.to_device(w)
        fastreg.prox_group_lasso(d, 0.8, axis)
        got = d.copy_to_host()
    else:
        got = fastreg.prox_group_lasso(w.copy(), 0.8, axis, backend=backend)
    # norms are float64 reductions: a few ulp of the dtype; zeros must be exact
    np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(got == 0, expected == 0)
    # by hand: group norms after the step are max(0, norm - t)
    norms = np.linalg.norm(w.astype(np.float64), axis=axis)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=axis),
                               np.maximum(norms - 0.8, 0), rtol=1e-5, atol=1e-6)


def test_group_lasso_threshold_is_float64(backend):
    """The threshold stays float64 on every backend (issue 13: the C kernel took a float)."""
    w = np.random.default_rng(237).standard_normal((2, 2, 3, 6)).astype(np.float32)
    t = 1.3890672562778141
    expected = fastreg.prox_group_lasso(w.copy(), t, 2, backend="numpy")
    got = fastreg.prox_group_lasso(w.copy(), t, 2, backend=backend)
    np.testing.assert_array_equal(got, expected)
    # a group whose float64 norm lies between t and float32(t) > t: kept (factor 1 - t / norm
    # > 0), where a float32 threshold would zero it
    t32 = float(np.float32(t))
    assert t < t32
    pair = None
    for a in np.float32(1.0) + np.arange(64, dtype=np.float32) * np.float32(2 ** -10):
        b = np.float32(np.sqrt(((t + t32) / 2) ** 2 - float(a) ** 2))
        for cand in (b, np.nextafter(b, np.float32(0)), np.nextafter(b, np.float32(2))):
            norm = np.sqrt(float(a) ** 2 + float(cand) ** 2)
            if t < norm < t32:
                pair = (a, cand)
                break
        if pair:
            break
    assert pair is not None
    g = np.array([[pair[0], 3.0], [pair[1], 4.0]], np.float32)  # groups: columns (axis 0)
    expected = fastreg.prox_group_lasso(g.copy(), t, 0, backend="numpy")
    got = fastreg.prox_group_lasso(g.copy(), t, 0, backend=backend)
    assert np.all(expected[:, 0] != 0)
    np.testing.assert_array_equal(got, expected)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_strengths(bad):
    w = np.ones(3, np.float32)
    for call, name in ((lambda: fastreg.l1_penalty(w, bad), "lam"),
                       (lambda: fastreg.l2_grad(w, bad), "lam"),
                       (lambda: fastreg.elastic_net_penalty(w, 0.1, bad), "l2"),
                       (lambda: fastreg.elastic_net_grad(w, bad, 0.1), "l1"),
                       (lambda: fastreg.prox_l1(w, bad), "threshold"),
                       (lambda: fastreg.prox_elastic_net(w, 0.1, bad), "l2_threshold"),
                       (lambda: fastreg.prox_group_lasso(w, bad, 0), "threshold")):
        with pytest.raises(ValueError, match=name):
            call()
    assert np.all(w == 1)


def test_bad_arrays():
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        fastreg.l1_penalty(np.ones(3, np.int64), 0.1)
    with pytest.raises(TypeError, match=r"w\[1\] must be float32"):
        fastreg.l1_penalty([np.ones(3), np.ones(3, np.int32)], 0.1)
    with pytest.raises(ValueError, match="accumulate=True"):
        fastreg.l1_grad(np.ones(3), 0.1, accumulate=True)
    with pytest.raises(ValueError, match="out must have shape"):
        fastreg.l1_grad(np.ones(3), 0.1, out=np.ones(4))
    with pytest.raises(TypeError, match="updated in place"):
        fastreg.prox_l1([1.0, 2.0], 0.1)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastreg.prox_l1(ro, 0.1)
    with pytest.raises(ValueError, match="axis"):
        fastreg.prox_group_lasso(np.ones((2, 2)), 0.1, 2)


def test_strength_that_overflows_the_dtype():
    with pytest.raises(ValueError, match="overflows float32"):
        fastreg.l1_grad(np.zeros(3, np.float32), 1e300)
    fastreg.l1_grad(np.zeros(3), 1e300)  # fine in float64


def test_byte_swapped_input_gets_a_clear_error():
    with pytest.raises(TypeError, match="native byte order"):
        fastreg.l2_grad(np.arange(3, dtype=">f4"), 0.1)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
def test_zero_d_16_bit_gradients_keep_their_shape(backend):
    """A 0-d float16/bfloat16 w gives a 0-d gradient, as float32 does (found by review: (1,))."""
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"{backend} unavailable")
    import ml_dtypes
    for dt in (np.float16, ml_dtypes.bfloat16):
        w = np.array(-3.0, dt)
        for got in (fastreg.l1_grad(w, 0.5, backend=backend),
                    fastreg.l2_grad(w, 0.5, backend=backend),
                    fastreg.elastic_net_grad(w, 0.5, 0.25, backend=backend)):
            assert got.shape == () and got.dtype == dt
        assert float(fastreg.l1_grad(w, 0.5, backend=backend)) == -0.5


def test_prox_threshold_beyond_the_dtype_is_refused():
    """A float32 threshold of 1e39 would round to inf (and turn inf weights into 0): refused
    as the gradients refuse such strengths; float64 takes it."""
    w = np.array([np.inf, 1.0, -2.0], np.float32)
    for f in (lambda a: fastreg.prox_l1(a, 1e39), lambda a: fastreg.prox_elastic_net(a, 1e39, 0)):
        with pytest.raises(ValueError, match="overflows float32"):
            f(w)
    np.testing.assert_array_equal(w, [np.inf, 1.0, -2.0])
    w64 = w.astype(np.float64)
    fastreg.prox_l1(w64, 1e39)
    assert w64[1] == 0 and w64[2] == 0


def test_zero_strength_penalty_is_zero_even_for_an_overflowed_sum(backend):
    """lam = 0 drops the term, as elastic_net_penalty and the gradients do: 0, not
    0 * inf = NaN, when the sum overflows (or w holds inf)."""
    for w in (np.array([1e200, 1.0]), np.array([np.inf, 1.0], np.float32)):
        assert fastreg.l1_penalty(w, 0.0, backend=backend) == 0.0
        assert fastreg.l2_penalty(w, 0.0, backend=backend) == 0.0
        assert fastreg.elastic_net_penalty(w, 0.0, 0.0, backend=backend) == 0.0
    assert fastreg.l2_penalty(np.array([1e200, 1.0]), 1.0, backend=backend) == math.inf
