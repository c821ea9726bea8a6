"""The C backend's fused 16-bit kernels (dropout, penalty gradients and prox steps, SGD and Adam /
AdamW steps), bit for bit.

They read and write their 16-bit arrays once, converting in registers around the float32
kernel's arithmetic (csrc/half.h). Their definition is the conversion passes' result: widen to
float32, run the float32 op of the NumPy reference, round to nearest even (fastreg/reference/
half.py). Checked on every 16-bit bit pattern (NaN payloads, infinities, subnormals), on sizes
around the SIMD widths and tile boundaries, on every instruction set this CPU has, with 1 and 2
threads, and through the public API against the cpu backend (which runs the conversion passes).
"""
import numpy as np
import pytest

import fastreg
from fastreg import _registry, _threads, optim
from fastreg.reference.half import round_half

ml_dtypes = pytest.importorskip("ml_dtypes")
if fastreg.available_backends()["c"] is not None:
    pytest.skip("backend 'c' unavailable", allow_module_level=True)
import fastreg.c as fc  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
HALVES = [F16, BF16]
REF = _registry.module("numpy")
SEED = 0x0123456789ABCDEF
# around 8 / 16 / 32 lanes, 64-byte lines and the 2048-word dropout tile
SIZES = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 2047, 2048, 2049, 4099]
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


def kind(dtype):
    return None if dtype == F32 else (0 if dtype == F16 else 1)


