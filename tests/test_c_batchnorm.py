"""Backend "c" batch norm (csrc/batchnorm.c): what is particular to the C kernels.

The general backend-vs-reference tests are in tests/test_batchnorm.py. Here: the AVX-512, AVX2
and portable loops give the same bits (they do the same IEEE operations in the same order, no
fused multiply-add), so do the three streaming-store modes, in place or not, and any number of
threads (partial sums over fixed parts of the data, added in a fixed order; the threads come
from fastreg._threads.plan, whose grain the thread test shrinks so that tiny shapes run in
parallel); every work split of the kernels is reached (channel layout fused per channel, in two
passes, with rows cut into pieces; row layout with one and several column blocks and row
chunks, B > 1), which one is asserted through ``plan_info``, and each is held to the reference;
the per-channel C ops give the reference's bits.

Test ids start with "c-" so that .ci/c_sanitize.sh selects them.
"""
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastreg.c as fc
import fastreg.c.batchnorm  # noqa: F401  (fc.batchnorm)
from fastreg.reference import batchnorm as R

if fc.unavailable_reason() is not None:
    pytest.skip(f"C backend unavailable: {fc.unavailable_reason()}", allow_module_level=True)

FLOATS = [np.float32, np.float64]
# (A, C, B): channel layout fused per channel (C even; C = 3, odd and few), a row longer than one
# piece (B > 16384), channels too large to fuse (two passes: one row per chunk; several rows per
# chunk; pieces of rows; fused statistics but a two-pass backward), row layout (B = 1, B = 3) with
# one and with several column blocks and row chunks, and tiny ones
SHAPES = [(8, 16, 300), (5, 3, 2900), (1, 2, 40001), (40, 2, 4000), (200, 2, 700),
          (1, 3, 140001), (32, 3, 3000), (3, 1, 17), (700, 48, 1), (23, 1500, 3), (3, 4097, 1),
          (2, 3, 1), (1, 1, 1)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def bits(a):
    a = np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


# data means: near 0 compared with the spread (unshifted sums) and far from it (shifted sums)
LOCS = [0.5, 300.0]


def problem(shape, dtype, seed=0, loc=0.5):
    rng = np.random.default_rng(seed)
    A, C, B = shape
    x = (rng.standard_normal(shape) * 2 + loc).astype(dtype)
    x.flat[::97] = 0  # some exact zeros for the ReLU mask
    return dict(
        x=x, gy=rng.standard_normal(shape).astype(dtype), res=rng.standard_normal(shape).astype(dtype),
        w=rng.uniform(0.5, 1.5, C).astype(dtype), b=rng.standard_normal(C).astype(dtype))


def run_all(p):
    """Every op of the C backend on problem p: a dict of result arrays."""
    x, gy, res, w, b = p["x"], p["gy"], p["res"], p["w"], p["b"]
    A, C, B = x.shape
    dt = x.dtype
    out = {}
    mean, m2 = np.empty(C), np.empty(C)
    fc.bn_stats(x, mean, m2)
    out["mean"], out["m2"] = mean, m2
    for relu in (False, True):
        for r in (None, res):
            tag = f"{relu}-{r is not None}"
            y, mu, q, inv = np.empty_like(x), np.empty(C), np.empty(C), np.empty(C)
            fc.bn_forward_train(x, w, b, 1e-5, r, relu, y, mu, q, inv)
            out["y" + tag], out["inv" + tag] = y, inv
            ctr, sc, sh = (np.empty(C, dt) for _ in range(3))
            fc.bn_forward_coeffs(mu, q / (A * B), 1, w, b, 1e-5, True, np.empty(C), np.empty(C),
                                 ctr, sc, sh)
            o = np.empty_like(x)
            fc.bn_apply(x, ctr, sc, sh, r, relu, o)
            out["apply" + tag] = o
    y = np.maximum(out["yFalse-False"], 0)
    inv = out["invFalse-False"]
    for mask in (None, y):
        for training in (True, False):
            tag = f"{mask is not None}-{training}"
            gx, gres = np.empty_like(x), np.empty_like(x)
            gw, gb = np.empty(C, dt), np.empty(C, dt)
            fc.bn_backward(gy, x, mask, mean, inv, w, training, gx, gres, gw, gb)
            out["gx" + tag], out["gres" + tag], out["gw" + tag], out["gb" + tag] = gx, gres, gw, gb
            s_dy, s_dyx = np.empty(C), np.empty(C)
            fc.bn_backward_reduce(gy, x, mask, mean, s_dy, s_dyx)
            out["sdy" + tag], out["sdyx" + tag] = s_dy, s_dyx
            ctr, a, bb, d = (np.empty(C, dt) for _ in range(4))
            fc.bn_backward_coeffs(s_dy, s_dyx, mean, inv, w, A * B, True, ctr, a, bb, d,
                                  np.empty(C, dt), np.empty(C, dt))
            g2 = np.empty_like(x)
            fc.bn_backward_apply(gy, x, mask, ctr, a, bb if training else None,
                                 d if training else None, g2, None)
            out["gapply" + tag] = g2
    return out


def assert_same_bits(got, expected, what):
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(bits(got[k]), bits(expected[k]), err_msg=f"{what}: {k}")


@pytest.mark.parametrize("loc", LOCS, ids=["mean-0.5", "mean-300"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_isas_give_the_same_bits(shape, dtype, loc):
    p = problem(shape, dtype, loc=loc)
    results = {}
    previous = fc.isa()
    try:
        for name in ("avx512", "avx2", "portable"):
            if (name == "avx512" and not fc.has_avx512()) or (name == "avx2" and not fc.has_avx2()):
                continue
            fc.set_isa(name)
            results[name] = run_all(p)
    finally:
        fc.set_isa(previous)
    ref = results.pop("portable")
    for name, got in results.items():
        assert_same_bits(got, ref, f"{name} vs portable")


@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
@pytest.mark.parametrize("shape", [(8, 16, 300), (5, 3, 2900), (700, 48, 1), (23, 1500, 3)],
                         ids=["8x16x300", "5x3x2900", "700x48x1", "23x1500x3"])
def test_streaming_modes_and_in_place_give_the_same_bits(shape, dtype, stream_stores):
    p = problem(shape, dtype, seed=1)
    x, gy, w, b = p["x"], p["gy"], p["w"], p["b"]
    C = x.shape[1]
    previous = fc.set_stream_stores("never")
    try:
        ref = run_all(p)
    finally:
        fc.set_stream_stores(previous)
    got = run_all(p)  # in the fixture's mode
    assert_same_bits(got, ref, stream_stores)
    # in place: out is x, gx is gy
    xi = x.copy()
    fc.bn_forward_train(xi, w, b, 1e-5, None, True, xi, np.empty(C), np.empty(C), np.empty(C))
    np.testing.assert_array_equal(bits(xi), bits(ref["yTrue-False"]))
    gi = gy.copy()
    fc.bn_backward(gi, x, None, ref["mean"], ref["invFalse-False"], w, True, gi, None,
                   np.empty(C, x.dtype), np.empty(C, x.dtype))
    np.testing.assert_array_equal(bits(gi), bits(ref["gxFalse-True"]))


def test_the_plan_reaches_every_work_split():
    """The shapes above reach every strategy of the kernels (their plan, from the shape only)."""
    plans = {(s, n): fc.batchnorm.plan_info(s, np.float32, n) for s in SHAPES for n in (1, 2, 3)}
    seen = set()
    for (shape, nred), p in plans.items():
        if p["layout"] == "channels":
            seen.add(("fused" if p["fused"] else "two passes", "pieces" if p["pieces"] > 1
                      else "rows" if p["rows_per_chunk"] > 1 else "one row"))
            seen.add(("channel chunks > 1", p["chunks"] > 1))
        else:
            seen.add(("column blocks > 1", p["column_blocks"] > 1))
            seen.add(("row chunks > 1", p["chunks"] > 1))
            seen.add(("rows not a multiple of 4", p["rows_per_chunk"] % 4 != 0))
            seen.add(("B > 1", shape[2] > 1))
    for want in [("fused", "rows"), ("fused", "one row"), ("fused", "pieces"),
                 ("two passes", "rows"), ("two passes", "one row"), ("two passes", "pieces"), ("channel chunks > 1", True),
                 ("column blocks > 1", True), ("column blocks > 1", False),
                 ("row chunks > 1", True), ("rows not a multiple of 4", True), ("B > 1", True)]:
        assert want in seen, want
    # the statistics of (32, 3, 3000) are fused, its backward (x and grad_y) is not
    assert plans[((32, 3, 3000), 1)]["fused"] and not plans[((32, 3, 3000), 2)]["fused"]


_CHILD = r"""
import hashlib, sys, json, numpy as np
sys.path.insert(0, {root!r})
import fastreg, fastreg._threads
import fastreg.c as fc
import test_c_batchnorm as t
fastreg._threads.GRAIN["batchnorm"] = 1   # tiny shapes run on {n} threads too
fastreg.set_num_threads({n})
regions = fc.parallel_regions()
out = {{}}
for i, shape in enumerate(t.SHAPES):
    for dt in t.FLOATS:
        for strategy in ("auto", "shared", "two-pass"):
            fc.batchnorm.set_channel_strategy(strategy)
            r = t.run_all(t.problem(shape, dt, seed=2, loc=t.LOCS[i % 2]))
            out[f"{{i}}-{{np.dtype(dt).name}}-{{strategy}}"] = {{
                k: hashlib.sha256(t.bits(v).tobytes()).hexdigest() for k, v in r.items()}}
fc.batchnorm.set_channel_strategy("auto")
out["parallel regions"] = fc.parallel_regions() - regions
json.dump(out, sys.stdout)
"""


@functools.lru_cache(maxsize=None)
def _child_results(n):
    """_CHILD's results with n OpenMP threads (the 2-thread run is shared by both cases)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, OMP_NUM_THREADS=str(n))
    env.pop("FASTREG_NUM_THREADS", None)
    # cwd=tests/: "-c" puts the cwd first on sys.path, and the checkout's fastreg/ has no
    # compiled extension when the suite runs against an installed fastreg
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(root=here, n=n)], env=env,
                          capture_output=True, text=True, check=True, cwd=here)
    return json.dumps(json.loads(proc.stdout))


@pytest.mark.parametrize("threads", [1, 3], ids=["c-1", "c-3"])
def test_results_do_not_depend_on_the_thread_count(threads):
    got, expected = json.loads(_child_results(threads)), json.loads(_child_results(2))
    assert expected.pop("parallel regions") > 0
    regions = got.pop("parallel regions")
    assert regions == 0 if threads == 1 else regions > 0
    assert got == expected


@pytest.mark.parametrize("threads", [1, 2], ids=["c-1", "c-2"])
def test_channel_strategies_give_the_same_bits(threads, monkeypatch):
    """Whole channels per thread, threads sharing each channel and two passes: the same bits
    (the partials are the same chunks, combined in the same order)."""
    import fastreg
    import fastreg._threads
    monkeypatch.setitem(fastreg._threads.GRAIN, "batchnorm", 1)
    for shape in [(8, 16, 300), (5, 3, 2900), (40, 2, 4000), (200, 2, 700), (1, 3, 140001)]:
        for dtype, loc in ((np.float32, 0.5), (np.float64, 300.0)):
            p = problem(shape, dtype, seed=5, loc=loc)
            results = {}
            with fastreg.threads(threads):
                for name in ("whole", "shared", "two-pass", "auto"):
                    previous = fc.batchnorm.set_channel_strategy(name)
                    try:
                        results[name] = run_all(p)
                    finally:
                        fc.batchnorm.set_channel_strategy(previous)
            for name in ("whole", "shared", "two-pass"):
                assert_same_bits(results[name], results["auto"], f"{shape} {name}")
    with pytest.raises(ValueError, match="strategy must be one of"):
        fc.batchnorm.set_channel_strategy("fast")


def test_small_inputs_enter_no_parallel_region():
    p = problem((64, 256, 1), np.float32)
    before = fc.parallel_regions()
    run_all(p)
    assert fc.parallel_regions() == before


@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
def test_per_channel_ops_give_the_reference_bits(dtype):
    rng = np.random.default_rng(7)
    C = 37
    for stats in (np.float64, dtype):
        for fold in (True, False):
            for affine in (True, False):
                mean = rng.standard_normal(C).astype(stats)
                m2 = rng.uniform(0, 3, C).astype(stats)
                w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
                b = rng.standard_normal(C).astype(dtype) if affine else None
                got, expected = [], []
                for mod, res in ((fc.batchnorm, got), (R, expected)):
                    res += [np.empty(C), np.empty(C)] + [np.empty(C, dtype) for _ in range(3)]
                    mod.bn_forward_coeffs(mean, m2, 7, w, b, 1e-5, fold, *res)
                for g, e in zip(got, expected):
                    np.testing.assert_array_equal(bits(g), bits(e))
    mean, m2 = rng.standard_normal(C), rng.uniform(0, 3, C)
    r0 = [rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)]
    for which in ((0, 1), (0,), (1,)):
        got, expected = ([a.copy() if i in which else None for i, a in enumerate(r0)]
                         for _ in range(2))
        fc.batchnorm.bn_running_update(mean, m2, 9, *got, 0.1)
        R.bn_running_update(mean, m2, 9, *expected, 0.1)
        for g, e in zip(got, expected):
            if e is not None:
                np.testing.assert_array_equal(bits(g), bits(e))


@pytest.mark.parametrize("loc", LOCS, ids=["mean-0.5", "mean-300"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_every_work_split_matches_the_reference(shape, dtype, loc):
    p = problem(shape, dtype, seed=3, loc=loc)
    x, gy, res, w, b = p["x"], p["gy"], p["res"], p["w"], p["b"]
    A, C, B = x.shape
    eps = np.finfo(dtype).eps
    mean, m2, emean, em2 = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    fc.bn_stats(x, mean, m2)
    R.bn_stats(x, emean, em2)
    xmax = float(np.abs(x).max())
    np.testing.assert_allclose(mean, emean, rtol=1e-12, atol=1e-12 * xmax)
    np.testing.assert_allclose(m2, em2, rtol=1e-9, atol=1e-9 * A * B * xmax ** 2 * eps)
    y, inv = np.empty_like(x), np.empty(C)
    ey, einv = np.empty_like(x), np.empty(C)
    fc.bn_forward_train(x, w, b, 1e-5, res, True, y, np.empty(C), np.empty(C), inv)
    R.bn_forward_train(x, w, b, 1e-5, res, True, ey, np.empty(C), np.empty(C), einv)
    np.testing.assert_allclose(inv, einv, rtol=1e-9)
    scale = xmax * np.abs(w * einv).max() + np.abs(b).max() + np.abs(res).max()
    np.testing.assert_allclose(y, ey, rtol=0, atol=8 * eps * scale)
    gx, gw, gb = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    egx, egw, egb = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    fc.bn_backward(gy, x, ey, emean, einv, w, True, gx, None, gw, gb)
    R.bn_backward(gy, x, ey, emean, einv, w, True, egx, None, egw, egb)
    gsum = np.abs(gy.astype(np.float64)).sum(axis=(0, 2)).max()
    pscale = gsum * (1 + 2 * xmax * einv.max())
    np.testing.assert_allclose(gw, egw, rtol=0, atol=16 * eps * pscale)
    np.testing.assert_allclose(gb, egb, rtol=0, atol=16 * eps * pscale)
    a = np.abs(w * einv).max()
    gscale = a * np.abs(gy).max() + 2 * xmax * a * einv.max() ** 2 * pscale / (A * B) + a * gsum / (A * B)
    np.testing.assert_allclose(gx, egx, rtol=0, atol=32 * eps * gscale)


@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
def test_unaligned_arrays_go_through_copies(dtype):
    shape = (4, 3, 50)
    p = problem(shape, dtype, seed=4)
    n = int(np.prod(shape))
    isz = np.dtype(dtype).itemsize

    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(dtype).reshape(a.shape)
        u[...] = a
        assert not u.flags.aligned
        return u

    x = unaligned(p["x"])
    out = unaligned(np.zeros(shape, dtype))
    C = shape[1]
    fc.bn_forward_train(x, p["w"], p["b"], 1e-5, None, False, out, np.empty(C), np.empty(C),
                        np.empty(C))
    expected = np.empty(shape, dtype)
    fc.bn_forward_train(p["x"], p["w"], p["b"], 1e-5, None, False, expected, np.empty(C),
                        np.empty(C), np.empty(C))
    np.testing.assert_array_equal(bits(out), bits(expected))
    # in place on an unaligned array
    fc.bn_forward_train(x, p["w"], p["b"], 1e-5, None, False, x, np.empty(C), np.empty(C),
                        np.empty(C))
    np.testing.assert_array_equal(bits(x), bits(expected))
    assert n * isz == x.nbytes
    # backward and the per-channel ops, unaligned outputs included
    mean, inv = np.empty(C), np.empty(C)
    fc.bn_forward_train(p["x"], p["w"], p["b"], 1e-5, None, False, np.empty(shape, dtype), mean,
                        np.empty(C), inv)
    gx, gw = unaligned(np.zeros(shape, dtype)), unaligned(np.zeros(C, dtype))
    egx, egw, egb = np.empty(shape, dtype), np.empty(C, dtype), np.empty(C, dtype)
    fc.bn_backward(unaligned(p["gy"]), p["x"], None, mean, inv, p["w"], True, gx, None, gw,
                   np.empty(C, dtype))
    fc.bn_backward(p["gy"], p["x"], None, mean, inv, p["w"], True, egx, None, egw, egb)
    np.testing.assert_array_equal(bits(gx), bits(egx))
    np.testing.assert_array_equal(bits(gw), bits(egw))
    rm, erm = unaligned(np.ones(C, dtype)), np.ones(C, dtype)
    fc.bn_running_update(mean, inv, 7, rm, None, 0.25)
    fc.bn_running_update(mean, inv, 7, erm, None, 0.25)
    np.testing.assert_array_equal(bits(rm), bits(erm))


@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
@pytest.mark.parametrize("shape", [(4, 3, 50), (64, 5, 1), (0, 3, 2)])
def test_forward_train_running_is_the_two_ops(dtype, shape):
    """bn_forward_train_running (one C call) gives bn_forward_train's then
    bn_running_update's bits, also through copies of unaligned arrays; an empty batch leaves
    the running statistics alone."""
    p = problem(shape, dtype, seed=6) if shape[0] else None
    C = shape[1]
    x = p["x"] if p else np.zeros(shape, dtype)
    w, b = (p["w"], p["b"]) if p else (np.ones(C, dtype), np.zeros(C, dtype))
    rng = np.random.default_rng(2)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)

    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(dtype).reshape(a.shape)
        u[...] = a
        return u

    exp = [np.zeros(shape, dtype), np.zeros(C), np.zeros(C), np.zeros(C), rm0.copy(), rv0.copy()]
    fc.bn_forward_train(x, w, b, 1e-5, None, True, *exp[:4])
    if x.size:
        fc.bn_running_update(exp[1], exp[2], shape[0] * shape[2], exp[4], exp[5], 0.3)
    for wrap in (lambda a: a, unaligned):
        got = [wrap(np.zeros(shape, dtype)), np.zeros(C), np.zeros(C), np.zeros(C),
               wrap(rm0.copy()), wrap(rv0.copy())]
        fc.bn_forward_train_running(wrap(x), w, b, 1e-5, None, True, *got[:4], got[4], got[5],
                                    0.3)
        for g, e in zip(got, exp):
            np.testing.assert_array_equal(bits(np.ascontiguousarray(g)), bits(e))


@pytest.mark.parametrize("dtype", FLOATS, ids=["c-float32", "c-float64"])
@pytest.mark.parametrize("shape", [(4, 3, 50), (64, 5, 1), (0, 3, 2), (2, 1, 3)])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("tail", ["plain", "residual-relu"])
def test_forward_infer_is_the_two_ops(dtype, shape, affine, tail):
    """bn_forward_infer (one C call) gives bn_forward_coeffs's (from the running statistics,
    folded) then bn_apply's bits, saved statistics included, also through copies of unaligned
    arrays; weight and bias may be None."""
    C = shape[1]
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = (rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)) \
        if affine else (None, None)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype) if tail != "plain" else None
    relu = tail != "plain"
    ce, sc, sh = np.empty(C, dtype), np.empty(C, dtype), np.empty(C, dtype)
    exp = [np.full(shape, np.nan, dtype), np.zeros(C), np.zeros(C)]
    fc.bn_forward_coeffs(rm, rv, 1, w, b, 1e-3, True, exp[1], exp[2], ce, sc, sh)
    fc.bn_apply(x, ce, sc, sh, res, relu, exp[0])

    def unaligned(a):
        if a is None:
            return None
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(dtype).reshape(a.shape)
        u[...] = a
        return u

    for wrap in (lambda a: a, unaligned):
        got = [wrap(np.full(shape, np.nan, dtype)), np.zeros(C), np.zeros(C)]
        fc.bn_forward_infer(wrap(x), wrap(rm), wrap(rv), wrap(w) if affine else None,
                            wrap(b) if affine else None, 1e-3, wrap(res) if relu else None, relu,
                            *got)
        for g, e in zip(got, exp):
            np.testing.assert_array_equal(bits(np.ascontiguousarray(g)), bits(e))


@pytest.mark.parametrize("stream", ["never", "always"])
@pytest.mark.parametrize("shape", [(3, 2, 300), (40, 24, 1), (2, 3, 5)],
                         ids=["channels", "rows", "tiny"])
def test_apply_loops_give_the_same_bits_at_every_output_offset(shape, stream):
    """The forward and backward apply loops take the elements before the output's first
    64-byte boundary separately (the vector stores then aligned): every offset of the outputs
    within a cache line gives the bits of a 64-byte aligned output, with and without streaming
    stores, residual and ReLU included."""
    dtype = np.float32
    p = problem(shape, dtype, seed=4)
    A, C, B = shape
    n = A * C * B
    rng = np.random.default_rng(9)
    ce, sc, sh = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    a, bb, d = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    y_relu = np.maximum(p["x"], 0)

    def at(offset):
        buf = np.full(n + 32, np.nan, dtype)
        start = ((64 - buf.ctypes.data % 64) % 64 + offset) // 4
        return buf[start:start + n].reshape(shape)

    def run(offset):
        y, gx, gres = at(offset), at(offset), at(offset)
        fc.bn_apply(p["x"], ce, sc, sh, p["res"], True, y)
        fc.bn_backward_apply(p["gy"], p["x"], y_relu, ce, a, bb, d, gx, gres)
        return y.copy(), gx.copy(), gres.copy()

    previous = fc.set_stream_stores(stream)
    try:
        expected = run(0)
        for offset in range(4, 64, 4):
            for g, e in zip(run(offset), expected):
                np.testing.assert_array_equal(bits(g), bits(e))
    finally:
        fc.set_stream_stores(previous)


@pytest.mark.parametrize("dtype", [np.float32], ids=["c-float32"])
def test_status_codes(dtype):
    lib, ffi = fc.lib, fc.ffi
    x = np.ones((2, 3, 4), dtype)
    px = ffi.from_buffer("float[]", x)
    m = np.empty(3)
    pm = ffi.from_buffer("double[]", m)
    assert lib.fr_bn_stats_f32(px, pm, pm, -1, 3, 4) == lib.FR_ERR_SIZE
    assert lib.fr_bn_stats_f32(ffi.NULL, pm, pm, 2, 3, 4) == lib.FR_ERR_NULL
    assert lib.fr_bn_stats_f32(px, pm, pm, 0, 3, 4) == lib.FR_OK
