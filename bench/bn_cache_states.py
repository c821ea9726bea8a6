"""Batch norm's training forward and forward + backward in three cache states, fastreg against
torch on the same arrays, each call timed alone:

- ``hot``: back to back on the same data (what ``fastreg bench`` and most benchmarks time; a
  layer of 25 MB then sits in the caches, which a network's other layers would have evicted);
- ``written``: x rewritten just before each call (untimed), as the layer before writes it: the
  state a training step calls batch norm in;
- ``flushed``: 256 MB copied between calls (untimed): nothing of x left in the caches.

The C backend's prefetch of the heads of a channel's next rows was chosen on all three (see
fr_bn_prefetch_chunk in csrc/batchnorm.c): 10-20% faster ``written`` and ``flushed`` than no
prefetch on NCHW, the same ``hot``.

    python bench/bn_cache_states.py [--backends c,cpu] [--layouts nchw,nhwc,nc] [--calls 25]

``--quick``: the small layouts (``cases.BN_QUICK_LAYOUTS``) and a 4 MB flush, 3 calls: a smoke
run (tests/test_bench.py), not a measurement.
"""
import argparse
import time

import numpy as np

import fastreg
from fastreg.bench import cases

FLUSH_BYTES = 256 << 20


def _timed(prep, fn, calls):
    out = []
    for _ in range(calls):
        prep()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out) * 1e3, float(np.median(out)) * 1e3


def _calls(layout, backend, torch, quick=False):
    """{(op, who): callable}, x and the source it is rewritten from, on one set of arrays."""
    shape, axis = cases.bn_shape(layout, quick)
    x, gy, w, b, rm, rv = cases.bn_arrays(shape, axis)
    y, gx = np.empty_like(x), np.empty_like(x)
    calls = {}

    def fwd():
        return fastreg.batch_norm(x, rm, rv, w, b, training=True, axis=axis, out=y,
                                  backend=backend)

    def fwd_bwd():
        _, saved = fwd()
        fastreg.batch_norm_backward(gy, x, saved, w, out=gx, backend=backend)

    calls["bn_train", backend], calls["bn_train_backward", backend] = fwd, fwd_bwd
    if torch is not None:
        import torch.nn.functional as F
        perm = (0, 3, 1, 2) if layout == "nhwc" else None   # channels-last: a permuted view
        xt = torch.from_numpy(x)   # shares x's memory: the rewrite reaches torch too
        xt = xt.permute(*perm) if perm else xt
        gyt = torch.from_numpy(gy).permute(*perm) if perm else torch.from_numpy(gy)
        wt, bt = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
        rmt, rvt = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())

        def t_fwd():
            with torch.no_grad():
                F.batch_norm(xt, rmt, rvt, wt, bt, training=True)

        xg = xt.detach().requires_grad_(True)
        wg, bg = wt.clone().requires_grad_(True), bt.clone().requires_grad_(True)

        def t_fwd_bwd():
            xg.grad = wg.grad = bg.grad = None
            F.batch_norm(xg, rmt, rvt, wg, bg, training=True).backward(gyt)

        calls["bn_train", "torch"], calls["bn_train_backward", "torch"] = t_fwd, t_fwd_bwd
    return calls, x, x.copy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--layouts", default="nchw,nhwc,nc")
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 3
    try:
        import torch
        torch.set_num_threads(fastreg.get_num_threads())
    except ImportError:
        torch = None
    flush = (4 << 20 if args.quick else FLUSH_BYTES) // 4
    big, big2 = np.ones(flush, np.float32), np.empty(flush, np.float32)
    print(f"fastreg {fastreg.get_num_threads()} threads"
          + (f", torch {torch.__version__} {torch.get_num_threads()} threads" if torch else
             ", no torch") + "; min / median ms of each call timed alone")
    backends = [b for b in args.backends.split(",") if fastreg.available_backends()[b] is None]
    for layout in args.layouts.split(","):
        shape, _ = cases.bn_shape(layout, args.quick)
        for i, backend in enumerate(backends):
            calls, x, x0 = _calls(layout, backend, torch if i == 0 else None, args.quick)
            states = {"hot": lambda: None, "written": lambda: np.copyto(x, x0),
                      "flushed": lambda: np.copyto(big2, big)}
            for (op, who), fn in calls.items():
                fn()
                row = "  ".join(f"{state} {m:6.3f}/{med:6.3f}"
                                for state, prep in states.items()
                                for m, med in [_timed(prep, fn, args.calls)])
                print(f"{layout} {str(shape):17s} {cases.BN_OPS[op][0]:17s} {who:6s} {row}",
                      flush=True)


if __name__ == "__main__":
    main()
