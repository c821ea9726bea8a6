"""Batch norm on every available backend, against PyTorch's ``F.batch_norm`` on the same data.

Layer shapes (``fastreg.bench.cases.BN_LAYOUTS``): NCHW (32, 64, 56, 56), channels-last
(32, 56, 56, 64) and (8192, 1024), each also small (``BN_QUICK_LAYOUTS``, id "small": the only
size of the NumPy reference and of ``--benchmark-disable`` runs). Ops: training forward, forward
+ backward, inference forward, the fused BN + ReLU and BN followed by a separate ReLU pass.

Bytes that must move (S = itemsize * elements): forward (train, inference, + ReLU) reads x and
writes y, 2 S; forward + backward also reads grad_y and x and writes grad_x, 5 S. See
fastreg.bench.cases for the calls and the byte counts, fastreg.bench.plugin for the GB/s report.

    pytest bench/bench_batchnorm.py --benchmark-only -k "nchw and full"

Run as a script, it prints issue 12's targets (each case's fastreg / torch ratio, interleaved in
one process, and the small case's kernels alone):

    python bench/bench_batchnorm.py [--backend c] [--rounds 15]

``--phases`` prints, for each large layout, the C kernels one phase at a time (statistics,
apply, the fused training forward; backward reduce, backward apply, the fused backward; the
channel layout's two-pass strategy), torch's matching phases (batch_norm_update_stats, the
inference forward, the training forward, native_batch_norm_backward) and STREAM-like torch
passes over arrays of the same size on the same threads (sum: read; copy_: read + write;
add(alpha=): two reads + a write), each with the bytes it must move and GB/s, interleaved:

    python bench/bench_batchnorm.py --phases [--rounds 9]
"""
import os

import pytest

import fastreg
from fastreg.bench import cases
from fastreg.bench.small import time_each

SIZES = ("small", "full")


def pytest_generate_tests(metafunc):
    # the conftest's hook parametrizes backend and dtype; this one the layout and size
    if "layout" in metafunc.fixturenames:
        metafunc.parametrize("layout", list(cases.BN_LAYOUTS))
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", SIZES)


def _skip_size(config, size):
    if size == "full" and config.getoption("benchmark_disable", False):
        pytest.skip("--benchmark-disable: the small shapes only")


@pytest.mark.parametrize("op", list(cases.BN_OPS))
def test_batch_norm(bandwidth_benchmark, request, threads, backend, dtype, layout, size, op):
    config = request.config
    _skip_size(config, size)
    quick = size == "small"
    why = cases.bn_unavailable(op, backend)
    if why is not None:
        pytest.skip(why)
    if backend == "numpy" and not quick:
        pytest.skip("the numpy reference is benchmarked on the small shapes only")
    timed = not config.getoption("benchmark_disable", False)
    peak = None
    if backend == "cuda" and timed:
        if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
            pytest.skip("NUMBA_ENABLE_CUDASIM=1: simulated CUDA timings mean nothing")
        peak = request.getfixturevalue("gpu_gb_per_s")
    try:
        fn = cases.bn_fastreg_call(op, backend, layout, dtype, quick=quick)
        fn()   # warm up: JIT compilation and first touch, never inside the timing
    except fastreg.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    shape, _ = cases.bn_shape(layout, quick)
    bandwidth_benchmark.group = f"{op} {dtype.__name__} {layout} {size}"
    bandwidth_benchmark(fn, nbytes=cases.bn_nbytes(op, shape, dtype), peak_gb_per_s=peak)


@pytest.mark.parametrize("op", list(cases.BN_OPS))
def test_torch_batch_norm(bandwidth_benchmark, request, threads, dtype, layout, size, op):
    """The peer (``cases.BN_TORCH_PEERS``), same data and threads."""
    _skip_size(request.config, size)
    pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")
    quick = size == "small"
    fn = cases.bn_torch_call(op, layout, dtype, quick=quick)
    fn()
    shape, _ = cases.bn_shape(layout, quick)
    bandwidth_benchmark.group = f"{op} {dtype.__name__} {layout} {size}"
    bandwidth_benchmark(fn, nbytes=cases.bn_nbytes(op, shape, dtype))


