"""fastreg.cross_entropy: every backend vs the reference, the reference vs torch (values and
autograd gradients), the cpu and c backends bit for bit, edge cases and bad input."""
import math

import numpy as np
import pytest
from conftest import CUDA_SIM, bits

import fastreg
from fastreg import _registry, _threads
from fastreg.loss import _cross_entropy

DTYPES = [np.float32, np.float64]
HOST_SHAPES = [(0, 3), (1, 1), (1, 7), (3, 1), (7, 13), (13, 64), (5, 65), (4, 1000), (2, 2053)]
CUDA_SHAPES = [(0, 3), (3, 5), (4, 37)]   # the simulator: ~0.1 s per launch
OPTIONS = [dict(), dict(label_smoothing=0.1), dict(weight=True),
           dict(label_smoothing=0.3, weight=True), dict(ignore=True),
           dict(label_smoothing=0.2, weight=True, ignore=True), dict(label_smoothing=1.0)]
EPS = {np.dtype(np.float32): np.finfo(np.float32).eps,
       np.dtype(np.float64): np.finfo(np.float64).eps}


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _case(shape, dtype, kind, opts, seed=0):
    """(logits, target, kwargs) for a test case."""
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    kw = {}
    if opts.get("label_smoothing"):
        kw["label_smoothing"] = opts["label_smoothing"]
    if opts.get("weight"):
        kw["weight"] = rng.random(c) + 0.1
    if kind == "hard":
        t = rng.integers(0, c, n)
        if opts.get("ignore") and n:
            t[::3] = -100
    else:
        t = rng.random(shape).astype(dtype)
        t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-30).astype(dtype)
    return x, t, kw


def _tolerances(dtype, ref_grad):
    """(loss rtol, gradient atol): a few ulps of the dtype, plus the float64 row sums' rounding
    (up to about C / 64 + 6 roundings in lane order, which shows in float64 only) relative to the
    largest gradient element."""
    eps = EPS[np.dtype(dtype)]
    c = ref_grad.shape[-1] if ref_grad.ndim else 1
    k = 8 + (c / 16 if np.dtype(dtype) == np.float64 else 0)
    scale = float(np.max(np.abs(ref_grad))) if ref_grad.size else 0.0
    return k * eps, 2 * k * eps * scale + 1e-300


def _check_close(got, ref, dtype):
    (gl, gg), (rl, rg) = got, ref
    rtol, gtol = _tolerances(dtype, rg)
    assert np.shape(gl) == np.shape(rl)
    np.testing.assert_allclose(gl, rl, rtol=rtol, atol=rtol * (1 + np.max(np.abs(rl), initial=0)))
    assert gg.dtype == rg.dtype and gg.shape == rg.shape
    np.testing.assert_allclose(gg, rg, rtol=0, atol=gtol)