def all_patterns(dtype):
    """Every 16-bit value of dtype (NaNs with every payload, infinities, subnormals, -0)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype)


def values(n, dtype, seed=0):
    """n values of dtype: normal ones with the special values and every pattern's neighbours
    cycled in."""
    r = np.random.default_rng(seed)
    x = (r.standard_normal(n) * 3).astype(np.float32).astype(dtype)
    pats = all_patterns(dtype) if dtype != F32 else \
        np.array([np.nan, np.inf, -np.inf, -0.0, 1e-42, 3e38], np.float32)
    k = min(n // 3, pats.size)
    if k:
        x[r.choice(n, k, replace=False)] = r.choice(pats, k, replace=False)
    return x


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def meets(*inputs):
    """Where two or more of a step's inputs are NaN. Which NaN survives an operation on two NaNs
    is left open by IEEE 754 and decided by the operand order the compiler picked (x86 keeps
    the first operand's), so the payload and sign there may differ between the fused loop, the
    float32 loop and NumPy (the float32 C kernel and the reference differ there too)."""
    k = sum(np.isnan(np.asarray(a, np.float32)).astype(int) for a in inputs if a is not None)
    return k >= 2


def assert_step_result(got, conv, ref, meet):
    """got (a fused step's array) has the bits of conv (the conversion passes around the C
    float32 step) and of ref (the reference's definition) except where two NaN inputs meet
    (``meets``); there they agree up to NaN payloads."""
    ok = ~meet
    np.testing.assert_array_equal(bits(got)[ok], bits(conv)[ok])
    np.testing.assert_array_equal(bits(got)[ok], bits(ref)[ok])
    g = np.asarray(got, np.float32)[meet]
    for a in (conv, ref):   # equal values, NaN where NaN (assert_array_equal's rule)
        np.testing.assert_array_equal(g, np.asarray(a, np.float32)[meet])


def widen(a, dtype):
    """A float32 copy of a (backend c's conversion pass for 16-bit a)."""
    if dtype == F32:
        return a.copy()
    out = np.empty(a.size, np.float32)
    fc.half_to_float32(a.view(np.uint16), kind(dtype), out)
    return out


def narrow(a32, dtype):
    """float32 a32 rounded to dtype (backend c's conversion pass)."""
    if dtype == F32:
        return a32
    out = np.empty(a32.size, np.uint16)
    fc.float32_to_half(a32, kind(dtype), out)
    return out.view(dtype)


@pytest.fixture(params=["portable", "avx2", "avx512"])
def isa(request):
    has = {"portable": True, "avx2": fc.has_avx2(), "avx512": fc.has_avx512()}
    if not has[request.param]:
        pytest.skip(f"this CPU has no {request.param}")
    previous = fc.set_isa(request.param)
    yield request.param
    fc.set_isa(previous)


@pytest.fixture(params=[1, 2], ids=["serial", "2threads"])
def nthreads(request, monkeypatch):
    """1 thread, or 2 from tiny sizes on (grains shrunk): the parallel tiles and their seams."""
    if request.param == 2:
        monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)
        monkeypatch.setitem(_threads.GRAIN, "random", 16)
    with _threads.threads(request.param):
        yield request.param


# --- dropout ----------------------------------------------------------------------------------

def expected_dropout(x, seed, offset, t, scale, dtype):
    x32 = x.astype(np.float32)
    y32 = np.empty_like(x32)
    REF.dropout(x32, seed, offset, t, np.float32(scale), y32)
    return round_half(y32, dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_dropout_half_every_pattern(isa, dtype):
    x = all_patterns(dtype)
    # scale 1 (inference, p = 0), 1 / 0.7, a power of two, and one that takes values into
    # (16-bit) subnormals and overflow
    for t, scale in [(0, 1.0), (1288490189, 1 / 0.7), (2**31, 2.0), (2**30, 0.3)]:
        for offset in (0, 3, 2**64 - 65536):
            got = np.empty(x.size, np.uint16)
            fc.dropout_half(x.view(np.uint16), kind(dtype), SEED, offset, t, np.float32(scale),
                            got)
            exp = expected_dropout(x, SEED, offset, t, scale, dtype)
            np.testing.assert_array_equal(got, bits(exp))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_dropout_half_sizes_alignment_in_place(isa, nthreads, dtype):
    buf = values(5000, dtype)
    for n in SIZES:
        for start in (0, 1, 3):   # out's first 64-byte boundary moves (tile 0)
            x = buf[start:start + n]
            exp = expected_dropout(x, 7, 11, 1288490189, 1 / 0.7, dtype)
            store = np.zeros(n + 8, np.uint16)
            out = store[start:start + n]
            fc.dropout_half(x.view(np.uint16), kind(dtype), 7, 11, 1288490189,
                            np.float32(1 / 0.7), out)
            np.testing.assert_array_equal(out, bits(exp))
            xi = x.view(np.uint16).copy()
            fc.dropout_half(xi, kind(dtype), 7, 11, 1288490189, np.float32(1 / 0.7), xi)
            np.testing.assert_array_equal(xi, bits(exp))


def test_dropout_half_refuses_unknown_kind():
    x = np.zeros(4, np.uint16)
    with pytest.raises(RuntimeError, match="fr_dropout_half failed with status 3"):
        fc.dropout_half(x, 2, 1, 0, 0, 1.0, x.copy())


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_dropout_public_c_equals_cpu_and_reference(nthreads, dtype, p):
    for shape in [(0,), (1,), (33,), (3, 5, 7), (70, 130)]:
        x = values(int(np.prod(shape)), dtype, seed=len(shape)).reshape(shape)
        for fn, kw in [(fastreg.dropout, {}), (fastreg.dropout_backward, {}),
                       (fastreg.dropout, dict(training=False, mode="classic")),
                       (fastreg.dropout, dict(mode="classic"))]:
            exp = round_half(fn(x.astype(np.float32), p, seed=SEED, offset=9, backend="numpy",
                                **kw), dtype)
            got = fn(x, p, seed=SEED, offset=9, backend="c", **kw)
            cpu = fn(x, p, seed=SEED, offset=9, backend="cpu", **kw)
            assert got.dtype == dtype and got.shape == shape
            np.testing.assert_array_equal(bits(got), bits(exp))
            np.testing.assert_array_equal(bits(got), bits(cpu))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_dropout_public_out_non_contiguous_and_in_place(dtype):
    x = values(12 * 40, dtype).reshape(12, 40)
    xs = x[:, 1::3]
    exp = round_half(fastreg.dropout(xs.astype(np.float32), 0.3, seed=5, backend="numpy"), dtype)
    before = x.copy()
    np.testing.assert_array_equal(bits(fastreg.dropout(xs, 0.3, seed=5, backend="c")), bits(exp))
    np.testing.assert_array_equal(bits(x), bits(before))           # the input is untouched
    out = np.empty(xs.shape, dtype)
    assert fastreg.dropout(xs, 0.3, seed=5, out=out, backend="c") is out
    np.testing.assert_array_equal(bits(out), bits(exp))
    big = np.zeros((12, 78), dtype)
    fastreg.dropout(xs, 0.3, seed=5, out=big[:, ::6], backend="c")   # strided out
    np.testing.assert_array_equal(bits(big[:, ::6]), bits(exp))
    assert not big[:, 1::6].view(np.uint16).any()                    # nothing else written
    xi = np.ascontiguousarray(xs)
    assert fastreg.dropout(xi, 0.3, seed=5, out=xi, backend="c") is xi
    np.testing.assert_array_equal(bits(xi), bits(exp))


# --- optimizer steps: kernels -------------------------------------------------------------------

PAIRS = [(F16, F16), (BF16, BF16), (F16, F32), (BF16, F32), (F32, F16), (F32, BF16)]


def _arrays(n, pdt, gdt, seed, state_from):
    r = np.random.default_rng(seed)
    p, g = values(n, pdt, seed), values(n, gdt, seed + 1)
    state = [np.abs(r.standard_normal(n)).astype(np.float32) * (k + 1) if state_from else
             np.zeros(n, np.float32) for k in range(3)]
    if state_from and n >= 8:
        for s in state:
            s[:3] = [np.nan, np.inf, 0.0]
    return p, g, state


def _sc(*xs):
    return [np.float32(x) for x in xs]


ADAM_CASES = [  # wd, decay, amsgrad, gscale
    (0.0, 1.0, False, 1.0), (0.1, 1.0, False, 1.0), (0.0, 0.999, False, 0.5),
    (0.1, 0.999, True, 1.0), (0.0, 1.0, True, 0.25),
]


@pytest.mark.parametrize("pdt,gdt", PAIRS, ids=lambda d: str(np.dtype(d)))
def test_adam_step_half_kernel(isa, nthreads, pdt, gdt):
    for n in SIZES[::2] + [4099]:
        for ci, (wd, decay, ams, gscale) in enumerate(ADAM_CASES):
            p, g, (m, v, vmax) = _arrays(n, pdt, gdt, n + ci, state_from=ci % 2)
            meet = meets(p, g, m, v, vmax if ams else None)
            scal = _sc(wd, decay, 0.1, 0.999, 0.001, 1e-8, 0.01 / 0.19, (1 - 0.999**3) ** 0.5,
                       gscale)
            # the definition: the float32 step on the widened values, p rounded
            p32, g32 = p.astype(np.float32), g.astype(np.float32)
            em, ev, ex = m.copy(), v.copy(), vmax.copy()
            REF.adam_step(p32, g32, em, ev, ex if ams else None, *scal)
            # the conversion passes around backend c's float32 step
            cp, cm, cv, cx = widen(p, pdt), m.copy(), v.copy(), vmax.copy()
            fc.adam_step(cp, widen(g, gdt), cm, cv, cx if ams else None, *scal)
            pb = p.copy() if pdt == F32 else p.view(np.uint16).copy()
            gb = g if gdt == F32 else g.view(np.uint16)
            fc.adam_step_half(pb, kind(pdt), gb, kind(gdt), m, v, vmax if ams else None, *scal)
            exp_p = p32 if pdt == F32 else round_half(p32, pdt)
            assert_step_result(pb.view(pdt), narrow(cp, pdt), exp_p, meet)
            for got, conv, ref in ((m, cm, em), (v, cv, ev), (vmax, cx, ex)):
                assert_step_result(got, conv, ref, meet)


SGD_CASES = [  # wd, decay, momentum (None: no buffer), damp1, nesterov, first, l1t, gscale
    (0.0, 1.0, None, 1.0, False, False, 0.0, 1.0),
    (0.01, 1.0, 0.9, 1.0, False, True, 0.0, 1.0),
    (0.01, 1.0, 0.9, 0.9, False, False, 0.001, 0.5),
    (0.0, 0.99, 0.9, 1.0, True, False, 0.0, 1.0),
    (0.0, 0.99, 0.9, 1.0, True, True, 0.01, 0.25),
    (0.1, 1.0, None, 1.0, False, False, 0.01, 1.0),
]


@pytest.mark.parametrize("pdt,gdt", PAIRS, ids=lambda d: str(np.dtype(d)))
def test_sgd_step_half_kernel(isa, nthreads, pdt, gdt):
    for n in SIZES[1::2] + [4099]:
        for ci, (wd, decay, mom, damp1, nest, first, l1t, gscale) in enumerate(SGD_CASES):
            p, g, (buf, _, _) = _arrays(n, pdt, gdt, n + ci, state_from=not first)
            buf = None if mom is None else buf
            meet = meets(p, g, None if first else buf)
            scal = _sc(0.1, wd, decay, mom or 0.0, damp1)
            tail = _sc(l1t, gscale)
            p32, g32 = p.astype(np.float32), g.astype(np.float32)
            eb = None if buf is None else buf.copy()
            REF.sgd_step(p32, g32, eb, *scal, nest, first, *tail)
            cp, cb = widen(p, pdt), None if buf is None else buf.copy()
            fc.sgd_step(cp, widen(g, gdt), cb, *scal, nest, first, *tail)
            pb = p.copy() if pdt == F32 else p.view(np.uint16).copy()
            gb = g if gdt == F32 else g.view(np.uint16)
            fc.sgd_step_half(pb, kind(pdt), gb, kind(gdt), buf, *scal, nest, first, *tail)
            exp_p = p32 if pdt == F32 else round_half(p32, pdt)
            assert_step_result(pb.view(pdt), narrow(cp, pdt), exp_p, meet)
            if buf is not None:
                assert_step_result(buf, cb, eb, meet)


def test_step_half_refuses_two_16bit_kinds():
    p, g, m = np.zeros(4, np.uint16), np.zeros(4, np.uint16), np.zeros(4, np.float32)
    with pytest.raises(RuntimeError, match="status 3"):
        fc.adam_step_half(p, 0, g, 1, m, m.copy(), None, *_sc(0, 1, .1, .9, .1, 1e-8, 1, 1, 1))
    with pytest.raises(RuntimeError, match="status 3"):
        fc.sgd_step_half(p, 1, g, 0, None, *_sc(.1, 0, 1, 0, 1), False, False, *_sc(0, 1))


# --- optimizer steps: public API, c against cpu (conversion passes) and the reference ----------

OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01, l1=0.01)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, decoupled=True, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.AdamW, dict(lr=0.01, max_grad_norm=0.5)),
    (optim.AdamW, dict(lr=0.01, check_finite=True)),
]


