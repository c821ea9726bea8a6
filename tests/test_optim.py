"""Fused optimizers: every backend vs the reference (exact), vs an independent float64
implementation of the published rules, and vs torch.optim where torch is installed."""
import numpy as np
import pytest
from conftest import bits

import fastreg
from fastreg.optim import SGD, Adam, AdamW

DTYPES = [np.float32, np.float64]
SHAPES = [(7, 5), (13,), (1,), (0, 4), (3, 1000)]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def problem(dtype, seed=0, shapes=SHAPES, steps=4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def run(cls, params, grads, backend, **kw):
    if backend == "cuda":
        from numba import cuda
        dev = [cuda.to_device(p) for p in params]
        opt = cls(dev, **kw)
        for gs in grads:
            opt.step([cuda.to_device(g) for g in gs])
        return [d.copy_to_host() for d in dev], opt
    ps = [p.copy() for p in params]
    opt = cls(ps, backend=backend, **kw)
    for gs in grads:
        opt.step(gs)
    return ps, opt


CONFIGS = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, weight_decay=0.01)),
    (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, decoupled=True)),
    (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, l1=0.5)),
    (SGD, dict(lr=0.05, l1=1.0, weight_decay=0.1, decoupled=True, decay_mask=[True] * 5)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda c: getattr(c, "__name__", None) or
                         "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_vs_reference(kernel_backend, cls, kw, dtype):
    params, grads = problem(dtype)
    expected, ref_opt = run(cls, params, grads, "numpy", **kw)
    got, opt = run(cls, params, grads, kernel_backend, **kw)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(bits(g), bits(e))
    ref_state, state = ref_opt.state_dict(), opt.state_dict()
    assert ref_state.keys() == state.keys()
    for k in ref_state:
        np.testing.assert_array_equal(bits(np.asarray(state[k], dtype=ref_state[k].dtype))
                                      if k != "step" else state[k], bits(ref_state[k])
                                      if k != "step" else ref_state[k])


# ---- the published rules, written independently in float64 ---------------------------------


def sgd_rules(params, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              decoupled=False, l1=0.0, mask=None):
    ps = [p.astype(np.float64) for p in params]
    bufs = [None] * len(ps)
    mask = mask or [True] * len(ps)
    for gs in grads:
        for i, (p, g) in enumerate(zip(ps, gs)):
            wd = weight_decay if mask[i] else 0.0
            d = g.astype(np.float64)
            if wd and not decoupled:
                d = d + wd * p
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            if decoupled:
                p *= 1 - lr * wd
            p -= lr * d
            if l1 and mask[i]:
                p[:] = np.sign(p) * np.maximum(np.abs(p) - lr * l1, 0)
    return ps


def adam_rules(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
               amsgrad=False, decoupled=False, mask=None):
    b1, b2 = betas
    ps = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    mask = mask or [True] * len(ps)
    for t, gs in enumerate(grads, start=1):
        for i, (p, g) in enumerate(zip(ps, gs)):
            wd = weight_decay if mask[i] else 0.0
            g = g.astype(np.float64)
            if decoupled:
                p *= 1 - lr * wd
            elif wd:
                g = g + wd * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1 ** t)
            vmax[i] = np.maximum(vmax[i], v[i])
            vhat = (vmax[i] if amsgrad else v[i]) / (1 - b2 ** t)
            p -= lr * mhat / (np.sqrt(vhat) + eps)
    return ps