# ---- every backend vs the reference ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_backend_matches_reference(kernel_backend, dtype, kind, opts):
    if kind == "soft" and opts.get("ignore"):
        pytest.skip("ignore_index does not apply to soft targets")
    shapes = CUDA_SHAPES if kernel_backend == "cuda" else HOST_SHAPES
    for i, shape in enumerate(shapes):
        x, t, kw = _case(shape, dtype, kind, opts, seed=i)
        for reduction in ("none", "mean", "sum") if kernel_backend != "cuda" else ("none",):
            ref = fastreg.cross_entropy(x, t, reduction=reduction, backend="numpy", **kw)
            got = fastreg.cross_entropy(x, t, reduction=reduction, backend=kernel_backend, **kw)
            got = (got[0], host(got[1]))
            if reduction == "mean" and (shape[0] == 0 or not np.any(t != -100)):
                assert math.isnan(got[0]) and math.isnan(ref[0])
                np.testing.assert_array_equal(got[1], ref[1])
                continue
            _check_close(got, ref, dtype)
            if kernel_backend == "cuda" and i < len(shapes) - 1:
                continue
            loss_only = fastreg.cross_entropy(x, t, reduction=reduction, grad=False,
                                              backend=kernel_backend, **kw)
            np.testing.assert_array_equal(host(loss_only), host(got[0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_cpu_and_c_give_the_same_bits(dtype, kind):
    """Numba and C follow the same order of operations (fastreg/cpu/loss.py): identical bits,
    for every C instruction set and on the serial and parallel paths."""
    avail = fastreg.available_backends()
    if avail["cpu"] is not None or avail["c"] is not None:
        pytest.skip("needs both the cpu and the c backend")
    import fastreg.c as fc
    isas = ["portable"] + (["avx2"] if fc.has_avx2() else []) + (
        ["avx512"] if fc.has_avx512() else [])
    for opts in OPTIONS:
        if kind == "soft" and opts.get("ignore"):
            continue
        for i, shape in enumerate([(1, 1), (9, 3), (5, 64), (6, 100), (3, 1031)]):
            x, t, kw = _case(shape, dtype, kind, opts, seed=10 + i)
            want_l, want_g = fastreg.cross_entropy(x, t, reduction="none", backend="cpu", **kw)
            for isa in isas:
                previous = fc.set_isa(isa)
                try:
                    got_l, got_g = fastreg.cross_entropy(x, t, reduction="none", backend="c",
                                                         **kw)
                finally:
                    fc.set_isa(previous)
                np.testing.assert_array_equal(bits(got_l), bits(want_l), err_msg=isa)
                np.testing.assert_array_equal(bits(got_g), bits(want_g), err_msg=isa)


@pytest.mark.parametrize("host_backend", ["cpu", "c"])
def test_serial_and_parallel_paths_give_the_same_bits(host_backend, monkeypatch):
    if fastreg.available_backends()[host_backend] is not None:
        pytest.skip(f"backend {host_backend!r} unavailable")
    x, t, kw = _case((301, 400), np.float32, "hard", dict(label_smoothing=0.1, weight=True))
    _, s, _ = _case((301, 400), np.float32, "soft", {})
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)
    if host_backend == "c":
        import fastreg.c as fc
        count = fc.parallel_regions
    else:
        from fastreg.cpu import _jit
        count = lambda: _jit.launches["parallel"]  # noqa: E731
    for target, extra in ((t, kw), (s, {})):
        results = []
        for n in (1, 2):
            before = count()
            with fastreg.threads(n):
                results.append(fastreg.cross_entropy(x, target, reduction="none",
                                                     backend=host_backend, **extra))
            assert (count() > before) == (n == 2)
        for a, b in zip(*results):
            np.testing.assert_array_equal(bits(a), bits(b))


def test_threads_follow_the_grain():
    """With the shipped grain a small batch (a digits batch, 64 x 10) runs serially."""
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    import fastreg.c as fc
    x, t, _ = _case((64, 10), np.float32, "hard", {})
    before = fc.parallel_regions()
    with fastreg.threads(2):
        fastreg.cross_entropy(x, t, backend="c")
    assert fc.parallel_regions() == before


def test_exp_polynomial_accuracy():
    """The kernels' float32 exp is within 1 ulp of the correctly rounded value on [-87.3, 0],
    the float64 one within 2 ulps; below the smallest normal result it is 0; NaN stays NaN."""
    if fastreg.available_backends()["cpu"] is not None:
        pytest.skip("cpu backend unavailable")
    import numba

    from fastreg.cpu import loss as L

    @numba.njit
    def exps(d, out):
        for i in range(d.size):
            out[i] = L._exp(d[i])

    for dtype, lo, ulps in ((np.float32, -87.33, 1), (np.float64, -708.3, 2)):
        d = np.concatenate([np.linspace(lo, 0, 200_001), -np.logspace(-30, 0, 1001),
                            [0.0, -0.0]]).astype(dtype)
        out = np.empty_like(d)
        exps(d, out)
        exact = np.exp(d.astype(np.longdouble))
        err = np.abs(out.astype(np.longdouble) - exact) / np.spacing(exact.astype(dtype))
        assert float(err.max()) <= ulps, (dtype, float(err.max()))
        special = np.array([lo * 1.01, -1e30, -np.inf, np.nan], dtype)
        out = np.empty_like(special)
        exps(special, out)
        assert out[0] == 0 and out[1] == 0 and out[2] == 0 and np.isnan(out[3])


# ---- semantics: the reference vs torch, and the public wrapper's cases -------------------------

def _torch():
    return pytest.importorskip("torch")


def _torch_ce(x, t, reduction, **kw):
    th = _torch()
    xt = th.from_numpy(np.array(x)).requires_grad_()
    tt = th.from_numpy(np.array(t))
    if "weight" in kw and kw["weight"] is not None:
        kw = dict(kw, weight=th.from_numpy(np.asarray(kw["weight"], x.dtype)))
    loss = th.nn.functional.cross_entropy(xt, tt, reduction=reduction, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_reference_matches_torch(kind, reduction, opts):
    """float64, values and autograd gradients (torch's grad of loss.sum() for "none")."""
    if kind == "soft" and opts.get("ignore"):
        pytest.skip("ignore_index does not apply to soft targets")
    for i, shape in enumerate([(1, 1), (6, 5), (17, 33)]):
        x, t, kw = _case(shape, np.float64, kind, opts, seed=20 + i)
        want_l, want_g = _torch_ce(x, t, reduction, **kw)
        got_l, got_g = fastreg.cross_entropy(x, t, reduction=reduction, backend="numpy", **kw)
        np.testing.assert_allclose(got_l, want_l, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-12, atol=1e-14)


def test_spatial_and_unbatched_layouts_match_torch():
    """(N, C, d1, d2) logits with (N, d1, d2) indices or (N, C, d1, d2) probabilities, and
    (C,) logits with a scalar index, as torch; every host backend."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 3, 4))
    y = rng.integers(0, 5, (2, 3, 4))
    y[0, 1, 2] = -100
    p = rng.random(x.shape)
    w = rng.random(5)
    for b in ("numpy", "cpu", "c"):
        if fastreg.available_backends()[b] is not None:
            continue
        for t, kw in ((y, dict(weight=w, label_smoothing=0.1)), (p, dict(label_smoothing=0.2))):
            for reduction in ("mean", "none"):
                want_l, want_g = _torch_ce(x, t, reduction, **kw)
                got_l, got_g = fastreg.cross_entropy(x, t, reduction=reduction, backend=b, **kw)
                np.testing.assert_allclose(got_l, want_l, rtol=1e-12)
                np.testing.assert_allclose(got_g, want_g, rtol=1e-12, atol=1e-15)
                assert got_g.flags.c_contiguous
                out = np.full_like(x, 7.0)
                fastreg.cross_entropy(x, t, reduction=reduction, out=out, backend=b, **kw)
                np.testing.assert_array_equal(out, got_g)
        want_l, want_g = _torch_ce(x[0, :, 0, 0], np.int64(2), "none")
        got_l, got_g = fastreg.cross_entropy(x[0, :, 0, 0], np.int64(2), reduction="none",
                                             backend=b)
        assert np.shape(got_l) == () and got_g.shape == (5,)
        np.testing.assert_allclose(got_l, want_l, rtol=1e-12)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-12, atol=1e-15)


def test_timm_soft_target_cross_entropy():
    """timm's SoftTargetCrossEntropy: mean over samples of sum(-target * log_softmax(x))."""
    th = _torch()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 10)).astype(np.float32)
    t = rng.dirichlet(np.ones(10), 8).astype(np.float32)
    xt = th.from_numpy(x).requires_grad_()
    loss = th.sum(-th.from_numpy(t) * th.nn.functional.log_softmax(xt, dim=-1), dim=-1).mean()
    loss.backward()
    got_l, got_g = fastreg.cross_entropy(x, t)
    assert got_l == pytest.approx(loss.item(), rel=1e-6)
    np.testing.assert_allclose(got_g, xt.grad.numpy(), atol=1e-7)


def test_label_smoothing_one_and_hard_equals_one_hot_soft():
    """Class indices equal one-hot probabilities (no weights, no ignored targets), with and
    without smoothing; label_smoothing=1 is the uniform target."""
    x, y, _ = _case((9, 6), np.float64, "hard", {})
    onehot = np.eye(6)[y]
    for ls in (0.0, 0.25, 1.0):
        a = fastreg.cross_entropy(x, y, label_smoothing=ls)
        b = fastreg.cross_entropy(x, onehot, label_smoothing=ls)
        assert a[0] == pytest.approx(b[0], rel=1e-14)
        np.testing.assert_allclose(a[1], b[1], atol=1e-16)
    u = fastreg.cross_entropy(x, np.full((9, 6), 1 / 6))
    np.testing.assert_allclose(fastreg.cross_entropy(x, y, label_smoothing=1.0)[1], u[1],
                               atol=1e-16)


def test_gradient_against_finite_differences(backend):
    if backend == "cuda" and CUDA_SIM:
        pytest.skip("25 launches: too slow under the simulator (the reference test covers cuda)")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4))
    y = np.array([1, -100, 3])
    w = rng.random(4) + 0.5
    kw = dict(weight=w, label_smoothing=0.2, backend=backend)
    _, g = fastreg.cross_entropy(x, y, **kw)
    g = host(g)
    h = 1e-6
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num = (fastreg.cross_entropy(xp, y, grad=False, **kw)
               - fastreg.cross_entropy(xm, y, grad=False, **kw)) / (2 * h)
        assert g[idx] == pytest.approx(num, abs=1e-8)


