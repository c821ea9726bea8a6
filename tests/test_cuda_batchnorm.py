"""The CUDA batch-norm kernels, op by op, against fastreg.reference.batchnorm.

tests/test_batchnorm.py checks the public wrapper on every backend; this file drives the nine
backend ops directly, on shapes chosen to reach each launch regime of fastreg.cuda.batchnorm (the
rows reduction with several splits and with more channels than blocks, the columns reduction with
fewer row groups than rows; element-wise grid-stride loops whose stride wraps rows and channels),
with device and host arrays, in-place outputs and the None variants of the optional arguments.

Runs on a GPU or under Numba's simulator on tiny inputs:

    NUMBA_ENABLE_CUDASIM=1 FASTREG_CUDA_TPB=32 python -m pytest tests/test_cuda_batchnorm.py -q
"""
import numpy as np
import pytest

import fastreg.cuda as fcuda
from fastreg.reference import batchnorm as ref

_REASON = fcuda.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"CUDA backend unavailable: {_REASON}", allow_module_level=True)

from fastreg.cuda import batchnorm as cbn  # noqa: E402
from fastreg.cuda import philox as cphilox  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
DTYPES = (np.float32, np.float64)

# (A, C, B) -> the regime it must reach with 32 threads per block
SHAPES = {
    (2, 1, 1000): "rows",   # one channel, several splits (simulator: 4)
    (1, 10, 40): "rows",    # more channels than blocks: blocks loop over channels
    (3, 5, 37): "rows",     # B > threads per block; the apply stride wraps rows
    (4, 3, 7): "cols",      # few elements per channel
    (40, 5, 1): "cols",     # (N, C): fewer row groups than rows
    (5, 130, 1): "cols",    # many columns, one row group
    (2, 3, 1): "cols",      # A * B = 2
}


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setenv("FASTREG_CUDA_TPB", "32")


def _d(a):
    return None if a is None else fcuda.to_device(a)


def _h(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def _close(got, expected, budget, what):
    got = np.asarray(_h(got), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    err = np.where(np.isnan(got) & np.isnan(expected), 0.0, np.abs(got - expected))
    assert np.all(err <= budget), f"{what}: max error {np.nanmax(err):.3g} > {np.max(budget):.3g}"


def _data(shape, dtype, seed, loc=3.0, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


def _stats_budget(x, n):
    return 1e-12 * (np.abs(x).max() ** 2) * n + 1e-300


def test_shapes_reach_their_regime():
    for shape, regime in SHAPES.items():
        plan = cbn._Plan(shape)
        assert ("rows" if plan.rows else "cols") == regime, shape
    assert cbn._Plan((2, 1, 1000)).nsplit > 1
    if cphilox._simulated():  # a GPU has threads enough for one row group per row
        assert cbn._Plan((40, 5, 1)).k < 40


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_train_and_stats(shape, dtype):
    A, C, B = shape
    n = A * B
    x = _data(shape, dtype, sum(shape))
    w = np.random.default_rng(1).uniform(0.5, 1.5, C).astype(dtype)
    b = np.random.default_rng(2).standard_normal(C).astype(dtype)
    res = _data(shape, dtype, 3, loc=0.0)
    mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)
    out = np.empty(shape, dtype)
    ref.bn_forward_train(x, w, b, 1e-5, res, True, out, mean, m2, inv)
    x_d = _d(x)
    got = [fcuda.empty((C,), np.float64) for _ in range(3)]
    fcuda.bn_forward_train(x_d, _d(w), _d(b), 1e-5, _d(res), True, x_d, *got)  # out = x
    sb = _stats_budget(x, n)
    _close(got[0], mean, 1e-13 * np.abs(x).max(), "mean")
    _close(got[1], m2, sb, "m2")
    _close(got[2], inv, 1e-12 * inv, "invstd")
    eps = np.finfo(dtype).eps
    scale = np.abs(x).max() * np.abs(w * inv).max() + np.abs(b).max() + np.abs(res).max()
    _close(x_d, out, 8 * eps * scale, "out")
    # bn_stats on host arrays (copied in and out)
    mean2, m22 = np.zeros(C), np.zeros(C)
    fcuda.bn_stats(x, mean2, m22)
    _close(mean2, mean, 1e-13 * np.abs(x).max(), "bn_stats mean")
    _close(m22, m2, sb, "bn_stats m2")


@pytest.mark.parametrize("shape", [(2, 1, 1000), (40, 5, 1)])
def test_shifted_sums_are_stable(shape):
    x = _data(shape, np.float32, 4, loc=1e4, scale=1.0)
    x64 = x.astype(np.float64)
    mean, m2 = np.empty(shape[1]), np.empty(shape[1])
    fcuda.bn_stats(x, mean, m2)
    true_m2 = ((x64 - x64.mean(axis=(0, 2), keepdims=True)) ** 2).sum(axis=(0, 2))
    np.testing.assert_allclose(m2, true_m2, rtol=1e-9)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-14)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype, training",
                         [(np.float32, True), (np.float64, True), (np.float32, False)])
