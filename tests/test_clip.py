"""Gradient clipping: global norms and clip_grad_norm on every backend vs the reference and
torch, adaptive clipping (AGC) vs the reference and timm's formula, edge cases and bad input."""
import math

import numpy as np
import pytest
from conftest import CUDA_SIM, bits

import fastreg
from fastreg.clip import NonFiniteNormError, clip_coef

NORMS = [2.0, 1.0, math.inf, 3.0, 0.5]
RTOL = 1e-12   # float64 accumulation: only the summation order differs between backends


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def grads_list(backend, seed=0, dtypes=(np.float32, np.float64), scale=3.0):
    shapes = [(0,), (1,), (7,), (1000,), (33, 17), (4099,)]
    if backend == "cuda":
        shapes = [(0,), (1,), (7,), (300,), (5, 9)]
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(dtypes[i % len(dtypes)])
            for i, s in enumerate(shapes)]


def exact_norm(arrays, p):
    x = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    if p == math.inf:
        return float(np.abs(x).max()) if x.size else 0.0
    return float((np.abs(x) ** p).sum() ** (1 / p))


# ---- norms --------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", NORMS)
def test_grad_norm_matches_reference(backend, p):
    g = grads_list(backend)
    expected = fastreg.grad_norm(g, p, backend="numpy")
    assert expected == pytest.approx(exact_norm(g, p), rel=1e-10)
    assert fastreg.grad_norm(g, p, backend=backend) == pytest.approx(expected, rel=RTOL)
    for a in g[2:]:   # one array, float32 only, float64 only
        assert fastreg.grad_norm(a, p, backend=backend) == pytest.approx(
            exact_norm([a], p), rel=1e-10)


def test_grad_norm_special_values(backend):
    for p in (2.0, math.inf, 1.5):
        assert math.isnan(fastreg.grad_norm([np.ones(3), np.array([1.0, np.nan])], p,
                                            backend=backend))
        assert fastreg.grad_norm([np.array([np.inf, 1.0], np.float32)], p,
                                 backend=backend) == math.inf
    assert math.isnan(fastreg.grad_norm([np.array([np.inf, np.nan, 5.0])], math.inf,
                                        backend=backend))
    assert fastreg.grad_norm([], backend=backend) == 0.0
    assert fastreg.grad_norm([np.zeros((0, 4), np.float32)], backend=backend) == 0.0
    # float64 accumulation: 2**20 float32 ones sum exactly
    assert fastreg.grad_norm(np.ones(1 << 12, np.float32), backend=backend) == 64.0
    assert fastreg.grad_norm([np.full(3, -2.0)], "inf", backend=backend) == 2.0


def _parallel_count(backend):
    if backend == "c":
        import fastreg.c as fc
        return fc.parallel_regions()
    from fastreg.cpu import _jit
    return _jit.launches["parallel"]


def test_serial_and_parallel_paths_agree(backend, monkeypatch):
    """Grain shrunk: 1 thread (serial) and 2 threads (parallel, several tasks) give the same
    norms (reductions merged in task order) and the same clipped bits."""
    if backend in ("numpy", "cuda"):
        pytest.skip("host kernels only")
    from fastreg import _threads
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)
    rng = np.random.default_rng(1)
    g = [rng.standard_normal(3 * 65536 + 5).astype(np.float32), rng.standard_normal(40)]
    w = [rng.standard_normal((64, 70)).astype(np.float32)]
    results = []
    for nt in (1, 2):
        before = _parallel_count(backend)
        with fastreg.threads(nt):
            norms = [fastreg.grad_norm(g, p, backend=backend) for p in NORMS]
            clipped = [a.copy() for a in g]
            fastreg.clip_grad_norm(clipped, 1.0, backend=backend)
            agc = [0.1 * a for a in w]
            fastreg.adaptive_clip_grad(w, agc, 0.01, backend=backend)
        assert (_parallel_count(backend) > before) == (nt == 2)
        results.append((norms, clipped, agc))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1] + results[0][2], results[1][1] + results[1][2]):
        np.testing.assert_array_equal(bits(a), bits(b))


# ---- clip_grad_norm -----------------------------------------------------------------------------