def test_edge_cases(backend):
    f32 = np.float32
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], f32)
    # every target ignored: mean is NaN (0 / 0, as torch), sum 0, the gradient zero
    y = np.array([-100, -100])
    loss, g = fastreg.cross_entropy(x, y, label_smoothing=0.1, backend=backend)
    assert math.isnan(loss) and not host(g).any()
    assert fastreg.cross_entropy(x, y, reduction="sum", backend=backend)[0] == 0.0
    # no samples
    e = np.zeros((0, 3), f32)
    loss, g = fastreg.cross_entropy(e, np.zeros(0, np.int64), backend=backend)
    assert math.isnan(loss) and host(g).shape == (0, 3)
    assert fastreg.cross_entropy(e, np.zeros(0, np.int64), reduction="sum", grad=False,
                                 backend=backend) == 0.0
    assert host(fastreg.cross_entropy(e, np.zeros((0, 3), f32), reduction="none", grad=False,
                                      backend=backend)).shape == (0,)
    # one class: the loss is 0 and so is the gradient
    loss, g = fastreg.cross_entropy(np.array([[5.0], [-3.0]], f32), np.array([0, 0]),
                                    backend=backend)
    assert loss == 0.0 and not host(g).any()
    # huge logits: stable (max shift)
    big = np.array([[1e30, 0.0, -1e30], [3e38, 3e38, 3e38]], f32)
    loss, g = fastreg.cross_entropy(big, np.array([0, 1]), reduction="none", backend=backend)
    np.testing.assert_allclose(host(loss), [0.0, math.log(3)], rtol=1e-6)
    np.testing.assert_allclose(host(g), [[0, 0, 0], [1 / 3, -2 / 3, 1 / 3]], atol=1e-7)
    # NaN logit: NaN loss for its row only; a -inf logit of another class is harmless without
    # smoothing (as in torch)
    odd = np.array([[np.nan, 1.0, 2.0], [-np.inf, 1.0, 2.0]], f32)
    loss = host(fastreg.cross_entropy(odd, np.array([1, 2]), reduction="none", grad=False,
                                      backend=backend))
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    assert loss[1] == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # every kept target has class weight 0: the mean divides by 0, so the loss and every kept
    # row's gradient are NaN, with or without smoothing (as torch gives); ignored rows stay 0.
    # (The reference once gave +-inf with smoothing; found by tests/test_hypothesis_recipe.py.)
    x3 = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 2.0, 2.0]], f32)
    for smoothing in (0.0, 0.1):
        loss, g = fastreg.cross_entropy(x3, np.array([0, -100, 0]), label_smoothing=smoothing,
                                        weight=np.array([0.0, 1.0, 1.0], f32), backend=backend)
        g = host(g)
        assert math.isnan(loss) and np.isnan(g[[0, 2]]).all() and not g[1].any(), smoothing


