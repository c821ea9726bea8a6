"""A reproducible background load, for measuring small ops on a busy machine.

    from bench.load import background_load        # or: import load (from bench/)
    with background_load("mixed"):
        ...                                        # time something while the load runs

    python bench/load.py mixed --seconds 60        # the load alone, e.g. beside another shell

Kinds (``procs`` processes of each, default: as many as this process may use CPUs):

``mixed``
    What a test suite beside you does, and what made a 15 us dropout take 3.8-12 ms: every load
    process loops over short OpenMP parallel regions (a Numba ``prange`` kernel, Numba's ``omp``
    layer with its spinning pool), a little serial NumPy work, and a sleep of 0.5 ms, like a
    test runner between tests. The load's threads wake up, spin, and go to sleep thousands of
    times a second, so a parallel region of the measured process regularly waits for a worker
    the OS has not scheduled yet.
``spin``
    ``while True: pass`` in each process: plain busy loops, which did *not* reproduce the stall
    (the scheduler soon runs a woken thread); kept for comparison.

The load always ends: ``background_load`` terminates its processes on exit (also on an
exception or Ctrl-C), and each load process exits by itself when its parent is gone.
Reproducible: fixed work per iteration, fixed seeds, no files written except the load's script
and Numba's cache (``NUMBA_CACHE_DIR``), in a folder of the temporary directory, so later runs
start at once.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
import time

KINDS = ("mixed", "spin")

_MIXED = r"""
import os, sys, time
import numpy as np
from numba import njit, prange

@njit(parallel=True, cache=True)
def _axpy(a, b, out):
    for i in prange(a.size):
        out[i] = 2.0 * a[i] + b[i]

parent = int(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
a = rng.standard_normal(1 << 15)
b = rng.standard_normal(1 << 15)
out = np.empty_like(a)
small = rng.standard_normal(4096)
_axpy(a, b, out)
print("ready", flush=True)
while os.getppid() == parent:
    for _ in range(20):
        _axpy(a, b, out)          # short parallel regions: the pool wakes, spins, sleeps
    np.sort(small)                # serial work
    time.sleep(0.0005)            # the gap between two tests
"""

_SPIN = r"""
import os, sys
parent = int(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    if i % 1000000 == 0 and os.getppid() != parent:
        break
"""


def _cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start(kind="mixed", procs=None, seed=0):
    """Start the load; returns its processes (end them with ``stop``). Waits until every load
    process runs its loop (the first run compiles a small Numba kernel, about 2 s)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    procs = _cpus() if procs is None else int(procs)
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    env = dict(os.environ)
    folder = os.path.join(tempfile.gettempdir(), "fastreg-load-cache")
    env.setdefault("NUMBA_CACHE_DIR", folder)
    # a file, not "-c": Numba caches only functions defined in files
    os.makedirs(folder, exist_ok=True)
    script = os.path.join(folder, f"{kind}_load.py")
    code = _MIXED if kind == "mixed" else _SPIN
    try:
        with open(script) as f:
            same = f.read() == code
    except OSError:
        same = False
    if not same:
        with open(script + ".tmp", "w") as f:
            f.write(code)
        os.replace(script + ".tmp", script)
    started = []
    try:
        for i in range(procs):
            started.append(subprocess.Popen(
                [sys.executable, script, str(os.getpid()), str(seed + i)], env=env,
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
        for p in started:
            line = p.stdout.readline()  # blocks until the process is in its loop (or died)
            if line.strip() != "ready":
                raise RuntimeError(f"load process {p.pid} failed to start (see its stderr)")
    except BaseException:
        _stop(started)
        raise
    return started


def stop(procs):
    """End the load started by ``start`` (terminate, then kill after 5 s)."""
    _stop(procs)


@contextlib.contextmanager
def background_load(kind="mixed", procs=None, seed=0):
    """Run the block beside a background load of ``kind`` (see the module doc); ``kind=None``
    runs it without one. The load is ended on exit, whatever happens in the block."""
    if kind is None:
        yield []
        return
    running = start(kind, procs, seed)
    try:
        yield running
    finally:
        _stop(running)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS, nargs="?", default="mixed")
    parser.add_argument("--procs", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with background_load(args.kind, args.procs):
        print(f"{args.kind} load running for {args.seconds:g} s", flush=True)
        time.sleep(args.seconds)


if __name__ == "__main__":
    main()
