"""16-bit floats (float16, bfloat16): every backend against the reference's definition, exactly.

The definition (fastreg/reference/half.py): widen to float32 (exact), compute the float32 op,
round to nearest even (NumPy's float16 and ml_dtypes' bfloat16 conversions). So the expected
value of every 16-bit op here is ``round_half(<float32 op on the widened input>)`` computed by
the NumPy reference, and results are compared bit for bit (uint16 views: signed zeros, NaNs).
The conversion helpers of each backend are checked on all 65536 16-bit patterns and on float32
ties, subnormals, overflow, inf and NaN.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CUDA_SIM

import fastreg
from fastreg import _arrays, optim
from fastreg.reference.half import round_half

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [F16, BF16]
SEED = 0x0123456789ABCDEF
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def u16(a):
    return host(a).view(np.uint16)


def assert_bits(got, expected, dtype):
    got = host(got)
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def data(shape, dtype, seed=0, special=True):
    """Normal values in dtype, with NaN, +-inf, -0.0, a subnormal and a large value sprinkled
    in (when there is room)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3
    flat = x.reshape(-1)
    if special and flat.size >= 8:
        big = 60000.0 if dtype == F16 else 3e38
        flat[:7] = [np.nan, np.inf, -np.inf, -0.0, 1e-7 if dtype == F16 else 1e-39, big, -big]
    return x.astype(dtype)


# --- the conversion helpers of each backend, exhaustively -------------------------------------

def _float32_sample(cuda):
    """float32 bit patterns around every rounding decision of both 16-bit types."""
    r = np.random.default_rng(1)
    hi = np.arange(65536, dtype=np.uint32) << 16          # bfloat16 values and the ties above
    f16 = np.arange(1 << 19, dtype=np.uint32) << 13       # float16 grid (all exponents)
    parts = [hi, hi | 0x8000, hi | 0x7FFF, hi | 0x8001, f16 | 0x1000, f16 | 0xFFF, f16 | 0x1001,
             f16 + 1, np.array([0x33000000, 0x33000001, 0x477FEFFF, 0x477FF000, 0x477FE000,
                                0x38800000, 0x387FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000,
                                0xFF800000, 0x7F802000, 0x7F801FFF], np.uint32),
             r.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32),
             r.integers(0x33000000, 0x38800000, 1 << 16, dtype=np.uint32)]  # f16 subnormals
    u = np.concatenate(parts)
    u = np.concatenate([u, u | 0x80000000])
    if cuda:  # the simulator runs a Python loop per element: a spread-out subset
        u = np.concatenate([u[::257], parts[8]])
    return u.view(np.float32)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_conversions_exhaustive(kernel_backend, dtype):
    mod = fastreg._registry.module(kernel_backend)
    kind = _arrays.half_kind(dtype)
    cuda = kernel_backend == "cuda"
    src = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    if cuda and CUDA_SIM:
        src = np.concatenate([src[::61], np.arange(0x7BF0, 0x7C10, dtype=np.uint16),
                              np.arange(0, 0x410, 7, dtype=np.uint16)])
    expected = src.view(dtype).astype(np.float32)
    got = np.empty(src.size, np.float32)
    if cuda:
        d = mod.empty(src.size, np.float32)
        mod.half_to_float32(mod.to_device(src), kind, d)
        got = d.copy_to_host()
    else:
        mod.half_to_float32(src, kind, got)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))

    f = _float32_sample(cuda and CUDA_SIM)
    expected = round_half(f, dtype).view(np.uint16)
    if cuda:
        d = mod.empty(f.size, np.uint16)
        mod.float32_to_half(mod.to_device(f), kind, d)
        got = d.copy_to_host()
    else:
        got = np.empty(f.size, np.uint16)
        mod.float32_to_half(f, kind, got)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, [hex(v) for v in f.view(np.uint32)[bad[:5]]]