def test_inputs_and_outputs(backend):
    """Non-contiguous logits, out= (also in place over the logits), int32 / uint8 indices,
    float64 probabilities for float32 logits; inputs are not modified."""
    rng = np.random.default_rng(6)
    base = rng.standard_normal((6, 20)).astype(np.float32)
    x = base[::2, ::3]                      # (3, 7), non-contiguous
    y = np.array([0, 6, 3], np.int32)
    ref = fastreg.cross_entropy(np.ascontiguousarray(x), y.astype(np.int64), backend="numpy")
    keep = base.copy()
    got = fastreg.cross_entropy(x, y, backend=backend)
    np.testing.assert_array_equal(base, keep)
    _check_close((got[0], host(got[1])), ref, np.float32)
    got8 = fastreg.cross_entropy(x, y.astype(np.uint8), backend=backend)
    np.testing.assert_array_equal(host(got8[1]), host(got[1]))
    out = np.empty((3, 7), np.float32)
    res = fastreg.cross_entropy(x, y, out=out, backend=backend)
    assert res[1] is out
    np.testing.assert_array_equal(out, host(got[1]))
    # non-contiguous out
    out2 = np.zeros((3, 14), np.float32)[:, ::2]
    assert fastreg.cross_entropy(x, y, out=out2, backend=backend)[1] is out2
    np.testing.assert_array_equal(out2, host(got[1]))
    # in place: the gradient overwrites the logits
    xc = np.ascontiguousarray(x)
    loss, g = fastreg.cross_entropy(xc, y, out=xc, backend=backend)
    assert g is xc and loss == got[0]
    np.testing.assert_array_equal(xc, host(got[1]))
    # soft targets in float64 for float32 logits, and in place over a soft target
    p = rng.dirichlet(np.ones(7), 3)
    a = fastreg.cross_entropy(x, p, backend=backend)
    b = fastreg.cross_entropy(x, p.astype(np.float32), backend=backend)
    np.testing.assert_array_equal(host(a[1]), host(b[1]))
    p32 = p.astype(np.float32)
    g = fastreg.cross_entropy(x, p32, out=p32, backend=backend)[1]
    assert g is p32
    np.testing.assert_array_equal(p32, host(b[1]))


