"""Whole optimizer steps through fastreg.torch.optim against torch.optim, per step, on many small
parameters and on one large one: where the per-parameter Python cost shows.

    python bench/optim_steps.py [--rounds 500]

Rows: AdamW (torch's for-loop default, torch foreach=True, fastreg.torch.optim.AdamW with
decay_mask=True, i.e. decay on every tensor as torch) over 1 parameter of 10 values, 50 of 10,
and 1 of 200,704; median microseconds per ``step()``, same process, torch imported first (the
common order), each optimizer timed in its own block after one warm-up step.
"""
import argparse
import statistics
import time

import torch

import fastreg.torch as frt


def median_us(fn, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args(argv)
    makers = {"torch": lambda ps: torch.optim.AdamW(ps, 1e-3),
              "torch foreach": lambda ps: torch.optim.AdamW(ps, 1e-3, foreach=True),
              "fastreg": lambda ps: frt.optim.AdamW(ps, 1e-3, decay_mask=True)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median us per step")
    print(f"{'parameters':>22s} " + " ".join(f"{k:>14s}" for k in makers))
    for n, count in ((10, 1), (10, 50), (200_704, 1)):
        row = []
        for make in makers.values():
            ps = [torch.nn.Parameter(torch.zeros(n)) for _ in range(count)]
            for p in ps:
                p.grad = torch.full((n,), 1e-3)
            opt = make(ps)
            opt.step()
            row.append(median_us(opt.step, args.rounds))
        print(f"{f'{count} of {n} values':>22s} " + " ".join(f"{v:14.1f}" for v in row))


if __name__ == "__main__":
    main()
