"""Backend "cpu" batch norm (fastreg/cpu/batchnorm.py): what is particular to the Numba kernels.

The general backend-vs-reference tests are in tests/test_batchnorm.py (non-finite input in
test_batchnorm_nonfinite.py). Here every strategy the plan can pick is reached with tiny inputs
by shrinking the module's limits: rows cut into several pieces (what rows longer than SEG =
32768 values get), several tasks per channel, fused and unfused channels, the columns regime with
several tasks and joined rows, streamed outputs (aligned or not), in place, serially and in
parallel. Each test asserts the plan that ran and compares every op with the reference within
test_batchnorm's tolerance table (the element-wise ops exactly); serial and parallel runs of one
plan give the same bits; a channel holding +-inf or NaN gets the reference's values; and each
compiled function has one specialization per dtype.
"""
import numpy as np
import pytest
from conftest import bits
from test_batchnorm import EPS, STATS_RTOL, TOL

import fastreg
from fastreg.reference import batchnorm as R

bn = pytest.importorskip("fastreg.cpu.batchnorm")
if fastreg.available_backends()["cpu"] is not None:
    pytest.skip(f"cpu backend unavailable: {fastreg.available_backends()['cpu']}",
                allow_module_level=True)

DTYPES = [np.float32, np.float64]
ROWS = dict(ROWS_MIN_B=8, SEG=16, TASK=32, LANES=4, CHUNK=8)  # B = 40: pieces of 14 values
# id -> (limits, (A, C, B), what the plan must be)
STRATEGIES = {
    "rows-fused": (ROWS, (3, 4, 40), dict(regime="rows", fused=True)),
    "rows-unfused": (dict(ROWS, FUSE_MAX_BYTES=0), (3, 4, 40), dict(regime="rows", fused=False)),
    # pieces of 20 values: one pass of the sums' loop (4 * LANES) and a tail, all LANES lanes
    "rows-lanes": (dict(ROWS, SEG=32), (3, 4, 40), dict(regime="rows", fused=True)),
    "cols-tasks": (dict(COL_TASK=60, SPAN=32), (37, 3, 5), dict(regime="cols", fused=False)),
    "cols-nc": (dict(COL_TASK=24, SPAN=16), (29, 6, 1), dict(regime="cols", fused=False)),
}
STREAM = dict(STREAM_MIN_BYTES=0, STREAM_MIN_ROW=0)


@pytest.fixture
def limits(monkeypatch):
    """limits(**values): set the module's limits for this test (and forget cached plans)."""
    def set_limits(**values):
        monkeypatch.setattr(bn, "_PLANS", {})
        for name, value in values.items():
            assert hasattr(bn, name), name
            monkeypatch.setattr(bn, name, value)
    return set_limits


@pytest.fixture(params=["serial", "parallel"])
def threads(request, monkeypatch):
    """Plans with 1 thread, or with 2 for any size (the grain set to 1 value)."""
    if request.param == "parallel":
        monkeypatch.setitem(fastreg._threads.GRAIN, "batchnorm", 1)
        with fastreg.threads(2):
            yield 2
    else:
        yield 1