def test_backward(shape, dtype, training):
    A, C, B = shape
    n = A * B
    x = _data(shape, dtype, 5)
    gy = _data(shape, dtype, 6, loc=0.0, scale=1.0)
    y = _data(shape, dtype, 7, loc=0.0)  # a ReLU output stand-in: only its sign matters
    w = np.random.default_rng(1).uniform(0.5, 1.5, C).astype(dtype)
    mean, m2 = np.empty(C), np.empty(C)
    ref.bn_stats(x, mean, m2)
    inv = 1.0 / np.sqrt(m2 / n + 1e-5)
    gx, gres, gw, gb = (np.empty(shape, dtype), np.empty(shape, dtype), np.empty(C, dtype),
                        np.empty(C, dtype))
    ref.bn_backward(gy, x, y, mean, inv, w, training, gx, gres, gw, gb)
    gy_d = _d(gy)
    gres_d, gw_d, gb_d = fcuda.empty(shape, dtype), fcuda.empty((C,), dtype), fcuda.empty((C,),
                                                                                          dtype)
    fcuda.bn_backward(gy_d, _d(x), _d(y), _d(mean), _d(inv), _d(w), training, gy_d, gres_d, gw_d,
                      gb_d)  # gx = gy
    eps = np.finfo(dtype).eps
    g = np.where(y > 0, gy, 0).astype(np.float64)
    a = w * inv
    bnd = (np.abs(g).max() * np.abs(a).max()
           + (np.abs(x).max() + np.abs(mean).max()) * np.abs(a * inv * inv).max()
           * np.abs(g).sum() * np.abs(x).max() / n + np.abs(a).max() * np.abs(g).max())
    _close(gy_d, gx, 32 * eps * bnd, "gx")
    np.testing.assert_array_equal(_h(gres_d), gres)
    pscale = (np.abs(g) * (1 + np.abs(x) * inv.max())).sum()
    _close(gw_d, gw, 16 * eps * pscale, "grad_weight")
    _close(gb_d, gb, 16 * eps * pscale, "grad_bias")
    # the pieces, host arrays, no y
    s_dy, s_dyx = np.empty(C), np.empty(C)
    ref.bn_backward_reduce(gy, x, None, mean, s_dy, s_dyx)
    got_dy, got_dyx = np.zeros(C), np.zeros(C)
    fcuda.bn_backward_reduce(gy, x, None, mean, got_dy, got_dyx)
    _close(got_dy, s_dy, 1e-13 * np.abs(gy).sum(), "s_dy")
    _close(got_dyx, s_dyx, 1e-13 * np.abs(gy * (x - x.mean())).sum() * 4, "s_dyx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_per_channel_ops(dtype, affine):
    C, count = 7, 12
    rng = np.random.default_rng(8)
    mean, m2 = rng.standard_normal(C), rng.uniform(0.5, 3.0, C) * count
    w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    for fold in (True, False):
        exp = [np.empty(C), np.empty(C)] + [np.empty(C, dtype) for _ in range(3)]
        ref.bn_forward_coeffs(mean, m2, count, w, b, 1e-3, fold, *exp)
        got = [fcuda.empty((C,), e.dtype) for e in exp]
        fcuda.bn_forward_coeffs(_d(mean), _d(m2), count, _d(w), _d(b), 1e-3, fold, *got)
        for e, g_ in zip(exp, got):
            _close(g_, e, 4 * np.finfo(e.dtype).eps * (np.abs(e) + 1), "forward_coeffs")
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    erm, erv = rm.copy(), rv.copy()
    ref.bn_running_update(mean, m2, count, erm, erv, 0.1)
    grm, grv = _d(rm), rv.copy()
    fcuda.bn_running_update(_d(mean), _d(m2), count, grm, None, 0.1)  # device, one at a time
    fcuda.bn_running_update(mean, m2, count, None, grv, 0.1)          # host, in place
    _close(grm, erm, 2 * np.finfo(dtype).eps * np.abs(erm), "running_mean")
    _close(grv, erv, 2 * np.finfo(dtype).eps * np.abs(erv), "running_var")
    s_dy, s_dyx = rng.standard_normal(C), rng.standard_normal(C)
    inv = 1.0 / np.sqrt(m2 / count + 1e-5)
    for training in (True, False):
        exp = [np.zeros(C, dtype) for _ in range(6)]
        ref.bn_backward_coeffs(s_dy, s_dyx, mean, inv, w, count, training, *exp)
        got = [fcuda.to_device(np.zeros(C, dtype)) for _ in range(6)]
        if not training:
            got[2] = got[3] = None
            exp[2] = exp[3] = None
        fcuda.bn_backward_coeffs(_d(s_dy), _d(s_dyx), _d(mean), _d(inv), _d(w), count, training,
                                 *got)
        for e, g_ in zip(exp, got):
            if e is not None:
                _close(g_, e, 4 * np.finfo(dtype).eps * (np.abs(e) + 1e-30), "backward_coeffs")


@pytest.mark.parametrize("shape", [(3, 5, 37), (100, 3, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_element_wise_ops(shape, dtype):
    A, C, B = shape
    rng = np.random.default_rng(9)
    x = _data(shape, dtype, 10)
    x.reshape(-1)[:3] = [np.nan, -np.inf, 0.0]
    center, scale, shift = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    for res, relu in ((None, False), (_data(shape, dtype, 11, loc=0.0), True)):
        exp = np.empty(shape, dtype)
        ref.bn_apply(x, center, scale, shift, res, relu, exp)
        got = fcuda.empty(shape, dtype)
        fcuda.bn_apply(_d(x), _d(center), _d(scale), _d(shift), _d(res), relu, got)
        fin = np.isfinite(exp)
        np.testing.assert_array_equal(np.isnan(_h(got)), np.isnan(exp))
        bound = (np.abs(x[fin]).max() + np.abs(center).max()) * np.abs(scale).max() + 10
        _close(_h(got)[fin], exp[fin], 4 * np.finfo(dtype).eps * bound, "apply")
        if relu:
            h = _h(got)
            assert not np.signbit(h[exp == 0]).any()
    gy = _data(shape, dtype, 12, loc=0.0)
    y = _data(shape, dtype, 13, loc=0.0)
    a, b_, d = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    for bb, dd, yy, with_res in ((b_, d, y, True), (None, None, None, False)):
        gx, gres = np.empty(shape, dtype), (np.empty(shape, dtype) if with_res else None)
        xf = _data(shape, dtype, 14)
        ref.bn_backward_apply(gy, xf, yy, center, a, bb, dd, gx, gres)
        got_gx = gy.copy()
        got_res = np.zeros(shape, dtype) if with_res else None
        fcuda.bn_backward_apply(got_gx, xf, yy, center, a, bb, dd, got_gx, got_res)  # host, gx=gy
        bound = np.abs(gy).max() * np.abs(a).max() + 10 * np.abs(xf).max() + 10
        _close(got_gx, gx, 8 * np.finfo(dtype).eps * bound, "backward_apply")
        if with_res:
            np.testing.assert_array_equal(got_res, gres)
