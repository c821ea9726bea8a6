"""Backend "c" batch norm on float16 / bfloat16 x through its fused 16-bit kernels.

The C kernels read the 16-bit arrays (x, grad_y, y, residual) directly, widening each element
exactly, do the float32 kernels' arithmetic in the float32 kernels' order of sums, and round each
result to nearest even when they write it (csrc/batchnorm.c instantiated per storage type,
csrc/half.h). Every result here is held bit for bit to the conversion-pass path (float32 copies,
the float32 op, rounding: fastreg.batchnorm._batch_norm_half, the reference's definition), run
on the same backend by switching the fused path off; running statistics, saved statistics and
the parameter gradients (float32) must match bit for bit too. Covered: NCHW, channels-last,
2-D and 3-D layouts, every work split and channel strategy of the C planner, 1 and 2 threads,
the portable and AVX2 loops (float16's AVX2 copy converts with F16C where the CPU has it),
non-finite and subnormal values (all 65536 bit patterns), empty batches, size 1,
non-contiguous input, ``out=`` (also in place) and the torch modules.

Test ids start with "c-" so that .ci/c_sanitize.sh selects them.
"""
import numpy as np
import pytest

import fastreg
import fastreg.batchnorm as FB
from fastreg import _arrays

fc = pytest.importorskip("fastreg.c")
if fc.unavailable_reason() is not None:
    pytest.skip(f"C backend unavailable: {fc.unavailable_reason()}", allow_module_level=True)
import fastreg.c.batchnorm as fcb  # noqa: E402

HALF = [np.dtype(np.float16)] + ([_arrays.BFLOAT16] if _arrays.BFLOAT16 is not None else [])
HALF_IDS = ["c-" + str(d) for d in HALF]

# (shape, axis): the (A, C, B) shapes of tests/test_c_batchnorm.py that reach every work split
# (channel layout fused per channel, rows cut in pieces, two passes with one or several rows per
# chunk; row layout with one and several column blocks and row chunks, B > 1), plus NCHW,
# channels-last (NHWC), 2-D (N, C) and 3-D layouts
SHAPES = [((8, 16, 300), 1), ((5, 3, 2900), 1), ((1, 2, 40001), 1), ((40, 2, 4000), 1),
          ((200, 2, 700), 1), ((32, 3, 3000), 1), ((3, 1, 17), 1), ((700, 48, 1), 1),
          ((23, 1500, 3), 1), ((2, 3, 1), 1), ((4, 6, 5, 7), 1), ((4, 5, 7, 6), -1),
          ((37, 5), 1), ((6, 9), -1), ((5, 4, 33), 1), ((5, 33, 4), -1)]
SHAPE_IDS = ["x".join(map(str, s)) + f"@{a}" for s, a in SHAPES]


def bits(a):
    """The bits of a float array, every NaN as one canonical NaN: the sign and payload of a NaN
    result follow the order of a NaN operation's operands, which the compiler may swap (the
    float32 kernels' NaN bits are not specified either); where the NaNs are is compared."""
    a = np.array(a)
    nan = np.isnan(a.astype(np.float32) if a.dtype.itemsize == 2 else a)
    if nan.any():
        a[nan] = np.nan
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def problem(shape, axis, dtype, seed=0, loc=0.5):
    rng = np.random.default_rng(seed)
    C = shape[axis]

    def half(scale, shift=0.0):
        return (rng.standard_normal(shape) * scale + shift).astype(np.float32).astype(dtype)

    x = half(2, loc)
    x.reshape(-1)[::97] = 0  # exact zeros for the ReLU mask
    return dict(x=x, res=half(1), gy=half(1), w=rng.uniform(0.5, 1.5, C).astype(np.float32),
                b=rng.standard_normal(C).astype(np.float32),
                rm=(rng.standard_normal(C) * 0.1).astype(np.float32),
                rv=rng.uniform(0.5, 2.0, C).astype(np.float32))