def _run(cls, kw, pdt, gdt, backend, strided):
    rng = np.random.default_rng(3)
    shapes = [(9, 13), (1,), (0, 3), (64,), (5, 7, 3)]
    params = [rng.standard_normal(s).astype(np.float32).astype(pdt) for s in shapes]
    params[3][:4] = [np.inf, -np.inf, 0.0, -0.0]   # inf - inf gives NaN: NaN steps too
    opt = cls(params, backend=backend, **kw)
    for k in range(3):
        grads = []
        for s in shapes:
            g = rng.standard_normal((2,) + s).astype(np.float32).astype(gdt)
            grads.append(g[1] if strided else np.ascontiguousarray(g[1]))
        if strided:   # non-contiguous gradients (the optimizer copies them)
            grads[0] = rng.standard_normal((9, 26)).astype(np.float32).astype(gdt)[:, ::2]
        opt.step(grads)
    return params, opt.state_dict()


@pytest.mark.parametrize("pdt,gdt", PAIRS + [(F32, F32)], ids=lambda d: str(np.dtype(d)))
@pytest.mark.parametrize("which", range(len(OPTIMIZERS)))
def test_optimizers_c_equals_cpu(which, pdt, gdt):
    cls, kw = OPTIMIZERS[which]
    for strided in (False, True):
        got, state = _run(cls, kw, pdt, gdt, "c", strided)
        exp, exp_state = _run(cls, kw, pdt, gdt, "cpu", strided)
        for a, b in zip(got, exp):
            assert a.dtype == pdt
            np.testing.assert_array_equal(bits(a), bits(b))
        assert state.keys() == exp_state.keys()
        for k in state:
            np.testing.assert_array_equal(state[k], exp_state[k])