@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1e9, math.inf])
def test_clip_grad_norm_matches_reference(backend, p, max_norm):
    g = grads_list(backend, seed=2)
    ref = [a.copy() for a in g]
    total_ref = fastreg.clip_grad_norm(ref, max_norm, p, backend="numpy")
    got = [a.copy() for a in g]
    total = fastreg.clip_grad_norm(got, max_norm, p, backend=backend)
    assert total == pytest.approx(total_ref, rel=RTOL)
    coef = clip_coef(total, max_norm, [a.dtype for a in g])
    for a, b in zip(got, g):   # exactly g * coef, coef from this backend's own total
        expected = b if coef == 1.0 else b * b.dtype.type(coef)
        np.testing.assert_array_equal(bits(a), bits(expected))
    if max_norm == math.inf or max_norm == 1e9:
        for a, b in zip(got, g):
            np.testing.assert_array_equal(bits(a), bits(b))


def test_clip_coefficient_is_torchs():
    # r(1) / (r(total) + r(1e-6)) * r(max_norm) in float32 when every gradient is float32
    c = clip_coef(3.0, 1.0, [np.float32])
    assert c == float(np.float32(1) / (np.float32(3.0) + np.float32(1e-6)) * np.float32(1.0))
    assert clip_coef(3.0, 1.0, [np.float32, np.float64]) == 1.0 / (3.0 + 1e-6) * 1.0
    assert clip_coef(0.5, 1.0, [np.float32]) == 1.0
    assert math.isnan(clip_coef(math.nan, 1.0, [np.float64]))
    assert clip_coef(math.inf, 1.0, [np.float64]) == 0.0


def host_array(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def test_clip_grad_norm_beyond_float32_raises_when_asked(backend):
    """A float64 total beyond float32's range is inf for float32 gradients' coefficient (and
    for torch's float32 norm): with error_if_nonfinite it raises, as torch does, instead of
    scaling the gradients by 0; float64 gradients with the same values are clipped."""
    g = [np.array([3e38, 3e38, 1.0], np.float32)]
    before = g[0].copy()
    with pytest.raises(NonFiniteNormError, match="beyond float32's range"):
        fastreg.clip_grad_norm(g, 1.0, error_if_nonfinite=True, backend=backend)
    np.testing.assert_array_equal(host_array(g[0]), before)
    g64 = [np.array([3e38, 3e38, 1.0])]
    total = fastreg.clip_grad_norm(g64, 1.0, error_if_nonfinite=True, backend=backend)
    assert total == pytest.approx(math.sqrt(2) * 3e38)
    np.testing.assert_allclose(host_array(g64[0])[:2], [0.5 ** 0.5] * 2, rtol=1e-6)


def test_clip_grad_norm_overflows_where_torchs_float32_sums_do(backend):
    """A float32 gradient whose sum of squares passes float32's range (2-norm 2e20, within
    it): torch's norm is inf, so the total is inf and the gradients are zeroed, or
    error_if_nonfinite raises; one element is its own norm in torch (finite: clipped), and
    grad_norm keeps the float64 value."""
    g = [np.full(4, 1e20, np.float32)]
    assert fastreg.grad_norm(g, backend=backend) == pytest.approx(2e20)
    with pytest.raises(NonFiniteNormError, match="beyond float32's range"):
        fastreg.clip_grad_norm(g, 1.0, error_if_nonfinite=True, backend=backend)
    np.testing.assert_array_equal(host_array(g[0]), np.full(4, 1e20, np.float32))
    assert fastreg.clip_grad_norm(g, 1.0, backend=backend) == math.inf
    np.testing.assert_array_equal(host_array(g[0]), np.zeros(4, np.float32))
    one = [np.full(1, 2e20, np.float32)]
    total = fastreg.clip_grad_norm(one, 1.0, error_if_nonfinite=True, backend=backend)
    assert total == pytest.approx(2e20)
    np.testing.assert_allclose(host_array(one[0]), [1.0], rtol=1e-6)


def test_clip_grad_norm_non_finite(backend):
    g = [np.array([1.0, np.nan, 2.0], np.float32), np.array([3.0, 4.0])]
    before = [a.copy() for a in g]
    with pytest.raises(NonFiniteNormError, match="non-finite|cannot be clipped") as info:
        fastreg.clip_grad_norm(g, 1.0, error_if_nonfinite=True, backend=backend)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, FloatingPointError)
    for a, b in zip(g, before):
        np.testing.assert_array_equal(a, b)       # nothing changed
    assert math.isnan(fastreg.clip_grad_norm(g, 1.0, backend=backend))
    assert all(np.isnan(a).all() for a in g)      # scaled by NaN, as torch
    g = [np.array([1.0, np.inf, -2.0]), np.array([3.0], np.float32)]
    assert fastreg.clip_grad_norm(g, 1.0, backend=backend) == math.inf
    np.testing.assert_array_equal(g[0], [0.0, np.nan, -0.0])   # scaled by 0: inf * 0 is NaN
    np.testing.assert_array_equal(g[1], [0.0])