@pytest.mark.skipif(not CUDA_SIM and fastreg.available_backends()["cuda"] is not None,
                    reason="no CUDA backend")
def test_cuda_device_arrays():
    """Device logits (and targets) stay on the device: the gradient and per-sample losses are
    device arrays; out= a device array works in place."""
    if fastreg.available_backends()["cuda"] is not None:
        pytest.skip("CUDA backend unavailable")
    from numba import cuda
    x, y, kw = _case((3, 9), np.float32, "hard", dict(label_smoothing=0.1))
    ref = fastreg.cross_entropy(x, y, reduction="none", backend="numpy", **kw)
    xd = cuda.to_device(x)
    loss, g = fastreg.cross_entropy(xd, cuda.to_device(y), reduction="none", **kw)
    assert hasattr(g, "copy_to_host") and hasattr(loss, "copy_to_host")
    _check_close((loss.copy_to_host(), g.copy_to_host()), ref, np.float32)
    fastreg.cross_entropy(xd, y, reduction="none", out=xd, **kw)
    _check_close((ref[0], xd.copy_to_host()), ref, np.float32)
    with pytest.raises(ValueError, match="CUDA logits must be"):
        fastreg.cross_entropy(cuda.to_device(np.zeros((2, 3, 4), np.float32)),
                              np.zeros((2, 4), np.int64))