def test_fused_paths_are_taken(monkeypatch):
    """The c backend's 16-bit dropout and steps run the fused kernels (no conversion pass)."""
    from fastreg import _half

    def no_pass(*args):
        raise AssertionError("a conversion pass ran")
    monkeypatch.setattr(_half, "widen", no_pass)
    monkeypatch.setattr(_half, "narrow", no_pass)
    x = values(100, BF16)
    fastreg.dropout(x, 0.5, seed=1, backend="c")
    fastreg.elastic_net_grad(x, 0.1, 0.2, backend="c")
    fastreg.l2_grad(x, 0.1, out=x.copy(), accumulate=True, backend="c")
    fastreg.prox_l1(x, 0.1, backend="c")
    fastreg.prox_elastic_net(x[::2], 0.1, 0.2, backend="c")
    for pdt, gdt in PAIRS:
        for cls in (optim.SGD, optim.AdamW):
            p = [values(10, pdt)]
            cls(p, lr=0.1, momentum=0.9, backend="c").step([values(10, gdt)]) \
                if cls is optim.SGD else cls(p, backend="c").step([values(10, gdt)])



# --- penalty gradients and soft-thresholding (csrc/penalty.c fr_penalty_grad_half) ----------

def expected_penalty(x, l1, c2, acc_bits, dtype):
    """The conversion passes' result: the reference's float32 gradient on the widened x (plus
    the widened out when accumulating), rounded to nearest even."""
    x32 = x.astype(np.float32)
    g32 = np.zeros_like(x32) if acc_bits is None else acc_bits.view(dtype).astype(np.float32)
    REF.penalty_grad(x32, np.float32(l1), np.float32(c2), g32, acc_bits is not None)
    return bits(round_half(g32, dtype))