def run_all(p, axis, fused, relus=(False, True), residuals=(False, True)):
    """Every batch-norm call on problem p with backend "c": {name: bits}. fused=False switches
    the fused 16-bit path off (the conversion passes run instead)."""
    out = {}
    x, gy = p["x"], p["gy"]
    count, mean, m2 = _stats(x, axis, fused)
    out["stats"] = [count, bits(mean), bits(m2)]
    for training in (True, False):
        for relu in relus:
            for with_res in residuals:
                tag = f"{training}-{relu}-{with_res}"
                rm, rv = p["rm"].copy(), p["rv"].copy()
                act = "relu" if relu else None
                res = p["res"] if with_res else None
                y, saved = _call(fused, fastreg.batch_norm, x, rm, rv, p["w"], p["b"],
                                 training=training, axis=axis, activation=act, residual=res,
                                 backend="c")
                assert y.dtype == x.dtype
                out["y" + tag] = bits(y)
                out["rs" + tag] = [bits(rm), bits(rv), bits(saved.mean), bits(saved.invstd)]
                grads = _call(fused, fastreg.batch_norm_backward, gy, x, saved, p["w"],
                              y=y if relu else None, backend="c")
                assert grads[0].dtype == x.dtype and grads[1].dtype == np.float32
                out["g" + tag] = [bits(g) for g in grads]
    return out


def _stats(x, axis, fused):
    return _call(fused, fastreg.batch_norm_stats, x, axis=axis, backend="c")


def _call(fused, fn, *args, **kwargs):
    if fused:
        return fn(*args, **kwargs)
    saved = FB._half_fused
    FB._half_fused = lambda *a: False
    try:
        return fn(*args, **kwargs)
    finally:
        FB._half_fused = saved


def assert_same(got, exp):
    assert got.keys() == exp.keys()
    for k in exp:
        g, e = got[k], exp[k]
        if isinstance(e, list):
            assert len(g) == len(e), k
            for a, b in zip(g, e):
                np.testing.assert_array_equal(a, b, err_msg=k)
        else:
            np.testing.assert_array_equal(g, e, err_msg=k)


def test_the_fused_path_is_taken(monkeypatch):
    """Backend "c" never runs the conversion passes for host 16-bit x (without comm); the
    other backends do."""
    def refuse(*args, **kwargs):
        raise AssertionError("conversion passes ran")

    p = problem((4, 3, 5), 1, HALF[0])
    monkeypatch.setattr(FB, "_batch_norm_half", refuse)
    monkeypatch.setattr(FB, "_batch_norm_backward_half", refuse)
    monkeypatch.setattr(FB, "_widen", refuse)
    y, saved = fastreg.batch_norm(p["x"], p["rm"], p["rv"], p["w"], p["b"], training=True,
                                  backend="c")
    fastreg.batch_norm_backward(p["gy"], p["x"], saved, p["w"], backend="c")
    fastreg.batch_norm_stats(p["x"], backend="c")
    assert FB._half_fused("c", False, None)
    assert not FB._half_fused("numpy", False, None)
    assert not FB._half_fused("c", True, None)
    assert not FB._half_fused("c", False, object())


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=SHAPE_IDS)
def test_fused_is_the_conversion_passes(dtype, shape, axis):
    for loc in (0.5, 300.0):  # unshifted and shifted sums
        p = problem(shape, axis, dtype, loc=loc)
        assert_same(run_all(p, axis, True), run_all(p, axis, False))


def test_the_16bit_plan_is_the_float32_plan():
    """16-bit data are cut as their float32 copy (the same partial sums, hence bits); only the
    choice of whole channels per thread looks at the bytes stored."""
    for (shape, axis) in SHAPES:
        A = int(np.prod(shape[:axis % len(shape)]))
        C = shape[axis]
        B = int(np.prod(shape[axis % len(shape) + 1:]))
        for nred in (1, 2, 3):
            p16 = fcb.plan_info((A, C, B), np.float16, nred)
            p32 = fcb.plan_info((A, C, B), np.float32, nred)
            fused16, fused32 = p16.pop("fused"), p32.pop("fused")
            assert p16 == p32
            assert fused16 >= fused32
    # NCHW (32, 64, 56, 56): the backward (2 arrays) fits in a core's cache as 16-bit only
    assert fcb.plan_info((32, 64, 3136), np.float16, 2)["fused"]
    assert not fcb.plan_info((32, 64, 3136), np.float32, 2)["fused"]