def aligned(shape, dtype, offset=0):
    """An empty array starting ``offset`` elements after a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    buf = np.empty(n * itemsize + 128 + offset * itemsize, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset * itemsize
    return buf[start:start + n * itemsize].view(dtype).reshape(shape)


def problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A, C, B = shape
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    x.flat[::7] = 0  # exact zeros for the ReLU mask
    return dict(x=x, res=rng.standard_normal(shape).astype(dtype),
                gy=rng.standard_normal(shape).astype(dtype),
                w=rng.uniform(0.5, 1.5, C).astype(dtype), b=rng.standard_normal(C).astype(dtype))


def check(got, expected, k, dtype, scale, what):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    err = np.abs(got - expected)
    budget = k * EPS[dtype] * np.asarray(scale) + 1e-300
    assert np.all(err <= budget), f"{what}: max error {err.max():.3g} > {np.max(budget):.3g}"


def check_plan(ran, want, nthreads, mode):
    for field, value in want.items():
        assert getattr(ran, field) == value, (field, ran)
    assert ran.nthreads == nthreads and ran.mode == mode, ran


def run_forward(p, relu, residual, out, nthreads, want, mode):
    """bn_forward_train (and bn_stats) on out (may be x's copy, in place) vs the reference."""
    x = p["x"]
    A, C, B = x.shape
    dt = x.dtype.type
    r = p["res"] if residual else None
    if out is not None and mode == bn.IN_PLACE:
        out[...] = x
    mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)
    ran = bn.bn_forward_train(out if mode == bn.IN_PLACE else x, p["w"], p["b"], 1e-5, r, relu,
                              out, mean, m2, inv)
    check_plan(ran, want, nthreads, mode)
    ey, emean, em2, einv = np.empty_like(x), np.empty(C), np.empty(C), np.empty(C)
    R.bn_forward_train(x, p["w"], p["b"], 1e-5, r, relu, ey, emean, em2, einv)
    np.testing.assert_allclose(mean, emean, rtol=STATS_RTOL, atol=STATS_RTOL * np.abs(x).max())
    np.testing.assert_allclose(m2, em2, rtol=STATS_RTOL)
    np.testing.assert_allclose(inv, einv, rtol=STATS_RTOL)
    scale = np.abs(x).max() * np.abs(p["w"] * einv).max() + np.abs(p["b"]).max() + 1
    if r is not None:
        scale += np.abs(r).max()
    check(out, ey, TOL["y"], dt, scale, f"forward relu={relu} residual={residual}")
    # bn_apply with the reference's coefficients: exact
    ctr, sc, sh = (np.empty(C, x.dtype) for _ in range(3))
    R.bn_forward_coeffs(emean, em2, A * B, p["w"], p["b"], 1e-5, False, np.empty(C), np.empty(C),
                        ctr, sc, sh)
    R.bn_apply(x, ctr, sc, sh, r, relu, ey)
    if mode == bn.IN_PLACE:
        out[...] = x
    ran = bn.bn_apply(out if mode == bn.IN_PLACE else x, ctr, sc, sh, r, relu, out)
    check_plan(ran, dict(regime=want["regime"]), nthreads, mode)
    np.testing.assert_array_equal(out, ey)