def expected_soft(x, t, s, dtype):
    x32 = x.astype(np.float32)
    y32 = np.empty_like(x32)
    REF.soft_threshold(x32, np.float32(t), np.float32(s), y32)
    return bits(round_half(y32, dtype))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_penalty_half_every_pattern(isa, dtype):
    x = all_patterns(dtype)
    acc = values(x.size, dtype, seed=5).view(np.uint16)
    for l1, c2 in [(0.0, 0.0), (0.0, 0.6), (0.3, 0.0), (0.3, 0.6), (1e-3, 3e4)]:
        for accumulate in (False, True):
            got = acc.copy() if accumulate else np.empty(x.size, np.uint16)
            fc.penalty_grad_half(x.view(np.uint16), kind(dtype), np.float32(l1),
                                 np.float32(c2), got, accumulate)
            exp = expected_penalty(x, l1, c2, acc if accumulate else None, dtype)
            nan = np.isnan(got.view(dtype).astype(np.float32))
            np.testing.assert_array_equal(got[~nan], exp[~nan])
            # two NaNs meet when accumulating (see meets): NaN where NaN
            np.testing.assert_array_equal(nan, np.isnan(exp.view(dtype).astype(np.float32)))
            if not accumulate:
                np.testing.assert_array_equal(got, exp)
    for t, sc in [(0.0, 1.0), (0.25, 1.0), (0.25, 1 / 1.4), (7e4, 1.0)]:
        got = np.empty(x.size, np.uint16)
        fc.soft_threshold_half(x.view(np.uint16), kind(dtype), np.float32(t), np.float32(sc),
                               got)
        np.testing.assert_array_equal(got, expected_soft(x, t, sc, dtype))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_penalty_half_sizes_alignment_in_place(isa, nthreads, dtype):
    buf = values(5000, dtype)
    for n in SIZES:
        for start in (0, 1, 3):
            x = buf[start:start + n]
            exp = expected_penalty(x, 0.1, 0.7, None, dtype)
            out = _layout(n, start)
            fc.penalty_grad_half(x.view(np.uint16), kind(dtype), np.float32(0.1),
                                 np.float32(0.7), out, False)
            np.testing.assert_array_equal(out, exp)
            xi = x.view(np.uint16).copy()
            fc.soft_threshold_half(xi, kind(dtype), np.float32(0.5), np.float32(0.8), xi)
            np.testing.assert_array_equal(xi, expected_soft(x, 0.5, 0.8, dtype))


def test_penalty_half_refuses_unknown_kind():
    x = np.zeros(4, np.uint16)
    with pytest.raises(RuntimeError, match="fr_penalty_grad_half"):
        fc.penalty_grad_half(x, 2, np.float32(0.1), np.float32(0.1), x.copy(), False)
    with pytest.raises(RuntimeError, match="fr_soft_threshold_half"):
        fc.soft_threshold_half(x, 7, np.float32(0.1), np.float32(1.0), x.copy())


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_penalties_public_c_equals_cpu(nthreads, dtype):
    """Through the public API (out= non-contiguous, accumulate, 0-d, prox in place on a strided
    view): the c backend's fused kernels give the cpu backend's bits (conversion passes)."""
    x = values(3001, dtype, seed=2)
    for be_out in ({}, {"out": values(6002, dtype, seed=3)[::2]}):
        got, ref = {}, {}
        for be, res in (("c", got), ("cpu", ref)):
            kw = {k: v.copy() for k, v in be_out.items()}
            r = fastreg.elastic_net_grad(x, 0.01, 0.2, backend=be, **kw)
            res["grad"] = r
            if kw:
                r2 = fastreg.l2_grad(x, 0.3, out=kw["out"], accumulate=True, backend=be)
                res["acc"] = r2
        for k in got:
            np.testing.assert_array_equal(bits(got[k]), bits(ref[k]))
    z = np.array(1.5, dtype)
    assert fastreg.l1_grad(z, 0.5, backend="c").shape == ()
    for prox in (lambda w, be: fastreg.prox_l1(w, 0.4, backend=be),
                 lambda w, be: fastreg.prox_elastic_net(w, 0.1, 0.3, backend=be)):
        a, b = values(4000, dtype, seed=4), None
        b = a.copy()
        prox(a[::3], "c")
        prox(b[::3], "cpu")
        np.testing.assert_array_equal(bits(a), bits(b))


# --- float16 through F16C (csrc/half.h): NaN classes, lanes, alignment, DAZ / FTZ -------------
# On CPUs with F16C the float16 kernels and conversion passes of the "avx2" / "avx512" paths
# convert eight at a time with vcvtph2ps / vcvtps2ph, which quiet signalling NaNs; half.h puts
# NumPy's bits back. These tests hold every path to NumPy's bits where that matters.

def f16_nan_classes():
    """float16 NaNs: signalling (payload bit 9 clear) and quiet, both signs, extreme payloads."""
    payloads = [0x001, 0x0FF, 0x100, 0x1FF, 0x200, 0x201, 0x3FF]
    return np.array([s | 0x7C00 | m for s in (0, 0x8000) for m in payloads], np.uint16)


