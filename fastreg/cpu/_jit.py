"""The one place that fixes how CPU kernels are compiled and launched.

Compiled lazily (nothing at import), cached on disk (``cache=True``), no fastmath (exact tests
compare bit for bit), NumPy's error model.

``twin(fn)`` compiles one source twice: ``.parallel`` (``parallel=True``, its ``prange`` loops
spread over Numba's threads) and ``.serial`` (``prange`` is ``range``; never enters Numba's
threading layer). ``launch(kernel, nthreads, *args)`` runs the serial twin when ``nthreads`` is 1
(the decision of ``fastreg._threads.plan``), else the parallel one with exactly ``nthreads``
threads. Both give the same bits: a kernel's result may not depend on how its work is split.
"""
import threading
import types

import numba

from .. import _threads

_OPTIONS = dict(cache=True, error_model="numpy")

jit = numba.njit(**_OPTIONS)
pjit = numba.njit(parallel=True, **_OPTIONS)
inline = numba.njit(inline="always", **_OPTIONS)


class Twin:
    """A kernel compiled serially (``.serial``) and in parallel (``.parallel``), both lazily."""

    def __init__(self, fn):
        self.py_func = fn
        self.parallel = pjit(fn)
        # Numba's on-disk cache is keyed by the function's qualified name and bytecode, not by
        # its compile options: the serial twin needs a name of its own, or the two would load
        # each other's machine code.
        serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "__serial",
                                       fn.__defaults__, fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "__serial"
        serial_fn.__module__ = fn.__module__
        self.serial = jit(serial_fn)

    def __call__(self, *args):
        """Run serially (the kernel's own call with no plan: small work, tests)."""
        return self.serial(*args)


def twin(fn):
    """Decorator: ``fn`` compiled as a ``Twin`` (serial and parallel)."""
    return Twin(fn)


# Numba's "workqueue" threading layer aborts the process when two Python threads enter a
# parallel region at once; under it, parallel launches are serialized by this lock. Until the
# layer is known (it is chosen at the first parallel launch) the lock is held as well.
_launch_lock = threading.Lock()
_layer_safe = None  # None: unknown yet; True: omp or tbb (thread-safe); False: workqueue


def _layer_is_safe():
    global _layer_safe
    if _layer_safe is None:
        try:
            layer = numba.threading_layer()
        except ValueError:  # not launched yet
            return False
        _layer_safe = layer != "workqueue"
    return _layer_safe


#: launches so far by path, for tests that check which one ran (plain int adds, no lock: a
#: count lost to a race between Python threads only makes a test that runs them fail loudly)
launches = {"serial": 0, "parallel": 0}


def launch(kernel, nthreads, *args):
    """Run ``kernel`` (a Twin) with ``nthreads`` threads: serially when 1 (or when Numba's pool,
    NUMBA_NUM_THREADS, has a single thread)."""
    if nthreads > 1:
        nthreads = min(nthreads, numba.config.NUMBA_NUM_THREADS)
    if nthreads <= 1:
        launches["serial"] += 1
        return kernel.serial(*args)
    launches["parallel"] += 1
    _threads.mark_parallel()
    if _layer_is_safe():
        return _run_parallel(kernel, nthreads, args)
    with _launch_lock:
        return _run_parallel(kernel, nthreads, args)


_pool_started = False


def _run_parallel(kernel, nthreads, args):
    global _pool_started
    if not _pool_started:
        # Numba loads its threading layer (for "omp": the OpenMP runtime) at the first
        # parallel call: let that runtime start with a passive wait policy (see _threads)
        with _threads.passive_openmp():
            numba.get_num_threads()  # launches the layer
        _pool_started = True
    previous = numba.get_num_threads()
    if previous != nthreads:
        numba.set_num_threads(nthreads)
    try:
        return kernel.parallel(*args)
    finally:
        if previous != nthreads:
            numba.set_num_threads(previous)