def test_reference_rounding_is_to_nearest_even():
    # ties: 1 + 2**-11 (float16) and 1 + 2**-8 (bfloat16) round down to even 1.0; the next tie up
    # rounds up to the even neighbour; overflow gives inf; NaN stays NaN
    f = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65519.996, 65520.0, np.nan], np.float32)
    assert round_half(f, F16).tolist()[:4] == [1.0, 1 + 2**-9, 65504.0, np.inf]
    b = np.array([1 + 2**-8, 1 + 3 * 2**-8, 3.4e38], np.float32)
    assert round_half(b, BF16).astype(np.float32).tolist() == [1.0, 1 + 2**-6, np.inf]


# --- dropout and its variants ------------------------------------------------------------------

SHAPES = [(0,), (1,), (7,), (3, 5), (2, 3, 4, 5)]


def _sim(backend):
    """Under the CUDA simulator every launch costs a Python loop: fewer cases there."""
    return backend == "cuda" and CUDA_SIM


def _cases(backend):
    return [(0,), (7,), (3, 5)] if _sim(backend) else SHAPES


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_family(backend, dtype, p):
    if _sim(backend) and p != 0.3:
        pytest.skip("the simulator runs p = 0.3 only (p = 0 and 1 take the same paths)")
    for shape in _cases(backend):
        x = data(shape, dtype)
        x32 = x.astype(np.float32)
        for fn, kw in [(fastreg.dropout, {}), (fastreg.dropout_backward, {}),
                       (fastreg.dropout, dict(mode="classic", training=False)),
                       (fastreg.drop_path, {}), (fastreg.drop_path_backward, {})]:
            if x.ndim == 0:
                continue
            expected = round_half(fn(x32, p, seed=SEED, offset=5, backend="numpy", **kw), dtype)
            assert_bits(fn(x, p, seed=SEED, offset=5, backend=backend, **kw), expected, dtype)
        if x.ndim >= 2:
            for fn in (fastreg.channel_dropout, fastreg.channel_dropout_backward):
                for axis in (1, -1):
                    expected = round_half(fn(x32, p, seed=SEED, axis=axis, backend="numpy"),
                                          dtype)
                    assert_bits(fn(x, p, seed=SEED, axis=axis, backend=backend), expected,
                                dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_dropout_mask_is_the_float32_mask(backend, dtype):
    shape = (3, 40) if backend == "cuda" else (5, 999)
    ones = np.ones(shape, dtype)
    for offset in (0, 3, 2**32 - 2):
        y16 = host(fastreg.dropout(ones, 0.4, seed=SEED, offset=offset, backend=backend))
        y32 = host(fastreg.dropout(np.ones(shape, np.float32), 0.4, seed=SEED, offset=offset,
                                   backend=backend))
        np.testing.assert_array_equal(y16 != 0, y32 != 0)
        keep = fastreg.dropout_mask(shape, 0.4, seed=SEED, offset=offset, packed=False,
                                    backend="numpy")
        np.testing.assert_array_equal(y16 != 0, keep)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_dropout_out_in_place_and_non_contiguous(backend, dtype):
    x = data((6, 8), dtype)
    xs = x[:, ::2]                                   # non-contiguous input
    expected = round_half(fastreg.dropout(xs.astype(np.float32), 0.5, seed=1, backend="numpy"),
                          dtype)
    assert_bits(fastreg.dropout(xs, 0.5, seed=1, backend=backend), expected, dtype)
    before = x.copy()
    out = np.empty((6, 4), dtype)
    y = fastreg.dropout(xs, 0.5, seed=1, out=out, backend=backend)
    assert y is out
    assert_bits(out, expected, dtype)
    np.testing.assert_array_equal(x.view(np.uint16), before.view(np.uint16))  # input untouched
    big = np.zeros((6, 8), dtype)
    fastreg.dropout(xs, 0.5, seed=1, out=big[:, 1::2], backend=backend)  # non-contiguous out
    assert_bits(big[:, 1::2].copy(), expected, dtype)
    xi = xs.copy()
    fastreg.dropout(xi, 0.5, seed=1, out=xi, backend=backend)          # in place
    assert_bits(xi, expected, dtype)
    with pytest.raises(ValueError, match="out must have dtype"):
        fastreg.dropout(xs, 0.5, seed=1, out=np.empty((6, 4), np.float32), backend=backend)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_drop_block(backend, dtype):
    shapes = [((1, 2, 5, 5), "NCHW"), ((2, 5, 5, 3), "NHWC")]
    if backend != "cuda":
        shapes.append(((2, 3, 9, 7), "NCHW"))
    for shape, layout in shapes:
        x = data(shape, dtype, special=False)
        x32 = x.astype(np.float32)
        for fn, kw in [(fastreg.drop_block, {}), (fastreg.drop_block_backward, {}),
                       (fastreg.drop_block, dict(training=False))]:
            expected = round_half(fn(x32, 0.3, 3, seed=SEED, layout=layout, backend="numpy",
                                     **kw), dtype)
            assert_bits(fn(x, 0.3, 3, seed=SEED, layout=layout, backend=backend, **kw),
                        expected, dtype)
    empty = np.zeros((0, 2, 4, 4), dtype)
    assert fastreg.drop_block(empty, 0.3, 3, seed=1, backend=backend).shape == (0, 2, 4, 4)


def test_generator_and_state_with_half():
    g1, g2 = fastreg.random.Generator(7), fastreg.random.Generator(7)
    x = data((4, 9), BF16)
    y, state = fastreg.dropout(x, 0.5, seed=g1, return_state=True)
    y32 = fastreg.dropout(x.astype(np.float32), 0.5, seed=g2)
    assert g1.position == g2.position == x.size
    assert_bits(y, round_half(y32, BF16), BF16)
    gx = state.backward(x)
    assert_bits(gx, round_half(y32, BF16), BF16)


# --- penalties ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_penalty_values_accumulate_like_float32(backend, dtype):
    for shape in [(0,), (3, 7)] if _sim(backend) else [(0,), (1,), (3, 7), (1000,)]:
        w = data(shape, dtype, special=False)
        w32 = w.astype(np.float32)
        # the 16-bit values widened exactly, then float32's float64 accumulation
        assert fastreg.l1_penalty(w, 0.5, backend=backend) == \
            fastreg.l1_penalty(w32, 0.5, backend=backend)
        assert fastreg.elastic_net_penalty([w, w[::2]], 0.5, 0.25, backend=backend) == \
            fastreg.elastic_net_penalty([w32, w32[::2]], 0.5, 0.25, backend=backend)
    w = data((5,), dtype, special=False)
    w[0] = np.nan
    assert np.isnan(fastreg.l2_penalty(w, 1.0, backend=backend))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_penalty_gradients(backend, dtype):
    for shape in _cases(backend):
        w = data(shape, dtype)
        w32 = w.astype(np.float32)
        g = data(shape, dtype, seed=3)
        fns = [(fastreg.l1_grad, (0.3,)), (fastreg.l2_grad, (0.3,)),
               (fastreg.elastic_net_grad, (0.1, 2.5))]
        for fn, args in fns[2:] if _sim(backend) else fns:
            expected = round_half(fn(w32, *args, backend="numpy"), dtype)
            assert_bits(fn(w, *args, backend=backend), expected, dtype)
            acc = g.copy()
            expected = round_half(fn(w32, *args, out=g.astype(np.float32), accumulate=True,
                                     backend="numpy"), dtype)
            assert fn(w, *args, out=acc, accumulate=True, backend=backend) is acc
            assert_bits(acc, expected, dtype)
    w = data((4, 6), dtype)[:, ::2]                  # non-contiguous, out=w in place
    expected = round_half(fastreg.l2_grad(w.astype(np.float32), 0.5, backend="numpy"), dtype)
    wi = w.copy()
    fastreg.l2_grad(wi, 0.5, out=wi, backend=backend)
    assert_bits(wi, expected, dtype)
    assert_bits(fastreg.l2_grad(w, 0.5, backend=backend), expected, dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_prox(backend, dtype):
    for shape in [(4, 6)] if _sim(backend) else [(1,), (7,), (4, 6)]:
        w = data(shape, dtype)
        for name, fn, args in [("l1", fastreg.prox_l1, (0.5,)),
                               ("en", fastreg.prox_elastic_net, (0.5, 0.25)),
                               ("group", fastreg.prox_group_lasso, (1.5, -1))]:
            if name == "group":
                w = data(shape, dtype, special=False)   # a NaN makes its whole group NaN
            e = w.astype(np.float32)
            fn(e, *args, backend="numpy")
            got = w.copy()
            assert fn(got, *args, backend=backend) is got
            assert_bits(got, round_half(e, dtype), dtype)
    w = data((6, 6), dtype)
    view = w[::2, 1::2]                               # non-contiguous, written back in place
    e = view.astype(np.float32)
    fastreg.prox_l1(e, 0.5, backend="numpy")
    fastreg.prox_l1(view, 0.5, backend=backend)
    assert_bits(view.copy(), round_half(e, dtype), dtype)


# --- optimizers --------------------------------------------------------------------------------

OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01, l1=0.01)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, decoupled=True, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01, max_grad_norm=0.5)),
]
PAIRS = [(F16, F16), (BF16, BF16), (np.dtype(np.float32), F16), (np.dtype(np.float32), BF16),
         (BF16, np.dtype(np.float32))]


