"""Batch norm: every backend against a float64 per-channel oracle, finite differences and torch.

Tolerances (one table, TOL below). Batch norm is a reduction: backends sum in different orders, so
results are compared within a budget, not bit for bit. Every budget is ``k * eps(dtype) * scale``
where ``scale`` is the size of the terms that are rounded (for y = (x - mean) * s + b that is
|x| * |s| + |b|: the mean itself is rounded to x's dtype, which costs up to half an ulp of |x|
times the scale, the same limit PyTorch has), or a relative budget for float64 sums.
"""
import numpy as np
import pytest
from conftest import CUDA_SIM

import fastreg
from fastreg.batchnorm import BatchNormSaved

DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}

# op -> k in the budget k * eps(dtype) * scale (see the module docstring)
TOL = {
    "y": 8,             # forward output; scale = max|x| * max|w * invstd| + max|b| (+ max|res|)
    "grad_x": 32,       # scale = max(|a g| + (|x| + |mean|) |b| + |d|) of the backward formula
    "grad_param": 16,   # grad_weight / grad_bias; scale = sum |g| * (1 + |xhat|)
    "running": 4,       # running stats: float64 math, one rounding to the dtype; scale = |value|
}
STATS_RTOL = 1e-9       # float64 mean and M2 (relative to max|x| and to M2 + n * eps * max|x|^2)

# (shape, axis); tiny enough for the CUDA simulator
SHAPES = [((4, 3), 1), ((2, 5, 7), 1), ((3, 4, 5, 6), 1), ((3, 4, 5, 6), -1),
          ((1, 2, 9, 9), 1), ((16, 1), 1), ((5, 4, 3), 2), ((2, 3, 1, 1), 1)]
BIG_SHAPES = [((8, 16, 32, 33), 1), ((4, 17, 19, 64), -1), ((512, 96), 1), ((2, 3000, 7), 1)]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def shapes_for(backend):
    return SHAPES if (backend == "cuda" and CUDA_SIM) else SHAPES + BIG_SHAPES


def data(shape, dtype, seed=0, loc=0.5, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


def params(C, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype),
            rng.standard_normal(C).astype(dtype) * 0.1, rng.uniform(0.5, 2.0, C).astype(dtype))


# ---- the oracle: a float64 loop over channels ----------------------------------------------------

def oracle_forward(x, axis, training, rm=None, rv=None, w=None, b=None, eps=1e-5, momentum=0.1,
                   residual=None, relu=False):
    """(y, mean, var_biased, new_rm, new_rv) in float64, one channel at a time."""
    xc = np.moveaxis(x.astype(np.float64), axis, -1)
    C = xc.shape[-1]
    y = np.empty_like(xc)
    means, variances = np.empty(C), np.empty(C)
    new_rm = None if rm is None else rm.astype(np.float64).copy()
    new_rv = None if rv is None else rv.astype(np.float64).copy()
    for c in range(C):
        v = xc[..., c]
        if training:
            mu = v.mean()
            var = ((v - mu) ** 2).mean()
            if rm is not None:
                new_rm[c] = (1 - momentum) * new_rm[c] + momentum * mu
                new_rv[c] = (1 - momentum) * new_rv[c] + momentum * var * v.size / (v.size - 1)
        else:
            mu, var = float(rm[c]), float(rv[c])
        means[c], variances[c] = mu, var
        wc = 1.0 if w is None else float(w[c])
        bc = 0.0 if b is None else float(b[c])
        y[..., c] = (v - mu) / np.sqrt(var + eps) * wc + bc
    y = np.moveaxis(y, -1, axis)
    if residual is not None:
        y = y + residual.astype(np.float64)
    if relu:
        y = np.maximum(y, 0)
    return y, means, variances, new_rm, new_rv


def oracle_backward(gy, x, y, axis, mean, var, eps, w, training):
    """(grad_x, grad_w, grad_b, g) in float64, one channel at a time; y is the ReLU output or None."""
    g = gy.astype(np.float64) if y is None else np.where(y > 0, gy.astype(np.float64), 0.0)
    gc = np.moveaxis(g, axis, -1)
    xc = np.moveaxis(x.astype(np.float64), axis, -1)
    C = xc.shape[-1]
    gx = np.empty_like(xc)
    gw, gb = np.empty(C), np.empty(C)
    for c in range(C):
        inv = 1.0 / np.sqrt(var[c] + eps)
        xhat = (xc[..., c] - mean[c]) * inv
        gcc = gc[..., c]
        wc = 1.0 if w is None else float(w[c])
        gw[c], gb[c] = (gcc * xhat).sum(), gcc.sum()
        if training:
            gx[..., c] = wc * inv * (gcc - gcc.mean() - xhat * (gcc * xhat).mean())
        else:
            gx[..., c] = wc * inv * gcc
    return np.moveaxis(gx, -1, axis), gw, gb, g


