"""Before / after for the small ops: two fastreg trees, each in a process of its own, and torch,
taking turns within each op (bench/small_ops.py's cases, plus l2_grad without out= and on "auto").

    cp -r fastreg /tmp/before            # a copy of the tree before a change (with its .so)
    ... change the tree ...
    python bench/small_ab.py /tmp/before .  [--rounds 60] [--backends c,cpu]

``python -m fastreg bench --ops small_...`` times one tree; run it twice and the load of the
machine changes in between. Here each round asks every contender for 10 calls in turn (per call
timed alone, as small_ops.py does), so a change of load hits both trees alike. Each tree is
imported from its own directory (PYTHONPATH), public API only; Numba's cache is per tree path,
so a copied tree compiles its kernels once (the 20 warm-up calls).
"""
import argparse
import os
import pickle
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import small_ops  # noqa: E402  bench/small_ops.py: the cases and the torch peer

OPS = ("l2_grad", "l2_noout", "dropout", "adamw", "bn_fwd")
TORCH_OPS = ("l2_grad", "dropout", "adamw", "bn_fwd")   # small_ops' torch cases

SERVER = r'''
import os, pickle, sys, time
sys.path.insert(0, {here!r})
import numpy as np
import small_ops, fastreg
backends = {backends!r}
cases = small_ops._fastreg_cases(backends)
d = small_ops._data()
w, out = d["w"], np.empty_like(d["w"])
for be in backends + ["auto"]:
    cases[f"l2_noout {{be}}"] = lambda be=be: fastreg.l2_grad(w, 1e-4, backend=be)
cases["l2_grad auto"] = lambda: fastreg.l2_grad(w, 1e-4, out=out)
sys.stderr.write(f"# tree {{os.path.dirname(os.path.dirname(fastreg.__file__))}}\n")
inp, reply = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
sys.stdout = sys.stderr
while True:
    try:
        request = pickle.load(inp)
    except EOFError:
        break
    if request is None:
        pickle.dump(sorted(cases), reply)
    else:
        fn, clock, times = cases[request[0]], time.perf_counter, []
        for _ in range(request[1]):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        pickle.dump(times, reply)
    reply.flush()
'''


class _Tree:
    """A process timing one tree's cases on request (``timed(name, n)``)."""

    def __init__(self, tree, backends):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        code = SERVER.format(here=HERE, backends=list(backends))
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd="/")
        self.names = set(self._ask(None))

    def _ask(self, request):
        pickle.dump(request, self.proc.stdin)
        self.proc.stdin.flush()
        return pickle.load(self.proc.stdout)

    def timed(self, name, n):
        return self._ask((name, n))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--backends", default="c,cpu")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    peer = None if args.no_torch else small_ops._Peer(None)
    trees = {"before": _Tree(args.before, backends), "after": _Tree(args.after, backends)}
    results = {}
    for op in OPS:
        turns = [(f"{op} {be} {label}", tree.timed, f"{op} {be}")
                 for be in backends + ["auto"] for label, tree in trees.items()
                 if f"{op} {be}" in tree.names]
        if peer is not None and op in TORCH_OPS:
            turns.append((f"{op} torch", lambda name, n: peer.ask((name, n)), op))
        for label, timed, name in turns:
            timed(name, 20)   # JIT compile, first touch
            results[label] = []
        for _ in range(args.rounds):
            for label, timed, name in turns:
                results[label] += timed(name, 10)
    for tree in trees.values():
        tree.close()
    if peer is not None:
        peer.close()
    print(f"# before={args.before} after={args.after}; {args.rounds} rounds x 10 calls each; "
          f"loadavg {os.getloadavg()[0]:.1f} at the end")
    print(f"{'case':28s} {'min':>8s} {'median':>8s}   (us)")
    for label, times in results.items():
        t = np.asarray(times) * 1e6
        print(f"{label:28s} {t.min():8.1f} {np.median(t):8.1f}")


if __name__ == "__main__":
    main()
