"""Weight EMA: the exact fma of the reference, every backend vs the reference (bit for bit),
torch's ``_foreach_lerp_`` bits, timm ModelEmaV3's decay rule, the EMA class and bad input."""
import ctypes
import ctypes.util
import math
from fractions import Fraction

import numpy as np
import pytest
from conftest import CUDA_SIM, bits

import fastreg
from fastreg.reference.ema import fma

DTYPES = [np.float32, np.float64]
DECAYS = [0.0, 1e-4, 0.3, 0.5, 0.50000001, 0.7, 0.999, 0.9999, 1.0]
SHAPES = [(0,), (1,), (7,), (1000,), (33, 17), (4099,)]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def make(shapes, dtypes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]


def same_bits(a, b):
    """Equal element for element: same bits, except that any NaN matches any NaN (the payload
    of a NaN result is the hardware's choice)."""
    a, b = host(a), host(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(bits(a)[~nan], bits(b)[~nan])


# ---- the reference's fma ------------------------------------------------------------------------

def _exact_fma(a, b, c, dtype):
    """An independent oracle: Fraction arithmetic rounded by NumPy's own conversion."""
    r = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if dtype == np.float64:
        return float(r)
    # round the rational to float32: nearest, ties to even, via the two float32 neighbours
    lo = np.float32(float(r))
    cands = [lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))]
    best = min(cands, key=lambda x: (abs(Fraction(float(x)) - r),
                                     int(np.array(x).view(np.uint32)) & 1))
    return best


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_is_correctly_rounded(dtype):
    rng = np.random.default_rng(1)
    n = 3000
    a = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    c = (-(a.astype(np.float64) * b) * (1 + rng.standard_normal(n) * 1e-7)).astype(dtype)
    c[::3] = rng.standard_normal(len(c[::3]))        # and ordinary sums
    got = fma(a, b, c)
    expected = np.array([_exact_fma(x, y, z, dtype) for x, y, z in zip(a, b, c)], dtype)
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_fma_float32_double_rounding_case():
    # a * b = 1 + 2**-24 exactly (a midpoint of float32), c = 2**-80: a float64 sum rounds to
    # the midpoint and then to 1.0; the fused result is 1 + 2**-23
    a = np.float32(24929 / 2 ** 15)
    b = np.float32(673 / 2 ** 9)
    c = np.float32(2.0 ** -80)
    assert float(a) * float(b) == 1 + 2 ** -24
    assert fma(a, b, c)[()] == np.float32(1 + 2 ** -23)
    assert np.float32(float(a) * float(b) + float(c)) == np.float32(1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fma_matches_libm(dtype):
    path = ctypes.util.find_library("m")
    if path is None:
        pytest.skip("no C math library to compare with")
    libm = ctypes.CDLL(path)
    f = libm.fmaf if dtype == np.float32 else libm.fma
    ct = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    f.restype, f.argtypes = ct, [ct] * 3
    info = np.finfo(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -3.0, info.max, -info.max,
                        info.tiny, info.smallest_subnormal, 2.0 ** -600 if dtype == np.float64
                        else 1e-30], dtype)
    a, b, c = (x.ravel() for x in np.meshgrid(special, special, special))
    rng = np.random.default_rng(2)
    e = rng.integers(info.minexp - 20, info.maxexp, size=(3, 4000))
    wide = [np.ldexp(rng.uniform(0.5, 1, 4000) * rng.choice([-1, 1], 4000), k).astype(dtype)
            for k in (e[0] // 2, e[1] // 2, e[2])]
    a, b, c = (np.concatenate([x, w]) for x, w in zip((a, b, c), wide))
    got = fma(a, b, c)
    expected = np.array([f(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)], dtype)
    same_bits(got, expected)


def test_fma_refuses_mixed_dtypes():
    with pytest.raises(TypeError, match="one float dtype"):
        fma(np.ones(2, np.float32), np.ones(2), np.ones(2))


# ---- every backend vs the reference -------------------------------------------------------------

def _shapes(backend):
    return [(0,), (1,), (7,), (300,), (5, 9)] if backend == "cuda" else SHAPES


@pytest.mark.parametrize("decay", DECAYS)
def test_ema_update_matches_reference(backend, decay):
    shapes = _shapes(backend)
    dtypes = [DTYPES[i % 2] for i in range(len(shapes))]     # a mixed list
    ema = make(shapes, dtypes, seed=1)
    params = make(shapes, dtypes, seed=2)
    expected = [e.copy() for e in ema]
    fastreg.ema_update(expected, params, decay, backend="numpy")
    before = [p.copy() for p in params]
    got = [e.copy() for e in ema]
    out = fastreg.ema_update(got, params, decay, backend=backend)
    assert all(o is g for o, g in zip(out, got))
    for g, x in zip(got, expected):
        same_bits(g, x)
    for p, b in zip(params, before):
        same_bits(p, b)   # params are not modified


def test_ema_update_formula(backend):
    # decay 0 copies p, decay 1 keeps ema; the definition's two forms
    e = np.array([1.0, -2.0, 0.5], np.float32)
    p = np.array([3.0, 4.0, -0.5], np.float32)
    for decay, expected in ((0.0, p), (1.0, e), (0.75, e + np.float32(0.25) * (p - e))):
        got = e.copy()
        fastreg.ema_update(got, p, decay, backend=backend)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ema_update_special_values(backend, dtype):
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-300, 3.0, -3.0], dtype)
    e, p = (x.ravel() for x in np.meshgrid(special, special))
    for decay in (0.999, 0.25):
        expected = e.copy()
        fastreg.ema_update(expected, p, decay, backend="numpy")
        got = e.copy()
        with np.errstate(invalid="ignore"):
            fastreg.ema_update(got, p, decay, backend=backend)
        same_bits(got, expected)


