"""One process of ``fastreg.bench.load``'s background load (run by path as
``python .../_load_worker.py KIND PARENT_PID SEED``; see that module for the kinds). It imports
NumPy and Numba only, not fastreg.

It prints ``ready`` once its loop runs and exits by itself as soon as its parent is gone (its
parent pid changes), so a killed benchmark never leaves it behind.
"""
import os
import sys
import time


def _mixed(parent, seed):
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def axpy(a, b, out):
        for i in prange(a.size):
            out[i] = 2.0 * a[i] + b[i]

    rng = np.random.default_rng(seed)
    a = rng.standard_normal(1 << 15)
    b = rng.standard_normal(1 << 15)
    out = np.empty_like(a)
    small = rng.standard_normal(4096)
    axpy(a, b, out)   # compile (or load from the cache) before saying ready
    print("ready", flush=True)
    while os.getppid() == parent:
        for _ in range(20):
            axpy(a, b, out)     # short parallel regions: the pool wakes, spins, sleeps
        np.sort(small)          # serial NumPy work
        time.sleep(0.0005)      # the gap between two tests of a suite


def _spin(parent, seed):
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        if i % 1000000 == 0 and os.getppid() != parent:
            break


def main(argv):
    kind, parent, seed = argv[0], int(argv[1]), int(argv[2])
    {"mixed": _mixed, "spin": _spin}[kind](parent, seed)


if __name__ == "__main__":
    main(sys.argv[1:])