def run_backward(p, masked, training, with_gres, gx, gres, nthreads, want, mode):
    """bn_backward (and bn_backward_reduce / _apply) vs the reference."""
    x, gy, w = p["x"], p["gy"], p["w"]
    A, C, B = x.shape
    dt = x.dtype.type
    mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)
    R.bn_forward_train(x, w, p["b"], 1e-5, None, False, np.empty_like(x), mean, m2, inv)
    y = np.maximum(x, 0) if masked else None
    gw, gb = np.empty(C, x.dtype), np.empty(C, x.dtype)
    if mode == bn.IN_PLACE:
        gx[...] = gy
    ran = bn.bn_backward(gx if mode == bn.IN_PLACE else gy, x, y, mean, inv, w, training, gx,
                         gres if with_gres else None, gw, gb)
    check_plan(ran, want, nthreads, mode)
    egx, egres, egw, egb = np.empty_like(x), np.empty_like(x), np.empty(C, x.dtype), \
        np.empty(C, x.dtype)
    R.bn_backward(gy, x, y, mean, inv, w, training, egx, egres, egw, egb)
    g = gy.astype(np.float64) if y is None else np.where(y > 0, gy.astype(np.float64), 0.0)
    xhat = (x - mean[None, :, None]) * inv[None, :, None]
    a = (w * inv)[None, :, None]
    S = np.abs(g) * np.abs(a) + (np.abs(x) + np.abs(mean[None, :, None])) * np.abs(
        a * inv[None, :, None] * egw[None, :, None] / (A * B)) + np.abs(a * egb[None, :, None]
                                                                          / (A * B))
    check(gx, egx, TOL["grad_x"], dt, S.max() + EPS[dt], f"grad_x training={training}")
    pscale = (np.abs(g) * (1 + np.abs(xhat))).sum(axis=(0, 2))
    check(gw, egw, TOL["grad_param"], dt, pscale, "grad_weight")
    check(gb, egb, TOL["grad_param"], dt, pscale, "grad_bias")
    if with_gres:
        np.testing.assert_array_equal(gres, egres)
    # the pieces: bn_backward_reduce, and bn_backward_apply with the reference's coefficients
    s_dy, s_dyx, e_dy, e_dyx = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    ran = bn.bn_backward_reduce(gy, x, y, mean, s_dy, s_dyx)
    assert ran.regime == want["regime"] and ran.nthreads == nthreads
    R.bn_backward_reduce(gy, x, y, mean, e_dy, e_dyx)
    check(s_dy, e_dy, TOL["grad_param"], dt, pscale, "s_dy")
    check(s_dyx, e_dyx, TOL["grad_param"], dt, pscale / inv, "s_dyx")
    ctr, ca, cb, cd = (np.empty(C, x.dtype) for _ in range(4))
    R.bn_backward_coeffs(e_dy, e_dyx, mean, inv, w, A * B, training, ctr, ca, cb, cd,
                         np.empty(C, x.dtype), np.empty(C, x.dtype))
    coefs = (ctr, ca, cb, cd) if training else (ctr, ca, None, None)
    R.bn_backward_apply(gy, x, y, *coefs, egx, egres)
    if mode == bn.IN_PLACE:
        gx[...] = gy
    ran = bn.bn_backward_apply(gx if mode == bn.IN_PLACE else gy, x, y, *coefs, gx,
                               gres if with_gres else None)
    assert ran.mode == mode
    np.testing.assert_array_equal(gx, egx)
    if with_gres:
        np.testing.assert_array_equal(gres, egres)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("mode", ["plain", "in-place", "stream", "stream-unaligned"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_matches_the_reference(limits, threads, strategy, mode, dtype):
    lim, shape, want = STRATEGIES[strategy]
    if mode.startswith("stream") and not bn.CAN_STREAM:
        pytest.skip("no streaming stores on this machine")
    limits(**lim, **(STREAM if mode.startswith("stream") else {}))
    p = problem(shape, dtype)
    offset = 1 if mode == "stream-unaligned" else 0
    expect = {"plain": bn.PLAIN, "in-place": bn.IN_PLACE}.get(mode, bn.STREAM)
    stats_plan = bn.bn_stats(p["x"], np.empty(shape[1]), np.empty(shape[1]))
    assert stats_plan.regime == want["regime"] and stats_plan.nthreads == threads
    for relu in (False, True):
        for residual in (False, True):
            run_forward(p, relu, residual, aligned(shape, dtype, offset), threads, want, expect)
    for masked in (False, True):
        for training in (True, False):
            for with_gres in (False, True):
                run_backward(p, masked, training, with_gres, aligned(shape, dtype, offset),
                             aligned(shape, dtype, offset), threads, want, expect)


def test_the_limits_reach_each_strategy(limits):
    """The shapes above really cut rows into pieces, use several tasks and join rows; with the
    shipped limits, rows longer than SEG are cut and 64 MiB outputs are streamed."""
    limits()
    plan = bn._plan((2, 3, 3 * bn.SEG + 5), 4)
    assert plan.regime == "rows" and plan.tile[4] == 4
    assert bn._plan((64, 64, 4096), 4).stream == bn.CAN_STREAM
    assert not bn._plan((64, 256, 1), 4).stream
    limits(**ROWS)
    plan = bn._plan((3, 4, 40), 4)
    A, C, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = plan.tile
    assert nb == 3 and seg == 14 and per_task == 2 and ntask == 5 and chunk == 8
    assert lanes == 2  # pieces shorter than 4 * LANES: half the lanes
    limits(**dict(ROWS, SEG=32))
    A, C, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = bn._plan((3, 4, 40), 4).tile
    assert seg == 20 and lanes == 4
    limits(COL_TASK=60, SPAN=32)
    plan = bn._plan((37, 3, 5), 4)
    A, C, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = plan.tile
    assert (A, C, B) == (1, 1, 37 * 15) and seg == 4 * 15 and ntask == 10 and lanes == 30
    assert (Cc, Bc, n) == (3, 5, 37 * 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_serial_and_parallel_give_the_same_bits(limits, strategy, dtype):
    lim, shape, want = STRATEGIES[strategy]
    limits(**lim)
    p = problem(shape, dtype, seed=3)
    x, gy, w, b, r = p["x"], p["gy"], p["w"], p["b"], p["res"]
    C = shape[1]
    results = []
    for nthreads in (1, 2):
        plan = bn._plan(shape, x.itemsize)._replace(nthreads=nthreads)
        assert plan.fused == want["fused"]
        out, stats = np.empty_like(x), [np.empty(C) for _ in range(5)]
        bn.bn_forward_train(x, w, b, 1e-5, r, True, out, *stats[:3], plan=plan)
        bn.bn_stats(x, *stats[3:], plan=plan)
        gx, gres, gw, gb = np.empty_like(x), np.empty_like(x), np.empty(C, x.dtype), \
            np.empty(C, x.dtype)
        bplan = bn._plan(shape, x.itemsize, 3)._replace(nthreads=nthreads)
        bn.bn_backward(gy, x, out, stats[0], stats[2], w, True, gx, gres, gw, gb, plan=bplan)
        results.append([out, gx, gres, gw, gb] + stats)
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint8), b_.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("values", [[np.inf], [-np.inf, 1.0], [np.nan], [np.inf, -np.inf]],
                         ids=["+inf", "-inf", "nan", "+inf-inf"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_non_finite_channel_gives_the_reference_values(limits, strategy, values, dtype):
    """A channel holding +-inf or NaN (also as its first value, the shift of its sums): mean +-inf
    or NaN, M2 NaN, as the reference defines them; the other channels are unaffected."""
    lim, shape, want = STRATEGIES[strategy]
    limits(**lim)
    p = problem(shape, dtype, seed=5)
    x, gy, w, b = p["x"], p["gy"], p["w"], p["b"]
    A, C, B = shape
    x[0, 1, 0] = values[0]
    x[-1, 1, -1] = values[-1]
    got = dict(y=np.empty_like(x), mean=np.empty(C), m2=np.empty(C), inv=np.empty(C))
    exp = {k: np.empty_like(v) for k, v in got.items()}
    with np.errstate(all="raise"):  # no floating-point warning from the backend's side
        ran = bn.bn_forward_train(x, w, b, 1e-5, None, False, got["y"], got["mean"], got["m2"],
                                  got["inv"])
    assert ran.fused == want["fused"]
    R.bn_forward_train(x, w, b, 1e-5, None, False, exp["y"], exp["mean"], exp["m2"], exp["inv"])
    gx, gw, gb = np.empty_like(x), np.empty(C, x.dtype), np.empty(C, x.dtype)
    egx, egw, egb = np.empty_like(x), np.empty(C, x.dtype), np.empty(C, x.dtype)
    bn.bn_backward(gy, x, None, got["mean"], got["inv"], w, True, gx, None, gw, gb)
    with np.errstate(invalid="ignore"):
        R.bn_backward(gy, x, None, exp["mean"], exp["inv"], w, True, egx, None, egw, egb)
    got.update(gx=gx, gw=gw, gb=gb)
    exp.update(gx=egx, gw=egw, gb=egb)
    s, e = np.empty(C), np.empty(C)
    bn.bn_stats(x, s, e)
    got.update(stats_mean=s, stats_m2=e)
    exp.update(stats_mean=exp["mean"], stats_m2=exp["m2"])
    assert np.isnan(got["m2"][1]) and not np.isfinite(got["mean"][1])
    for k in got:
        g, ex = np.asarray(got[k], np.float64), np.asarray(exp[k], np.float64)
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(g), test(ex), err_msg=f"{k}: {test.__name__}")
        fin = np.isfinite(ex)
        np.testing.assert_allclose(g[fin], ex[fin], rtol=1e-4 if dtype == np.float32 else 1e-9,
                                   atol=1e-4 if dtype == np.float32 else 1e-9, err_msg=k)


def test_one_specialization_per_dtype(limits):
    """Every compiled function of the module, after every op with every option on both dtypes
    and both regimes, serially and in parallel, holds at most one signature per dtype: optional
    arrays are flags, and no helper is called with a literal (which Numba compiles apart)."""
    import numba.core.dispatcher as nd

    limits(**ROWS)
    for dtype in DTYPES:
        for shape in ((3, 4, 40), (5, 3, 2)):
            p = problem(shape, dtype)
            x, w, b, gy = p["x"], p["w"], p["b"], p["gy"]
            C = shape[1]
            for nthreads in (1, 2):
                for fused in (False, True):
                    plan = bn._plan(shape, x.itemsize)._replace(nthreads=nthreads, fused=fused
                                                                and shape[2] >= 8)
                    for relu, r in ((False, None), (True, p["res"])):
                        out = np.empty_like(x)
                        stats = [np.empty(C) for _ in range(3)]
                        bn.bn_forward_train(x, w, b, 1e-5, r, relu, out, *stats, plan=plan)
                        bn.bn_apply(x, w, w, b, r, relu, out, plan=plan)
                        bn.bn_stats(x, *stats[:2], plan=plan)
                        for y, gres in ((None, None), (out, np.empty_like(x))):
                            gx = np.empty_like(x)
                            gw, gb = np.empty(C, x.dtype), np.empty(C, x.dtype)
                            bn.bn_backward(gy, x, y, stats[0], stats[2], w, True, gx, gres, gw,
                                           gb, plan=plan)
                            bn.bn_backward_reduce(gy, x, y, stats[0], *stats[1:], plan=plan)
                            bn.bn_backward_apply(gy, x, y, w, w, w, w, gx, gres, plan=plan)
                            bn.bn_backward_apply(gy, x, y, w, w, None, None, gx, gres, plan=plan)
    counts = {}
    for name, obj in vars(bn).items():
        for d in (obj, getattr(obj, "serial", None), getattr(obj, "parallel", None)):
            if isinstance(d, nd.Dispatcher) and d.signatures:
                counts[f"{name}.{d.py_func.__name__}"] = len(d.signatures)
    # (a function loaded from Numba's cache has its own signatures only, not its callees')
    more = {name: n for name, n in counts.items() if n > 2}
    assert not more, more
    # the stepped kernels: one compile per dtype serves the serial and the parallel runs
    for name in ("_forward_rows._forward_rows__nogil", "_forward_cols._forward_cols__nogil",
                 "_backward_rows._backward_rows__nogil", "_backward_cols._backward_cols__nogil"):
        assert counts[name] == 2, (name, counts)


def test_a_second_process_loads_the_kernels_from_the_cache(tmp_path):
    """A second process with the same Numba cache loads the batch-norm kernels of both regimes
    instead of compiling them (a kernel whose closure held a helper's dispatcher got a new cache
    key in each process: its uuid is random). bn_apply alone, a few seconds, in subprocesses."""
    import os
    import subprocess
    import sys
    code = """if True:
        import numpy as np
        import numba.core.dispatcher as nd
        from fastreg.cpu import batchnorm as bn
        for shape in ((2, 3, 40), (4, 3, 2)):  # the rows and the cols regime
            x, c = np.ones(shape, np.float32), np.ones(3, np.float32)
            bn.bn_apply(x, c, c, c, None, False, np.empty_like(x))
        kernels = [k.serial for k in bn._KERNELS.values() if k.serial.signatures]
        assert len(kernels) == 2, kernels
        print(sum(sum(k.stats.cache_misses.values()) for k in kernels))
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    misses = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        misses.append(int(proc.stdout.split()[-1]))
    assert misses == [2, 0], misses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_update_is_the_reference_bit_for_bit(dtype):
    """The Numba running update (a small call: no NumPy temporaries) gives the reference's
    bits, also for non-finite statistics and momentum 0 and 1."""
    from fastreg.cpu import batchnorm as cpu_bn
    from fastreg.reference import batchnorm as ref_bn
    rng = np.random.default_rng(5)
    C = 41
    mean, m2 = rng.standard_normal(C) * 3, rng.uniform(0, 5, C)
    mean[3], m2[4], mean[5] = np.inf, np.nan, np.nan
    for momentum in (0.1, 0.0, 1.0, 1 / 3):
        rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.1, 2, C).astype(dtype)
        got, exp = (rm.copy(), rv.copy()), (rm.copy(), rv.copy())
        cpu_bn.bn_running_update(mean, m2, 9, *got, momentum)
        ref_bn.bn_running_update(mean, m2, 9, *exp, momentum)
        for g, e in zip(got, exp):
            np.testing.assert_array_equal(g.view(np.uint8), e.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("strategy", ["rows-unfused", "cols-tasks", "cols-nc"])
def test_each_kernel_gives_the_full_kernels_bits(limits, threads, strategy, dtype):
    """bn_stats and bn_backward_reduce (the SUMS + FINISH kernels) and bn_apply and
    bn_backward_apply (the APPLY kernels) give the bits of the training ops (the kernels with
    every step), on the unfused plans (where both run SUMS): the kernels are one source."""
    lim, shape, want = STRATEGIES[strategy]
    limits(**lim)
    p = problem(shape, dtype, seed=7)
    x, gy, w, b, r = p["x"], p["gy"], p["w"], p["b"], p["res"]
    A, C, B = shape
    out, mean, m2, inv = np.empty_like(x), np.empty(C), np.empty(C), np.empty(C)
    assert not bn.bn_forward_train(x, w, b, 1e-5, r, True, out, mean, m2, inv).fused
    smean, sm2 = np.empty(C), np.empty(C)
    bn.bn_stats(x, smean, sm2)
    np.testing.assert_array_equal(smean.view(np.uint64), mean.view(np.uint64))
    np.testing.assert_array_equal(sm2.view(np.uint64), m2.view(np.uint64))
    ctr, sc, sh = (np.empty(C, dtype) for _ in range(3))
    R.bn_forward_coeffs(mean, m2, A * B, w, b, 1e-5, False, np.empty(C), np.empty(C), ctr, sc, sh)
    y = np.empty_like(x)
    bn.bn_apply(x, ctr, sc, sh, r, True, y)
    np.testing.assert_array_equal(y.view(np.uint8), out.view(np.uint8))
    gx, gres, gw, gb = np.empty_like(x), np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    bn.bn_backward(gy, x, out, mean, inv, w, True, gx, gres, gw, gb)
    s_dy, s_dyx = np.empty(C), np.empty(C)
    bn.bn_backward_reduce(gy, x, out, mean, s_dy, s_dyx)
    coefs = [np.empty(C, dtype) for _ in range(6)]
    R.bn_backward_coeffs(s_dy, s_dyx, mean, inv, w, A * B, True, *coefs)
    np.testing.assert_array_equal(coefs[4].view(np.uint8), gw.view(np.uint8))
    np.testing.assert_array_equal(coefs[5].view(np.uint8), gb.view(np.uint8))
    gx2, gres2 = np.empty_like(x), np.empty_like(x)
    bn.bn_backward_apply(gy, x, out, *coefs[:4], gx2, gres2)
    np.testing.assert_array_equal(gx2.view(np.uint8), gx.view(np.uint8))
    np.testing.assert_array_equal(gres2.view(np.uint8), gres.view(np.uint8))


def test_an_op_compiles_only_its_steps(tmp_path):
    """In a fresh process with an empty Numba cache, bn_stats compiles no element-wise loop and
    bn_apply no sum, and a shape of the rows regime nothing of the columns regime (Numba prunes
    the other steps' and regime's branches before typing: the compile-time budget of
    bench/compile_time.py). A few seconds of compiling, in a subprocess."""
    import os
    import subprocess
    import sys
    code = """if True:
        import numpy as np
        from fastreg.cpu import batchnorm as bn
        x = np.ones((2, 3, 40), np.float32)
        assert bn._plan(x.shape, 4).regime == "rows"
        bn.bn_stats(x, np.empty(3), np.empty(3))
        assert not bn._affine_rows.signatures and not bn._gback_rows.signatures, \
            "stats compiled APPLY"
        assert bn._x_sums.signatures and not bn._g_sums.signatures
        x, c = x.astype(np.float64), np.ones(3)  # another dtype: another compile
        bn.bn_apply(x, c, c, c, None, False, np.empty_like(x))
        assert len(bn._x_sums.signatures) == 1, "apply compiled SUMS"
        assert bn._affine_rows.signatures and not bn._g_sums.signatures
        assert not bn._affine_cols.signatures, "the rows regime compiled the columns regime's"
        print("OK")
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_coeffs_give_the_reference_bits(dtype):
    """bn_forward_coeffs (one compiled loop) gives the reference's bits: statistics of float64
    or of the dtype, folded (inference) or not, with and without weight and bias, saved_mean
    the mean array itself; other dtypes and mismatched sizes take the reference (which raises
    for the latter: no compiled loop reads past an array)."""
    rng = np.random.default_rng(11)
    C = 37
    for stats in (np.float64, dtype):
        for fold in (True, False):
            for affine in (True, False):
                mean = (rng.standard_normal(C) * 100).astype(stats)
                m2 = rng.uniform(0, 3, C).astype(stats)
                m2[0] = 0.0
                w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
                b = rng.standard_normal(C).astype(dtype) if affine else None
                got, expected = [], []
                for fn, res in ((bn.bn_forward_coeffs, got), (R.bn_forward_coeffs, expected)):
                    res += [np.empty(C), np.empty(C)] + [np.empty(C, dtype) for _ in range(3)]
                    fn(mean, m2, 7, w, b, 1e-5, fold, *res)
                for g, e in zip(got, expected):
                    np.testing.assert_array_equal(bits(g), bits(e))
    # saved_mean is the mean array itself (read before it is written)
    mean, m2 = rng.standard_normal(C), rng.uniform(0, 3, C)
    got = [mean.copy(), np.empty(C)] + [np.empty(C, dtype) for _ in range(3)]
    expected = [np.empty(C), np.empty(C)] + [np.empty(C, dtype) for _ in range(3)]
    bn.bn_forward_coeffs(got[0], m2, 5, None, None, 1e-3, True, *got)
    R.bn_forward_coeffs(mean, m2, 5, None, None, 1e-3, True, *expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(bits(g), bits(e))
    # float16 coefficients: the reference
    got = [np.empty(C), np.empty(C)] + [np.empty(C, np.float16) for _ in range(3)]
    expected = [np.empty(C), np.empty(C)] + [np.empty(C, np.float16) for _ in range(3)]
    bn.bn_forward_coeffs(mean, m2, 5, None, None, 1e-3, True, *got)
    R.bn_forward_coeffs(mean, m2, 5, None, None, 1e-3, True, *expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(bits(g), bits(e))
    # statistics longer than the outputs: the reference, which refuses the shapes
    with pytest.raises(ValueError):
        bn.bn_forward_coeffs(np.zeros(C + 1), np.ones(C + 1), 5, None, None, 1e-3, True,
                             np.empty(C), np.empty(C), *[np.empty(C, dtype) for _ in range(3)])
