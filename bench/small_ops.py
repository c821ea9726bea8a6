"""Small ops where users call them, beside PyTorch: dropout 64x128, batch norm (64, 256) training
forward and forward+backward, one AdamW step on 1e5 parameters and l2_grad on 1e5, float32.

    python bench/small_ops.py                       # idle
    python bench/small_ops.py --load mixed          # beside bench/load.py's reproducer
    taskset -c 0 python bench/small_ops.py --threads 2    # one core, two threads
    python bench/small_ops.py --same-process        # torch in this process, imported first
    PYTHONPATH=old/tree python bench/small_ops.py   # an older checkout (public API only)

Every call is timed alone (perf_counter around one call); the contenders take turns in rounds,
so a change of load hits them alike. Reports min / median / p90 / max in microseconds.

torch runs in a process of its own (this script started again with ``--serve-torch``), which
imports torch and nothing of fastreg: in this process it would share the OpenMP runtime that
fastreg loads with the passive wait policy, and its small ops would pay a sleeping thread's
wake-up per parallel region. It times its calls itself, a round at a time, when asked through a
pipe. ``--threads`` sets fastreg's and torch's thread counts (default: their own defaults).

``--same-process`` measures the user's loop instead: torch imported first in this process (its
OpenMP runtime, with GNU's default spin, is then the one fastreg's C backend shares), and its
calls take turns with fastreg's there. torch's team then spins for milliseconds after each of its
regions, on the cores that fastreg's pool needs (csrc/pool.c: the pool borrows that team then).
``--torch-work MS`` adds what happens between a training loop's optimizer calls: before each
contender's turn, MS milliseconds of torch matmuls (256 x 256, float32; untimed), as a forward
and backward pass would run.
"""
import argparse
import os
import pickle
import subprocess
import sys
import time

SHAPE_DROPOUT = (64, 128)
SHAPE_BN = (64, 256)
N = 100_000
OPS = ("dropout", "bn_fwd", "bn_fwd_bwd", "adamw", "l2_grad")


def _data():
    import numpy as np
    rng = np.random.default_rng(0)
    f32 = np.float32
    return dict(x=rng.standard_normal(SHAPE_DROPOUT).astype(f32),
                bx=rng.standard_normal(SHAPE_BN).astype(f32),
                gy=rng.standard_normal(SHAPE_BN).astype(f32),
                w=rng.standard_normal(N).astype(f32),
                g=(rng.standard_normal(N) * 1e-3).astype(f32))


def _fastreg_cases(backends):
    import numpy as np

    import fastreg
    d = _data()
    c = SHAPE_BN[1]
    cases = {}
    for be in backends:
        x, out = d["x"], np.empty_like(d["x"])
        cases[f"dropout {be}"] = (lambda be=be, out=out, x=x:
                                  fastreg.dropout(x, 0.5, seed=1, out=out, backend=be))
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        bw, bb = np.ones(c, np.float32), np.zeros(c, np.float32)
        bx, gy = d["bx"], d["gy"]
        cases[f"bn_fwd {be}"] = (lambda be=be, rm=rm, rv=rv, bw=bw, bb=bb:
                                 fastreg.batch_norm(bx, rm, rv, bw, bb, training=True,
                                                    backend=be))

        def fwd_bwd(be=be, rm=rm.copy(), rv=rv.copy(), bw=bw, bb=bb):
            _, saved = fastreg.batch_norm(bx, rm, rv, bw, bb, training=True, backend=be)
            return fastreg.batch_norm_backward(gy, bx, saved, bw, backend=be)
        cases[f"bn_fwd_bwd {be}"] = fwd_bwd
        p = d["w"].copy()
        opt = fastreg.optim.AdamW([p], lr=1e-3, backend=be)
        cases[f"adamw {be}"] = lambda opt=opt, g=d["g"]: opt.step([g])
        gout = np.empty_like(d["w"])
        cases[f"l2_grad {be}"] = (lambda be=be, gout=gout, w=d["w"]:
                                  fastreg.l2_grad(w, 1e-4, out=gout, backend=be))
    return cases


def _torch_cases():
    import torch
    import torch.nn.functional as F
    d = {k: torch.from_numpy(v) for k, v in _data().items()}
    c = SHAPE_BN[1]
    rm, rv = torch.zeros(c), torch.ones(c)
    bw, bb = torch.ones(c), torch.zeros(c)
    bx, gy = d["bx"], d["gy"]
    bxg, bwg, bbg = (t.clone().requires_grad_(True) for t in (bx, bw, bb))
    rm2, rv2 = rm.clone(), rv.clone()

    def bn_fwd():
        with torch.no_grad():
            return F.batch_norm(bx, rm, rv, bw, bb, training=True)

    def bn_fwd_bwd():
        bxg.grad = bwg.grad = bbg.grad = None
        F.batch_norm(bxg, rm2, rv2, bwg, bbg, training=True).backward(gy)

    p = torch.nn.Parameter(d["w"].clone())
    p.grad = d["g"]
    opt = torch.optim.AdamW([p], lr=1e-3)
    out = torch.empty_like(d["w"])
    return {"dropout": lambda: F.dropout(d["x"], 0.5, training=True),
            "bn_fwd": bn_fwd, "bn_fwd_bwd": bn_fwd_bwd, "adamw": opt.step,
            "l2_grad": lambda: torch.mul(d["w"], 2e-4, out=out)}