def test_clip_grad_norm_edge_cases(backend):
    assert fastreg.clip_grad_norm([], 1.0, backend=backend) == 0.0
    z = [np.zeros((0, 3), np.float32), np.zeros(0)]
    assert fastreg.clip_grad_norm(z, 1.0, backend=backend) == 0.0
    one = np.array([3.0, 4.0], np.float32)
    assert fastreg.clip_grad_norm(one, 1.0, backend=backend) == 5.0   # a single array
    np.testing.assert_allclose(one, [0.6, 0.8], rtol=1e-6)
    assert fastreg.clip_grad_norm([np.zeros(5)], 1.0, backend=backend) == 0.0


def test_clip_grad_norm_non_contiguous(backend):
    if backend == "cuda":
        pytest.skip("host arrays only")
    base = np.random.default_rng(3).standard_normal((8, 10)).astype(np.float32) * 5
    view = base[:, ::2]
    other = base[:, 1::2].copy()
    expected = view.copy()
    total = fastreg.clip_grad_norm([expected], 1.0, backend="numpy")
    assert fastreg.clip_grad_norm([view], 1.0, backend=backend) == pytest.approx(total,
                                                                                 rel=RTOL)
    np.testing.assert_allclose(base[:, ::2], expected, rtol=1e-6)
    np.testing.assert_array_equal(base[:, 1::2], other)


def test_clip_grads_with_norm(backend):
    g = grads_list(backend, seed=4)
    got = [a.copy() for a in g]
    coef = fastreg.clip_grads_with_norm(got, 2.0, 50.0, backend=backend)
    assert coef == clip_coef(50.0, 2.0, [a.dtype for a in g])
    for a, b in zip(got, g):
        np.testing.assert_array_equal(bits(a), bits(b * b.dtype.type(coef)))
    assert fastreg.clip_grads_with_norm(got, 100.0, 50.0, backend=backend) == 1.0


# ---- torch --------------------------------------------------------------------------------------

def _torch_grads(arrays):
    torch = pytest.importorskip("torch")
    params = []
    for a in arrays:
        t = torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype, requires_grad=True)
        t.grad = torch.from_numpy(a.copy())
        params.append(t)
    return params


@pytest.mark.parametrize("dtypes", [(np.float32,), (np.float64,), (np.float32, np.float64)])
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, 3.0])
def test_clip_grad_norm_equals_torch(backend, dtypes, p):
    torch = pytest.importorskip("torch")
    g = grads_list(backend, seed=5, dtypes=dtypes)
    if p == math.inf:   # torch refuses empty arrays there (fastreg: |x| >= 0, so 0 is the identity)
        g = [a for a in g if a.size]
    params = _torch_grads(g)
    total_t = torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type=p)
    got = [a.copy() for a in g]
    total = fastreg.clip_grad_norm(got, 1.0, p, backend=backend)
    all32 = dtypes == (np.float32,)
    assert total == pytest.approx(float(total_t), rel=1e-6 if np.float32 in dtypes else 1e-12)
    for a, t in zip(got, params):
        if p == math.inf or np.float32(total) == total_t.item() and all32:
            np.testing.assert_array_equal(a, t.grad.numpy())   # the same coefficient
        else:
            np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-6)   # torch's float32 total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grads_with_norm_equals_torch_bit_for_bit(backend, dtype):
    """Given torch's total, the coefficient and the scaling are torch's, bit for bit."""
    torch = pytest.importorskip("torch")
    g = grads_list(backend, seed=6, dtypes=(dtype,))
    for max_norm in (1.0, 0.37, 10.0):
        params = _torch_grads(g)
        total_t = torch.nn.utils.get_total_norm([t.grad for t in params])
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_t)
        got = [a.copy() for a in g]
        fastreg.clip_grads_with_norm(got, max_norm, total_t.item(), backend=backend)
        for a, t in zip(got, params):
            np.testing.assert_array_equal(bits(a), bits(t.grad.numpy()))