def f32_rounding_sample():
    """float32 patterns at every float16 decision: every NaN class (quiet / signalling, payload
    with its top 10 bits zero or not), inf, 65504 and the 65520 overflow tie, the normal /
    subnormal boundary, the ties of the subnormal grid, float32 subnormals; both signs; plus
    the float16 grid and its ties and neighbours over all exponents."""
    special = np.array([
        0x7F800001, 0x7F801FFF, 0x7F802000, 0x7F803FFF, 0x7FA00000, 0x7FBFFFFF, 0x7FBFE000,
        0x7FC00000, 0x7FC00001, 0x7FC01FFF, 0x7FDFE000, 0x7FFFFFFF, 0x7F800000,
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x477FFFFF, 0x47800000, 0x7F7FFFFF,
        0x38800000, 0x387FFFFF, 0x387FF000, 0x387FEFFF, 0x387FE000, 0x33800000, 0x33000000,
        0x33000001, 0x32FFFFFF, 0x337FFFFF, 0x33C00000, 0x34200000, 0x00000001, 0x007FFFFF,
        0x00800000, 0x00000000], np.uint32)
    grid = np.arange(1 << 18, dtype=np.uint32) << 13
    u = np.concatenate([special, grid, grid | 0x1000, grid | 0xFFF, grid | 0x1001])
    return np.concatenate([u, u | 0x80000000]).view(np.float32)


def _layout(n, start):
    """A length-n view starting `start` elements into a fresh buffer (unaligned when start is
    odd: the conversions' loads and stores are unaligned)."""
    return np.zeros(n + 16, np.uint16)[start:start + n]


@pytest.mark.parametrize("start", [0, 1, 3])
def test_f16_conversion_passes_every_pattern(isa, nthreads, start):
    src = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for n in (65536, 65531, 13):                           # tails shorter than 8 lanes
        s = _layout(n, start)
        s[:] = src[:n] if n > 13 else f16_nan_classes()[:n] # the NaN classes on 13 lanes
        got = np.zeros(n + 16, np.float32)[start:start + n]
        fc.half_to_float32(s, 0, got)
        np.testing.assert_array_equal(got.view(np.uint32), s.view(F16).astype(F32).view(np.uint32))
    f = f32_rounding_sample()
    for n in (f.size, f.size - 5, 37):
        x = np.zeros(n + 16, np.float32)[start:start + n]
        x[:] = f[:n] if n > 37 else f[:37]
        got = _layout(n, start)
        fc.float32_to_half(x, 0, got)
        exp = round_half(x, F16).view(np.uint16)
        bad = np.flatnonzero(got != exp)
        assert bad.size == 0, [hex(v) for v in x.view(np.uint32)[bad[:5]]]


def _nan_lanes(n, dtype, nan, seed):
    """values(n) with NaN bits `nan` on lane j of block j (blocks of 8, j = 0..7), on every lane
    of block 8, and nowhere after it (the lanes after a NaN block go through the fast path)."""
    x = (np.random.default_rng(seed).standard_normal(n) * 3).astype(np.float32).astype(dtype)
    u = x.view(np.uint16)
    for j in range(8):
        if 8 * j + j < n:
            u[8 * j + j] = nan
    u[64:72] = nan
    return x


def test_f16_nan_classes_through_fused_kernels(isa, nthreads):
    n = 77
    for ci, nan in enumerate(f16_nan_classes()):
        x = _nan_lanes(n, F16, nan, ci)
        got = np.empty(n, np.uint16)
        fc.dropout_half(x.view(np.uint16), 0, SEED, 5, 1288490189, np.float32(1 / 0.7), got)
        np.testing.assert_array_equal(got, bits(expected_dropout(x, SEED, 5, 1288490189,
                                                                   1 / 0.7, F16)))
        g = values(n, F16, ci)
        for pdt, gdt, p, gg in [(F16, F16, x, g), (F16, F16, g, x), (F32, F16, values(n, F32), x),
                                (F16, F32, x, values(n, F32))]:
            scal = _sc(0.1, 0.999, 0.1, 0.999, 0.001, 1e-8, 0.05, 0.9, 1.0)
            m, v = np.zeros(n, np.float32), np.ones(n, np.float32)
            p32 = p.astype(np.float32)
            em, ev = m.copy(), v.copy()
            REF.adam_step(p32, gg.astype(np.float32), em, ev, None, *scal)
            pb = p.copy() if pdt == F32 else p.view(np.uint16).copy()
            fc.adam_step_half(pb, kind(pdt), bits(gg) if gdt == F16 else gg, kind(gdt), m, v,
                              None, *scal)
            meet = meets(p, gg)
            exp_p = p32 if pdt == F32 else round_half(p32, pdt)
            assert_step_result(pb.view(pdt), exp_p, exp_p, meet)
            assert_step_result(m, em, em, meet)
            buf = np.ones(n, np.float32)
            eb = buf.copy()
            p32 = p.astype(np.float32)
            sc = _sc(0.1, 0.0, 1.0, 0.9, 1.0)
            REF.sgd_step(p32, gg.astype(np.float32), eb, *sc, False, False, *_sc(0.0, 1.0))
            pb = p.copy() if pdt == F32 else p.view(np.uint16).copy()
            fc.sgd_step_half(pb, kind(pdt), bits(gg) if gdt == F16 else gg, kind(gdt), buf, *sc,
                             False, False, *_sc(0.0, 1.0))
            exp_p = p32 if pdt == F32 else round_half(p32, pdt)
            assert_step_result(pb.view(pdt), exp_p, exp_p, meet)
            assert_step_result(buf, eb, eb, meet)