def assert_close(got, expected, k, dtype, scale, what):
    got = host(got).astype(np.float64)
    budget = k * EPS[dtype] * scale
    err = np.abs(got - expected)
    both_nan = np.isnan(got) & np.isnan(expected)
    err = np.where(both_nan, 0.0, err)
    assert np.all(err <= budget), (f"{what}: max error {np.nanmax(err):.3g} > budget "
                                   f"{np.max(budget):.3g}")


def channel_scale(v, axis, ndim):
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


# ---- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", ["plain", "affine", "relu", "residual_relu"])
def test_forward_matches_oracle(backend, dtype, training, variant):
    for shape, axis in shapes_for(backend):
        C = shape[axis]
        x = data(shape, dtype, seed=sum(shape))
        w, b, rm, rv = params(C, dtype)
        rm0, rv0 = rm.copy(), rv.copy()
        affine = variant != "plain"
        relu = variant in ("relu", "residual_relu")
        res = data(shape, dtype, seed=7) if variant == "residual_relu" else None
        y, saved = fastreg.batch_norm(x, rm, rv, w if affine else None, b if affine else None,
                                      training=training, axis=axis, residual=res,
                                      activation="relu" if relu else None, backend=backend)
        ey, emean, evar, erm, erv = oracle_forward(
            x, axis, training, rm0, rv0, w if affine else None, b if affine else None,
            residual=res, relu=relu)
        inv = 1.0 / np.sqrt(evar + 1e-5)
        s = np.abs(inv * (w.astype(np.float64) if affine else 1.0))
        scale = np.abs(x).max() * s.max() + (np.abs(b).max() if affine else 0.0) + 1.0
        if res is not None:
            scale += np.abs(res).max()
        what = f"{backend} {shape} axis={axis} {variant} training={training}"
        assert host(y).dtype == dtype and host(y).shape == shape
        assert_close(y, ey, TOL["y"], dtype, scale, what)
        assert isinstance(saved, BatchNormSaved)
        np.testing.assert_allclose(host(saved.mean), emean, rtol=STATS_RTOL,
                                   atol=STATS_RTOL * np.abs(x).max())
        np.testing.assert_allclose(host(saved.invstd), inv, rtol=1e-9)
        if training:
            # terms: (1 - m) * r and m * batch statistic (the mean is itself rounded at |x|)
            sm = np.abs(rm0) + 0.1 * (np.abs(emean) + np.abs(x).max())
            sv = np.abs(rv0) + 0.1 * np.abs(erv)
            slack = 1 + STATS_RTOL / EPS[dtype]  # the float64 statistics' own summation error
            assert_close(rm, erm, TOL["running"], dtype, sm * slack, what + " running_mean")
            assert_close(rv, erv, TOL["running"], dtype, sv * slack, what + " running_var")
        else:
            np.testing.assert_array_equal(rm, rm0)
            np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stats_match_oracle(backend, dtype):
    for shape, axis in shapes_for(backend):
        x = data(shape, dtype, seed=3)
        count, mean, m2 = fastreg.batch_norm_stats(x, axis=axis, backend=backend)
        _, emean, evar, _, _ = oracle_forward(x, axis, True)
        n = x.size // shape[axis]
        assert count == n
        np.testing.assert_allclose(host(mean), emean, rtol=STATS_RTOL,
                                   atol=STATS_RTOL * np.abs(x).max())
        np.testing.assert_allclose(host(m2), evar * n, rtol=STATS_RTOL,
                                   atol=STATS_RTOL * n * np.abs(x).max() ** 2 * EPS[dtype])


@pytest.mark.parametrize("loc", [1e4, 1e6, -3e5])
def test_statistics_are_stable(backend, loc):
    """float32 data with a large mean and std 1: E[x^2] - E[x]^2 in float32 fails this."""
    shape = (8, 4, 6, 6) if (backend == "cuda" and CUDA_SIM) else (64, 4, 32, 32)
    x = data(shape, np.float32, seed=11, loc=loc, scale=1.0)
    x64 = x.astype(np.float64)
    true_var = x64.var(axis=(0, 2, 3))  # the variance of the float32 values themselves
    _, mean, m2 = fastreg.batch_norm_stats(x, backend=backend)
    n = x.size // shape[1]
    np.testing.assert_allclose(host(m2) / n, true_var, rtol=1e-6)
    np.testing.assert_allclose(host(mean), x64.mean(axis=(0, 2, 3)), rtol=1e-12)
    rv = np.ones(4, np.float32)
    y, saved = fastreg.batch_norm(x, np.zeros(4, np.float32), rv, training=True, backend=backend)
    np.testing.assert_allclose(1.0 / host(saved.invstd) ** 2, true_var + 1e-5, rtol=1e-6)
    # y is limited by the rounding of the float32 mean: half an ulp of |x|, in units of std
    ulp = np.spacing(np.float32(abs(loc)))
    yt = (x64 - x64.mean(axis=(0, 2, 3))[None, :, None, None]) / np.sqrt(
        true_var + 1e-5)[None, :, None, None]
    assert np.abs(host(y) - yt).max() <= 2 * ulp + 1e-4