def test_divide_by_splits_the_mean():
    """The trainer's data-parallel form: parts divided by the global count add up to the mean
    (loss and gradient)."""
    x, y, kw = _case((10, 7), np.float64, "hard", dict(label_smoothing=0.1))
    loss, g = fastreg.cross_entropy(x, y, **kw)
    parts = [_cross_entropy(x[a:b], y[a:b], None, -100, "mean", 0.1, True, None, "auto", 10)
             for a, b in ((0, 4), (4, 4), (4, 10))]
    assert sum(p[0] for p in parts) == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), g, rtol=1e-14)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(logits=np.zeros((2, 3), np.int32)), TypeError, "logits must be float32 or float64"),
    (dict(logits=np.zeros((2, 3), np.float16)), TypeError, "logits must be float32"),
    (dict(logits=np.float32(1.0)), ValueError, "class axis"),
    (dict(logits=np.zeros((2, 0), np.float32), target=np.zeros(2, np.int64)), ValueError,
     "at least one class"),
    (dict(target=np.array([0, 3])), ValueError, r"target\[1\] = 3 is not a class index"),
    (dict(target=np.array([-1, 0])), ValueError, r"target\[0\] = -1"),
    (dict(target=np.array([0, 1, 2])), ValueError, r"target must have shape \(2,\)"),
    (dict(target=np.zeros((2, 4), np.float32)), ValueError, r"shape \(2, 3\) \(class probab"),
    (dict(target=np.array([True, False])), TypeError, "target must hold class indices"),
    (dict(target=np.zeros((2, 3), np.float16)), TypeError, "target must be float32"),
    (dict(target=np.zeros((2, 3), np.float32), ignore_index=0), ValueError,
     r"ignore_index \(0\) is not supported"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing must be in"),
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing must be a real"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(weight=np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
    (dict(weight=np.array([1.0, -1.0, 1.0])), ValueError, r"weight\[1\] = -1.0"),
    (dict(weight=np.array([1.0, np.nan, 1.0])), ValueError, "finite"),
    (dict(weight=np.array(["a", "b", "c"])), TypeError, "weight must hold real numbers"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
    (dict(grad=1), TypeError, "grad must be a bool"),
    (dict(grad=False, out=np.zeros((2, 3), np.float32)), ValueError, "needs grad=True"),
    (dict(out=np.zeros((2, 4), np.float32)), ValueError, r"out must have shape \(2, 3\)"),
    (dict(out=np.zeros((2, 3), np.float64)), ValueError, "out must have dtype float32"),
    (dict(backend="tpu"), ValueError, "backend must be one of"),
])
def test_bad_input_raises_before_any_work(kwargs, error, match):
    args = dict(logits=np.ones((2, 3), np.float32), target=np.array([0, 2]))
    args.update(kwargs)
    logits, target = args.pop("logits"), args.pop("target")
    keep = np.array(logits, copy=True)
    with pytest.raises(error, match=match):
        fastreg.cross_entropy(logits, target, **args)
    np.testing.assert_array_equal(logits, keep)


