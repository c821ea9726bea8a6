"""Small ops where users call them, beside PyTorch in the same run: dropout 64x128 float32,
l2_grad on 1e5 float32, one AdamW step on 1e5 float32 parameters.

    python bench/small_ops.py                       # idle
    python bench/small_ops.py --load mixed          # beside bench/load.py's reproducer
    taskset -c 0 python bench/small_ops.py --threads 2    # one core, two threads

Every call is timed alone (perf_counter around one call); the contenders take turns in rounds,
so a change of load hits them alike. Reports min / median / p90 / max in microseconds.
``--threads`` sets fastreg's and torch's thread counts (default: their own defaults).
Uses only the public API, so it measures an older checkout too (``PYTHONPATH=old/tree``).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (bench/load.py)

import fastreg  # noqa: E402


def _cases(backends, with_torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    w = rng.standard_normal(100_000).astype(np.float32)
    g = rng.standard_normal(100_000).astype(np.float32) * 1e-3
    cases = []
    for be in backends:
        out = np.empty_like(x)
        cases.append((f"dropout 64x128 {be}",
                      lambda be=be, out=out: fastreg.dropout(x, 0.5, seed=1, out=out, backend=be)))
        gout = np.empty_like(w)
        cases.append((f"l2_grad 1e5 {be}",
                      lambda be=be, gout=gout: fastreg.l2_grad(w, 1e-4, out=gout, backend=be)))
        p = w.copy()
        opt = fastreg.optim.AdamW([p], lr=1e-3, backend=be)
        cases.append((f"adamw 1e5 {be}", lambda opt=opt: opt.step([g])))
    if with_torch:
        import torch
        import torch.nn.functional as F
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tout = torch.empty_like(tw)
        tp = torch.nn.Parameter(torch.from_numpy(w.copy()))
        tp.grad = torch.from_numpy(g)
        topt = torch.optim.AdamW([tp], lr=1e-3)
        cases.append(("dropout 64x128 torch", lambda: F.dropout(tx, 0.5, training=True)))
        cases.append(("l2_grad 1e5 torch", lambda: torch.mul(tw, 2e-4, out=tout)))
        cases.append(("adamw 1e5 torch", topt.step))
    return cases


def measure(cases, rounds, per_round):
    for _, fn in cases:
        for _ in range(20):
            fn()  # JIT, first touch
    times = {name: [] for name, _ in cases}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in cases:
            ts = times[name]
            for _ in range(per_round):
                t0 = clock()
                fn()
                ts.append(clock() - t0)
    return {name: np.array(ts) * 1e6 for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=("none",) + load.KINDS, default="none")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    with_torch = not args.no_torch
    if args.threads is not None:
        fastreg.set_num_threads(args.threads)
        if with_torch:
            import torch
            torch.set_num_threads(args.threads)
    cases = _cases(backends, with_torch)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    with load.background_load(None if args.load == "none" else args.load):
        t0 = time.time()
        res = measure(cases, args.rounds, args.per_round)
        wall = time.time() - t0
    print(f"# fastreg from {os.path.dirname(fastreg.__file__)}; load={args.load}; cpus={cpus}; "
          f"threads={args.threads or 'default'}; loadavg={os.getloadavg()[0]:.1f}; "
          f"{wall:.0f} s")
    print(f"{'op':28s} {'min':>9s} {'median':>9s} {'p90':>9s} {'max':>9s}   (us)")
    for name, ts in res.items():
        print(f"{name:28s} {ts.min():9.1f} {np.median(ts):9.1f} {np.percentile(ts, 90):9.1f} "
              f"{ts.max():9.0f}")


if __name__ == "__main__":
    main()
