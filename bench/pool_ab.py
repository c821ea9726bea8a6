"""The C backend's kernels on fastreg's pool (elementwise, dropout) with its threads spinning
after each job (the default, 50 us) against never spinning (FASTREG_SPIN_US=0: mid-size calls
run serially below the grain), in one process, blocks of calls interleaved.

    python bench/pool_ab.py [--load mixed|spin] [--threads 2]

Prints median, 99th percentile and max microseconds per call and the pool's counters
(fastreg.c.pool_stats). With --load, the benchmark's background load (fastreg.bench.load) runs
beside it.
"""
import argparse
import contextlib

import numpy as np

import fastreg
import fastreg.c as fc
from fastreg.bench.small import time_each


def _rows():
    rng = np.random.default_rng(0)
    for n in (65536, 100_000, 262_144, 524_288):
        w = rng.random(n, dtype=np.float32)
        o = np.empty_like(w)
        yield f"l2_grad {n}", lambda w=w, o=o: fastreg.l2_grad(w, 1e-4, out=o, backend="c")
    for n in (32768, 65536, 262_144):
        x = rng.random(n, dtype=np.float32)
        o = np.empty_like(x)
        yield f"dropout {n}", lambda x=x, o=o: fastreg.dropout(x, 0.5, seed=1, out=o, backend="c")
    for n in (100_000, 262_144):
        p, g = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
        opt = fastreg.optim.AdamW([p], lr=1e-3, decay_mask=[True], backend="c")
        yield f"AdamW step {n}", lambda opt=opt, g=g: opt.step([g])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=("mixed", "spin"), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if fastreg.available_backends()["c"] is not None:
        raise SystemExit("the C backend is not built")
    load = contextlib.nullcontext()
    if args.load:
        from fastreg.bench.load import background_load
        load = background_load(args.load)
    previous = fc.pool_spin_us()
    print(f"{'op':18s} {'never spin: med':>16s} {'p99':>7s} {'max':>8s} | "
          f"{'spin 50 us: med':>15s} {'p99':>7s} {'max':>8s}   (us per call)")
    try:
        with load, fastreg.threads(args.threads):
            for name, f in _rows():
                res = {0: [], 50: []}
                for _ in range(args.rounds):
                    for spin in (0, 50):
                        fc.set_pool_spin(spin)
                        f(), f()
                        res[spin] += time_each(f, 200)
                q = {s: np.percentile(np.array(v) * 1e6, [50, 99, 100]) for s, v in res.items()}
                print(f"{name:18s} {q[0][0]:16.1f} {q[0][1]:7.1f} {q[0][2]:8.1f} | "
                      f"{q[50][0]:15.1f} {q[50][1]:7.1f} {q[50][2]:8.1f}")
    finally:
        fc.set_pool_spin(previous)
    print("pool:", fc.pool_stats())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