@pytest.mark.parametrize("start", [1, 3])
def test_f16_steps_unaligned(isa, nthreads, start):
    """Offset parameter and gradient views give the bits of aligned copies."""
    for n in (9, 33, 1000, 4099):
        p, g = values(n, F16, n), values(n, F16, n + 1)
        scal = _sc(0.1, 0.999, 0.1, 0.999, 0.001, 1e-8, 0.05, 0.9, 1.0)
        res = []
        for off in (0, start):
            pb, gb = _layout(n, off), _layout(n, off)
            pb[:], gb[:] = bits(p), bits(g)
            m, v = np.zeros(n, np.float32), np.ones(n, np.float32)
            fc.adam_step_half(pb, 0, gb, 0, m, v, None, *scal)
            buf = np.ones(n, np.float32)
            fc.sgd_step_half(pb, 0, gb, 0, buf, *_sc(0.1, 0.01, 1.0, 0.9, 1.0), True, False,
                             *_sc(0.001, 1.0))
            res.append((pb.copy(), m, v, buf))
        for a, b in zip(*res):
            np.testing.assert_array_equal(a, b)


def test_f16_paths_agree_under_flush_denormal():
    """With MXCSR's DAZ and FTZ set on the calling thread (torch.set_flush_denormal, which
    frameworks may leave on), the F16C code gives the integer code's bits: the conversion passes
    still give NumPy's bits (computed before the flags are set), and every float16 kernel gives
    the same bits on every instruction set (the float32 arithmetic between the conversions
    flushes alike on all of them), but where two NaNs meet."""
    torch = pytest.importorskip("torch")
    isas = ["portable"] + [i for i, ok in (("avx2", fc.has_avx2()), ("avx512", fc.has_avx512()))
                           if ok]
    src = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f = f32_rounding_sample()
    exp_w, exp_n = src.view(F16).astype(F32), round_half(f, F16).view(np.uint16)
    x, g = all_patterns(F16), values(65536, F16, 1)
    previous = fc.isa()
    with _threads.threads(1):
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        try:
            results = []
            for name in isas:
                fc.set_isa(name)
                w = np.empty(src.size, np.float32)
                fc.half_to_float32(src, 0, w)
                nw = np.empty(f.size, np.uint16)
                fc.float32_to_half(f, 0, nw)
                np.testing.assert_array_equal(w.view(np.uint32), exp_w.view(np.uint32))
                np.testing.assert_array_equal(nw, exp_n)
                d = np.empty(x.size, np.uint16)
                fc.dropout_half(bits(x), 0, SEED, 0, 2**30, np.float32(0.3), d)
                pb, m, v = bits(x).copy(), np.zeros(x.size, np.float32), np.ones(x.size, F32)
                fc.adam_step_half(pb, 0, bits(g), 0, m, v, None,
                                  *_sc(0.1, 0.999, 0.1, 0.999, 0.001, 1e-8, 0.05, 0.9, 1.0))
                results.append((d, pb, m, v))
        finally:
            torch.set_flush_denormal(False)
            fc.set_isa(previous)
    ok = ~meets(x, g)   # where NaN meets NaN the payload is left open (``meets``)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        for a, b in zip(results[0][1:], other[1:]):
            np.testing.assert_array_equal(bits(a)[ok], bits(b)[ok])


# --- bfloat16 with AVX2 (csrc/half.h fr_bf16x8_store): rounding, NaNs, lanes, alignment ------
# The "avx2" / "avx512" paths round float32 -> bfloat16 eight at a time with AVX2 integer
# instructions (fr_bf16x8_store) and widen by a shift; every path must give NumPy's bits.

def bf16_nan_classes():
    """bfloat16 NaNs: signalling (bit 6 clear) and quiet, both signs, extreme payloads."""
    payloads = [0x01, 0x3F, 0x40, 0x41, 0x7F]
    return np.array([s | 0x7F80 | m for s in (0, 0x8000) for m in payloads], np.uint16)