@pytest.mark.parametrize("cls,kw", CONFIGS, ids=lambda c: getattr(c, "__name__", None) or
                         "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_vs_published_rules(backend, cls, kw, dtype):
    params, grads = problem(dtype, seed=2, shapes=[(6, 5), (5,), (40,)], steps=6)
    kw = dict(kw)
    mask = [True] * len(params) if kw.pop("decay_mask", None) else [p.ndim > 1 for p in params]
    got, _ = run(cls, params, grads, backend, decay_mask=mask, **kw)
    if cls is SGD:
        expected = sgd_rules(params, grads, mask=mask, **kw)
    else:
        expected = adam_rules(params, grads, decoupled=cls is AdamW, mask=mask,
                              weight_decay=kw.pop("weight_decay", 1e-2 if cls is AdamW else 0),
                              **kw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("cls,kw", CONFIGS[:5] + CONFIGS[6:],
                         ids=lambda c: getattr(c, "__name__", None) or
                         "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_vs_torch(cls, kw, dtype):
    torch = pytest.importorskip("torch")
    kw = dict(kw)
    if kw.pop("decoupled", False) or kw.get("l1"):
        pytest.skip("torch's SGD has no decoupled decay or L1 step")
    params, grads = problem(dtype, seed=4, shapes=[(6, 5), (5,), (300,)], steps=5)
    got, _ = run(cls, params, grads, "auto", decay_mask=[True] * 3, **kw)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    for gs in grads:
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        topt.step()
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    for g, tp in zip(got, tparams):
        np.testing.assert_allclose(g, tp.detach().numpy(), rtol=rtol, atol=rtol)


# ---- behaviour ------------------------------------------------------------------------------


def test_default_decay_mask_exempts_1d():
    w, b = np.ones((2, 2), np.float32), np.ones(2, np.float32)
    opt = SGD([w, b], lr=0.1, weight_decay=1.0, backend="numpy")
    assert opt.decay_mask == [True, False]
    opt.step([np.zeros((2, 2), np.float32), np.zeros(2, np.float32)])
    np.testing.assert_allclose(w, 0.9)
    np.testing.assert_array_equal(b, 1.0)
    opt = AdamW([w, b], decay_mask=lambda p: p.size > 3, backend="numpy")
    assert opt.decay_mask == [True, False]
    # a bool: every parameter, or none (as fastreg.torch.optim's decay_mask=True)
    assert AdamW([w, b], decay_mask=True, backend="numpy").decay_mask == [True, True]
    assert SGD([w, b], 0.1, decay_mask=np.False_, backend="numpy").decay_mask == [False, False]
    with pytest.raises(TypeError, match="decay_mask must be None, a bool"):
        AdamW([w, b], decay_mask=3, backend="numpy")


def test_l1_gives_exact_zeros(backend):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 20)) * 0.1
    params, grads = [w], [[np.zeros_like(w)]] * 3
    got, _ = run(SGD, params, grads, backend, lr=0.1, l1=0.5)
    got = got[0]
    assert np.sum(got == 0) == np.sum(np.abs(w) <= 0.15)
    assert np.all(bits(got[got == 0]) == 0)
    np.testing.assert_allclose(got[got != 0], (np.sign(w) * (np.abs(w) - 0.15))[got != 0])


def test_check_finite_changes_nothing(backend):
    params, grads = problem(np.float32, shapes=[(4, 3), (3,)], steps=1)
    bad = [g.copy() for g in grads[0]]
    bad[1][2] = np.nan
    for cls, kw in ((SGD, dict(lr=0.1, momentum=0.9)), (AdamW, dict(lr=0.1))):
        ps = [p.copy() for p in params]
        arrays = ps
        if backend == "cuda":
            from numba import cuda
            arrays = [cuda.to_device(p) for p in ps]
            bad_in = [cuda.to_device(g) for g in bad]
            good_in = [cuda.to_device(g) for g in grads[0]]
            opt = cls(arrays, check_finite=True, **kw)
        else:
            bad_in, good_in = bad, grads[0]
            opt = cls(arrays, check_finite=True, backend=backend, **kw)
        opt.step(good_in)
        before = [host(a).copy() for a in arrays]
        state = opt.state_dict()
        with pytest.raises(FloatingPointError, match=r"grads\[1\]"):
            opt.step(bad_in)
        for a, b in zip(arrays, before):
            np.testing.assert_array_equal(host(a), b)
        after = opt.state_dict()
        assert opt.step_count == 1
        for k in state:
            np.testing.assert_array_equal(after[k], state[k])


@pytest.mark.parametrize("cls,kw", [(SGD, dict(lr=0.1, momentum=0.9)),
                                    (AdamW, dict(lr=0.01, amsgrad=True))])
def test_state_dict_resume_is_exact(tmp_path, cls, kw):
    params, grads = problem(np.float32, steps=6)
    whole, _ = run(cls, params, grads, "auto", **kw)
    first, opt = run(cls, params, grads[:3], "auto", **kw)
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    opt2 = cls(first, **kw)
    with np.load(tmp_path / "opt.npz") as f:
        opt2.load_state_dict(f)
    for gs in grads[3:]:
        opt2.step(gs)
    for a, b in zip(first, whole):
        np.testing.assert_array_equal(a, b)


def test_grads_not_modified_and_lr_can_change():
    params, grads = problem(np.float64, steps=1)
    keep = [g.copy() for g in grads[0]]
    opt = Adam([p.copy() for p in params], weight_decay=0.1)
    opt.step(grads[0])
    opt.lr = 0.5
    opt.step(grads[0])
    for g, k in zip(grads[0], keep):
        np.testing.assert_array_equal(g, k)


# ---- bad input ------------------------------------------------------------------------------


def test_bad_hyper_parameters():
    p = [np.ones(3, np.float32)]
    for make, word in ((lambda: SGD(p, lr=-1), "lr"), (lambda: SGD(p, lr=float("nan")), "lr"),
                       (lambda: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
                       (lambda: SGD(p, lr=0.1, nesterov=True), "nesterov"),
                       (lambda: SGD(p, lr=0.1, l1=float("inf")), "l1"),
                       (lambda: Adam(p, betas=(1.0, 0.9)), r"betas\[0\]"),
                       (lambda: Adam(p, betas=(0.9, -0.1)), r"betas\[1\]"),
                       (lambda: AdamW(p, eps=float("nan")), "eps"),
                       (lambda: AdamW(p, weight_decay=-1), "weight_decay"),
                       (lambda: SGD(p, lr=0.1, decay_mask=[True, False]), "decay_mask")):
        with pytest.raises(ValueError, match=word):
            make()
    opt = SGD(p, lr=0.1)
    opt.lr = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p[0], 1)


def test_bad_params_and_grads():
    p = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    opt = AdamW(p)
    with pytest.raises(ValueError, match="2 parameters"):
        opt.step([np.ones((2, 3), np.float32)])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        opt.step([np.ones((2, 3), np.float32), np.ones(4, np.float32)])
    with pytest.raises(ValueError, match=r"grads\[0\] has dtype"):
        opt.step([np.ones((2, 3)), np.ones(3, np.float32)])
    np.testing.assert_array_equal(p[0], 1)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD([ro], lr=0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        SGD([np.ones((4, 4))[:, ::2]], lr=0.1)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        SGD([np.ones(3, np.int64)], lr=0.1)
    with pytest.raises(TypeError, match="updated in place"):
        SGD([[1.0, 2.0]], lr=0.1)


def test_hyper_parameters_rechecked_before_any_change():
    w = np.ones((2, 2), np.float32)
    for cls, attr, bad in ((AdamW, "weight_decay", float("nan")), (AdamW, "betas", (1.0, 0.9)),
                           (Adam, "eps", -1.0), (SGD, "momentum", -0.1), (SGD, "l1", np.inf)):
        opt = cls([w], lr=0.1) if cls is not SGD else cls([w], lr=0.1, momentum=0.5)
        opt.step([np.ones_like(w)])
        before, state = w.copy(), opt.state_dict()
        setattr(opt, attr, bad)
        with pytest.raises(ValueError, match=attr):
            opt.step([np.ones_like(w)])
        np.testing.assert_array_equal(w, before)
        assert opt.step_count == 1
        for k, v in opt.state_dict().items():
            np.testing.assert_array_equal(v, state[k])


def test_params_must_be_a_list_of_distinct_arrays():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="not a single array"):
        AdamW(w)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        SGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        Adam([w, w[1]])
    flat = np.zeros(20, np.float32)   # views of one flat buffer that do not overlap are fine
    SGD([flat[:10].reshape(2, 5), flat[10:]], lr=0.1)


def test_load_state_dict_is_checked_before_use():
    a, b = np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)
    opt = Adam([a, b], lr=0.1, amsgrad=True)
    opt.step([np.ones_like(a)] * 2)
    good = opt.state_dict()
    for broken, word in (({k: v for k, v in good.items() if k != "exp_avg_sq.1"}, "exp_avg"),
                         ({k: v for k, v in good.items() if k != "max_exp_avg_sq.0"}, "amsgrad"),
                         (dict(good, step=-1), "step"), (dict(good, step=2.5), "step"),
                         (dict(good, step=np.array(True)), "step"),
                         (dict(good, **{"exp_avg.7": good["exp_avg.0"]}), "unknown"),
                         ({**good, 3: 1}, "unknown"), (list(good.items()), "mapping"),
                         (dict(good, **{"exp_avg.0": good["exp_avg.0"].astype(np.float64)}),
                          "dtype")):
        with pytest.raises(ValueError, match=word):
            opt.load_state_dict(broken)
        for k, v in opt.state_dict().items():   # nothing was replaced
            np.testing.assert_array_equal(v, good[k])
    opt.load_state_dict(dict(good, step=np.int64(1)))
    assert opt.step_count == 1