# --- the targets table (python bench/bench_batchnorm.py) -----------------------------------------

TARGET_CASES = [("nchw", "bn_train", 4.5), ("nchw", "bn_train_backward", 2.5),
                ("nchw", "bn_infer", 1.0), ("nhwc", "bn_train", 1.5),
                ("nhwc", "bn_train_backward", 1.2), ("nhwc", "bn_infer", 1.0),
                ("nc", "bn_train", 1.2), ("nc", "bn_train_backward", 1.5), ("nc", "bn_infer", 1.0),
                ("small", "bn_train", 1.0), ("small", "bn_infer", 1.0),
                ("small", "bn_train_backward", 1.0)]
SMALL_SHAPE = (64, 256)


def _small_calls(op, backend):
    """(fastreg call, torch call, kernel-only call or None) for the (64, 256) case: the same
    definitions as fastreg.bench.cases's (training forward, inference forward, or forward +
    backward with autograd)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fastreg.bench.cases import bn_arrays

    x, gy, w, b, rm, rv = bn_arrays(SMALL_SHAPE, 1)
    y, gx = np.empty_like(x), np.empty_like(x)
    xt, gyt, wt, bt, rmt, rvt = (torch.from_numpy(a.copy()) for a in (x, gy, w, b, rm, rv))
    kernel = None
    if op in ("bn_infer", "bn_train"):
        training = op == "bn_train"

        def call():
            return fastreg.batch_norm(x, rm, rv, w, b, training=training, out=y,
                                      backend=backend)[0]

        def peer():
            with torch.no_grad():
                return F.batch_norm(xt, rmt, rvt, wt, bt, training=training)
        if backend == "c":
            from fastreg.c import batchnorm as cb
            x3, y3 = x.reshape(*SMALL_SHAPE, 1), y.reshape(*SMALL_SHAPE, 1)
            C = SMALL_SHAPE[1]
            mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)

            def kernel():
                if training:
                    cb.bn_forward_train(x3, w, b, 1e-5, None, False, y3, mean, m2, inv)
                    cb.bn_running_update(mean, m2, SMALL_SHAPE[0], rm, rv, 0.1)
                else:
                    cb.bn_forward_infer(x3, rm, rv, w, b, 1e-5, None, False, y3, mean, inv)
    else:
        xg, wg, bg = (a.clone().requires_grad_(True) for a in (xt, wt, bt))

        def call():
            _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, out=y, backend=backend)
            return fastreg.batch_norm_backward(gy, x, saved, w, out=gx, backend=backend)[0]

        def peer():
            xg.grad = wg.grad = bg.grad = None
            F.batch_norm(xg, rmt, rvt, wg, bg, training=True).backward(gyt)
            return xg.grad
        if backend == "c":
            from fastreg.c import batchnorm as cb
            x3, y3, gy3, gx3 = (a.reshape(*SMALL_SHAPE, 1) for a in (x, y, gy, gx))
            C = SMALL_SHAPE[1]
            mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)
            gw, gb = np.empty(C, x.dtype), np.empty(C, x.dtype)

            def kernel():
                cb.bn_forward_train(x3, w, b, 1e-5, None, False, y3, mean, m2, inv)
                cb.bn_running_update(mean, m2, SMALL_SHAPE[0], rm, rv, 0.1)
                cb.bn_backward(gy3, x3, None, mean, inv, w, True, gx3, None, gw, gb)
    return call, peer, kernel


def targets_table(backend="c", rounds=15, small_rounds=2000):
    """Times every target case of issue 12 (batch norm): fastreg ``backend`` and torch's
    F.batch_norm (+ autograd) interleaved, same data, same process; prints min and median,
    the ratio of the minima (x torch), GB/s over the bytes that must move, and for the small
    case the kernels alone (fastreg.c.batchnorm, the public wrapper's share is the rest)."""
    import numpy as np
    import torch

    print(f"fastreg {backend} vs torch {torch.__version__}, float32, "
          f"{fastreg.get_num_threads()} fastreg threads, {torch.get_num_threads()} torch threads")
    print(f"{'case':32s} {'fastreg min/med':>17s} {'torch min/med':>17s} {'x torch':>8s} "
          f"{'GB/s':>6s} {'target':>7s}")
    for layout, op, target in TARGET_CASES:
        kernel = None
        if layout == "small":
            shape = SMALL_SHAPE
            f, g, kernel = _small_calls(op, backend)
            reps, inner, unit, scale = small_rounds, 1, "us", 1e6
        else:
            shape, _ = cases.bn_shape(layout)
            f = cases.bn_fastreg_call(op, backend, layout)
            g = cases.bn_torch_call(op, layout)
            reps, inner, unit, scale = rounds, 1, "ms", 1e3
        f(), g()
        tf, tg, tk = [], [], []
        for _ in range(reps):
            tf += time_each(f, inner)
            tg += time_each(g, inner)
            if kernel is not None:
                tk += time_each(kernel, inner)
        nbytes = cases.bn_nbytes(op, shape)
        ratio = min(tg) / min(tf)
        name = f"{layout} {shape} {op}"
        print(f"{name:32s} {min(tf) * scale:7.3f}/{np.median(tf) * scale:7.3f}{unit} "
              f"{min(tg) * scale:7.3f}/{np.median(tg) * scale:7.3f}{unit} {ratio:7.2f}x "
              f"{nbytes / min(tf) / 1e9:6.1f} {'>=' + str(target):>7s} "
              f"{'met' if ratio >= target else 'NOT met'}", flush=True)
        if tk:
            print(f"{'  kernels alone (c wrappers)':32s} {min(tk) * scale:7.3f}/"
                  f"{np.median(tk) * scale:7.3f}{unit}  -> public wrapper's share "
                  f"{(min(tf) - min(tk)) * scale:.1f} {unit} of {min(tf) * scale:.1f}")


def phases_table(rounds=9):
    """Times the C backend's batch-norm kernels phase by phase (fastreg.c.batchnorm, float32,
    the large layouts as (A, C, B)), torch's phases and STREAM-like torch passes of the same
    size, interleaved; prints min and median with GB/s over the bytes each must move (S = the
    bytes of one array). Where the time goes: a reduction near the read pass is bandwidth-bound,
    well below it compute-bound."""
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F

    from fastreg.c import batchnorm as cb

    print(f"phases: fastreg c vs torch {torch.__version__}, float32, "
          f"{fastreg.get_num_threads()} fastreg threads, {torch.get_num_threads()} torch threads, "
          f"{rounds} rounds")
    for layout in cases.BN_LAYOUTS:
        shape, axis = cases.bn_shape(layout)
        ax = axis % len(shape)
        A, C = int(np.prod(shape[:ax])), shape[ax]
        B = int(np.prod(shape[ax + 1:]))
        x, gy, w, b, rm, rv = cases.bn_arrays(shape, axis)
        x3, gy3 = x.reshape(A, C, B), gy.reshape(A, C, B)
        y3, gx3 = np.empty_like(x3), np.empty_like(x3)
        mean, m2, inv = np.empty(C), np.empty(C), np.empty(C)
        cb.bn_forward_train(x3, w, b, 1e-5, None, False, y3, mean, m2, inv)
        center, scale = mean.astype(np.float32), (w * inv).astype(np.float32)
        shift = b.copy()
        s_dy, s_dyx = np.empty(C), np.empty(C)
        cb.bn_backward_reduce(gy3, x3, None, mean, s_dy, s_dyx)
        ka, kb, kd = (np.empty(C, np.float32) for _ in range(3))
        cb.bn_backward_coeffs(s_dy, s_dyx, mean, inv, w, A * B, True, np.empty(C, np.float32),
                              ka, kb, kd, np.empty(C, np.float32), np.empty(C, np.float32))
        gw, gb = np.empty(C, np.float32), np.empty(C, np.float32)
        xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
        if ax == len(shape) - 1 and len(shape) > 2:   # channels-last, as cases.bn_torch_call
            order = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
            xt, gyt = xt.permute(order), gyt.permute(order)
        wt, bt, rmt, rvt = (torch.from_numpy(a.copy()) for a in (w, b, rm, rv))
        sm, sv = torch.batch_norm_update_stats(xt, rmt, rvt, 0.1)
        si = 1 / torch.sqrt(sv + 1e-5)
        flat_x, flat_gy = torch.from_numpy(x.reshape(-1)), torch.from_numpy(gy.reshape(-1))
        flat_y = torch.empty_like(flat_x)

        def strategy(name, fn):
            def call():
                old = cb.set_channel_strategy(name)
                try:
                    fn()
                finally:
                    cb.set_channel_strategy(old)
            return call

        fwd = lambda: cb.bn_forward_train(x3, w, b, 1e-5, None, False, y3, mean, m2, inv)  # noqa
        bwd = lambda: cb.bn_backward(gy3, x3, None, mean, inv, w, True, gx3, None, gw, gb)  # noqa
        # name -> (call, arrays moved: S each)
        calls = {
            "c stats (read x)": (lambda: cb.bn_stats(x3, mean, m2), 1),
            "c apply (read x, write y)": (
                lambda: cb.bn_apply(x3, center, scale, shift, None, False, y3), 2),
            "c forward train": (fwd, 2),
            "c backward reduce (read gy, x)": (
                lambda: cb.bn_backward_reduce(gy3, x3, None, mean, s_dy, s_dyx), 2),
            "c backward apply (read gy, x; write gx)": (
                lambda: cb.bn_backward_apply(gy3, x3, None, center, ka, kb, kd, gx3, None), 3),
            "c backward": (bwd, 3),
        }
        if B > 1:
            calls["c forward train, two passes"] = (strategy("two-pass", fwd), 2)
            calls["c backward, two passes"] = (strategy("two-pass", bwd), 3)
        calls.update({
            "torch batch_norm_update_stats": (
                lambda: torch.batch_norm_update_stats(xt, rmt, rvt, 0.1), 1),
            "torch inference forward": (
                lambda: F.batch_norm(xt, rmt, rvt, wt, bt, training=False), 2),
            "torch training forward": (
                lambda: F.batch_norm(xt, rmt, rvt, wt, bt, training=True), 2),
            "torch native_batch_norm_backward": (
                lambda: torch.ops.aten.native_batch_norm_backward(
                    gyt, xt, wt, rmt, rvt, sm, si, True, 1e-5, [True, True, True]), 3),
            "stream-like read (torch sum)": (lambda: flat_x.sum(), 1),
            "stream-like copy (torch copy_)": (lambda: flat_y.copy_(flat_x), 2),
            "stream-like triad (torch add)": (
                lambda: torch.add(flat_x, flat_gy, alpha=1.5, out=flat_y), 3),
        })
        for fn, _ in calls.values():
            fn()
        spent = {k: [] for k in calls}
        for _ in range(rounds):
            for k, (fn, _) in calls.items():
                t0 = time.perf_counter()
                fn()
                spent[k].append(time.perf_counter() - t0)
        S = x.nbytes
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{layout} {shape} as (A, C, B) = ({A}, {C}, {B}), S = {S / 1e6:.1f} MB, "
              f"load average {load:.2f}")
        for k, (_, m) in calls.items():
            t = np.array(spent[k])
            print(f"  {k:42s} {t.min() * 1e3:7.3f}/{np.median(t) * 1e3:7.3f} ms  {m} S  "
                  f"{m * S / t.min() / 1e9:5.1f}/{m * S / np.median(t) / 1e9:5.1f} GB/s",
                  flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="issue 12's batch-norm targets against torch")
    parser.add_argument("--backend", default="c")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the large cases")
    parser.add_argument("--small-rounds", type=int, default=2000)
    parser.add_argument("--phases", action="store_true",
                        help="the C kernels phase by phase, torch's phases, STREAM-like passes")
    args = parser.parse_args()
    if args.phases:
        phases_table(args.rounds)
    else:
        targets_table(args.backend, args.rounds, args.small_rounds)