def _optimize(cls, kw, pdt, gdt, backend, reference=False):
    rng = np.random.default_rng(0)
    shapes = [(4, 6), (5,), (0,)]
    start = [rng.standard_normal(s).astype(np.float32).astype(pdt) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32).astype(gdt) for s in shapes]
             for _ in range(3)]
    if not reference:
        params = [p.copy() for p in start]
        opt = cls(params, backend=backend, **kw)
        for gs in grads:
            opt.step(gs)
        return params, opt
    # the definition: float32 parameters and gradients, rounded to pdt after each step
    params = [p.astype(np.float32) for p in start]
    opt = cls(params, backend="numpy", **kw)
    for gs in grads:
        opt.step([g.astype(np.float32) for g in gs])
        for p in params:
            p[...] = round_half(p, pdt).astype(np.float32)
    return [round_half(p, pdt) if pdt != np.float32 else p for p in params], opt


@pytest.mark.parametrize("pdt,gdt", PAIRS, ids=lambda d: str(np.dtype(d)))
@pytest.mark.parametrize("which", range(len(OPTIMIZERS)))
def test_optimizer_steps(backend, which, pdt, gdt):
    if _sim(backend) and (pdt, gdt) not in PAIRS[1:4:2]:
        pytest.skip("the simulator runs bfloat16 params and float32 params / float16 grads")
    cls, kw = OPTIMIZERS[which]
    expected, ref_opt = _optimize(cls, kw, pdt, gdt, backend, reference=True)
    got, opt = _optimize(cls, kw, pdt, gdt, backend)
    view = np.uint16 if pdt != np.float32 else np.uint32
    for g, e in zip(got, expected):
        assert g.dtype == pdt
        np.testing.assert_array_equal(g.view(view), e.view(view))
    state, ref_state = opt.state_dict(), ref_opt.state_dict()
    assert state.keys() == ref_state.keys()
    for k in state:  # float32 moments, the same bits as the float32 reference's
        assert state[k].dtype == ref_state[k].dtype
        np.testing.assert_array_equal(state[k], ref_state[k])
    opt.load_state_dict(state)
    if pdt != np.float32:
        bad = {k: v.astype(pdt) for k, v in state.items() if k != "step"}
        with pytest.raises(ValueError, match="float32"):
            opt.load_state_dict({"step": state["step"], **bad})