def _parallel_count(backend):
    if backend == "c":
        import fastreg.c as fc
        return fc.parallel_regions()
    from fastreg.cpu import _jit
    return _jit.launches["parallel"]


def test_ema_update_serial_and_parallel_paths_agree(backend, monkeypatch):
    if backend in ("numpy", "cuda"):
        pytest.skip("host kernels only")
    from fastreg import _threads
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)   # small arrays take both paths
    shapes = [(3 * 65536 + 5,), (40,), (1,)]
    ema = make(shapes, [np.float32] * 3, 3)
    params = make(shapes, [np.float32] * 3, 4)
    expected = [e.copy() for e in ema]
    fastreg.ema_update(expected, params, 0.99, backend="numpy")
    for nt in (1, 2):
        got = [e.copy() for e in ema]
        before = _parallel_count(backend)
        with fastreg.threads(nt):
            fastreg.ema_update(got, params, 0.99, backend=backend)
        assert (_parallel_count(backend) > before) == (nt == 2)
        for g, x in zip(got, expected):
            same_bits(g, x)


def test_ema_update_non_contiguous_and_single_array(backend):
    if backend == "cuda":
        pytest.skip("host arrays only")
    base = make([(6, 10)], [np.float64], 5)[0]
    view = base[:, ::2]                          # not contiguous: through a copy, written back
    p = make([(6, 5)], [np.float64], 6)[0]
    expected = view.copy()
    fastreg.ema_update(expected, p, 0.9, backend="numpy")
    other = base[:, 1::2].copy()
    fastreg.ema_update(view, p, 0.9, backend=backend)
    same_bits(base[:, ::2], expected)
    same_bits(base[:, 1::2], other)              # the interleaved columns are untouched


def test_ema_update_empty_list_and_zero_size(backend):
    assert fastreg.ema_update([], [], 0.9, backend=backend) == []
    e = np.zeros((0, 3), np.float32)
    fastreg.ema_update([e], [np.zeros((0, 3), np.float32)], 0.9, backend=backend)


def test_ema_update_same_array_as_params_is_a_no_op():
    e = np.array([1.0, 2.0])
    fastreg.ema_update([e], [e], 0.5, backend="numpy")
    np.testing.assert_array_equal(e, [1.0, 2.0])


# ---- torch --------------------------------------------------------------------------------------