# ---- backward --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", ["plain", "affine", "relu", "residual_relu"])
def test_backward_matches_oracle(backend, dtype, training, variant):
    for shape, axis in shapes_for(backend):
        C = shape[axis]
        x = data(shape, dtype, seed=5)
        w, b, rm, rv = params(C, dtype)
        affine = variant != "plain"
        relu = variant in ("relu", "residual_relu")
        res = data(shape, dtype, seed=8) if variant == "residual_relu" else None
        wa = w if affine else None
        y, saved = fastreg.batch_norm(x, rm.copy(), rv.copy(), wa, b if affine else None,
                                      training=training, axis=axis, residual=res,
                                      activation="relu" if relu else None, backend=backend)
        gy = data(shape, dtype, seed=9, loc=0.0, scale=1.0)
        got = fastreg.batch_norm_backward(gy, x, saved, wa, y=host(y) if relu else None,
                                          backend=backend)
        assert len(got) == (4 if res is not None else 3)
        yh = host(y)
        _, emean, evar, _, _ = oracle_forward(x, axis, training, rm, rv, wa)
        egx, egw, egb, g = oracle_backward(gy, x, yh if relu else None, axis, emean, evar, 1e-5,
                                           wa, training)
        inv = 1.0 / np.sqrt(evar + 1e-5)
        a = inv * (w.astype(np.float64) if affine else 1.0)
        n = x.size // C
        xs = (np.abs(x).astype(np.float64) + np.abs(channel_scale(emean, axis, x.ndim)))
        if training:
            bcoef = np.abs(a * inv * egw / n)
            dcoef = np.abs(a * egb / n)
        else:
            bcoef = dcoef = np.zeros(C)
        S = (np.abs(g) * channel_scale(a, axis, x.ndim) + xs * channel_scale(bcoef, axis, x.ndim)
             + channel_scale(dcoef, axis, x.ndim))
        what = f"{backend} {shape} axis={axis} {variant} training={training}"
        assert_close(got[0], egx, TOL["grad_x"], dtype, S.max() + EPS[dtype], what + " grad_x")
        xhat = (np.moveaxis(x.astype(np.float64), axis, -1) - emean) * inv
        pscale = (np.abs(np.moveaxis(g, axis, -1)) * (1 + np.abs(xhat))).reshape(-1, C).sum(0)
        assert_close(got[1], egw, TOL["grad_param"], dtype, pscale, what + " grad_weight")
        assert_close(got[2], egb, TOL["grad_param"], dtype, pscale, what + " grad_bias")
        assert host(got[1]).dtype == dtype
        if res is not None:
            np.testing.assert_array_equal(host(got[3]), g.astype(dtype))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis", [1, -1])
def test_backward_finite_differences(backend, training, axis):
    """Gradients of sum(c * y) against central differences, float64."""
    if backend == "cuda" and CUDA_SIM:
        pytest.skip("hundreds of launches: too slow under the simulator (the oracle test covers "
                    "the cuda backward)")
    shape = (3, 4, 5) if axis == 1 else (3, 5, 4)
    C = shape[axis]
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape)
    w, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C) * 0.1, rng.uniform(0.5, 2, C)
    res = rng.standard_normal(shape)
    coef = rng.standard_normal(shape)

    def loss(x_, w_, b_, r_):
        y, _ = fastreg.batch_norm(x_, rm.copy(), rv.copy(), w_, b_, training=training,
                                  axis=axis, residual=r_, activation="relu", backend=backend)
        return float((coef * host(y)).sum())

    y, saved = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, axis=axis,
                                  residual=res, activation="relu", backend=backend)
    gx, gw, gb, gr = fastreg.batch_norm_backward(coef, x, saved, w, y=host(y), backend=backend)
    h = 1e-6
    for arr, grad, name in ((x, gx, "x"), (w, gw, "weight"), (b, gb, "bias"), (res, gr, "res")):
        num = np.empty(arr.shape)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = loss(x, w, b, res)
            arr[i] = old - h
            down = loss(x, w, b, res)
            arr[i] = old
            num[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(host(grad), num, rtol=1e-5, atol=1e-6, err_msg=name)


def test_fused_relu_equals_separate_relu(backend):
    for shape, axis in shapes_for(backend)[:5]:
        x = data(shape, np.float32, seed=2)
        res = data(shape, np.float32, seed=4)
        C = shape[axis]
        w, b, rm, rv = params(C, np.float32)
        for training in (True, False):
            fused, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training,
                                          axis=axis, residual=res, activation="relu",
                                          backend=backend)
            plain, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training,
                                          axis=axis, residual=res, backend=backend)
            np.testing.assert_array_equal(host(fused), np.maximum(host(plain), 0))


