"""Hypothesis drives the training-recipe functions (batch norm forward and backward, the optimizer
steps, EMA, gradient norms and clipping, cross-entropy, DropBlock, the dropout family on 16-bit
data, the image augmentations) with random shapes, dtypes and values (and random strides,
reversals and transposes, except for the list ops' arrays: contiguous, at least 1-D): every
kernel backend gives the numpy reference's result, or the reference's error, and never changes
its inputs. test_hypothesis.py does the same for dropout and the penalties on float32/float64.

Exact (same bits, any NaN matching any NaN) where the op is element-wise; within the tolerance of
the op's own test file where it is a reduction (batch norm, norms, cross-entropy), whose backends
sum in different orders."""
import os

import numpy as np
import pytest
from conftest import CUDA_SIM
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastreg
from fastreg import augment, optim
from fastreg._arrays import BFLOAT16, FLOAT16

KERNEL_BACKENDS = [b for b in ("cpu", "c", "cuda") if fastreg.available_backends()[b] is None]
pytestmark = [
    pytest.mark.skipif(not KERNEL_BACKENDS, reason="no kernel backend available"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
# FASTREG_HYPOTHESIS_EXAMPLES: more examples for a soak run (the suite's default is small)
EXAMPLES = int(os.environ.get("FASTREG_HYPOTHESIS_EXAMPLES", 15 if CUDA_SIM else 60))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
BACKENDS = st.sampled_from(KERNEL_BACKENDS or ["numpy"])
WIDE = [np.dtype(np.float32), np.dtype(np.float64)]
HALF = [FLOAT16] + ([BFLOAT16] if BFLOAT16 is not None else [])
ALL_FLOATS = WIDE + HALF


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def raw(a):
    """The bit patterns of a float array (2, 4 or 8 bytes per element)."""
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def same(got, want, what=""):
    """Same dtype, shape and bits, except that any NaN matches any NaN (a NaN result's payload is
    the hardware's choice where two NaNs meet)."""
    got, want = host(got), host(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want.astype(np.float32) if want.dtype.itemsize == 2 else want)
    gnan = np.isnan(got.astype(np.float32) if got.dtype.itemsize == 2 else got)
    np.testing.assert_array_equal(gnan, nan, err_msg=what)
    np.testing.assert_array_equal(raw(got)[~nan], raw(want)[~nan], err_msg=what)


def eps_of(dtype):
    return {2: 2.0 ** -7 if dtype == BFLOAT16 else 2.0 ** -10, 4: 2.0 ** -23,
            8: 2.0 ** -52}[np.dtype(dtype).itemsize]


SPECIALS = st.sampled_from([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, 65504.0, 65520.0, 3e38])


@st.composite
def arrays(draw, dtypes=ALL_FLOATS, shape=None, specials=True, bound=1e30, max_dims=4):
    """A float array of a random (or the given) shape; a drawn shape is also viewed with random
    reversals, a random transpose and, on the first axis, a step of 2."""
    dt = draw(st.sampled_from(dtypes))
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
        fixed = False
    else:
        fixed = shape is not None
    if shape is None:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=7))
    bound = float(np.float32(bound))
    values = st.floats(-bound, bound, width=32, allow_nan=False)
    if specials:
        values = values | SPECIALS
    a = draw(hnp.arrays(np.float64, shape, elements=values)).astype(dt)
    if a.ndim and not fixed:
        if draw(st.booleans()):
            a = np.repeat(a, 2, axis=0)[::2]
        a = a[tuple(slice(None, None, draw(st.sampled_from([1, -1]))) for _ in range(a.ndim))]
        a = a.transpose(draw(st.permutations(range(a.ndim))))
    return a


def run_both(fn, backend, *args, **kw):
    """(reference result, backend result) of fn, or assert that both raise the same error type."""
    try:
        want = fn(*args, backend="numpy", **kw)
    except (ValueError, TypeError) as exc:
        event(f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}")
        with pytest.raises(type(exc)):
            fn(*args, backend=backend, **kw)
        return None, None
    return want, fn(*args, backend=backend, **kw)


# ---- dropout family on 16-bit data --------------------------------------------------------------

