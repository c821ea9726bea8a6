"""How many threads an op may use: decided here, in Python, once per call, for every backend.

Policy (PyTorch's ``at::parallel_for`` is the model):

* Work below its family's grain (``GRAIN``) runs on the calling thread: the Numba backend calls
  the serially compiled twin of the kernel, the C backend skips its OpenMP region. No thread pool
  is touched, so a small op never waits for a core that another process holds.
* Above it, ``min(get_num_threads(), ceil(work / grain))`` threads: no more than the work pays for.
* In a child forked after this process ran a parallel region, everything runs serially (GNU
  OpenMP's thread pool does not survive ``fork``; torch's DataLoader workers do the same).
* ``get_num_threads()`` defaults to the CPUs this process may run on (``os.sched_getaffinity``,
  so ``taskset`` and container CPU sets count), capped by ``OMP_NUM_THREADS`` and
  ``NUMBA_NUM_THREADS`` when they are set; ``FASTREG_NUM_THREADS`` overrides all of them.

``set_num_threads(n)`` changes the process-wide default; ``with threads(n):`` overrides it for the
calling Python thread only and restores it on exit (so a worker thread can run single-threaded
without touching the main thread's setting).
"""
import contextlib
import math
import os
import threading

# Elements (or bytes, where the family says so) of work per thread below which a second thread
# does not pay for waking it. Measured on the 2-core EPYC VM (see bench/ and the README).
GRAIN = {
    "elementwise": 32768,   # penalties, prox steps, optimizer steps: per element a few flops
    "random": 16384,        # Philox words: ~10x the arithmetic of an elementwise op
    "batchnorm": 32768,     # per pass over x
    "augment": 65536,       # bytes of image per thread
}

_default = None                 # set_num_threads() value; None: the environment's default
_local = threading.local()      # .override: the innermost ``threads(n)`` of this Python thread
_parallel_used = False          # a parallel region has run in this process
_forked_after_parallel = False  # this process is a fork child of one that had run one


def _env_int(name):
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value.split(",")[0])  # OMP_NUM_THREADS may be a list per nesting level
    except ValueError:
        return None
    return n if n >= 1 else None


def available_cpus():
    """CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_num_threads():
    """The thread count before any set_num_threads: FASTREG_NUM_THREADS, else the available CPUs
    capped by OMP_NUM_THREADS and NUMBA_NUM_THREADS."""
    forced = _env_int("FASTREG_NUM_THREADS")
    if forced is not None:
        return forced
    n = available_cpus()
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        cap = _env_int(name)
        if cap is not None:
            n = min(n, cap)
    return n


def _check_count(n, name="n"):
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import numpy as np
            ok = isinstance(n, np.integer)
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise TypeError(f"{name} must be a positive integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {n}")
    return n


def get_num_threads():
    """The most threads a fastreg op may use in the calling Python thread.

    Returns
    -------
    int
        The innermost ``threads(n)`` of this thread, else ``set_num_threads``'s value, else
        ``default_num_threads()``; 1 in a child forked after a parallel region.
    """
    if _forked_after_parallel:
        return 1
    n = getattr(_local, "override", None)
    if n is None:
        n = _default if _default is not None else default_num_threads()
    return n


def set_num_threads(n):
    """Set the process-wide number of threads fastreg's ops may use (Numba and C backends).

    Parameters
    ----------
    n : int
        At least 1. More than the CPUs available is allowed but rarely pays.

    Returns
    -------
    int
        The previous process-wide value.
    """
    global _default
    n = _check_count(n)
    previous = _default if _default is not None else default_num_threads()
    _default = n
    return previous


@contextlib.contextmanager
def threads(n):
    """Run the block with at most ``n`` threads per fastreg op, in this Python thread only.

    Parameters
    ----------
    n : int
        At least 1.

    Returns
    -------
    context manager
        Restores the previous setting on exit, also on an exception; nests.
    """
    n = _check_count(n)
    previous = getattr(_local, "override", None)
    _local.override = n
    try:
        yield n
    finally:
        _local.override = previous


def plan(work, family):
    """Threads to run ``work`` units of the op family ``family`` with: 1 means serially, on the
    calling thread, without entering a parallel region."""
    grain = GRAIN[family]
    if work < 2 * grain:
        return 1
    return max(1, min(get_num_threads(), math.ceil(work / grain)))


def mark_parallel():
    """Record that a parallel region ran (a later fork child then runs serially)."""
    global _parallel_used
    _parallel_used = True


def in_forked_child():
    """Whether this process was forked after its parent had run a parallel region."""
    return _forked_after_parallel


def _after_fork_in_child():
    global _forked_after_parallel
    _forked_after_parallel = _forked_after_parallel or _parallel_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
