"""Weight EMA and gradient clipping on 1e7 float32 parameters, fastreg against PyTorch on the same
arrays in the same run: ``fastreg.ema_update`` against ``torch._foreach_lerp_`` (what timm's
ModelEmaV3 calls), ``fastreg.clip_grad_norm`` against ``torch.nn.utils.clip_grad_norm_``, and
``fastreg.grad_norm`` against ``torch.nn.utils.get_total_norm``; in the interleaved mode also
``fastreg.torch.clip_grad_norm_`` on torch parameters (a view of each gradient per call) and
``AdamW(max_grad_norm=1.0).step`` against ``clip_grad_norm_`` + torch's fused AdamW step.

Layouts: "one" (a single array of 1e7) and "model" (1e7 split over 161 arrays of a ResNet-50-like
size mix, many of them small: per-array overhead and threading of small arrays count there).

Bytes that must move per element: EMA reads ema and p and writes ema (``3 * itemsize``); clipping
reads g for the norm, then reads and writes it to scale (``3``); the norm alone reads g
(``1``). The clip cases use ``max_norm=0`` so that every round scales (by 0 after the first:
zeros cost what other numbers cost), in both libraries.

    pytest bench/bench_ema_clip.py --benchmark-only
    python bench/bench_ema_clip.py [--reps 30]     interleaved fastreg / torch rounds, min and
                                                   median per call (the figures of the report)
        [--cases ema,clip] [--layouts model] [--backends c] [--stream]
                                                   some cases only; --stream adds STREAM-like
                                                   copy / triad figures (the bandwidth bound)
"""
import argparse
import os

import numpy as np
import pytest

import fastreg
from fastreg.bench.small import time_each

N = 10 ** 7
SMOKE = 1 << 12


def layout_sizes(layout, n):
    """Array sizes summing to n: one array, or 161 arrays of a ResNet-50-like mix."""
    if layout == "one":
        return [n]
    rng = np.random.default_rng(0)
    raw = np.exp(rng.uniform(np.log(64), np.log(2.5e6), 161))
    sizes = np.maximum(1, (raw / raw.sum() * n).astype(np.int64))
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return [int(s) for s in sizes]


def arrays(layout, n, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in layout_sizes(layout, n)]


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")


def _size(request):
    return SMOKE if request.config.getoption("benchmark_disable", False) else N