def test_relu_propagates_nan_and_gives_positive_zero(backend):
    x = np.array([[1.0, np.nan], [-5.0, 2.0], [3.0, 1.0]], np.float32)
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    y, _ = fastreg.batch_norm(x, rm, rv, training=False, activation="relu", backend=backend)
    y = host(y)
    assert np.isnan(y[0, 1]) and y[1, 0] == 0 and not np.signbit(y[1, 0])


# ---- running statistics -----------------------------------------------------------------------


def test_cumulative_average_with_num_batches_tracked(backend):
    x1, x2 = data((6, 3), np.float64, seed=1), data((10, 3), np.float64, seed=2)
    rm, rv = np.zeros(3), np.ones(3)
    nbt = np.zeros(1, np.int64)
    for x in (x1, x2):
        fastreg.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=nbt,
                           backend=backend)
    assert nbt[0] == 2
    # momentum 1 then 1/2: the plain average of the two batches' statistics
    np.testing.assert_allclose(rm, (x1.mean(0) + x2.mean(0)) / 2, rtol=1e-12)
    np.testing.assert_allclose(rv, (x1.var(0, ddof=1) + x2.var(0, ddof=1)) / 2, rtol=1e-12)
    fastreg.batch_norm(x1, rm, rv, training=True, num_batches_tracked=nbt, backend=backend)
    assert nbt[0] == 3  # counted with a fixed momentum too, as torch's modules do


def test_training_without_running_stats(backend):
    x = data((5, 3, 4), np.float32)
    y, saved = fastreg.batch_norm(x, training=True, backend=backend)
    ey = oracle_forward(x, 1, True)[0]
    assert_close(y, ey, TOL["y"], np.float32, np.abs(x).max() * host(saved.invstd).max() + 1,
                 "no running stats")


# ---- layouts, strides, out= ------------------------------------------------------------------


def test_channels_last_equals_channels_first(backend):
    x = data((3, 4, 5, 6), np.float64, seed=12)
    w, b, rm, rv = params(4, np.float64)
    y1, s1 = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, axis=1,
                                backend=backend)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y2, s2 = fastreg.batch_norm(xl, rm.copy(), rv.copy(), w, b, training=True, axis=-1,
                                backend=backend)
    np.testing.assert_allclose(host(y2), host(y1).transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(s2.mean), host(s1.mean), rtol=1e-12, atol=1e-14)


def test_non_contiguous_input(backend):
    base = data((6, 8, 10), np.float32, seed=13)
    w, b, rm, rv = params(4, np.float32)
    x = base[::2, ::2, 1:]  # strided: (3, 4, 9)
    y, saved = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend=backend)
    y2, _ = fastreg.batch_norm(np.ascontiguousarray(x), rm.copy(), rv.copy(), w, b,
                               training=True, backend=backend)
    np.testing.assert_array_equal(host(y), host(y2))
    gy = base[1::2, ::2, 1:]
    g1 = fastreg.batch_norm_backward(gy, x, saved, w, backend=backend)
    g2 = fastreg.batch_norm_backward(np.ascontiguousarray(gy), np.ascontiguousarray(x), saved, w,
                                     backend=backend)
    for a, e in zip(g1, g2):
        np.testing.assert_array_equal(host(a), host(e))
    # strided running statistics are updated through a copy and written back
    stats = np.zeros((2, 4), np.float32)
    rm_view, rv_view = stats[0], np.ones(8, np.float32)[::2]
    fastreg.batch_norm(x, rm_view, rv_view, training=True, backend=backend)
    assert np.all(stats[0] != 0) and np.all(rv_view != 1)


def test_out_and_in_place(backend):
    x = data((4, 3, 5), np.float32, seed=14)
    w, b, rm, rv = params(3, np.float32)
    expected, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True,
                                     backend=backend)
    out = np.empty_like(x)
    y, saved = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, out=out,
                                  backend=backend)
    assert y is out
    np.testing.assert_array_equal(out, host(expected))
    gy = data((4, 3, 5), np.float32, seed=15)
    g_expected = fastreg.batch_norm_backward(gy.copy(), x, saved, w, backend=backend)
    g_in = gy.copy()
    got = fastreg.batch_norm_backward(g_in, x, saved, w, out=g_in, backend=backend)
    assert got[0] is g_in
    np.testing.assert_array_equal(g_in, host(g_expected[0]))
    xi = x.copy()
    y, _ = fastreg.batch_norm(xi, rm.copy(), rv.copy(), w, b, training=True, out=xi,
                              backend=backend)
    assert y is xi
    np.testing.assert_array_equal(xi, host(expected))