def test_adam_second_moment_of_a_huge_gradient_as_torch(backend):
    """v = beta2 v + ((1 - beta2) g) g, torch's addcmul order: a gradient of 1e20 (g * g
    overflows float32 alone) gives a finite v (9.95e36) and the parameter keeps moving; with
    (1 - beta2) (g * g), v became inf and every later step of that element was 0."""
    p = np.array([1.0, 2.0], np.float32)
    opt = Adam([p], lr=0.1, backend=backend)
    for g in [np.array([1e20, -1e20], np.float32)] + [np.ones(2, np.float32)] * 5:
        opt.step([g])
    v = host(opt.state_dict()["exp_avg_sq.0"])
    assert np.isfinite(v).all() and v[0] > 9e36
    # torch.optim.Adam on the same sequence (float32): [0.6720016, 2.3279982]
    np.testing.assert_allclose(host(p), [0.6720016, 2.3279982], rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
@pytest.mark.parametrize("beta1", [0.0, 0.3, 0.5, 0.9])
def test_adam_first_moment_is_torch_lerp_for_every_beta1(backend, beta1):
    """torch's exp_avg.lerp_(g, 1 - beta1) takes g - (g - m) * beta1 for a weight >= 0.5: with
    beta1 = 0, m = g exactly, where m + 1 * (g - m) cancels (m 1e4, g 1e-4: 0). Found by review;
    every backend, the 16-bit path's float32 math included."""
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"{backend} unavailable")
    torch = pytest.importorskip("torch")
    grads = [[1e4, -3.0, 0.25], [1e-4, 7.0, -0.5], [2.0, -1e-3, 3.0]]
    p = np.array([1.0, -2.0, 0.5], np.float32)
    opt = fastreg.optim.Adam([p], lr=0.1, betas=(beta1, 0.99), backend=backend)
    tp = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.1, betas=(beta1, 0.99))
    for g in grads:
        opt.step([np.array(g, np.float32)])
        tp.grad = torch.tensor(g)
        topt.step()
        m = opt.state_dict()["exp_avg.0"]
        np.testing.assert_allclose(m, topt.state[tp]["exp_avg"].numpy(), rtol=2e-6, atol=0)
        if beta1 == 0:
            np.testing.assert_array_equal(m, np.array(g, np.float32))
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=2e-6, atol=2e-6)