def test_optimizer_refuses_other_dtype_pairs():
    p = [np.zeros(3, np.float16)]
    opt = optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] has dtype bfloat16"):
        opt.step([np.zeros(3, BF16)])
    with pytest.raises(ValueError, match=r"grads\[0\] has dtype float64"):
        opt.step([np.zeros(3, np.float64)])
    with pytest.raises(TypeError, match=r"grads\[0\] must be float32, float64, float16"):
        opt.step([np.zeros(3, np.int16)])
    with pytest.raises(FloatingPointError):
        optim.SGD(p, lr=0.1, check_finite=True).step([np.array([0, np.inf, 0], np.float16)])
    assert not p[0].any()


# --- other ops keep refusing 16-bit, clearly ----------------------------------------------------

def test_other_ops_refuse_half():
    x = np.zeros((2, 3), np.float16)
    with pytest.raises(TypeError, match="logits must be float32 or float64.*no 16-bit kernels"):
        fastreg.cross_entropy(x, np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="float32 or float64.*no 16-bit kernels"):
        fastreg.ema_update([np.zeros(3, BF16)], [np.zeros(3, BF16)], 0.9)
    with pytest.raises(TypeError, match="float32 or float64.*no 16-bit kernels"):
        fastreg.grad_norm([np.ones(3, np.float16)])