@SETTINGS
@given(x=arrays(dtypes=HALF), p=st.floats(0, 1), seed=st.integers(0, 2 ** 64 - 1),
       offset=st.integers(0, 2 ** 40), mode=st.sampled_from(["inverted", "classic"]),
       training=st.booleans(), op=st.sampled_from(["dropout", "dropout_backward", "drop_path",
                                                   "channel_dropout"]), backend=BACKENDS)
def test_16bit_dropout_family_matches_reference(x, p, seed, offset, mode, training, op, backend):
    if op == "drop_path" and x.ndim == 0:
        return
    if op == "channel_dropout" and x.ndim < 2:
        return
    before = x.copy()
    want, got = run_both(getattr(fastreg, op), backend, x, p, seed=seed, offset=offset, mode=mode,
                         training=training)
    if want is not None:
        same(got, want, op)
    np.testing.assert_array_equal(raw(x), raw(before))


@SETTINGS
@given(x=arrays(dtypes=ALL_FLOATS, shape=hnp.array_shapes(min_dims=4, max_dims=4, min_side=0,
                                                       max_side=7)),
       p=st.floats(0, 0.5), block=st.integers(1, 4), seed=st.integers(0, 2 ** 64 - 1),
       training=st.booleans(), layout=st.sampled_from(["NCHW", "NHWC"]), backend=BACKENDS)
def test_drop_block_matches_reference(x, p, block, seed, training, layout, backend):
    before = x.copy()
    want, got = run_both(fastreg.drop_block, backend, x, p, block, seed=seed, training=training,
                         layout=layout)
    if want is not None:
        same(got, want, "drop_block")
    np.testing.assert_array_equal(raw(x), raw(before))


# ---- optimizer steps and EMA (element-wise: exact) -----------------------------------------------

OPTIMIZERS = st.sampled_from([
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, l1=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1, decoupled=True)),
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.AdamW, dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True)),
])


