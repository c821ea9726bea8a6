"""Batch norm on float16 and bfloat16 x: the float32 op on the exact float32 values of x, then
rounded to nearest even (fastreg.reference.half), with float32 weight, bias and running
statistics, as under torch.autocast.

Exact checks: every backend's 16-bit result is bit for bit its own float32 result on
``x.astype(float32)`` rounded with ``round_half`` (and the running statistics, grad_weight and
grad_bias are its float32 ones, bit for bit). Against the reference (numpy) backend the 16-bit
outputs are compared bit for bit too: on these small shapes the float32 paths agree to the
rounding that matters (a float32 difference of an ulp could in principle flip one rounding; the
second check would then show it as one 16-bit ulp).
"""
import numpy as np
import pytest
from conftest import CUDA_SIM

import fastreg
from fastreg import _arrays
from fastreg.reference.half import round_half

HALF = [np.dtype(np.float16)] + ([_arrays.BFLOAT16] if _arrays.BFLOAT16 is not None else [])
# (shape, axis): 2-D, NCHW, NHWC
SHAPES = [((6, 5), 1), ((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1)]
OPTIONS = [dict(), dict(residual=True, activation="relu")]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def bits16(a):
    return host(a).view(np.uint16)


def setup(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32).astype(dtype)
    res = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    gy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm = (rng.standard_normal(C) * 0.1).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, C).astype(np.float32)
    return x, res, gy, w, b, rm, rv


def run(backend, x, res, gy, w, b, rm, rv, axis, training, opts):
    """Forward and backward; returns y, running stats, grads."""
    rm, rv = rm.copy(), rv.copy()
    r = res if opts.get("residual") else None
    act = opts.get("activation")
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=training, axis=axis, residual=r,
                                  activation=act, backend=backend)
    y = host(y)
    grads = fastreg.batch_norm_backward(gy, x, saved, w, y=y if act else None, backend=backend)
    return y, rm, rv, [host(g) for g in grads]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "res_relu"])
def test_half_is_float32_rounded(backend, dtype, shape, axis, training, opts):
    x, res, gy, w, b, rm, rv = setup(shape, axis, dtype)
    y, rm16, rv16, g16 = run(backend, x, res, gy, w, b, rm, rv, axis, training, opts)
    f32 = [a.astype(np.float32) for a in (x, res, gy)]
    y32, rm32, rv32, g32 = run(backend, f32[0], f32[1], f32[2], w, b, rm, rv, axis, training,
                               dict(opts))
    # the ReLU mask of the 16-bit backward is its own y > 0: the float32 run uses the same mask
    # when given the rounded y, so run the float32 backward again with it
    if opts.get("activation"):
        _, saved = fastreg.batch_norm(f32[0], rm.copy(), rv.copy(), w, b, training=training,
                                      axis=axis, residual=f32[1], activation="relu",
                                      backend=backend)
        g32 = [host(g) for g in fastreg.batch_norm_backward(
            f32[2], f32[0], saved, w, y=y.astype(np.float32), backend=backend)]
    assert y.dtype == dtype and g16[0].dtype == dtype
    np.testing.assert_array_equal(bits16(y), bits16(round_half(y32, dtype)))
    np.testing.assert_array_equal(rm16, rm32)
    np.testing.assert_array_equal(rv16, rv32)
    np.testing.assert_array_equal(bits16(g16[0]), bits16(round_half(g32[0], dtype)))
    for a, e in zip(g16[1:3], g32[1:3]):  # grad_weight, grad_bias: float32
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, e)
    if opts.get("residual"):
        assert g16[3].dtype == dtype
        np.testing.assert_array_equal(bits16(g16[3]), bits16(round_half(g32[3], dtype)))


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "res_relu"])
def test_half_matches_reference(kernel_backend, dtype, shape, axis, training, opts):
    x, res, gy, w, b, rm, rv = setup(shape, axis, dtype, seed=3)
    got = run(kernel_backend, x, res, gy, w, b, rm, rv, axis, training, opts)
    exp = run("numpy", x, res, gy, w, b, rm, rv, axis, training, opts)
    np.testing.assert_array_equal(bits16(got[0]), bits16(exp[0]))
    np.testing.assert_array_equal(bits16(got[3][0]), bits16(exp[3][0]))
    if opts.get("residual"):
        np.testing.assert_array_equal(bits16(got[3][3]), bits16(exp[3][3]))
    # float32 results (running statistics, parameter gradients): the float32 tolerances
    for a, e in zip(list(got[1:3]) + got[3][1:3], list(exp[1:3]) + exp[3][1:3]):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_out_and_in_place(backend, dtype):
    x, res, gy, w, b, rm, rv = setup((4, 3, 5), 1, dtype)
    y, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend=backend)
    out = np.empty_like(x)
    got, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, out=out,
                                backend=backend)
    assert got is out
    np.testing.assert_array_equal(bits16(out), bits16(y))
    xc = x.copy()
    got, saved = fastreg.batch_norm(xc, rm.copy(), rv.copy(), w, b, training=True, out=xc,
                                    backend=backend)
    assert got is xc
    np.testing.assert_array_equal(bits16(xc), bits16(y))
    # a non-contiguous x (copied) gives the same bits
    xt = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    got, _ = fastreg.batch_norm(xt, rm.copy(), rv.copy(), w, b, training=True, backend=backend)
    np.testing.assert_array_equal(bits16(got), bits16(y))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_statistics(backend, dtype):
    x = setup((5, 3, 4), 1, dtype)[0]
    count, mean, m2 = fastreg.batch_norm_stats(x, backend=backend)
    c32, mean32, m232 = fastreg.batch_norm_stats(x.astype(np.float32), backend=backend)
    assert count == c32
    np.testing.assert_array_equal(host(mean), host(mean32))
    np.testing.assert_array_equal(host(m2), host(m232))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_empty_batch(backend, dtype):
    x, _, _, w, b, rm, rv = setup((3, 4), 1, dtype)
    xe = np.zeros((0, 4), dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, saved = fastreg.batch_norm(xe, rm, rv, w, b, training=True, backend=backend)
    assert host(y).shape == (0, 4) and host(y).dtype == dtype
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    gx, gw, gb = fastreg.batch_norm_backward(np.zeros((0, 4), dtype), xe, saved, w,
                                             backend=backend)
    assert host(gx).shape == (0, 4) and host(gx).dtype == dtype
    np.testing.assert_array_equal(host(gw), np.zeros(4, np.float32))
    np.testing.assert_array_equal(host(gb), np.zeros(4, np.float32))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_argument_errors(dtype):
    x, res, gy, w, b, rm, rv = setup((4, 3), 1, dtype)
    with pytest.raises(TypeError, match="weight must be float32"):
        fastreg.batch_norm(x, rm, rv, w.astype(dtype), b, training=True, backend="numpy")
    with pytest.raises(TypeError, match="running_mean must be float32"):
        fastreg.batch_norm(x, rm.astype(np.float64), rv, training=True, backend="numpy")
    with pytest.raises(TypeError, match="residual"):
        fastreg.batch_norm(x, rm, rv, training=True, residual=res.astype(np.float32),
                           backend="numpy")
    with pytest.raises(ValueError, match="out must have dtype"):
        fastreg.batch_norm(x, rm, rv, training=True, out=np.empty((4, 3), np.float32),
                           backend="numpy")
    with pytest.raises(ValueError, match="axis"):
        fastreg.batch_norm(x, rm, rv, training=True, axis=2, backend="numpy")
    rm0 = rm.copy()
    with pytest.raises(ValueError, match="eps"):
        fastreg.batch_norm(x, rm, rv, training=True, eps=-1.0, backend="numpy")
    np.testing.assert_array_equal(rm, rm0)  # nothing ran
    _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, backend="numpy")
    with pytest.raises(TypeError, match="grad_y"):
        fastreg.batch_norm_backward(gy.astype(np.float32), x, saved, w, backend="numpy")
    with pytest.raises(TypeError, match="weight must be float32"):
        fastreg.batch_norm_backward(gy, x, saved, w.astype(np.float64), backend="numpy")
    x2 = x.copy()
    fastreg.batch_norm(x2, rm, rv, w, b, training=True, backend="numpy")
    np.testing.assert_array_equal(bits16(x2), bits16(x))  # inputs are not modified