def test_clip_grad_norm_non_finite_like_torch():
    torch = pytest.importorskip("torch")
    for bad in (np.nan, np.inf):
        g = [np.array([1.0, bad, -2.0], np.float32), np.array([3.0, 0.0], np.float32)]
        params = _torch_grads(g)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        fastreg.clip_grad_norm(g, 1.0)
        for a, t in zip(g, params):
            np.testing.assert_array_equal(a, t.grad.numpy())
        with pytest.raises(RuntimeError):
            torch.nn.utils.clip_grad_norm_(_torch_grads(g), 1.0, error_if_nonfinite=True)


# ---- adaptive clipping --------------------------------------------------------------------------

def agc_case(backend, dtype, seed=7):
    rng = np.random.default_rng(seed)
    shapes = [(16, 3, 3, 3), (10, 20), (20,), (1,), (0, 5), (4, 0), (3, 5)]
    if backend == "cuda":
        shapes = [(4, 3, 2, 2), (5, 6), (6,), (0, 5)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params[-1][...] = 0        # zero weights: the floor eps applies
    grads = [(rng.standard_normal(s) * rng.choice([1e-3, 0.1, 3.0], size=s[:1] + (1,) *
                                                   (len(s) - 1) if s else ())).astype(dtype)
             for s in shapes]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_adaptive_clip_grad_matches_reference(backend, dtype, p):
    params, grads = agc_case(backend, dtype)
    ref = [g.copy() for g in grads]
    fastreg.adaptive_clip_grad(params, ref, 0.05, 1e-3, p, backend="numpy")
    assert any(not np.array_equal(a, b) for a, b in zip(ref, grads))   # some units clipped
    got = [g.copy() for g in grads]
    fastreg.adaptive_clip_grad(params, got, 0.05, 1e-3, p, backend=backend)
    for a, b in zip(got, ref):   # norms differ only by summation order: coefficients by 1 ulp
        np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps, atol=0)


def test_adaptive_clip_grad_definition():
    w = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])        # unit norms 5, 0 (-> eps), 1
    g = np.array([[0.3, 0.4], [1.0, 0.0], [0.001, 0.0]])      # 0.5, 1, 0.001
    fastreg.adaptive_clip_grad(w, g, clip_factor=0.01, eps=1e-3)
    # max_norm = (0.05, 1e-5, 0.01): units 0 and 1 clipped to it, unit 2 below it
    np.testing.assert_allclose(g, [[0.03, 0.04], [1e-5, 0.0], [0.001, 0.0]], rtol=1e-15)
    b = np.array([3.0, 4.0])                                  # 1-D: the whole array
    gb = np.array([1.0, 0.0])
    fastreg.adaptive_clip_grad([b], [gb], clip_factor=0.1)
    np.testing.assert_allclose(gb, [0.5, 0.0], rtol=1e-15)


def _timm_agc(torch, params, clip_factor, eps, norm_type):
    """timm.utils.agc.adaptive_clip_grad, written out with torch ops (timm is not installed)."""
    def unitwise_norm(x):
        if x.ndim <= 1:
            return x.norm(norm_type)
        return x.norm(norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)
    for p in params:
        g = p.grad.detach()
        max_norm = unitwise_norm(p.detach()).clamp_(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(g)
        clipped = g * (max_norm / grad_norm.clamp(min=1e-6))
        p.grad.detach().copy_(torch.where(grad_norm < max_norm, g, clipped))


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_adaptive_clip_grad_like_timm(p):
    torch = pytest.importorskip("torch")
    params, grads = agc_case("numpy", np.float32)
    if p == math.inf:   # torch cannot take the inf norm of an empty array
        params, grads = zip(*[(w, g) for w, g in zip(params, grads) if w.size])
    tparams = []
    for w, g in zip(params, grads):
        t = torch.from_numpy(w.copy()).requires_grad_()
        t.grad = torch.from_numpy(g.copy())
        tparams.append(t)
    _timm_agc(torch, tparams, 0.05, 1e-3, p)
    got = [g.copy() for g in grads]
    fastreg.adaptive_clip_grad(params, got, 0.05, 1e-3, p)
    same = 0
    for a, t in zip(got, tparams):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-6)
        same += np.array_equal(a, t.grad.numpy())
    assert same >= len(got) // 2   # most arrays equal bit for bit (same rounded norms)


# ---- bad input ----------------------------------------------------------------------------------