@st.composite
def param_lists(draw, dtypes=ALL_FLOATS):
    """1-3 (parameter, two gradients) triples of random shapes; a 16-bit parameter may have
    float32 gradients and a float32 parameter 16-bit ones (the mixed pairs)."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        p = draw(arrays(dtypes=dtypes, max_dims=3, bound=100.0))
        mixed = [np.dtype(np.float32)] if p.dtype.itemsize == 2 else (
            [d for d in HALF if d in dtypes] if p.dtype == np.float32 else [])
        gdt = draw(st.sampled_from([p.dtype] + mixed))
        gs = [draw(arrays(dtypes=[gdt], shape=p.shape, bound=100.0)) for _ in range(2)]
        out.append((np.ascontiguousarray(p), [np.ascontiguousarray(g) for g in gs]))
    return out


@SETTINGS
@given(cfg=OPTIMIZERS, triples=param_lists(), backend=BACKENDS)
def test_optimizer_steps_match_reference(cfg, triples, backend):
    cls, kw = cfg
    results = {}
    grads_before = [[g.copy() for g in gs] for _, gs in triples]
    for b in ("numpy", backend):
        params = [p.copy() for p, _ in triples]
        try:
            opt = cls(params, backend=b, **kw)
            for step in range(2):
                opt.step([gs[step] for _, gs in triples])
        except (ValueError, TypeError) as exc:
            results[b] = type(exc)
            continue
        results[b] = params
    want, got = results["numpy"], results[backend]
    if isinstance(want, type):
        assert got is want
        return
    assert not isinstance(got, type), got
    for g, w in zip(got, want):
        same(g, w, cls.__name__)
    for (_, gs), before in zip(triples, grads_before):
        for g, b in zip(gs, before):
            np.testing.assert_array_equal(raw(g), raw(b))


@SETTINGS
@given(triples=param_lists(dtypes=WIDE), decay=st.floats(0, 1), backend=BACKENDS)
def test_ema_update_matches_reference(triples, decay, backend):
    params = [p for p, _ in triples]
    shadows = [gs[0].astype(p.dtype) for p, gs in triples]
    want = [s.copy() for s in shadows]
    got = [s.copy() for s in shadows]
    before = [p.copy() for p in params]
    try:
        fastreg.ema_update(want, params, decay, backend="numpy")
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            fastreg.ema_update(got, params, decay, backend=backend)
        return
    fastreg.ema_update(got, params, decay, backend=backend)
    for g, w in zip(got, want):
        same(g, w, "ema_update")
    for p, b in zip(params, before):
        np.testing.assert_array_equal(raw(p), raw(b))


# ---- norms and clipping (reductions: a relative tolerance) ---------------------------------------

@SETTINGS
@given(triples=param_lists(dtypes=WIDE), max_norm=st.floats(1e-3, 1e3),
       norm_type=st.sampled_from([1.0, 2.0, 3.0, np.inf]), backend=BACKENDS)
def test_grad_norm_and_clip_match_reference(triples, max_norm, norm_type, backend):
    grads = [gs[0] for _, gs in triples]
    want_n = fastreg.grad_norm(grads, norm_type, backend="numpy")
    got_n = fastreg.grad_norm(grads, norm_type, backend=backend)
    finite = all(np.isfinite(g).all() for g in grads)
    rtol = 1e-12 if all(g.dtype == np.float64 for g in grads) else 1e-6
    if not finite:
        assert np.isnan(want_n) == np.isnan(got_n) and (np.isnan(want_n) or want_n == got_n)
        return
    np.testing.assert_allclose(got_n, want_n, rtol=rtol)
    want = [g.copy() for g in grads]
    got = [g.copy() for g in grads]
    tw = fastreg.clip_grad_norm(want, max_norm, norm_type, backend="numpy")
    tg = fastreg.clip_grad_norm(got, max_norm, norm_type, backend=backend)
    np.testing.assert_allclose(tg, tw, rtol=rtol)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=4 * rtol, atol=0)


# ---- cross-entropy -------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(WIDE), n=st.integers(0, 9), c=st.integers(1, 40),
       smoothing=st.sampled_from([0.0, 0.1, 0.5]),
       reduction=st.sampled_from(["mean", "sum", "none"]), weighted=st.booleans(),
       backend=BACKENDS)
def test_cross_entropy_matches_reference(data, dtype, n, c, smoothing, reduction, weighted,
                                         backend):
    logits = data.draw(arrays(dtypes=[dtype], shape=(n, c), specials=False, bound=50.0))
    target = data.draw(hnp.arrays(np.int64, n, elements=st.sampled_from(list(range(c)) + [-100])))
    weight = (data.draw(arrays(dtypes=[dtype], shape=(c,), specials=False, bound=1.0)) ** 2
              if weighted else None)
    before = logits.copy()
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    want, got = run_both(fastreg.cross_entropy, backend, logits, target, **kw)
    np.testing.assert_array_equal(raw(logits), raw(before))
    if want is None:
        return
    (wl, wg), (gl, gg) = want, (got[0], host(got[1]))
    eps = eps_of(dtype)
    k = 8 + (c / 16 if dtype == np.float64 else 0)
    # the gradient k e - scale a cancels down from terms of size scale * A (A <= the largest
    # class weight): its budget is relative to them, not to the result
    wmax = float(np.max(weight)) if weighted else 1.0
    kept = target[target != -100]
    denom = float(np.sum(weight[kept]) if weighted else kept.size) if reduction == "mean" else 1.0
    terms = wmax / denom if denom > 0 else 0.0
    finite = np.abs(wg)[np.isfinite(wg)]   # (a NaN gradient must be NaN in both: equal_nan)
    scale = max(float(finite.max(initial=0.0)), terms)
    if np.ndim(wl) == 0 and np.isnan(wl):
        assert np.isnan(gl)
    else:
        np.testing.assert_allclose(gl, wl, rtol=k * eps, atol=k * eps * (1 + np.max(np.abs(wl),
                                                                                   initial=0)))
    np.testing.assert_allclose(gg, wg, rtol=0, atol=2 * k * eps * scale + 1e-300)


# ---- batch norm ----------------------------------------------------------------------------------

@st.composite
def bn_inputs(draw):
    dtype = draw(st.sampled_from(ALL_FLOATS))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6))
    axis = draw(st.sampled_from([1, -1] if len(shape) > 2 else [1]))
    x = draw(arrays(dtypes=[dtype], shape=shape, specials=False, bound=100.0))
    if draw(st.booleans()):  # a strided view: every other element of a doubled batch
        x = np.repeat(x, 2, axis=0)[::2]
    return x, axis


def _per_channel(v, axis, ndim):
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v, np.float64).reshape(shape)


@SETTINGS
@given(inp=bn_inputs(), training=st.booleans(), affine=st.booleans(),
       relu=st.booleans(), residual=st.booleans(), backend=BACKENDS, data=st.data())
def test_batch_norm_forward_and_backward_match_reference(inp, training, affine, relu, residual,
                                                         backend, data):
    """Budgets as in test_batchnorm.py: k ulps of the dtype times the size of the rounded terms;
    a 16-bit output rounds once more, so a last-bit difference in float32 may move it an ulp."""
    x, axis = inp
    C = x.shape[axis]
    f32 = np.float32 if x.dtype.itemsize == 2 else x.dtype   # 16-bit x: float32 parameters
    rng = np.random.default_rng(C)
    w = rng.uniform(0.5, 1.5, C).astype(f32) if affine else None
    b = rng.standard_normal(C).astype(f32) if affine else None
    rm, rv = rng.standard_normal(C).astype(f32), rng.uniform(0.5, 2.0, C).astype(f32)
    res = (data.draw(arrays(dtypes=[x.dtype], shape=x.shape, specials=False, bound=100.0))
           if residual else None)
    gy = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape).astype(x.dtype)
    before = x.copy()
    act = "relu" if relu else None
    outs = {}
    for bk in ("numpy", backend):
        r_m, r_v = rm.copy(), rv.copy()
        try:
            y, saved = fastreg.batch_norm(x, r_m, r_v, w, b, training=training, axis=axis,
                                          activation=act, residual=res, backend=bk)
        except (ValueError, TypeError) as exc:
            outs[bk] = type(exc)
            continue
        grads = fastreg.batch_norm_backward(gy, x, saved, w, axis=axis, activation=act,
                                            y=host(y) if relu else None, backend=bk)
        outs[bk] = (host(y), host(saved.mean), host(saved.invstd), r_m, r_v,
                    [None if g is None else host(g) for g in grads])
    np.testing.assert_array_equal(raw(x), raw(before))
    want, got = outs["numpy"], outs[backend]
    if isinstance(want, type):
        assert got is want
        return
    assert not isinstance(got, type), got
    x64 = x.astype(np.float64)
    ws = np.abs(want[2].astype(np.float64)) * (np.abs(w.astype(np.float64)) if affine else 1.0)
    xhat = np.abs((x64 - _per_channel(want[1], axis, x.ndim))
                  * _per_channel(want[2], axis, x.ndim))
    scale = float(np.abs(x64).max() * ws.max() + (np.abs(b).max() if affine else 0) + 1.0)
    if res is not None:
        scale += float(np.abs(res.astype(np.float64)).max())
    n = x.size // C
    # y: 8 ulps of its scale, plus the float64 statistics' own summation error (up to about n
    # float64 ulps relative, which shows in float64 outputs only)
    err = np.abs(host(got[0]).astype(np.float64) - want[0].astype(np.float64))
    budget = (8 * eps_of(x.dtype) + n * eps_of(np.float64)) * scale
    assert np.all(err <= budget), f"y: {err.max()} > {budget}"
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-9 * np.abs(x64).max())
    np.testing.assert_allclose(got[2], want[2], rtol=1e-9)
    for r in (3, 4):  # running statistics: float64 math, one rounding to the parameters' dtype
        tol = 4 * eps_of(f32) + 1e-12
        np.testing.assert_allclose(got[r], want[r], rtol=tol,
                                   atol=tol * (1 + float(np.abs(x64).max()) ** 2))
    gmax = float(np.abs(gy.astype(np.float64)).max(initial=0))
    xmax = float(xhat.max(initial=0))
    budgets = [32 * eps_of(x.dtype) * ws.max() * gmax * (2 + xmax * xmax) + 1e-300,   # grad_x
               16 * eps_of(f32) * n * gmax * (1 + xmax) + 1e-300,                   # grad_w
               16 * eps_of(f32) * n * gmax + 1e-300,                                # grad_b
               0.0]                                                                  # grad_res
    for i, (g, e) in enumerate(zip(got[5], want[5])):
        assert (g is None) == (e is None), i
        if e is not None:
            ge = np.abs(g.astype(np.float64) - e.astype(np.float64))
            assert np.all(ge <= budgets[i]), f"grad {i}: {ge.max()} > {budgets[i]}"


# ---- image augmentation --------------------------------------------------------------------------


SEEDED = {   # op -> strategy of its keyword arguments (besides seed, layout)
    "random_flip": st.fixed_dictionaries({"p": st.floats(0, 1), "direction": st.sampled_from(
        ["horizontal", "vertical", "both"])}),
    "random_rot90": st.fixed_dictionaries({"p": st.floats(0, 1)}),
    "random_crop": st.fixed_dictionaries({
        "size": st.tuples(st.integers(1, 6), st.integers(1, 6)), "padding": st.integers(0, 3),
        "padding_mode": st.sampled_from(["constant", "reflect"]), "fill": st.integers(0, 255)}),
    "random_resized_crop": st.fixed_dictionaries({
        "size": st.tuples(st.integers(1, 7), st.integers(1, 7)),
        "interpolation": st.sampled_from(["bilinear", "nearest"])}),
    "random_rotate": st.fixed_dictionaries({
        "degrees": st.floats(0, 180), "p": st.floats(0, 1), "fill": st.integers(0, 255),
        "interpolation": st.sampled_from(["bilinear", "nearest"])}),
    "random_erasing": st.fixed_dictionaries({"p": st.floats(0, 1),
                                             "value": st.sampled_from([0.0, 7.0])}),
    "gaussian_noise": st.fixed_dictionaries({"std": st.floats(0, 2)}),
}
COLOUR = {   # op -> strategy of its positional arguments after the images
    "adjust_brightness": st.tuples(st.floats(0, 3)),
    "adjust_contrast": st.tuples(st.floats(0, 3)),
    "adjust_saturation": st.tuples(st.floats(0, 3)),
    "adjust_hue": st.tuples(st.floats(-0.5, 0.5)),
    "adjust_sharpness": st.tuples(st.floats(0, 3)),
    "autocontrast": st.tuples(),
    "equalize": st.tuples(),
    "posterize": st.tuples(st.integers(1, 8)),
    "solarize": st.tuples(st.integers(0, 256)),
    "gaussian_blur": st.tuples(st.sampled_from([1, 3, 5]), st.floats(0.1, 3)),
}


@st.composite
def images(draw, dtypes):
    dt = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(["NHWC", "NCHW"]))
    n, h, w = (draw(st.integers(lo, 5)) for lo in (0, 1, 1))
    c = draw(st.sampled_from([1, 3, 4]))
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    if dt == np.uint8:
        x = draw(hnp.arrays(np.uint8, shape))
    else:
        x = draw(hnp.arrays(np.float32, shape, elements=st.floats(-300, 300, width=32)))
    if n and draw(st.booleans()):  # a strided view of the same shape
        x = np.repeat(x, 2, axis=0)[::2]
    return x, layout


@SETTINGS
@given(data=st.data(), op=st.sampled_from(sorted(SEEDED)), seed=st.integers(0, 2 ** 64 - 1),
       backend=BACKENDS)
def test_seeded_augmentations_match_reference(data, op, seed, backend):
    x, layout = data.draw(images([np.uint8, np.float32]))
    kw = data.draw(SEEDED[op])
    before = x.copy()
    want, got = run_both(getattr(augment, op), backend, x, seed=seed, layout=layout, **kw)
    np.testing.assert_array_equal(x, before)
    if want is not None:
        got = host(got)
        assert got.dtype == want.dtype and got.shape == want.shape, op
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=op)


@SETTINGS
@given(data=st.data(), op=st.sampled_from(sorted(COLOUR)), backend=BACKENDS)
def test_colour_ops_match_reference(data, op, backend):
    x, layout = data.draw(images([np.uint8]))
    args = data.draw(COLOUR[op])
    before = x.copy()
    want, got = run_both(getattr(augment, op), backend, x, *args, layout=layout)
    np.testing.assert_array_equal(x, before)
    if want is not None:
        np.testing.assert_array_equal(host(got), want, err_msg=op)
