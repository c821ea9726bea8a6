"""16-bit dropout, penalty gradients, the L1 prox step and optimizer steps: fastreg's fused C
kernels against its conversion passes and against torch, interleaved in one process.

    python bench/half_fused.py [--sizes 100000 1000000 10000000] [--rounds 15] [--serial]

Rows: bfloat16 / float16 dropout forward (p = 0.1, new output); ``l2_grad`` into a preallocated
out (torch: ``torch.mul(w, 2 * lam, out=o)``), accumulated into a gradient (torch:
``g.add_(w, alpha=2 * lam)``), and ``prox_l1`` in place (torch: the sign/clamp expression of
fastreg.bench.cases, copied back); the AdamW and SGD (momentum)
steps on one 16-bit parameter with a 16-bit gradient, plus float32 parameters with bfloat16
gradients (torch cannot pair those). "fused" is backend "c" as shipped; "passes" the same calls
with the fused kernels hidden (fastreg._half.fused answering None: widen to float32, the
float32 kernel, round back), i.e. what every 16-bit op did before. torch: F.dropout and
torch.optim AdamW / SGD (foreach; bf16 math and state) on the same data. Prints min and median
per call (ms) and torch / fastreg (> 1: fastreg faster), with the load average. ``--serial``:
one thread for torch and fastreg, timed in CPU time of the calling thread (``time.thread_time``:
steadier than wall time on a shared machine, blind to memory-bandwidth sharing). ``--isa
portable``: backend "c" on its portable loops (float16 then through the integer conversions of
csrc/half.h instead of F16C; the default is the best the CPU has).
"""
import argparse
import os
import statistics
import time

import ml_dtypes
import numpy as np
import torch

import fastreg
import fastreg.c
from fastreg import _half, optim

BF16 = np.dtype(ml_dtypes.bfloat16)
TORCH = {BF16: torch.bfloat16, np.dtype(np.float16): torch.float16}


def hide_fused(flag):
    """Make fastreg._half.fused and fused_host answer None (flag True) or restore them."""
    if flag:
        _half.fused = _half.fused_host = lambda job, name: None
    else:
        _half.fused, _half.fused_host = _ORIGINAL


_ORIGINAL = _half.fused, _half.fused_host


def cases(n, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32).astype(dtype)
    g = rng.standard_normal(n).astype(np.float32).astype(dtype)
    tdt = TORCH[dtype]
    xt = torch.from_numpy(x.view(np.uint16).view(np.int16)).view(tdt)
    name = str(dtype)
    out = {}

    def fr_dropout(passes):
        def run():
            hide_fused(passes)
            fastreg.dropout(x, 0.1, seed=1, backend="c")
            hide_fused(False)
        return run
    out[f"dropout {name}"] = {
        "torch": lambda: torch.nn.functional.dropout(xt, 0.1, training=True),
        "fused": fr_dropout(False), "passes": fr_dropout(True)}

    o, acc = np.empty_like(x), g.copy()
    ot, acct = torch.empty_like(xt), torch.from_numpy(acc.view(np.uint16).view(np.int16)).view(tdt)
    w_prox, wt_prox = x.copy(), xt.clone()

    def fr(call):
        def make(passes):
            def run():
                hide_fused(passes)
                call()
                hide_fused(False)
            return run
        return {"fused": make(False), "passes": make(True)}
    out[f"l2_grad out= {name}"] = dict(
        torch=lambda: torch.mul(xt, 2e-4, out=ot),
        **fr(lambda: fastreg.l2_grad(x, 1e-4, out=o, backend="c")))
    out[f"l2_grad accumulate {name}"] = dict(
        torch=lambda: acct.add_(xt, alpha=2e-8),
        **fr(lambda: fastreg.l2_grad(x, 1e-8, out=acc, accumulate=True, backend="c")))
    out[f"prox_l1 {name}"] = dict(
        torch=lambda: wt_prox.copy_(torch.sign(wt_prox) * torch.clamp(wt_prox.abs() - 1e-9,
                                                                       min=0)),
        **fr(lambda: fastreg.prox_l1(w_prox, 1e-9, backend="c")))

    for opt_name, make_t, make_f in [
            ("AdamW", lambda ps: torch.optim.AdamW(ps, lr=1e-6, foreach=True),
             lambda ps: optim.AdamW(ps, lr=1e-6, decay_mask=[True], backend="c")),
            ("SGD momentum", lambda ps: torch.optim.SGD(ps, lr=1e-6, momentum=0.9, foreach=True),
             lambda ps: optim.SGD(ps, lr=1e-6, momentum=0.9, backend="c"))]:
        pt = xt.clone().requires_grad_()
        pt.grad = torch.from_numpy(g.view(np.uint16).view(np.int16)).view(tdt).clone()
        topt = make_t([pt])
        row = {"torch": topt.step}
        for label, passes in (("fused", False), ("passes", True)):
            hide_fused(passes)
            fopt = make_f([x.copy()])
            hide_fused(False)
            row[label] = (lambda o: lambda: o.step([g]))(fopt)
        out[f"{opt_name} {name}"] = row
        if dtype == BF16:   # float32 parameters, bfloat16 gradients (mixed precision)
            row = {}
            for label, passes in (("fused", False), ("passes", True)):
                hide_fused(passes)
                fopt = make_f([x.astype(np.float32)])
                hide_fused(False)
                row[label] = (lambda o: lambda: o.step([g]))(fopt)
            out[f"{opt_name} f32 param, bf16 grad"] = row
    return out


def measure(fns, rounds, clock=time.perf_counter):
    for fn in fns.values():
        fn()
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    ap.add_argument("--serial", action="store_true")
    ap.add_argument("--isa", choices=["portable", "avx2", "avx512"])
    args = ap.parse_args()
    if args.isa:
        fastreg.c.set_isa(args.isa)
    clock = time.perf_counter
    if args.serial:
        torch.set_num_threads(1)
        fastreg.set_num_threads(1)
        clock = time.thread_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fastreg threads "
          f"{fastreg.get_num_threads()}, isa {fastreg.c.isa()}; load average before: "
          f"{os.getloadavg()}")
    print(f"{'case':34s} {'n':>9s} {'impl':>7s} {'min ms':>9s} {'median ms':>10s} "
          f"{'torch/x (median)':>17s}")
    for dt in args.dtypes:
        dtype = BF16 if dt == "bfloat16" else np.dtype(np.float16)
        for n in args.sizes:
            for case, fns in cases(n, dtype).items():
                res = measure(fns, args.rounds, clock)
                tmed = res.get("torch", (None, None))[1]
                for k, (mn, med) in res.items():
                    ratio = f"{tmed / med:17.2f}" if tmed and k != "torch" else ""
                    print(f"{case:34s} {n:9d} {k:>7s} {mn * 1e3:9.3f} {med * 1e3:10.3f} {ratio}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
