"""16-bit batch norm: fastreg's fused C kernels against its conversion passes and against torch,
interleaved in one process.

    python bench/half_bn.py [--shapes 32,64,56,56 8192,1024] [--rounds 15] [--serial]

Rows: training forward and forward + backward of batch norm (channel axis 1, float32 weight,
bias and running statistics, as under autocast) on bfloat16 and float16 x. "fused" is
``fastreg.batch_norm`` / ``batch_norm_backward`` with backend "c" as shipped (the 16-bit
kernels read and write x, grad_y and the outputs directly); "passes" the same calls with the
fused path switched off (fastreg.batchnorm._half_fused answering False: widen to float32, the
float32 kernels, round back), i.e. what 16-bit batch norm did before. torch: F.batch_norm on the
same data (bf16 / fp16 x, float32 parameters), backward through autograd. Prints min and median
per call (ms) and torch / fastreg (> 1: fastreg faster), with the load average. ``--serial``:
one thread for torch and fastreg, timed in CPU time of the calling thread.
"""
import argparse
import os
import time

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F

import fastreg
import fastreg.batchnorm as FB
from half_fused import measure  # bench/half_fused.py: interleaved rounds, min and median

BF16 = np.dtype(ml_dtypes.bfloat16)
TORCH = {BF16: torch.bfloat16, np.dtype(np.float16): torch.float16}
_ORIGINAL = FB._half_fused


def passes(flag):
    """Switch the fused 16-bit path off (flag True) or back on."""
    FB._half_fused = (lambda *a: False) if flag else _ORIGINAL


def cases(shape, dtype):
    rng = np.random.default_rng(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32).astype(dtype)
    gy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    tdt = TORCH[dtype]

    def tensor(a):
        return torch.from_numpy(a.view(np.int16)).view(tdt)

    xt, gyt = tensor(x), tensor(gy)
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    rmt, rvt = torch.zeros(C), torch.ones(C)

    def t_fwd():
        with torch.no_grad():
            F.batch_norm(xt, rmt, rvt, wt, bt, training=True)

    xg = xt.clone().requires_grad_()

    def t_both():
        y = F.batch_norm(xg, rmt, rvt, wt, bt, training=True)
        y.backward(gyt)
        xg.grad = wt.grad = bt.grad = None

    def f_fwd(off):
        def run():
            passes(off)
            fastreg.batch_norm(x, rm, rv, w, b, training=True, backend="c")
            passes(False)
        return run

    def f_both(off):
        def run():
            passes(off)
            _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, backend="c")
            fastreg.batch_norm_backward(gy, x, saved, w, backend="c")
            passes(False)
        return run

    name = f"{dtype} {'x'.join(map(str, shape))}"
    return {f"BN fwd {name}": {"torch": t_fwd, "fused": f_fwd(False), "passes": f_fwd(True)},
            f"BN fwd+bwd {name}": {"torch": t_both, "fused": f_both(False),
                                   "passes": f_both(True)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["32,64,56,56", "8192,1024"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    ap.add_argument("--serial", action="store_true")
    args = ap.parse_args()
    clock = time.perf_counter
    if args.serial:
        torch.set_num_threads(1)
        fastreg.set_num_threads(1)
        clock = time.thread_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fastreg threads "
          f"{fastreg.get_num_threads()}; load average before: {os.getloadavg()}")
    print(f"{'case':34s} {'impl':>7s} {'min ms':>9s} {'median ms':>10s} {'torch/x (median)':>17s}")
    for dt in args.dtypes:
        dtype = BF16 if dt == "bfloat16" else np.dtype(np.float16)
        for s in args.shapes:
            shape = tuple(int(v) for v in s.split(","))
            for case, fns in cases(shape, dtype).items():
                res = measure(fns, args.rounds, clock)
                tmed = res["torch"][1]
                for k, (mn, med) in res.items():
                    ratio = f"{tmed / med:17.2f}" if k != "torch" else ""
                    print(f"{case:34s} {k:>7s} {mn * 1e3:9.3f} {med * 1e3:10.3f} {ratio}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