def test_bfloat16_against_torch():
    torch = pytest.importorskip("torch")
    if _arrays.BFLOAT16 is None:
        pytest.skip("ml_dtypes not installed")
    import torch.nn.functional as F
    x, _, gy, w, b, rm, rv = setup((8, 4, 3, 3), 1, _arrays.BFLOAT16)
    y, _ = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, backend="numpy")
    tx = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    ty = F.batch_norm(tx, torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()),
                      torch.from_numpy(w), torch.from_numpy(b), training=True)
    assert ty.dtype == torch.bfloat16
    # torch computes in float32 too; its sums run in another order: one bfloat16 ulp at most
    np.testing.assert_allclose(y.astype(np.float32), ty.float().numpy(), rtol=2 ** -7,
                               atol=2 ** -7)


@pytest.mark.skipif(not CUDA_SIM, reason="device arrays: the CUDA simulator run covers them")
def test_float16_device_arrays():
    try:
        import fastreg.cuda.half  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"fastreg.cuda.half unavailable: {exc}")
    import fastreg.cuda as fcuda
    if fcuda.unavailable_reason() is not None:
        pytest.skip(fcuda.unavailable_reason())
    x, res, gy, w, b, rm, rv = setup((4, 3, 5), 1, np.dtype(np.float16))
    exp_y, saved = fastreg.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True,
                                      backend="numpy")
    exp_g = fastreg.batch_norm_backward(gy, x, saved, w, backend="numpy")
    xd = fcuda.to_device(x)
    y, saved = fastreg.batch_norm(xd, fcuda.to_device(rm.copy()), fcuda.to_device(rv.copy()),
                                  fcuda.to_device(w), fcuda.to_device(b), training=True)
    np.testing.assert_array_equal(bits16(y), bits16(exp_y))
    g = fastreg.batch_norm_backward(fcuda.to_device(gy), xd, saved, fcuda.to_device(w))
    np.testing.assert_array_equal(bits16(g[0]), bits16(exp_g[0]))