def _skip_backend(backend, n):
    reason = fastreg.available_backends()[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")
    if backend == "cuda":
        pytest.skip("host arrays: the CUDA backend would copy them to the device each call")
    if backend == "numpy" and n > 1 << 20:
        pytest.skip("the numpy reference is only smoke-tested here")


@pytest.mark.parametrize("layout", ["one", "model"])
def test_ema_update(bandwidth_benchmark, request, threads, backend, layout):
    n = _size(request)
    _skip_backend(backend, n)
    ema, p = arrays(layout, n, 1), arrays(layout, n, 2)

    def fn():
        fastreg.ema_update(ema, p, 0.9998, backend=backend)
    fn()
    bandwidth_benchmark.group = f"ema {layout} {n}"
    bandwidth_benchmark(fn, nbytes=3 * 4 * n)


@pytest.mark.parametrize("layout", ["one", "model"])
def test_torch_foreach_lerp(bandwidth_benchmark, request, threads, layout):
    torch = _torch()
    n = _size(request)
    ema = [torch.from_numpy(a) for a in arrays(layout, n, 1)]
    p = [torch.from_numpy(a) for a in arrays(layout, n, 2)]

    def fn():
        torch._foreach_lerp_(ema, p, 1.0 - 0.9998)
    fn()
    bandwidth_benchmark.group = f"ema {layout} {n}"
    bandwidth_benchmark(fn, nbytes=3 * 4 * n)


@pytest.mark.parametrize("layout", ["one", "model"])
def test_clip_grad_norm(bandwidth_benchmark, request, threads, backend, layout):
    n = _size(request)
    _skip_backend(backend, n)
    g = arrays(layout, n, 3)

    def fn():
        fastreg.clip_grad_norm(g, 0.0, backend=backend)
    fn()
    bandwidth_benchmark.group = f"clip {layout} {n}"
    bandwidth_benchmark(fn, nbytes=3 * 4 * n)


@pytest.mark.parametrize("layout", ["one", "model"])
def test_torch_clip_grad_norm(bandwidth_benchmark, request, threads, layout):
    torch = _torch()
    n = _size(request)
    params = _torch_params(torch, arrays(layout, n, 3))

    def fn():
        torch.nn.utils.clip_grad_norm_(params, 0.0)
    fn()
    bandwidth_benchmark.group = f"clip {layout} {n}"
    bandwidth_benchmark(fn, nbytes=3 * 4 * n)


def _torch_params(torch, grads):
    params = []
    for g in grads:
        t = torch.empty(0).new_zeros(g.shape).requires_grad_()
        t.grad = torch.from_numpy(g)
        params.append(t)
    return params


# ---- interleaved comparison (python bench/bench_ema_clip.py) ------------------------------------

def stream_cases(n):
    """STREAM-like kernels at n float32 with fastreg's thread count (Numba), as
    ``{name: (fn, bytes counted)}``: copy ``b = a`` (8 bytes per element, as STREAM counts),
    triad ``a = b + s * c`` (12), and in place ``a += s * b`` (12: the EMA update's traffic,
    two arrays read and one of them written, no write-allocate read hidden)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def copy(a, b):
        for i in prange(a.size):
            b[i] = a[i]

    @njit(parallel=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]

    @njit(parallel=True)
    def axpy(a, b, s):
        for i in prange(a.size):
            a[i] += s * b[i]

    numba.set_num_threads(fastreg.get_num_threads())
    a, b, c = (np.full(n, v, np.float32) for v in (1.0, 2.0, 0.5))
    s = np.float32(1e-4)
    return {"stream copy (numba)": (lambda: copy(a, b), 8 * n),
            "stream triad (numba)": (lambda: triad(a, b, c, s), 12 * n),
            "stream a += s*b in place (numba)": (lambda: axpy(a, b, s), 12 * n)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--cases", default="ema,clip,norm,adamw+clip",
                        help="which cases to time (comma-separated first words)")
    parser.add_argument("--layouts", default="one,model")
    parser.add_argument("--stream", action="store_true",
                        help="also time STREAM-like copy / triad kernels in the one-array "
                             "rounds (the bandwidth bound)")
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    import torch
    torch.set_num_threads(fastreg.get_num_threads())
    print(f"n = {args.n} float32, threads: fastreg {fastreg.get_num_threads()}, "
          f"torch {torch.get_num_threads()}, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    backends = [b for b in args.backends.split(",") if fastreg.available_backends()[b] is None]
    for layout in args.layouts.split(","):
        ema, p, g = (arrays(layout, args.n, s) for s in (1, 2, 3))
        te, tp = [torch.from_numpy(a.copy()) for a in ema], [torch.from_numpy(a) for a in p]
        tparams = _torch_params(torch, [a.copy() for a in g])
        tgrads = [t.grad for t in tparams]
        cases = {"ema torch._foreach_lerp_": lambda: torch._foreach_lerp_(te, tp, 1 - 0.9998),
                 "clip torch clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(tparams,
                                                                                      0.0),
                 "norm torch get_total_norm": lambda: torch.nn.utils.get_total_norm(tgrads)}
        # AdamW with clipping: torch's clip_grad_norm_ then its fused step, against fastreg's
        # step with max_grad_norm (clipping fused into the update)
        tw = [torch.from_numpy(a.copy()).requires_grad_() for a in p]
        for t, a in zip(tw, g):
            t.grad = torch.from_numpy(a.copy())
        topt = torch.optim.AdamW(tw, lr=1e-6, fused=True)

        def torch_clip_step():
            torch.nn.utils.clip_grad_norm_(tw, 1.0)
            topt.step()
        cases["adamw+clip torch (clip_, fused)"] = torch_clip_step
        import fastreg.torch as frt
        fparams = _torch_params(torch, [a.copy() for a in g])
        cases["clip fastreg.torch clip_grad_norm_"] = lambda: frt.clip_grad_norm_(fparams, 0.0)
        for b in backends:
            opt = fastreg.optim.AdamW([a.copy() for a in p], lr=1e-6, decay_mask=lambda a: True,
                                      max_grad_norm=1.0, backend=b)
            gs = [a.copy() for a in g]
            cases[f"adamw+clip fastreg {b}"] = lambda opt=opt, gs=gs: opt.step(gs)
            cases[f"ema fastreg {b}"] = (lambda b=b: fastreg.ema_update(ema, p, 0.9998,
                                                                        backend=b))
            cases[f"clip fastreg {b}"] = lambda b=b: fastreg.clip_grad_norm(g, 0.0, backend=b)
            cases[f"norm fastreg {b}"] = lambda b=b: fastreg.grad_norm(g, backend=b)
        cases = {k: fn for k, fn in cases.items() if k.split()[0] in wanted}
        nbytes = {k: {"ema": 12, "clip": 12, "norm": 4}.get(k.split()[0], 0) * args.n
                  for k in cases}
        if args.stream and layout == "one":   # the bound, in the same rounds
            for k, (fn, nb) in stream_cases(args.n).items():
                cases[k], nbytes[k] = fn, nb
        for fn in cases.values():
            fn()   # warm up (JIT, first touch)
        times = {k: [] for k in cases}
        for _ in range(args.reps):   # interleaved rounds: load changes hit every case alike
            for k, fn in cases.items():
                times[k] += time_each(fn, 1)
        print(f"\nlayout {layout} ({len(layout_sizes(layout, args.n))} arrays): "
              "min / median ms per call, GB/s at the min")
        for k in sorted(times):
            t = np.array(times[k]) * 1e3
            gbs = f"{nbytes[k] / t.min() / 1e6:8.1f}" if nbytes.get(k) else ""
            print(f"  {k:<34} {t.min():8.2f} {np.median(t):8.2f} {gbs}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