def _torch_with_fma():
    torch = pytest.importorskip("torch")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch runs its non-FMA kernels on this CPU")
    return torch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [0.0, 0.3, 0.5, 0.7, 0.9998, 1.0])
def test_ema_update_equals_torch_foreach_lerp(backend, dtype, decay):
    torch = _torch_with_fma()
    shapes = [(0,), (1,), (17,), (1000,), (3, 300)] if backend != "cuda" else [(1,), (17,)]
    ema = make(shapes, [dtype] * len(shapes), 7)
    params = make(shapes, [dtype] * len(shapes), 8)
    te = [torch.from_numpy(e.copy()) for e in ema]
    torch._foreach_lerp_(te, [torch.from_numpy(p) for p in params], 1.0 - decay)
    got = [e.copy() for e in ema]
    fastreg.ema_update(got, params, decay, backend=backend)
    for g, t in zip(got, te):
        same_bits(g, t.numpy())


# ---- the decay rule (timm ModelEmaV3.get_decay) ------------------------------------------------

def test_ema_decay_rule():
    d = fastreg.ema_decay
    assert d(None, 0.9) == 0.9
    assert d(0, 0.9) == 0.0 and d(1, 0.9) == 0.0 and d(2, 0.9) == 0.9
    assert [d(s, 0.9, update_after_step=3) for s in range(1, 7)] == [0, 0, 0, 0, 0.9, 0.9]
    # warm-up: 1 - (1 + s / gamma) ** -power with s = step - 1
    assert d(2, 0.9999, use_warmup=True) == 1 - 2 ** (-2 / 3)
    assert d(11, 0.9999, use_warmup=True, warmup_gamma=2.0, warmup_power=0.75) == \
        1 - (1 + 10 / 2.0) ** -0.75
    assert d(10 ** 9, 0.999, use_warmup=True) == 0.999                 # capped at decay
    assert d(2, 0.9999, use_warmup=True, min_decay=0.5) == 0.5         # floored at min_decay
    steps = [d(s, 0.9999, use_warmup=True) for s in range(1, 200)]
    assert steps == sorted(steps)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(step=-1), ValueError), (dict(step=1.5), ValueError), (dict(step=True), ValueError),
    (dict(decay=1.5), ValueError), (dict(decay=math.nan), ValueError),
    (dict(decay="0.9"), TypeError), (dict(min_decay=-0.1), ValueError),
    (dict(update_after_step=-2), ValueError),
    (dict(use_warmup=True, warmup_gamma=0.0), ValueError),
    (dict(use_warmup=True, warmup_power=-1.0), ValueError),
])
def test_ema_decay_bad_input(kwargs, exc):
    args = dict(step=3, decay=0.9)
    args.update(kwargs)
    with pytest.raises(exc):
        fastreg.ema_decay(args.pop("step"), **args)


# ---- the EMA class ------------------------------------------------------------------------------

def test_ema_class_follows_ema_update(backend):
    shapes = [(3, 4), (5,), (0,)]
    params = make(shapes, [np.float32, np.float64, np.float32], 9) + [np.arange(3)]
    ema = fastreg.EMA(params, decay=0.9, use_warmup=True, backend=backend)
    assert ema.backend == backend
    manual = [p.copy() for p in params[:3]]
    rng = np.random.default_rng(10)
    for step in range(1, 6):
        for p in params[:3]:
            p += rng.standard_normal(p.shape).astype(p.dtype)
        params[3] += 1
        decay = ema.update(params, step=step)
        assert decay == fastreg.ema_decay(step, 0.9, use_warmup=True)
        fastreg.ema_update(manual, params[:3], decay, backend="numpy")
    for a, m in zip(ema.arrays, manual):
        same_bits(a, m)
    np.testing.assert_array_equal(host(ema.arrays[3]), params[3])   # integers are copied
    assert ema.num_updates == 5