def bf16_specials():
    """float32 patterns at the bfloat16 decisions (an odd count: tiled, each lands on every lane
    of an eight-wide block): NaNs of every class (quiet / signalling, payload only in the low
    16 bits or not, both signs), infinities, the largest finite values and the overflow tie,
    ties to even up and down, float32 subnormals and their ties, zeros."""
    u = np.array([
        0x7F800001, 0x7F807FFF, 0x7F808000, 0x7F80FFFF, 0x7F810000, 0x7FA00000, 0x7FBFFFFF,
        0x7FC00000, 0x7FC00001, 0x7FC0FFFF, 0x7FFF0000, 0x7FFFFFFF, 0x7F800000,
        0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F7E8000, 0x7F7E8001, 0x3F808000, 0x3F818000,
        0x3F807FFF, 0x3F80FFFF, 0x00000001, 0x00007FFF, 0x00008000, 0x00008001, 0x00018000,
        0x007F8000, 0x007FFFFF, 0x00800000, 0x00000000], np.uint32)
    u = np.concatenate([u, u | 0x80000000, [0x3F800000]]).astype(np.uint32)
    assert u.size % 2 == 1
    return u


def bf16_rounding_sample():
    """bf16_specials tiled on every lane, then every bfloat16 pattern with low halves 0, just
    under / at / over the tie, and all ones."""
    hi = np.arange(65536, dtype=np.uint32) << 16
    u = np.concatenate([np.tile(bf16_specials(), 8)] +
                       [hi | lo for lo in (0, 0x7FFF, 0x8000, 0x8001, 0xFFFF)])
    return u.view(np.float32)


@pytest.mark.parametrize("start", [0, 1, 3])
def test_bf16_conversion_passes_every_pattern(isa, nthreads, start):
    src = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for n in (65536, 65531, 10):                          # tails shorter than 8 lanes
        s = _layout(n, start)
        s[:] = src[:n] if n > 10 else bf16_nan_classes()[:n]
        got = np.zeros(n + 16, np.float32)[start:start + n]
        fc.half_to_float32(s, 1, got)
        np.testing.assert_array_equal(got.view(np.uint32), s.astype(np.uint32) << 16)
    f = bf16_rounding_sample()
    for n in (f.size, f.size - 5, 37, 23, 7):
        x = np.zeros(n + 16, np.float32)[start:start + n]
        x[:] = f[:n]
        got = _layout(n, start)
        fc.float32_to_half(x, 1, got)
        exp = round_half(x, BF16).view(np.uint16)
        bad = np.flatnonzero(got != exp)
        assert bad.size == 0, [hex(v) for v in x.view(np.uint32)[bad[:5]]]


def test_bf16_specials_rounded_as_numpy():
    """The special values' expected bits, spelled out (the reference itself is checked)."""
    x = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F7FFFFF, 0x7F7F8000, 0x7F7E8000,
                  0x00008000, 0x00018000, 0x007FFFFF, 0x80000001], np.uint32).view(np.float32)
    exp = [0x7FC0, 0xFFC0, 0x7FC0, 0x7F80, 0x7F80, 0x7F7E, 0x0000, 0x0002, 0x0080, 0x8000]
    for name in ["portable"] + [i for i, ok in (("avx2", fc.has_avx2()),
                                                ("avx512", fc.has_avx512())) if ok]:
        previous = fc.set_isa(name)
        try:
            got = np.empty(x.size, np.uint16)
            fc.float32_to_half(x, 1, got)
        finally:
            fc.set_isa(previous)
        assert [int(v) for v in got] == exp, name
    assert [int(v) for v in round_half(x, BF16).view(np.uint16)] == exp


def test_bf16_nan_classes_and_specials_through_dropout(isa, nthreads):
    """NaN classes on every lane of a block and in the tail; the dropout products of every
    bfloat16 pattern (ties and overflow to inf come from the scale)."""
    t, scale = 1288490189, np.float32(1 / 0.7)
    for n in (77, 83):
        for ci, nan in enumerate(bf16_nan_classes()):
            x = _nan_lanes(n, BF16, nan, ci)
            x.view(np.uint16)[n - 3:] = nan                   # the tail after the last block
            for off in (0, 1):
                xb = _layout(n, off)
                xb[:] = bits(x)
                got = _layout(n, 1 - off)
                fc.dropout_half(xb, 1, SEED, 5, t, scale, got)
                np.testing.assert_array_equal(got, bits(expected_dropout(x, SEED, 5, t, 1 / 0.7,
                                                                         BF16)))
    x = all_patterns(BF16)
    for s in (1 / 0.7, 1.5, 3.0):
        for n in (65536, 65533):
            got = np.empty(n, np.uint16)
            fc.dropout_half(bits(x[:n]), 1, SEED, 3, 2**30, np.float32(s), got)
            np.testing.assert_array_equal(got, bits(expected_dropout(x[:n], SEED, 3, 2**30, s,
                                                                     BF16)))