def test_out_read_only_or_overlapping():
    x = np.ones((2, 3), np.float32)
    ro = np.zeros((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastreg.cross_entropy(x, np.array([0, 1]), out=ro)
    big = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.cross_entropy(big[:, :3], np.array([0, 1]), out=big[:, 1:])


def test_registered_on_every_backend():
    for op in ("ce_hard", "ce_soft"):
        assert op in _registry.OPS
        for name, reason in fastreg.available_backends().items():
            if reason is None:
                assert callable(_registry.get(op, name))


# ---- the Trainer: label smoothing, mixup and cutmix ---------------------------------------------

def _digits(n, seed=0):
    from fastreg.train.data import load_digits, stratified_split
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    idx = stratified_split(labels, [n], seed=seed)[0]
    return X[idx], labels[idx]


def _mlp_trainer(seed=0, **kw):
    from fastreg import optim
    from fastreg.train import Trainer, mlp
    model = mlp((64, 24, 10), seed=seed)       # no dropout / batch norm: forward is a function
    opt = optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, opt, seed=seed, verbose=0, **kw)


def _mixers():
    from fastreg.train.augment import image_cutmix, image_mixup, unavailable_reason
    if unavailable_reason() is not None:
        pytest.skip(unavailable_reason())
    return {"mixup": image_mixup((8, 8), 10, alpha=0.4), "cutmix": image_cutmix((8, 8), 10)}


@pytest.mark.parametrize("what", ["label_smoothing", "mixup", "cutmix"])
def test_trainer_step_loss_is_cross_entropy(what):
    """One full batch, no shuffle: the epoch's loss is fastreg.cross_entropy of the untrained
    model's logits against the (mixed, smoothed) targets; accuracy counts the original labels."""
    X, y = _digits(40)
    kw = {"label_smoothing": 0.1} if what == "label_smoothing" else {
        "mix": _mixers()[what], "label_smoothing": 0.05}
    trainer = _mlp_trainer(**kw)
    xb, target = X, y
    if "mix" in kw:
        xb, target = kw["mix"](X.copy(), y, trainer.seed, 0, 0)
        xb = xb.copy()
        assert target.shape == (40, 10) and np.allclose(target.sum(axis=1), 1)
        assert not np.array_equal(xb, X)
    logits = trainer.model.forward(xb).copy()
    want = fastreg.cross_entropy(logits, target, label_smoothing=kw["label_smoothing"],
                                 grad=False)
    hist = trainer.fit(X, y, epochs=1, batch_size=40, shuffle=False)
    assert hist["loss"][0] == pytest.approx(want, rel=1e-6)
    assert hist["accuracy"][0] == np.mean(logits.argmax(axis=1) == y)
    plain = fastreg.cross_entropy(trainer.predict(X), y, grad=False)
    assert trainer.evaluate(X, y)["loss"] == pytest.approx(plain, rel=1e-6)


def test_trainer_with_mix_and_smoothing_resumes_bit_identically(tmp_path):
    mix = _mixers()["cutmix"]
    X, y = _digits(96)
    path = tmp_path / "run.npz"
    straight = _mlp_trainer(mix=mix, label_smoothing=0.1)
    straight.fit(X, y, epochs=4, batch_size=32)
    first = _mlp_trainer(mix=mix, label_smoothing=0.1)
    first.fit(X, y, epochs=2, batch_size=32, checkpoint=path)
    second = _mlp_trainer(mix=mix, label_smoothing=0.1)
    second.fit(X, y, epochs=4, batch_size=32, checkpoint=path, resume=True)
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        np.testing.assert_array_equal(a, b)
    assert straight.history["loss"] == second.history["loss"]


def test_trainer_checks_mix_and_label_smoothing():
    with pytest.raises(TypeError, match="mix must be a callable"):
        _mlp_trainer(mix=3)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        _mlp_trainer(label_smoothing=1.5)
    trainer = _mlp_trainer(mix=lambda x, y, *a: (x, np.ones((len(x), 3), np.float32)))
    X, y = _digits(20)
    with pytest.raises(ValueError, match=r"target must have shape \(20, 10\)"):
        trainer.fit(X, y, epochs=1, batch_size=20)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
def test_float32_loss_beyond_float32_range_is_inf_on_every_backend(backend):
    """Logits 3e38 apart: the shift overflows float32 (as in torch) on every backend, the
    reference too: an inf loss, the same gradient, no warning."""
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"{backend} unavailable")
    x = np.array([[3e38, -3e38], [1.0, 2.0]], np.float32)
    t = np.array([1, 0])
    for kw in ({}, {"label_smoothing": 0.5}):
        with np.errstate(all="raise"):
            loss, g = fastreg.cross_entropy(x, t, reduction="sum", backend=backend, **kw)
            rows = fastreg.cross_entropy(x, t, reduction="none", grad=False, backend=backend,
                                         **kw)
        assert loss == math.inf and rows[0] == math.inf and np.isfinite(rows[1])
        ref = fastreg.cross_entropy(x, t, reduction="sum", backend="numpy", **kw)[1]
        np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ignore_index", [2**63, -2**63 - 1])
def test_ignore_index_beyond_int64_is_refused_on_every_backend(ignore_index):
    x = np.zeros((3, 4), np.float32)
    for backend in ("numpy", "cpu", "c"):
        with pytest.raises(ValueError, match="ignore_index must fit in int64"):
            fastreg.cross_entropy(x, np.array([0, 1, 2]), ignore_index=ignore_index,
                                  backend=backend)


@pytest.mark.parametrize("ignore_index", [-1, -7, -2**63])
def test_soft_targets_take_any_negative_ignore_index(ignore_index):
    """As torch: soft targets have no index to ignore, and a negative ignore_index is accepted
    (the same loss and gradient as the default); a non-negative one is refused (tested above)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    t = rng.random((5, 4)).astype(np.float32)
    for be in ("numpy", "cpu", "c"):
        if fastreg.available_backends()[be] is not None:
            continue
        ref = fastreg.cross_entropy(x, t, backend=be)
        got = fastreg.cross_entropy(x, t, ignore_index=ignore_index, backend=be)
        assert got[0] == ref[0] and np.array_equal(got[1], ref[1])