def test_inputs_not_modified(backend):
    x = data((4, 3, 5), np.float32, seed=16)
    w, b, rm, rv = params(3, np.float32)
    res, gy = data(x.shape, np.float32, seed=17), data(x.shape, np.float32, seed=18)
    copies = [a.copy() for a in (x, w, b, res, gy)]
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, residual=res,
                                  activation="relu", backend=backend)
    yh = host(y).copy()
    fastreg.batch_norm_backward(gy, x, saved, w, y=yh, backend=backend)
    for a, c in zip((x, w, b, res, gy), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(host(y), yh)


def test_single_value_per_channel(backend):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastreg.batch_norm(np.ones((1, 3), np.float32), training=True, backend=backend)
    # one sample with a spatial extent is fine, and inference of an empty batch too
    y, _ = fastreg.batch_norm(data((1, 3, 4), np.float32), training=True, backend=backend)
    assert host(y).shape == (1, 3, 4)
    y, _ = fastreg.batch_norm(np.ones((0, 3), np.float32), np.zeros(3, np.float32),
                              np.ones(3, np.float32), training=False, backend=backend)
    assert host(y).shape == (0, 3)


@pytest.mark.parametrize("shape,axis", [((0, 3), 1), ((0, 3, 4), 1), ((2, 3, 0, 4), 1),
                                        ((0, 4, 4, 3), -1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(backend, shape, axis, dtype):
    """As torch: an empty output, the running statistics left alone (num_batches_tracked still
    counts the call, as torch's modules do), empty grad_x and zero parameter gradients."""
    C = shape[axis]
    x = np.zeros(shape, dtype)
    w, b, rm, rv = params(C, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    nbt = np.zeros(1, np.int64)
    for momentum in (0.1, None):
        y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum,
                                      axis=axis, num_batches_tracked=nbt, residual=np.zeros_like(x),
                                      activation="relu", backend=backend)
        assert host(y).shape == shape and host(y).dtype == dtype
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)
        gx, gw, gb, gres = fastreg.batch_norm_backward(np.zeros_like(x), x, saved, w,
                                                       y=host(y), backend=backend)
        assert host(gx).shape == shape and host(gres).shape == shape
        np.testing.assert_array_equal(host(gw), np.zeros(C, dtype))
        np.testing.assert_array_equal(host(gb), np.zeros(C, dtype))
    assert nbt[0] == 2
    y, _ = fastreg.batch_norm(x, rm, rv, w, b, training=False, axis=axis, backend=backend)
    assert host(y).shape == shape
    count, mean, m2 = fastreg.batch_norm_stats(x, axis=axis, backend=backend)
    assert count == 0
    np.testing.assert_array_equal(host(mean), np.zeros(C))


def test_device_arrays_stay_on_device():
    if fastreg.available_backends()["cuda"] is not None:
        pytest.skip("cuda backend unavailable")
    from numba import cuda
    x = data((4, 3, 5), np.float32, seed=19)
    w, b, rm, rv = params(3, np.float32)
    d = [cuda.to_device(a) for a in (x, w, b, rm, rv)]
    y, saved = fastreg.batch_norm(d[0], d[3], d[4], d[1], d[2], training=True)
    assert fastreg._arrays.is_device(y) and fastreg._arrays.is_device(saved.mean)
    ey, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend="numpy")
    np.testing.assert_allclose(y.copy_to_host(), ey, rtol=1e-5, atol=1e-5)
    gx, gw, gb = fastreg.batch_norm_backward(cuda.to_device(x), d[0], saved, d[1])
    assert fastreg._arrays.is_device(gx) and fastreg._arrays.is_device(gw)
    assert np.all(d[3].copy_to_host() != rm)  # running mean updated on the device


# ---- mergeable statistics and folding -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_merge_stats_over_random_splits(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((50, 3, 4)) * rng.uniform(0.1, 10) + rng.uniform(-100, 100))
    cuts = np.sort(rng.choice(np.arange(0, 51), size=rng.integers(1, 6)))
    parts = np.split(x, cuts)  # uneven, possibly empty parts
    stats = [fastreg.batch_norm_stats(p, backend="numpy") for p in parts]
    count, mean, m2 = fastreg.merge_stats(*stats)
    whole = fastreg.batch_norm_stats(x, backend="numpy")
    assert count == whole[0] == 200
    np.testing.assert_allclose(mean, whole[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m2, whole[2], rtol=1e-10)
    again = fastreg.merge_stats(stats[::-1])  # a list works too, in any order
    np.testing.assert_allclose(again[2], m2, rtol=1e-10)


def test_merge_stats_ignores_empty_parts_whatever_they_hold():
    """A count-0 part is ignored: its mean and M2 (NaN, or a mean whose distance squared
    overflows) never reach the result, first or later in the list."""
    a = fastreg.batch_norm_stats(np.array([[1e160], [1e160 + 1e150]]))
    empty = fastreg.batch_norm_stats(np.zeros((0, 1)))
    for parts in ((empty, a), (a, empty), (empty, empty, a)):
        n, mean, m2 = fastreg.merge_stats(*parts)
        assert n == 2 and mean[0] == a[1][0] and m2[0] == a[2][0]
    junk = (0, np.array([np.nan, 0.1]), np.array([np.nan, 5.0]))
    part = (3, np.array([2.0, 1e16 + 2]), np.array([2.0, 2.0]))
    for parts in ((junk, part), (part, junk)):
        n, mean, m2 = fastreg.merge_stats(*parts)
        np.testing.assert_array_equal(mean, part[1])
        np.testing.assert_array_equal(m2, part[2])
    counts = (np.array([0, 2]), np.array([np.inf, 1.0]), np.array([np.inf, 0.5]))
    n, mean, m2 = fastreg.merge_stats(counts, (np.array([3, 0]), np.array([4.0, np.nan]),
                                               np.array([1.0, np.nan])))
    np.testing.assert_array_equal(n, [3, 2])
    np.testing.assert_array_equal(mean, [4.0, 1.0])
    np.testing.assert_array_equal(m2, [1.0, 0.5])


def test_merge_stats_errors():
    good = (3, np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="at least one"):
        fastreg.merge_stats()
    with pytest.raises(ValueError, match="count"):
        fastreg.merge_stats(good, (-1, np.zeros(2), np.ones(2)))
    with pytest.raises(ValueError, match="channels"):
        fastreg.merge_stats(good, (3, np.zeros(3), np.ones(3)))
    with pytest.raises(TypeError, match="tuple"):
        fastreg.merge_stats(good, np.zeros(3))
    with pytest.raises(ValueError, match="one count per channel"):
        fastreg.merge_stats(good, (np.array([1, 2, 3]), np.zeros(2), np.ones(2)))
    # per-channel counts, and a tuple of parts
    merged = fastreg.merge_stats((good, (np.array([0, 2]), np.ones(2), np.ones(2))))
    np.testing.assert_array_equal(merged[0], [3, 5])
    np.testing.assert_allclose(merged[1], [0.0, 0.4])


@pytest.mark.parametrize("axis", [0, -1])
def test_fold_batch_norm(axis):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((5, 7)) if axis == 0 else rng.standard_normal((7, 5))
    bias = rng.standard_normal(5)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    x = rng.standard_normal((11, 7))
    z = x @ W.T + bias if axis == 0 else x @ W + bias
    y, _ = fastreg.batch_norm(z, rm, rv, gamma, beta, training=False, backend="numpy")
    W2, b2 = fastreg.fold_batch_norm(W, bias, rm, rv, gamma, beta, axis=axis)
    z2 = x @ W2.T + b2 if axis == 0 else x @ W2 + b2
    np.testing.assert_allclose(z2, y, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="running_mean"):
        fastreg.fold_batch_norm(W, bias, np.zeros(4), rv, axis=axis)
    with pytest.raises(ValueError, match="running_var must be finite and >= 0"):
        fastreg.fold_batch_norm(W, bias, rm, -rv, axis=axis)


# ---- bad input --------------------------------------------------------------------------------


def _bad_calls():
    x = np.ones((4, 3), np.float32)
    c = np.ones(3, np.float32)
    return [
        (TypeError, "float32, float64, float16 or bfloat16", dict(x=x.astype(np.int32), training=True)),
        (ValueError, "at least 2 dimensions", dict(x=np.ones(4, np.float32), training=True)),
        (ValueError, "axis 2 is out of range", dict(x=x, training=True, axis=2)),
        (TypeError, "axis must be an int", dict(x=x, training=True, axis=1.0)),
        (TypeError, "training must be a bool", dict(x=x, training=1)),
        (ValueError, r"running_mean must have shape \(3,\)",
         dict(x=x, running_mean=np.ones(4, np.float32), running_var=c, training=True)),
        (TypeError, "running_var must have x's dtype",
         dict(x=x, running_mean=c, running_var=c.astype(np.float64), training=True)),
        (ValueError, r"weight must have shape \(3,\)",
         dict(x=x, weight=np.ones(2, np.float32), training=True)),
        (TypeError, "bias must have x's dtype",
         dict(x=x, bias=c.astype(np.float64), training=True)),
        (ValueError, "eps must be a finite number > 0", dict(x=x, training=True, eps=0.0)),
        (ValueError, "eps must be a finite number > 0", dict(x=x, training=True, eps=np.nan)),
        (ValueError, "momentum must be in", dict(x=x, training=True, momentum=1.5)),
        (ValueError, "momentum must be in", dict(x=x, training=True, momentum=np.nan)),
        (ValueError, "activation must be one of", dict(x=x, training=True, activation="gelu")),
        (ValueError, "both running_mean and running_var",
         dict(x=x, running_mean=c.copy(), training=True)),
        (ValueError, "pass running_mean and running_var", dict(x=x, training=False)),
        (ValueError, "no running statistics to update",
         dict(x=x, training=True, num_batches_tracked=np.zeros(1, np.int64))),
        (ValueError, "needs num_batches_tracked",
         dict(x=x, running_mean=c.copy(), running_var=c.copy(), training=True, momentum=None)),
        (TypeError, "1-element int64",
         dict(x=x, running_mean=c.copy(), running_var=c.copy(), training=True,
              num_batches_tracked=np.zeros(2, np.int64))),
        (ValueError, "residual must have the shape of x",
         dict(x=x, training=True, residual=np.ones((4, 4), np.float32))),
        (ValueError, "out must have shape", dict(x=x, training=True, out=np.ones((3, 3),
                                                                                 np.float32))),
        (ValueError, "share memory", dict(x=x, running_mean=c, running_var=c, training=True)),
        (ValueError, "read-only", dict(x=x, running_mean=np.zeros(3, np.float32).view(),
                                       running_var=c.copy(), training=True, _readonly=True)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_forward(case):
    exc, match, kwargs = _bad_calls()[case]
    kwargs = dict(kwargs)
    if kwargs.pop("_readonly", False):
        kwargs["running_mean"].flags.writeable = False
    x = kwargs.pop("x")
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=match):
        fastreg.batch_norm(x, **kwargs, backend="numpy")
    for k, v in before.items():  # nothing was touched before the error
        np.testing.assert_array_equal(kwargs[k], v)


def test_bad_input_backward():
    x = data((4, 3, 5), np.float32)
    y, saved = fastreg.batch_norm(x, training=True, activation="relu", backend="numpy")
    gy = np.ones_like(x)
    with pytest.raises(TypeError, match="BatchNormSaved"):
        fastreg.batch_norm_backward(gy, x, (1, 2), y=y)
    with pytest.raises(ValueError, match="pass y"):
        fastreg.batch_norm_backward(gy, x, saved)
    with pytest.raises(ValueError, match="differs from the forward"):
        fastreg.batch_norm_backward(gy, x, saved, y=y, axis=-1)
    with pytest.raises(ValueError, match="grad_y must have the shape"):
        fastreg.batch_norm_backward(gy[:2], x, saved, y=y)
    with pytest.raises(ValueError, match="does not match the forward"):
        fastreg.batch_norm_backward(gy[:2], x[:2], saved, y=y[:2])
    with pytest.raises(TypeError, match="grad_y must have the dtype"):
        fastreg.batch_norm_backward(gy.astype(np.float64), x, saved, y=y)


# ---- PyTorch, when installed ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NC"])
def test_matches_torch(backend, dtype, layout):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    small = backend == "cuda" and CUDA_SIM
    shape = {"NCHW": (4, 3, 5, 5) if small else (8, 16, 12, 12), "NC": (16, 6) if small else
             (256, 64), "NHWC": (4, 5, 5, 3) if small else (8, 12, 12, 16)}[layout]
    axis = -1 if layout == "NHWC" else 1
    C = shape[axis]
    x = data(shape, dtype, seed=30)
    w, b, rm, rv = params(C, dtype)
    gy = data(shape, dtype, seed=31, loc=0.0, scale=1.0)
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, axis=axis, backend=backend)
    gx, gw, gb = fastreg.batch_norm_backward(gy, x, saved, w, backend=backend)

    def nchw(a):
        t = torch.from_numpy(np.array(a))
        return t.permute(0, 3, 1, 2) if layout == "NHWC" else t

    xt = nchw(x).requires_grad_(True)
    wt, bt = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
    rmt, rvt = torch.from_numpy(params(C, dtype)[2]), torch.from_numpy(params(C, dtype)[3])
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=0.1, eps=1e-5)
    yt.backward(nchw(gy))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    back = (lambda t: t.permute(0, 2, 3, 1)) if layout == "NHWC" else (lambda t: t)
    np.testing.assert_allclose(host(y), back(yt.detach()).numpy(), **tol)
    np.testing.assert_allclose(host(gx), back(xt.grad).numpy(), **tol)
    np.testing.assert_allclose(host(gw), wt.grad.numpy(), **tol)
    np.testing.assert_allclose(host(gb), bt.grad.numpy(), **tol)
    np.testing.assert_allclose(rm, rmt.numpy(), **tol)
    np.testing.assert_allclose(rv, rvt.numpy(), **tol)
    ye, _ = fastreg.batch_norm(x, rm, rv, w, b, training=False, axis=axis, backend=backend)
    yte = F.batch_norm(nchw(x), rmt, rvt, wt.detach(), bt.detach(), training=False, eps=1e-5)
    np.testing.assert_allclose(host(ye), back(yte).numpy(), **tol)


@pytest.mark.parametrize("shape,axis", [((6, 5), 1), ((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1)])
@pytest.mark.parametrize("training", [True, False])
def test_fast_path_is_the_full_path(backend, shape, axis, training):
    """The common host call (plain contiguous ndarrays, no out) takes a shortcut in the wrapper;
    the same call through the full path (out given) gives the same bits, forward and backward,
    and the cached geometry does not let a bad argument through."""
    if backend == "cuda":
        pytest.skip("the fast path is for host backends")
    dtype = np.float32
    C = shape[axis]
    x, gy, res = data(shape, dtype), data(shape, dtype, seed=4), data(shape, dtype, seed=5)
    w, b, rm, rv = params(C, dtype)
    nbt = np.zeros(1, np.int64)
    runs = []
    for full in (False, True):
        rmc, rvc, nb = rm.copy(), rv.copy(), nbt.copy()
        out = np.empty_like(x) if full else None
        y, saved = fastreg.batch_norm(x, rmc, rvc, w, b, training=training, axis=axis,
                                      residual=res, activation="relu", num_batches_tracked=nb,
                                      momentum=None if training else 0.1, out=out,
                                      backend=backend)
        gout = np.empty_like(x) if full else None
        grads = fastreg.batch_norm_backward(gy, x, saved, w, y=y, out=gout, backend=backend)
        runs.append((y, rmc, rvc, nb) + tuple(grads))
    for a, e in zip(*runs):
        np.testing.assert_array_equal(a, e)
    with pytest.raises(TypeError, match="axis"):
        fastreg.batch_norm(x, rm, rv, w, b, training=training, axis=float(axis),
                           backend=backend)
    with pytest.raises(TypeError, match="training"):
        fastreg.batch_norm(x, rm, rv, w, b, training=1, axis=axis, backend=backend)
    with pytest.raises(ValueError, match="read-only"):
        ro = rm.copy()
        ro.flags.writeable = False
        fastreg.batch_norm(x, ro, rv, w, b, training=True, axis=axis, backend=backend)
    with pytest.raises(ValueError, match="share memory"):
        both = np.ones(2 * C, dtype)
        fastreg.batch_norm(x, both[:C], both[:C], w, b, training=True, axis=axis,
                           backend=backend)


def test_sync_empty_global_batch(monkeypatch):
    """comm= with an empty batch on every rank behaves as one process on an empty batch (one
    rank stood in by patching the two collectives: the rest of the path is the real one)."""
    from fastreg import distributed
    monkeypatch.setattr(distributed, "allgather_stats", lambda n, mean, m2, comm: (n, mean, m2))
    monkeypatch.setattr(distributed, "allreduce_sums", lambda sums, comm: sums)
    comm = object()
    x = np.zeros((0, 3, 2), np.float32)
    w, b, rm, rv = params(3, np.float32)
    rm0, rv0, nbt = rm.copy(), rv.copy(), np.zeros(1, np.int64)
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, num_batches_tracked=nbt,
                                  backend="numpy", comm=comm)
    assert y.shape == x.shape and saved.global_count == 0 and nbt[0] == 1
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    gx, gw, gb = fastreg.batch_norm_backward(np.zeros_like(x), x, saved, w, backend="numpy",
                                             comm=comm)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros(3, np.float32))
    np.testing.assert_array_equal(gb, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="more than 1 value"):
        fastreg.batch_norm(np.ones((1, 3), np.float32), training=True, backend="numpy",
                           comm=comm)
    # a non-empty batch through the same patched path equals the unsynchronized call
    x = data((4, 3, 2), np.float32)
    y1, s1 = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend="numpy",
                                comm=comm)
    y2, s2 = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend="numpy")
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("host", ["c", "cpu"])
def test_inference_fast_path_is_one_call(host, monkeypatch):
    """fastreg.batch_norm's common inference call (a shape seen before: the host fast path) on
    the kernel backends is their bn_forward_infer alone (c: one C call; cpu: one compiled
    coefficient loop and bn_apply), not the registry's bn_forward_coeffs and bn_apply, with
    the reference's bits."""
    if fastreg.available_backends()[host] is not None:
        pytest.skip(f"{host} backend unavailable")
    from fastreg import _registry
    mod = _registry.module(host)
    calls = []
    for name in ("bn_forward_infer", "bn_forward_coeffs", "bn_apply"):
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _name=name: (calls.append(_name),
                                                                         _fn(*a))[1])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6, 5, 5)).astype(np.float32)
    rm, rv = rng.standard_normal(6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    fastreg.batch_norm(x, rm, rv, w, b, training=False, backend=host)
    calls.clear()
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=False, backend=host)
    assert calls == ["bn_forward_infer"]
    ey, esaved = fastreg.batch_norm(x, rm, rv, w, b, training=False, backend="numpy")
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(saved.mean, esaved.mean)
    np.testing.assert_array_equal(saved.invstd, esaved.invstd)