def _readonly(n):
    a = np.ones(n)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(norm_type=0.0), ValueError, "norm_type"),
    (dict(norm_type=-1.0), ValueError, "norm_type"),
    (dict(norm_type=math.nan), ValueError, "norm_type"),
    (dict(norm_type="fro"), ValueError, "norm_type"),
    (dict(norm_type=True), TypeError, "norm_type"),
    (dict(max_norm=-1.0), ValueError, "max_norm"),
    (dict(max_norm=math.nan), ValueError, "max_norm"),
    (dict(max_norm="1"), TypeError, "max_norm"),
    (dict(error_if_nonfinite=1), TypeError, "error_if_nonfinite"),
])
def test_clip_grad_norm_bad_arguments(kwargs, exc, match):
    args = dict(max_norm=1.0)
    args.update(kwargs)
    g = [np.ones(3) * 10]
    with pytest.raises(exc, match=match):
        fastreg.clip_grad_norm(g, **args)
    np.testing.assert_array_equal(g[0], 10.0)


def test_clip_bad_arrays():
    with pytest.raises(ValueError, match="read-only"):
        fastreg.clip_grad_norm([np.ones(3), _readonly(3)], 1.0)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        fastreg.clip_grad_norm([[1.0, 2.0]], 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastreg.clip_grad_norm([np.ones(3, np.int32)], 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastreg.grad_norm([np.ones(3, np.float16)])
    base = np.ones(10)
    with pytest.raises(ValueError, match="share memory"):
        fastreg.clip_grad_norm([base[:6], base[3:]], 1.0)
    fastreg.clip_grad_norm([base[::2], base[1::2]], 1.0)   # interleaved, disjoint: fine
    with pytest.raises(TypeError, match="list of arrays"):
        fastreg.clip_grad_norm(3.0, 1.0)
    w, g = [np.ones((2, 3))], [np.ones((2, 3))]
    with pytest.raises(ValueError, match="shape"):
        fastreg.adaptive_clip_grad([np.ones((3, 2))], g)
    with pytest.raises(ValueError, match="params has 2 arrays"):
        fastreg.adaptive_clip_grad(w * 2, g)
    big = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"params\[1\] overlaps grads\[0\]"):
        fastreg.adaptive_clip_grad([np.ones((2, 3)), big[1:3]], [big[:2], np.ones((2, 3))])
    with pytest.raises(ValueError, match="clip_factor"):
        fastreg.adaptive_clip_grad(w, g, clip_factor=-1.0)
    with pytest.raises(ValueError, match="eps"):
        fastreg.adaptive_clip_grad(w, g, eps=math.inf)


@pytest.mark.skipif(not CUDA_SIM, reason="device arrays: simulator runs only")
def test_clip_device_arrays():
    from numba import cuda
    g = grads_list("cuda", seed=8)
    expected = [a.copy() for a in g]
    total = fastreg.clip_grad_norm(expected, 1.0, backend="numpy")
    d = [cuda.to_device(a) for a in g]
    assert fastreg.clip_grad_norm(d, 1.0) == pytest.approx(total, rel=RTOL)
    for a, b in zip(d, expected):
        np.testing.assert_allclose(host(a), b, rtol=1e-6)
    with pytest.raises(ValueError, match="mixes"):
        fastreg.clip_grad_norm([d[1], g[1]], 1.0)
    params, grads = agc_case("cuda", np.float32)
    ref = [x.copy() for x in grads]
    fastreg.adaptive_clip_grad(params, ref, backend="numpy")
    dg = [cuda.to_device(x) for x in grads]
    fastreg.adaptive_clip_grad([cuda.to_device(w) for w in params], dg)
    for a, b in zip(dg, ref):
        np.testing.assert_allclose(host(a), b, rtol=4e-7)


# ---- max_grad_norm= on the optimizers (clipping fused into the step) ----------------------------

OPTIMIZERS = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)),
              ("SGD", dict(lr=0.1, decoupled=True, weight_decay=1e-2, l1=1e-3)),
              ("Adam", dict(lr=1e-2, weight_decay=1e-3, amsgrad=True)),
              ("AdamW", dict(lr=1e-2))]