def test_ema_class_state_copy_to_and_set():
    params = make([(4, 3), (2,)], [np.float32, np.float64], 11)
    ema = fastreg.EMA(params, decay=0.5, backend="numpy")
    ema.update([p + 1 for p in params])
    state = ema.state_dict()
    assert set(state) == {"num_updates", "0", "1"} and int(state["num_updates"]) == 1
    other = fastreg.EMA(params, decay=0.5, backend="numpy")
    other.load_state_dict(state)
    for a, b in zip(other.arrays, ema.arrays):
        same_bits(a, b)
    target = [np.zeros_like(p) for p in params]
    ema.copy_to(target)
    for t, a in zip(target, ema.arrays):
        same_bits(t, a)
    ema.set(params)
    for a, p in zip(ema.arrays, params):
        same_bits(a, p)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"num_updates": np.array(1)})
    bad = dict(state)
    bad["1"] = np.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)
    bad = dict(state)
    bad["num_updates"] = np.array(-1)
    with pytest.raises(ValueError, match="num_updates"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="writable"):
        ema.copy_to([np.zeros((4, 3), np.float32), _readonly(2)])


def _readonly(n):
    a = np.zeros(n)
    a.setflags(write=False)
    return a


def test_ema_class_bad_input():
    with pytest.raises(ValueError, match="empty"):
        fastreg.EMA([])
    params = [np.ones(3, np.float32)]
    ema = fastreg.EMA(params, backend="numpy")
    with pytest.raises(ValueError, match="shape"):
        ema.update([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match="dtype"):
        ema.update([np.ones(3)])
    with pytest.raises(ValueError, match="has 2 arrays"):
        ema.update(params * 2)
    with pytest.raises(ValueError):
        fastreg.EMA(params, decay=2.0)


# ---- bad input ----------------------------------------------------------------------------------

def test_ema_update_bad_input():
    e = [np.ones(3, np.float32)]
    with pytest.raises(ValueError, match="decay"):
        fastreg.ema_update(e, e, 1.5)
    with pytest.raises(ValueError, match="decay"):
        fastreg.ema_update(e, [np.ones(3, np.float32)], math.nan)
    with pytest.raises(TypeError, match="decay"):
        fastreg.ema_update(e, [np.ones(3, np.float32)], True)
    with pytest.raises(ValueError, match="params has 2 arrays, ema has 1"):
        fastreg.ema_update(e, [np.ones(3, np.float32)] * 2, 0.9)
    with pytest.raises(ValueError, match=r"params\[0\] has shape"):
        fastreg.ema_update(e, [np.ones(4, np.float32)], 0.9)
    with pytest.raises(ValueError, match=r"params\[0\] has dtype"):
        fastreg.ema_update(e, [np.ones(3)], 0.9)
    with pytest.raises(TypeError, match=r"ema\[0\]"):
        fastreg.ema_update([[1.0, 2.0]], [np.ones(2)], 0.9)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastreg.ema_update([np.ones(3, np.int64)], [np.ones(3, np.int64)], 0.9)
    with pytest.raises(ValueError, match="read-only"):
        fastreg.ema_update([_readonly(3)], [np.ones(3)], 0.9)
    with pytest.raises(TypeError, match="list of arrays"):
        fastreg.ema_update("abc", [np.ones(3)], 0.9)
    big = np.zeros(10)
    with pytest.raises(ValueError, match=r"ema\[0\] and ema\[1\] share memory"):
        fastreg.ema_update([big[:6], big[4:]], [np.ones(6), np.ones(6)], 0.9)
    with pytest.raises(ValueError, match=r"params\[1\] overlaps ema\[0\]"):
        fastreg.ema_update([big[:5], np.zeros(5)], [np.ones(5), big[2:7]], 0.9)
    before = big.copy()
    with pytest.raises(ValueError):   # nothing changes when a later pair is bad
        fastreg.ema_update([big[:5], np.zeros(5)], [np.ones(5), np.ones(6)], 0.0)
    np.testing.assert_array_equal(big, before)


@pytest.mark.skipif(not CUDA_SIM, reason="device arrays: simulator runs only")
def test_ema_update_device_arrays_and_mixed_refused():
    from numba import cuda
    ema = make([(5,), (40,)], [np.float32, np.float64], 12)
    params = make([(5,), (40,)], [np.float32, np.float64], 13)
    expected = [e.copy() for e in ema]
    fastreg.ema_update(expected, params, 0.9, backend="numpy")
    d_ema = [cuda.to_device(e) for e in ema]
    fastreg.ema_update(d_ema, [cuda.to_device(p) for p in params], 0.9)
    for d, x in zip(d_ema, expected):
        same_bits(d, x)
    with pytest.raises(ValueError, match="mixes"):
        fastreg.ema_update([d_ema[0], ema[1]], params, 0.9)
    with pytest.raises(ValueError, match="same device"):
        fastreg.ema_update(d_ema, params, 0.9)
    with pytest.raises(ValueError, match="runs on host memory"):
        fastreg.ema_update(d_ema, [cuda.to_device(p) for p in params], 0.9, backend="c")
    ema_d = fastreg.EMA([cuda.to_device(p) for p in params], decay=0.5)
    ema_d.update([cuda.to_device(e) for e in ema], step=2)
    manual = [p.copy() for p in params]
    fastreg.ema_update(manual, ema, 0.5, backend="numpy")
    for d, m in zip(ema_d.arrays, manual):
        same_bits(d, m)


# ---- Trainer(ema=...) ---------------------------------------------------------------------------

def _digits(n=300):
    from fastreg.train.data import load_digits, stratified_split
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    a, b = stratified_split(labels, [n, 150], seed=0)[:2]
    return X[a], labels[a], X[b], labels[b]


def _trainer(ema, **kwargs):
    from fastreg.train import Trainer, mlp
    model = mlp((64, 16, 10), dropout=0.1, batch_norm=True)
    opt = fastreg.optim.AdamW(model.parameters(), lr=1e-2, backend="numpy")
    return Trainer(model, opt, seed=5, verbose=0, backend="numpy", ema=ema, **kwargs)


def test_trainer_ema_updates_evaluates_and_restores():
    X, y, Xv, yv = _digits()
    t = _trainer({"decay": 0.8, "use_warmup": True})
    raw_before = [p.copy() for p in t.model.parameters()]
    t.fit(X, y, validation=(Xv, yv), epochs=2, batch_size=64)
    steps = t.optimizer.step_count
    assert steps == 2 * math.ceil(len(X) / 64) and t.ema.num_updates == steps
    raw = [p.copy() for p in t.model.parameters()]
    assert not all(np.array_equal(a, b) for a, b in zip(raw, raw_before))
    # validation used the EMA weights; the model keeps its own
    with t.ema_weights():
        for p, a in zip(t.model.parameters(), t.ema.arrays):
            np.testing.assert_array_equal(p, a)
        with_ema = t.evaluate(Xv, yv)
        assert t.evaluate(Xv, yv) == with_ema          # nested: no second swap
    assert t.history["val_loss"][-1] == with_ema["loss"]
    assert t.evaluate(Xv, yv) == with_ema
    t.eval_with_ema = False
    assert t.evaluate(Xv, yv) != with_ema
    for p, r in zip(t.model.parameters(), raw):
        np.testing.assert_array_equal(p, r)
    with pytest.raises(RuntimeError):
        with t.ema_weights():
            raise RuntimeError("inside")
    for p, r in zip(t.model.parameters(), raw):      # put back on an exception too
        np.testing.assert_array_equal(p, r)


def test_trainer_ema_first_update_copies_the_weights():
    X, y, _, _ = _digits(64)
    t = _trainer(0.5)
    t.fit(X, y, epochs=1, batch_size=64)             # one step: decay 0 at step 1
    assert t.optimizer.step_count == 1
    for a, (_, p) in zip(t.ema.arrays, t._ema_named()):
        np.testing.assert_array_equal(a, p)


def test_trainer_ema_checkpoint_resumes_exactly(tmp_path):
    X, y, Xv, yv = _digits()
    full = _trainer(0.9)
    full.fit(X, y, validation=(Xv, yv), epochs=3, batch_size=64)
    path = tmp_path / "ema.npz"
    _trainer(0.9).fit(X, y, validation=(Xv, yv), epochs=1, batch_size=64, checkpoint=path)
    resumed = _trainer(0.9)
    resumed.fit(X, y, validation=(Xv, yv), epochs=3, batch_size=64, checkpoint=path,
                resume=True)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert resumed.history[key] == full.history[key]
    for a, b in zip(resumed.ema.arrays, full.ema.arrays):
        np.testing.assert_array_equal(a, b)
    state = full.state_dict()
    names = [k for k in state if k.startswith("ema/")]
    assert "ema/num_updates" in names and "ema/buffer/1.running_mean" in names
    assert len(names) == 1 + len(full._ema_named())
    # a checkpoint with EMA entries does not load into a trainer without EMA, and back
    with pytest.raises(ValueError, match="unexpected checkpoint entry 'ema/"):
        _trainer(None).load_checkpoint(path)
    plain = tmp_path / "plain.npz"
    _trainer(None).fit(X, y, epochs=1, batch_size=64, checkpoint=plain)
    with pytest.raises(ValueError, match="no entry 'ema/"):
        _trainer(0.9).load_checkpoint(plain)
    bad = dict(state)
    bad["ema/param/0.weight"] = bad["ema/param/0.weight"][:3]
    t = _trainer(0.9)
    before = [a.copy() for a in t.ema.arrays]
    with pytest.raises(ValueError, match="ema/param/0.weight"):
        t.load_state_dict(bad)
    for a, b in zip(t.ema.arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ema, exc, match", [
    ("0.9", TypeError, "ema must be"), (True, TypeError, "ema must be"),
    ({"decay": 0.9, "power": 1}, ValueError, "unknown options"),
    (1.5, ValueError, "decay"), ({"use_warmup": True, "warmup_gamma": 0}, ValueError, "gamma"),
])
def test_trainer_ema_bad_arguments(ema, exc, match):
    with pytest.raises(exc, match=match):
        _trainer(ema)
    with pytest.raises(ValueError, match="no EMA"):
        with _trainer(None).ema_weights():
            pass