def _timed(fn, n):
    clock = time.perf_counter
    times = []
    for _ in range(n):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def serve_torch(threads):
    """The torch process: answers ``(op, n)`` with n timed calls, ``None`` with its facts."""
    import torch   # first: torch loads its OpenMP runtime as it would alone
    if threads:
        torch.set_num_threads(threads)
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr
    cases = _torch_cases()
    while True:
        try:
            request = pickle.load(inp)
        except EOFError:
            return
        reply = ({"torch": torch.__version__, "threads": torch.get_num_threads()}
                 if request is None else _timed(cases[request[0]], request[1]))
        pickle.dump(reply, out)
        out.flush()


class _Peer:
    def __init__(self, threads):
        argv = [sys.executable, os.path.abspath(__file__), "--serve-torch"]
        if threads:
            argv += ["--threads", str(threads)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info = self.ask(None)

    def ask(self, request):
        pickle.dump(request, self.proc.stdin)
        self.proc.stdin.flush()
        return pickle.load(self.proc.stdout)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class _Remote:
    def __init__(self, peer, op):
        self.peer, self.op = peer, op

    def timed(self, n):
        return self.peer.ask((self.op, n))


def _torch_work(ms):
    """A callable that runs torch matmuls for ``ms`` milliseconds (None for 0)."""
    if not ms:
        return None
    import torch
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            a @ b
    return work


def measure(cases, rounds, per_round, between=None):
    import numpy as np

    def run(fn, n):
        return fn.timed(n) if hasattr(fn, "timed") else _timed(fn, n)

    for fn in cases.values():
        run(fn, 20)   # JIT, first touch, thread pools
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if between is not None:
                between()
            times[name] += run(fn, per_round)
    return {name: np.array(ts) * 1e6 for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", default="none", help="none, or a kind of bench/load.py")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--same-process", action="store_true",
                        help="torch in this process, imported before fastreg")
    parser.add_argument("--torch-work", type=float, default=0, metavar="MS",
                        help="with --same-process: MS ms of torch matmuls before each turn")
    parser.add_argument("--serve-torch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_work and not args.same_process:
        parser.error("--torch-work needs --same-process")
    if args.serve_torch:
        return serve_torch(args.threads)
    local = None
    if args.same_process and not args.no_torch:
        import torch   # before fastreg: torch's OpenMP runtime, as a user's script loads it
        if args.threads:
            torch.set_num_threads(args.threads)
        local = _torch_cases()
    peer = None if args.no_torch or local is not None else _Peer(args.threads)

    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import load  # bench/load.py

    import fastreg
    if args.threads is not None:
        fastreg.set_num_threads(args.threads)
    ops = args.ops.split(",")
    backends = [b for b in args.backends.split(",") if b]
    every = _fastreg_cases(backends)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    results = {}
    between = _torch_work(args.torch_work)
    with load.background_load(None if args.load == "none" else args.load):
        t0 = time.time()
        for op in ops:
            cases = {f"{op} {be}": every[f"{op} {be}"] for be in backends}
            if peer is not None:
                cases[f"{op} torch"] = _Remote(peer, op)
            elif local is not None:
                cases[f"{op} torch"] = local[op]
            results.update(measure(cases, args.rounds, args.per_round, between))
        wall = time.time() - t0
        loadavg = os.getloadavg()[0]
    if local is not None:
        torch_note = (f"torch {torch.__version__} ({torch.get_num_threads()} threads, this "
                      f"process, imported first"
                      + (f"; {args.torch_work:g} ms of torch matmuls before each turn)"
                         if args.torch_work else ")"))
    else:
        torch_note = ("no torch" if peer is None else
                      f"torch {peer.info['torch']} ({peer.info['threads']} threads, own process)")
    if peer is not None:
        peer.close()
    print(f"# fastreg from {os.path.dirname(fastreg.__file__)}; load={args.load}; cpus={cpus}; "
          f"threads={args.threads or 'default'}; {torch_note}; loadavg {loadavg:.1f} at the "
          f"end; {wall:.0f} s")
    print(f"{'op':20s} {'min':>9s} {'median':>9s} {'p90':>9s} {'max':>9s}   (us)")
    for name, ts in results.items():
        print(f"{name:20s} {ts.min():9.1f} {np.median(ts):9.1f} {np.percentile(ts, 90):9.1f} "
              f"{ts.max():9.0f}")


if __name__ == "__main__":
    main()