@pytest.mark.parametrize("name, kwargs", OPTIMIZERS)
def test_optimizer_max_grad_norm_equals_clip_then_step(backend, name, kwargs):
    from fastreg import optim
    rng = np.random.default_rng(9)
    shapes = [((30, 20), np.float32), ((20,), np.float32), ((7, 5), np.float64), ((0, 3),
                                                                                 np.float32)]
    if backend == "cuda":
        shapes = [((6, 5), np.float32), ((5,), np.float64)]
    params = [rng.standard_normal(s).astype(d) for s, d in shapes]
    fused = [p.copy() for p in params]
    plain = [p.copy() for p in params]
    cls = getattr(optim, name)
    opt_fused = cls(fused, backend=backend, max_grad_norm=1.0, **kwargs)
    opt_plain = cls(plain, backend=backend, **kwargs)
    for step in range(3):
        scale = 3.0 if step != 1 else 1e-4            # step 1: below max_norm, not clipped
        grads = [(rng.standard_normal(p.shape) * scale).astype(p.dtype) for p in params]
        before = [g.copy() for g in grads]
        opt_fused.step(grads)
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)     # the caller's gradients are not scaled
        total = fastreg.clip_grad_norm(grads, 1.0, backend=backend)
        assert opt_fused.last_grad_norm == total
        opt_plain.step(grads)
        for a, b in zip(fused, plain):
            np.testing.assert_array_equal(bits(a), bits(b))
    # inf: measured, never clipped
    opt_fused.max_grad_norm = math.inf
    grads = [(rng.standard_normal(p.shape) * 100).astype(p.dtype) for p in params]
    opt_fused.step(grads)
    opt_plain.step(grads)
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_optimizer_max_grad_norm_checks():
    from fastreg import optim
    p = [np.ones(3)]
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
        optim.AdamW(p, max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="max_grad_norm must be a real number"):
        optim.AdamW(p, max_grad_norm="1")
    for bad in (None, 1.5):
        with pytest.raises(TypeError, match="params must be a sequence of arrays"):
            optim.SGD(bad, lr=0.1)
    opt = optim.SGD(p, lr=0.1, max_grad_norm=1.0)
    assert opt.last_grad_norm is None
    opt.max_grad_norm = math.nan
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p[0], 1.0)           # nothing changed


def _torch_pair(torch, frt_cls, torch_cls, kwargs, max_grad_norm):
    torch.manual_seed(0)
    shapes = [(30, 20), (20,), (4, 3, 3, 3)]
    params = [torch.randn(s) for s in shapes]
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    return a, b, frt_cls(a, max_grad_norm=max_grad_norm, decay_mask=True, **kwargs), \
        torch_cls(b, **kwargs)


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, momentum=0.9,
                                                        weight_decay=1e-2)),
                                           ("Adam", dict(lr=1e-2, weight_decay=1e-3)),
                                           ("AdamW", dict(lr=1e-2))])
def test_torch_optimizer_max_grad_norm(name, kwargs):
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    # fastreg's fused step = fastreg's clip_grad_norm on the grads, then the plain step (bits)
    a, b, fused, _ = _torch_pair(torch, getattr(frt.optim, name), getattr(torch.optim, name),
                                 kwargs, 1.0)
    plain = getattr(frt.optim, name)(b, decay_mask=True, **kwargs)
    # and torch: clip_grad_norm_ then torch's own step (torch's float32 norm: a tolerance)
    c = [p.detach().clone().requires_grad_() for p in a]
    tref = getattr(torch.optim, name)(c, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) * 3 for p in a]
        for ps in (a, b, c):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        fused.step()
        for p, g in zip(a, grads):
            assert torch.equal(p.grad, g)               # p.grad is not scaled
        total = fastreg.clip_grad_norm([p.grad.numpy() for p in b], 1.0)
        assert fused.last_grad_norm == total
        plain.step()
        torch.nn.utils.clip_grad_norm_(c, 1.0)
        tref.step()
        for x, y, z in zip(a, b, c):
            assert torch.equal(x, y)
            np.testing.assert_allclose(x.detach().numpy(), z.detach().numpy(), rtol=1e-5,
                                       atol=1e-7)
    with pytest.raises(ValueError, match="max_grad_norm"):
        getattr(frt.optim, name)(a, max_grad_norm=-2.0, **kwargs)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
def test_small_norm_type_overflows_to_inf(backend):
    """A norm beyond the float range (norm_type 0.001: sum ** 1000) is inf, as torch's
    vector_norm, not Python's OverflowError; clipping then zeroes the gradients, as torch."""
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend} unavailable")
    assert fastreg.grad_norm([np.full(10, 2.0)], 0.001, backend=backend) == math.inf
    g = [np.ones(3)]
    assert fastreg.clip_grad_norm(g, 1.0, norm_type=0.001, backend=backend) == math.inf
    np.testing.assert_array_equal(g[0], np.zeros(3))
