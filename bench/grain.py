"""Where a second thread starts to pay: the measurements behind fastreg._threads.GRAIN.

    python bench/grain.py                   # idle
    python bench/grain.py --load mixed      # beside bench/load.py's reproducer

For each op family and backend (c, cpu), times one call with 1 and with 2 threads at sizes
2^10 .. 2^20 (GRAIN patched to 1, so that every size may take 2 threads), alternating the two,
and prints the medians and the smallest size from which 2 threads are faster at every larger
size. ``plan`` gives 2 threads from ``2 * GRAIN`` units of work, so GRAIN is half that size.
Work units: elements (elementwise; optimizer steps count twice, OPTIM_WEIGHT; batch norm's
training forward), stream words (random), image bytes (augment; resampling and noise weighted,
see fastreg/c/augment.py).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (bench/load.py)

import fastreg  # noqa: E402
from fastreg import _registry, _threads  # noqa: E402

SIZES = [1 << k for k in range(10, 21)]


def _cases(mod, n):
    """(family, label, call, work) per op at about n units of work."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    g = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros_like(x), np.zeros_like(x)
    f32 = np.float32
    cases = [
        ("random", "dropout f32",
         lambda: mod.dropout(x, 1, 0, 1 << 31, f32(2), out), n),
        ("elementwise", "l2_grad f32",
         lambda: mod.penalty_grad(x, f32(0), f32(2e-4), out, False), n),
        ("elementwise", "adam_step f32 (weighted)",
         lambda: mod.adam_step(out, g, m, v, None, f32(0), f32(0.99), f32(0.1), f32(0.999),
                               f32(0.001), f32(1e-8), f32(1e-3), f32(0.5)), 2 * n),
    ]
    side = max(1, int(round((n / 3) ** 0.5)))  # one RGB uint8 image of about n bytes
    img = rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    iout = np.empty_like(img)
    flags = np.ones(1, np.uint8)
    c, s_ = np.cos(0.3), np.sin(0.3)
    mats = np.array([[[c, -s_, 0.0], [s_, c, 0.0]]])
    flat = img.reshape(1, -1)
    fout = np.empty_like(flat)
    stds = np.full(1, 10.0, np.float32)
    cases += [
        ("augment", "flip u8", lambda: mod.aug_flip(img, flags, flags, iout), img.nbytes),
        ("augment", "affine u8 (weighted)",
         lambda: mod.aug_affine(img, mats, 0, 0, False, iout), 16 * img.nbytes),
        ("augment", "noise u8 (weighted)",
         lambda: mod.aug_noise(flat, 7, 0, stds, fout), 16 * flat.size),
    ]
    C, B = 64, 64  # batch norm: NCHW rows of 64 values (the rows regime), and (N, 256)
    xr = rng.standard_normal((max(2, n // (C * B)), C, B)).astype(np.float32)
    xc = rng.standard_normal((max(2, n // 256), 256, 1)).astype(np.float32)
    for label, xb in (("bn forward NCHW f32", xr), ("bn forward (N, 256) f32", xc)):
        c = xb.shape[1]
        w, b, stats = np.ones(c, f32), np.zeros(c, f32), [np.empty(c) for _ in range(3)]
        yb = np.empty_like(xb)
        cases.append(("batchnorm", label,
                      lambda xb=xb, w=w, b=b, yb=yb, stats=stats:
                      mod.bn_forward_train(xb, w, b, 1e-5, None, False, yb, *stats), xb.size))
    return cases


def _time(fn, threads, reps):
    ts = []
    with fastreg.threads(threads):
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return ts


def measure(backend, reps, rounds, families=tuple(_threads.GRAIN)):
    mod = _registry.module(backend)
    saved = dict(_threads.GRAIN)
    results = {}  # label -> [(work, med1, med2)]
    try:
        for family in _threads.GRAIN:
            _threads.GRAIN[family] = 1
        for n in SIZES:
            for family, label, fn, work in _cases(mod, n):
                if family not in families:
                    continue
                for _ in range(3):
                    fn()
                t1, t2 = [], []
                for _ in range(rounds):
                    t1 += _time(fn, 1, reps)
                    t2 += _time(fn, 2, reps)
                results.setdefault((family, label), []).append(
                    (work, np.median(t1) * 1e6, np.median(t2) * 1e6))
    finally:
        _threads.GRAIN.update(saved)
    return results


def crossover(rows):
    """Smallest work from which 2 threads win at every larger size (None: never)."""
    best = None
    for work, m1, m2 in reversed(rows):
        if m2 < m1:
            best = work
        else:
            break
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=("none",) + load.KINDS, default="none")
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="10-20", help="log2 range, e.g. 12-19")
    parser.add_argument("--families", default=",".join(_threads.GRAIN),
                        help="op families to time, e.g. elementwise (default: all)")
    args = parser.parse_args(argv)
    lo, hi = (int(v) for v in args.sizes.split("-"))
    SIZES[:] = [1 << k for k in range(lo, hi + 1)]
    with load.background_load(None if args.load == "none" else args.load):
        for be in args.backends.split(","):
            res = measure(be, args.reps, args.rounds, args.families.split(","))
            print(f"# backend {be}, load={args.load}, loadavg {os.getloadavg()[0]:.1f}")
            for (family, label), rows in res.items():
                line = " ".join(f"{w}:{m1:.1f}/{m2:.1f}" for w, m1, m2 in rows)
                print(f"{family:11s} {label:22s} 2 threads win from {crossover(rows)}")
                print(f"    work:us(1 thread)/us(2 threads) {line}")


if __name__ == "__main__":
    main()
