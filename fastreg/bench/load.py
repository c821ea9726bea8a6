"""A reproducible background load, for timing ops on a busy machine (``fastreg bench --load``).

    from fastreg.bench.load import background_load
    with background_load("mixed"):          # 2 load processes on a 2-CPU machine
        ...                                 # time something while the load runs

Kinds (``procs`` processes, default: as many as this process may use CPUs):

``mixed``
    What a test suite running beside you does, the load under which a 15 us dropout took
    3.8-12 ms: each process loops over short Numba ``prange`` regions (2**15 float64, Numba's
    spinning OpenMP pool of one thread per CPU), a little serial NumPy work and a 0.5 ms sleep,
    like a test runner between tests. The load's threads wake up, spin and sleep thousands of times a second, so a
    parallel region of the measured process regularly waits for a worker the OS has not
    scheduled yet. (The same workload as the reproducer in the repository's bench/load.py.)
``spin``
    ``while True: pass`` in each process: plain busy loops, which did *not* reproduce that
    stall; kept for comparison.

Reproducible: fixed work per iteration, fixed seeds; the mixed kernel is compiled once into
Numba's cache (the first start takes a few seconds, later ones about one).

The load always ends: the processes are terminated when the ``with`` block exits (also on an
exception or Ctrl-C), at interpreter exit (``atexit``) for any ``start`` without ``stop``, and
each process exits by itself when its parent is gone (even after ``kill -9``). They run in a
session of their own, so a Ctrl-C at the terminal reaches only the benchmark, which ends them.
"""
import atexit
import contextlib
import os
import select
import subprocess
import sys
import time

KINDS = ("mixed", "spin")
# run by path: the worker imports NumPy and Numba, not fastreg (no sys.path to pass on)
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_load_worker.py")
READY_TIMEOUT = 120.0   # seconds for a load process to start (the first compiles a kernel)

_running = []           # processes started and not yet stopped, ended at exit
_atexit_registered = False


def default_procs():
    """Load processes by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def describe(kind, procs=None):
    """One line saying what the load is, for a report."""
    procs = default_procs() if procs is None else procs
    what = {"mixed": "short Numba parallel regions + NumPy + 0.5 ms sleeps",
            "spin": "busy loops"}[kind]
    return f"{kind} x{procs} ({what})"


def _check(kind, procs):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    procs = default_procs() if procs is None else procs
    if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
        raise ValueError(f"procs must be an integer >= 1, got {procs!r}")
    return procs


def _wait_ready(proc, deadline):
    """Block until ``proc`` prints its ready line; RuntimeError if it dies or takes too long."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"load process {proc.pid} not ready after {READY_TIMEOUT:g} s")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if readable:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:   # end of file: it exited
                raise RuntimeError(f"load process {proc.pid} failed to start "
                                   f"(exit status {proc.wait()})")


def start(kind="mixed", procs=None, seed=0):
    """Start the load and return its processes once every one runs its loop; end them with
    ``stop`` (or leave that to ``background_load``).

    Parameters
    ----------
    kind : {"mixed", "spin"}
        See the module doc.
    procs : int, optional
        Number of load processes (default: ``default_procs()``).
    seed : int
        Process i uses seed ``seed + i``.

    Returns
    -------
    list of subprocess.Popen

    Raises
    ------
    ValueError
        An unknown kind, or procs < 1.
    RuntimeError
        A load process failed to start (the others are ended first).
    """
    global _atexit_registered
    procs = _check(kind, procs)
    if not _atexit_registered:
        atexit.register(_stop_all)
        _atexit_registered = True
    # the load's threads: one per CPU, whatever --threads or the environment set for the
    # benchmark, so the same load runs on the same machine every time
    cpus = str(default_procs())
    env = dict(os.environ, NUMBA_NUM_THREADS=cpus, OMP_NUM_THREADS=cpus)
    started = []
    try:
        for i in range(procs):
            proc = subprocess.Popen(
                [sys.executable, _WORKER, kind, str(os.getpid()), str(int(seed) + i)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=env,
                start_new_session=True)
            started.append(proc)
            _running.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT
        for proc in started:
            _wait_ready(proc, deadline)
    except BaseException:
        stop(started)
        raise
    return started


def stop(procs):
    """End load processes: terminate, then kill any still running after 5 s; wait for all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in _running:
            _running.remove(proc)


def _stop_all():
    stop(list(_running))


@contextlib.contextmanager
def background_load(kind="mixed", procs=None, seed=0):
    """Run the ``with`` block beside a background load (see ``start``); ``kind=None`` runs it
    without one. The load is ended when the block exits, whatever happens in it.

    Yields
    ------
    list of subprocess.Popen
        The load processes (empty without a load).
    """
    if kind is None:
        yield []
        return
    running = start(kind, procs, seed)
    try:
        yield running
    finally:
        stop(running)


def main(argv=None):
    """``python -m fastreg.bench.load [mixed|spin] [--procs N] [--seconds S]``: the load
    alone, e.g. beside another shell."""
    import argparse

    from fastreg._cli import positive_float, positive_int
    parser = argparse.ArgumentParser(prog="python -m fastreg.bench.load",
                                     description="Run fastreg's benchmark background load.")
    parser.add_argument("kind", choices=KINDS, nargs="?", default="mixed")
    parser.add_argument("--procs", type=positive_int, default=None)
    parser.add_argument("--seconds", type=positive_float, default=60.0)
    args = parser.parse_args(argv)
    with background_load(args.kind, args.procs):
        print(f"load {describe(args.kind, args.procs)} running for {args.seconds:g} s",
              flush=True)
        time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