# --- CUDA device arrays --------------------------------------------------------------------------

def test_cuda_device_float16():
    if fastreg.available_backends()["cuda"] is not None:
        pytest.skip("no CUDA backend here")
    from numba import cuda
    x = data((3, 10), F16)
    d = cuda.to_device(x)
    y = fastreg.dropout(d, 0.5, seed=3)
    assert getattr(y, "__cuda_ndarray__", False) or hasattr(y, "__cuda_array_interface__")
    expected = round_half(fastreg.dropout(x.astype(np.float32), 0.5, seed=3, backend="numpy"),
                          F16)
    assert_bits(y.copy_to_host(), expected, F16)
    out = cuda.device_array((3, 10), np.float16)
    assert fastreg.dropout(d, 0.5, seed=3, out=out) is out
    assert_bits(out.copy_to_host(), expected, F16)
    fastreg.prox_l1(d, 0.5)
    e = x.astype(np.float32)
    fastreg.prox_l1(e, 0.5, backend="numpy")
    assert_bits(d.copy_to_host(), round_half(e, F16), F16)


# --- float16 without ml_dtypes -------------------------------------------------------------------

def test_float16_works_without_ml_dtypes():
    code = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "import numpy as np, fastreg\n"
        "from fastreg import _arrays\n"
        "assert _arrays.BFLOAT16 is None and _arrays.HALF_DTYPES == (np.dtype(np.float16),)\n"
        "y = fastreg.dropout(np.ones(8, np.float16), 0.5, seed=1, backend='numpy')\n"
        "assert y.dtype == np.float16\n"
        "p = [np.ones(4, np.float16)]\n"
        "fastreg.optim.AdamW(p, backend='numpy').step([np.ones(4, np.float16)])\n"
        "print('ok')\n")
    env = dict(os.environ, FASTREG_BACKEND="numpy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- torch tensors: viewed zero-copy by fastreg.torch's bridge ----------------------------------

def test_torch_half_tensors_zero_copy():
    torch = pytest.importorskip("torch")
    from fastreg.torch import _bridge
    for tdt, dtype in ((torch.float16, F16), (torch.bfloat16, BF16)):
        t = torch.randn(4, 6).to(tdt)
        assert _bridge.check_float(t, "x", half=True) is t
        a = _bridge.array(t)
        assert a.dtype == dtype and a.__array_interface__["data"][0] == t.data_ptr()
        out = torch.empty_like(t)
        fastreg.dropout(a, 0.5, seed=9, out=_bridge.array(out))  # written into the tensor
        expected = round_half(fastreg.dropout(a.astype(np.float32), 0.5, seed=9,
                                              backend="numpy"), dtype)
        assert_bits(_bridge.array(out), expected, dtype)
        back = _bridge.to_tensor(fastreg.dropout(a, 0.5, seed=9), t)
        assert back.dtype == tdt and torch.equal(back, out)
        with pytest.raises(TypeError, match="float32 or float64, got torch.*half precision"):
            _bridge.check_float(t, "x")