# ---- fastreg.torch.ModelEma ---------------------------------------------------------------------

def _timm_v3_update(torch, ema_module, model, decay, exclude_buffers=False):
    """timm ModelEmaV3.apply_update_ / apply_update_no_buffers_ (foreach path), written out."""
    if exclude_buffers:
        torch._foreach_lerp_(list(ema_module.parameters()), list(model.parameters()),
                             1.0 - decay)
        for e, m in zip(ema_module.buffers(), model.buffers()):
            e.copy_(m)
        return
    es, ms = [], []
    for e, m in zip(ema_module.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            es.append(e)
            ms.append(m)
        else:
            e.copy_(m)
    torch._foreach_lerp_(es, ms, 1.0 - decay)


def _torch_model(torch, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 36, 5))
    return model.to(dtype)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("exclude_buffers", [False, True])
def test_model_ema_equals_timm_v3(backend, dtype_name, exclude_buffers):
    torch = _torch_with_fma()
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend!r} unavailable")
    import copy

    import fastreg.torch as frt
    dtype = getattr(torch, dtype_name)
    model = _torch_model(torch, dtype)
    ema = frt.ModelEma(model, decay=0.95, use_warmup=True, warmup_power=0.75,
                       exclude_buffers=exclude_buffers, backend=backend)
    reference = copy.deepcopy(model).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, 5):
        loss = model(torch.randn(4, 3, 8, 8, dtype=dtype)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay = ema.update(model, step=step)
        assert decay == fastreg.ema_decay(step, 0.95, use_warmup=True, warmup_power=0.75)
        with torch.no_grad():
            _timm_v3_update(torch, reference, model, decay, exclude_buffers)
    for (k, a), b in zip(ema.module.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k
    assert list(ema.state_dict())[0] == "module.0.weight"
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    assert torch.equal(ema(x), reference(x))


def test_model_ema_state_dict_set_and_checks():
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    model = _torch_model(torch, torch.float32)
    ema = frt.ModelEma(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)                                  # step None: the constant decay
    other = frt.ModelEma(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    ema.set(model)
    for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    half = frt.ModelEma(model.to(torch.float16), decay=0.5)   # torch's lerp_ for half
    half.update(model, step=3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        frt.ModelEma([1, 2])
    with pytest.raises(ValueError, match="decay"):
        frt.ModelEma(model, decay=-0.5)
    with pytest.raises(ValueError, match="state_dict entries differ"):
        ema.update(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("backend", ["cpu", "c"])
def test_model_ema_reuses_views_and_follows_new_memory(backend):
    """ModelEma keeps one NumPy view per CPU tensor between updates (so ema_update reuses its
    checked plan) and makes a new one when a tensor's memory changes (``p.data = ...``, a new
    submodule, ``set_``); every update equals timm's on the tensors of the moment."""
    torch = _torch_with_fma()
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend!r} unavailable")
    import copy

    import fastreg.torch as frt
    model = _torch_model(torch, torch.float32)
    ema = frt.ModelEma(model, decay=0.9, backend=backend)
    reference = copy.deepcopy(model).eval()

    def step(decay=0.9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        with torch.no_grad():
            _timm_v3_update(torch, reference, model, decay)
        for (k, a), b in zip(ema.module.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(a, b), k

    step()
    views = dict(ema._views)
    step()
    assert all(ema._views[k][2] is v[2] for k, v in views.items())   # the same ndarrays
    model[0].weight.data = torch.randn(6, 3, 3, 3)        # new memory, same Parameter object
    step()
    assert ema._views[id(model[0].weight)][2] is not views[id(model[0].weight)][2]
    model[4] = torch.nn.Linear(6 * 36, 5)                 # a new submodule: new objects
    with torch.no_grad():
        reference[4].weight.copy_(ema.module[4].weight)
    step()
    assert id(views[id(model[0].bias)][0]()) == id(model[0].bias)
    assert len(ema._views) == 2 * sum(1 for t in model.state_dict().values()
                                      if t.is_floating_point())   # no stale entry kept
    with torch.no_grad():
        model[1].running_mean.set_(torch.zeros(6))        # set_: new storage
    step()


def test_model_ema_views_pickle_copy_and_release():
    """The views ModelEma keeps between updates do not travel (torch.save, deepcopy: a copy
    averages the model it is given, not the original's views) and go when the model dies."""
    torch = pytest.importorskip("torch")
    import copy
    import gc
    import io

    import fastreg.torch as frt
    model = _torch_model(torch, torch.float32)
    ema = frt.ModelEma(model, decay=0.5)
    ema.update(model)
    assert ema._views
    buf = io.BytesIO()
    torch.save(ema, buf)                                   # weak references do not pickle
    twin = copy.deepcopy(ema)
    assert twin._views == {}
    with torch.no_grad():
        model[0].weight.fill_(10.0)
    ema.update(model)
    twin.update(model)
    for a, b in zip(ema.module.state_dict().values(), twin.module.state_dict().values()):
        assert torch.equal(a, b)
    n_ema = sum(1 for t in ema.module.state_dict().values() if t.is_floating_point())
    del model, twin
    gc.collect()
    assert len(ema._views) == n_ema                        # only the average's own views left


def test_ema_class_refuses_16_bit_weights():
    """16-bit weights were copied as if they were integer counters (an EMA equal to the last
    weights, silently); they are refused now, as ema_update refuses them."""
    with pytest.raises(TypeError, match="float16.*float32"):
        fastreg.EMA([np.ones(4, np.float32), np.ones(4, np.float16)], decay=0.9)
    ema = fastreg.EMA([np.ones(4, np.float32), np.arange(3)], decay=0.9)   # counters still copied
    ema.update([np.zeros(4, np.float32), np.arange(3) + 5])
    np.testing.assert_allclose(ema.arrays[0], 0.9)
    np.testing.assert_array_equal(ema.arrays[1], np.arange(3) + 5)


def test_model_ema_update_bumps_versions():
    """ModelEma.update writes its copy through NumPy views: the copy's tensors' version counters
    move, as under timm's _foreach_lerp_."""
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    model = torch.nn.Linear(4, 3)
    ema = frt.ModelEma(model, decay=0.9)
    tensors = list(ema.module.parameters())
    before = [t._version for t in tensors]
    ema.update(model)
    assert all(t._version > v for t, v in zip(tensors, before))