@pytest.mark.parametrize("threads", [1, 2], ids=["c-1", "c-2"])
def test_strategies_threads_and_isas(threads, monkeypatch):
    """Every channel strategy, on 1 and 2 threads (tiny shapes made parallel), with each
    instruction set: the conversion passes' bits."""
    import fastreg._threads
    monkeypatch.setitem(fastreg._threads.GRAIN, "batchnorm", 1)
    isas = ["portable"] + (["avx2"] if fc.has_avx2() else []) + \
        (["avx512"] if fc.has_avx512() else [])
    cases = [((8, 16, 300), 1), ((40, 2, 4000), 1), ((5, 3, 2900), 1), ((700, 48, 1), 1),
             ((23, 1500, 3), 1), ((4, 5, 7, 6), -1)]
    with fastreg.threads(threads):
        for dtype in HALF:
            for shape, axis in cases:
                p = problem(shape, axis, dtype, seed=1)
                exp = run_all(p, axis, False, relus=(True,), residuals=(True,))
                for isa in isas:
                    old_isa = fc.set_isa(isa)
                    try:
                        for strategy in ("auto", "whole", "shared", "two-pass"):
                            old = fcb.set_channel_strategy(strategy)
                            try:
                                got = run_all(p, axis, True, relus=(True,), residuals=(True,))
                            finally:
                                fcb.set_channel_strategy(old)
                            assert_same(got, exp)
                    finally:
                        fc.set_isa(old_isa)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_every_bit_pattern(dtype):
    """All 65536 16-bit patterns (NaN, inf, subnormals, -0.0) as x, residual, grad_y and y,
    in inference (each element on its own) and training (non-finite channels included)."""
    allbits = np.arange(65536, dtype=np.uint16)
    rng = np.random.default_rng(7)
    for shape, axis in (((64, 4, 256), 1), ((256, 64, 4), -1), ((1024, 64), 1)):
        x = allbits.view(dtype).reshape(shape)
        C = shape[axis]
        p = dict(x=x, res=rng.permutation(allbits).view(dtype).reshape(shape),
                 gy=rng.permutation(allbits).view(dtype).reshape(shape),
                 w=rng.uniform(0.5, 1.5, C).astype(np.float32),
                 b=rng.standard_normal(C).astype(np.float32),
                 rm=(rng.standard_normal(C) * 0.1).astype(np.float32),
                 rv=rng.uniform(0.5, 2.0, C).astype(np.float32))
        assert_same(run_all(p, axis, True), run_all(p, axis, False))
        # y of any pattern for the backward's ReLU mask
        y = rng.permutation(allbits).view(dtype).reshape(shape)
        for training in (True, False):
            _, saved = fastreg.batch_norm(x, p["rm"].copy(), p["rv"].copy(), p["w"], p["b"],
                                          training=training, axis=axis, activation="relu",
                                          residual=p["res"], backend="c")
            got = fastreg.batch_norm_backward(p["gy"], x, saved, p["w"], y=y, backend="c")
            exp = _call(False, fastreg.batch_norm_backward, p["gy"], x, saved, p["w"], y=y,
                        backend="c")
            for g, e in zip(got, exp):
                np.testing.assert_array_equal(bits(g), bits(e))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_subnormal_and_large_channels(dtype):
    """Channels of only subnormals, of huge values, with an inf, with a NaN."""
    shape = (6, 5, 40)
    rng = np.random.default_rng(3)
    tiny = float(np.finfo(np.float16).smallest_subnormal) if dtype == np.float16 else 1e-39
    big = 6e4 if dtype == np.float16 else 1e38
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 0] *= tiny
    x[:, 1] = x[:, 1] * big / 4
    x[2, 2, 3] = np.inf
    x[1, 3, 7] = np.nan
    p = problem(shape, 1, dtype)
    p["x"] = x.astype(dtype)
    assert_same(run_all(p, 1, True), run_all(p, 1, False))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_out_in_place_and_non_contiguous(dtype):
    p = problem((6, 4, 30), 1, dtype)
    x, w, b = p["x"], p["w"], p["b"]
    exp, _ = _call(False, fastreg.batch_norm, x, p["rm"].copy(), p["rv"].copy(), w, b,
                   training=True, residual=p["res"], activation="relu", backend="c")
    out = np.empty_like(x)
    got, _ = fastreg.batch_norm(x, p["rm"].copy(), p["rv"].copy(), w, b, training=True,
                                residual=p["res"], activation="relu", out=out, backend="c")
    assert got is out
    np.testing.assert_array_equal(bits(out), bits(exp))
    xc = x.copy()
    got, saved = fastreg.batch_norm(xc, p["rm"].copy(), p["rv"].copy(), w, b, training=True,
                                    residual=p["res"], activation="relu", out=xc, backend="c")
    assert got is xc
    np.testing.assert_array_equal(bits(xc), bits(exp))
    # backward into out, and in place over grad_y
    exp_g = _call(False, fastreg.batch_norm_backward, p["gy"], x, saved, w, y=exp, backend="c")
    gout = np.empty_like(x)
    g = fastreg.batch_norm_backward(p["gy"], x, saved, w, y=exp, out=gout, backend="c")
    assert g[0] is gout
    gyc = p["gy"].copy()
    g2 = fastreg.batch_norm_backward(gyc, x, saved, w, y=exp, out=gyc, backend="c")
    assert g2[0] is gyc
    for a in (g, g2):
        for u, v in zip(a, exp_g):
            np.testing.assert_array_equal(bits(u), bits(v))
    # non-contiguous x, residual, grad_y (every other channel; a transposed view)
    big = problem((6, 8, 30), 1, dtype, seed=2)
    for view in (lambda a: a[:, ::2], lambda a: a.transpose(0, 2, 1)[:, :4, :]):
        xs, rs, gs = view(big["x"]), view(big["res"]), view(big["gy"])
        assert not xs.flags.c_contiguous
        C = xs.shape[1]
        q = dict(x=xs, res=rs, gy=gs, w=w[:C].copy(), b=b[:C].copy(), rm=p["rm"][:C].copy(),
                 rv=p["rv"][:C].copy())
        assert_same(run_all(q, 1, True), run_all(q, 1, False))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_empty_and_size_one(dtype):
    p = problem((3, 4), 1, dtype)
    for shape in ((0, 4), (3, 4, 0)):
        xe = np.zeros(shape, dtype)
        rm, rv = p["rm"].copy(), p["rv"].copy()
        y, saved = fastreg.batch_norm(xe, rm, rv, p["w"], p["b"], training=True, backend="c")
        assert y.shape == shape and y.dtype == dtype
        np.testing.assert_array_equal(rm, p["rm"])
        np.testing.assert_array_equal(rv, p["rv"])
        gx, gw, gb = fastreg.batch_norm_backward(np.zeros(shape, dtype), xe, saved, p["w"],
                                                 backend="c")
        assert gx.shape == shape and gx.dtype == dtype
        assert gw.dtype == gb.dtype == np.float32
        np.testing.assert_array_equal(gw, np.zeros(4, np.float32))
        count, mean, m2 = fastreg.batch_norm_stats(xe, backend="c")
        assert count == 0 and not mean.any() and not m2.any()
    # one value per channel: inference works, training raises as for float32
    q = problem((1, 4), 1, dtype)
    y1, _ = fastreg.batch_norm(q["x"], q["rm"], q["rv"], q["w"], q["b"], training=False,
                               backend="c")
    e1, _ = _call(False, fastreg.batch_norm, q["x"], q["rm"], q["rv"], q["w"], q["b"],
                  training=False, backend="c")
    np.testing.assert_array_equal(bits(y1), bits(e1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastreg.batch_norm(q["x"], training=True, backend="c")
    s1 = problem((1, 1, 1), 1, dtype)
    got = fastreg.batch_norm(s1["x"], s1["rm"], s1["rv"], training=False, backend="c")[0]
    exp = _call(False, fastreg.batch_norm, s1["x"], s1["rm"], s1["rv"], training=False,
                backend="c")[0]
    np.testing.assert_array_equal(bits(got), bits(exp))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_argument_errors(dtype):
    """The fused path raises what the conversion passes raise, before any work."""
    p = problem((4, 3), 1, dtype)
    x, w, b, rm, rv = p["x"], p["w"], p["b"], p["rm"], p["rv"]
    with pytest.raises(TypeError, match="weight must be float32"):
        fastreg.batch_norm(x, rm, rv, w.astype(dtype), b, training=True, backend="c")
    with pytest.raises(TypeError, match="running_mean must be float32"):
        fastreg.batch_norm(x, rm.astype(np.float64), rv, training=True, backend="c")
    with pytest.raises(TypeError, match="residual"):
        fastreg.batch_norm(x, rm, rv, training=True, residual=p["res"].astype(np.float32),
                           backend="c")
    with pytest.raises(ValueError, match="out must have dtype"):
        fastreg.batch_norm(x, rm, rv, training=True, out=np.empty((4, 3), np.float32),
                           backend="c")
    rm0 = rm.copy()
    with pytest.raises(ValueError, match="eps"):
        fastreg.batch_norm(x, rm, rv, training=True, eps=-1.0, backend="c")
    np.testing.assert_array_equal(rm, rm0)
    _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, backend="c")
    with pytest.raises(TypeError, match="grad_y"):
        fastreg.batch_norm_backward(p["gy"].astype(np.float32), x, saved, w, backend="c")
    with pytest.raises(TypeError, match="weight must be float32"):
        fastreg.batch_norm_backward(p["gy"], x, saved, w.astype(np.float64), backend="c")
    x2 = x.copy()
    fastreg.batch_norm(x2, rm, rv, w, b, training=True, backend="c")
    np.testing.assert_array_equal(bits(x2), bits(x))


@pytest.mark.parametrize("channels_last", [False, True], ids=["c-nchw", "c-nhwc"])
def test_torch_module_uses_the_fused_kernels(channels_last, monkeypatch):
    """fastreg.torch.BatchNorm2d / BatchNormReLU2d on bfloat16 CPU tensors with backend "c": the
    fused kernels, the conversion passes' bits (and autocast's float32 parameters)."""
    torch = pytest.importorskip("torch")
    if _arrays.BFLOAT16 is None:
        pytest.skip("ml_dtypes not installed")
    import fastreg.torch as frt

    def step(fused):
        torch.manual_seed(0)
        x = (torch.randn(4, 6, 5, 7) * 2 + 0.5).to(torch.bfloat16)
        res = torch.randn(4, 6, 5, 7).to(torch.bfloat16)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            res = res.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        out = {}
        for cls, kw in ((frt.BatchNorm2d, {}), (frt.BatchNormReLU2d, {"residual": res})):
            m = cls(6, backend="c")
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
            y = _call(fused, m, x, **kw)
            g = torch.randn(y.shape).to(torch.bfloat16)
            _call(fused, y.backward, g)
            out[cls.__name__] = [y.detach().float(), x.grad.float(), m.weight.grad,
                                 m.bias.grad, m.running_mean, m.running_var]
            assert y.dtype == torch.bfloat16 and m.weight.grad.dtype == torch.float32
            x.grad = None
        return out

    exp = step(False)

    def refuse(*args, **kwargs):
        raise AssertionError("conversion passes ran")

    monkeypatch.setattr(FB, "_batch_norm_half", refuse)
    monkeypatch.setattr(FB, "_batch_norm_backward_half", refuse)
    got = step(True)
    for k in exp:
        for a, e in zip(got[k], exp[k]):
            assert torch.equal(a, e), k


def _unaligned(a):
    """a copied into a view that starts one element into a fresh buffer (2-byte aligned only)."""
    buf = np.zeros(a.size + 1, a.dtype)[1:]
    buf[:] = a.reshape(-1)
    return buf.reshape(a.shape)


@pytest.mark.skipif(_arrays.BFLOAT16 is None, reason="no bfloat16 dtype")
@pytest.mark.parametrize("threads", [1, 2], ids=["c-1", "c-2"])
def test_bfloat16_avx2_blocks_are_the_portable_bits(threads, monkeypatch):
    """bfloat16's AVX2 kernels run their element loops on float32 blocks (csrc/half.h
    fr_bf16_widen_avx2 / fr_bf16_narrow_avx2, eight lanes at a time): the portable kernels'
    bits (the per-element integer rounding), on every bit pattern, lengths that are not
    multiples of 8 / 16 (tails), unaligned views, 1 and 2 threads."""
    if not fc.has_avx2():
        pytest.skip("this CPU has no avx2")
    import fastreg._threads
    monkeypatch.setitem(fastreg._threads.GRAIN, "batchnorm", 1)
    dtype = _arrays.BFLOAT16
    allbits = np.arange(65536, dtype=np.uint16)
    rng = np.random.default_rng(11)
    cases = [((64, 4, 256), 1, True), ((3, 5, 37), 1, False), ((7, 9, 13), -1, False),
             ((5, 3, 2900), 1, False)]
    with fastreg.threads(threads):
        for shape, axis, every in cases:
            p = problem(shape, axis, dtype, seed=4)
            if every:
                p["x"] = allbits.view(dtype).reshape(shape)
                p["res"] = rng.permutation(allbits).view(dtype).reshape(shape)
                p["gy"] = rng.permutation(allbits).view(dtype).reshape(shape)
            old_isa = fc.set_isa("portable")
            try:
                exp = run_all(p, axis, True)
            finally:
                fc.set_isa(old_isa)
            for layout in (lambda a: a, _unaligned):
                q = dict(p, x=layout(p["x"]), res=layout(p["res"]), gy=layout(p["gy"]))
                old_isa = fc.set_isa("avx2")
                try:
                    assert_same(run_all(q, axis, True), exp)
                finally:
                    fc.set_isa(old_isa)


def _columns_of_every_pattern(rng, rows, cols):
    """A (rows, cols) float16 array holding every finite pattern (subnormals, -0.0, 65504) and,
    in about ten adjacent columns from column 250 (across the 8-lane loads and the 16-column
    blocks of fr_bn_red4_f16c_wide), every inf and NaN; the other columns stay finite."""
    allbits = np.arange(65536, dtype=np.uint16)
    finite = np.isfinite(allbits.view(np.float16))
    fin, non = rng.permutation(allbits[finite]), allbits[~finite]
    flat = np.concatenate([fin, non, rng.permutation(allbits[finite])])[:rows * cols]
    x = flat.reshape(cols, rows).T                  # consecutive patterns down a column
    x = np.roll(x, -(fin.size // rows - 250), axis=1)
    return np.ascontiguousarray(x).view(np.float16)


@pytest.mark.parametrize("threads", [1, 2], ids=["c-1", "c-2"])
def test_float16_f16c_row_reductions_are_the_portable_bits(threads, monkeypatch):
    """float16's AVX2 kernels widen the row layout's groups of four rows through F16C into
    float32 blocks of 16 columns (csrc/batchnorm.c fr_bn_red4_f16c_wide) for the statistics and
    the backward's sums over grad_y, x and y: the portable kernels' bits (the per-element integer
    widening), on every bit pattern (with NaN and inf columns), widths that are not multiples
    of 8 / 16 (the portable tail), row counts not multiples of 4, several column blocks and row chunks, unaligned
    views, 1 and 2 threads, with the ReLU mask on y of every pattern."""
    if not fc.has_avx2():
        pytest.skip("this CPU has no avx2")
    import fastreg._threads
    monkeypatch.setitem(fastreg._threads.GRAIN, "batchnorm", 1)
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(12)
    isas = ["avx2"] + (["avx512"] if fc.has_avx512() else [])
    # (shape, axis, every pattern): 2-D (N, C); (A, C, B) with B = 3 (rows of 300 columns);
    # channels-last; L = 4500 columns (several column blocks, 23 rows)
    cases = [((219, 300), 1, True), ((219, 100, 3), 1, True), ((7, 9, 13), -1, False),
             ((23, 1500, 3), 1, False)]
    with fastreg.threads(threads):
        for shape, axis, every in cases:
            p = problem(shape, axis, dtype, seed=5)
            if every:
                for k in ("x", "gy"):
                    p[k] = _columns_of_every_pattern(rng, 219, 300).reshape(shape)
            ymask = rng.permutation(np.resize(np.arange(65536, dtype=np.uint16),
                                              int(np.prod(shape)))).view(dtype).reshape(shape)

            def everything(q):
                out = run_all(q, axis, True, relus=(True,))
                _, saved = fastreg.batch_norm(q["x"], q["rm"].copy(), q["rv"].copy(), q["w"],
                                              q["b"], training=True, axis=axis, backend="c")
                grads = fastreg.batch_norm_backward(q["gy"], q["x"], saved, q["w"], y=ymask,
                                                    backend="c")
                out["mask"] = [bits(g) for g in grads]
                return out

            old_isa = fc.set_isa("portable")
            try:
                exp = everything(p)
            finally:
                fc.set_isa(old_isa)
            for layout in (lambda a: a, _unaligned):
                q = dict(p, x=layout(p["x"]), gy=layout(p["gy"]))
                for isa in isas:
                    old_isa = fc.set_isa(isa)
                    try:
                        assert_same(everything(q), exp)
                    finally:
                        fc.set_isa(old_isa)
