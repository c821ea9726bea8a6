"""The one place that fixes how CPU kernels are compiled and launched.

Compiled lazily (nothing at import), cached on disk (``cache=True``), no fastmath (exact tests
compare bit for bit), NumPy's error model.

``twin(fn)`` compiles one source twice: ``.parallel`` (``parallel=True``, its ``prange`` loops
spread over Numba's threads) and ``.serial`` (``prange`` is ``range``; never enters Numba's
threading layer). ``launch(kernel, nthreads, *args)`` runs the serial twin when ``nthreads`` is 1
(the decision of ``fastreg._threads.plan``), else the parallel one with exactly ``nthreads``
threads. Both give the same bits: a kernel's result may not depend on how its work is split.

``stepped(fn)`` is the other kind of kernel, for big kernels (batch norm, DropBlock's mask,
the colour augmentations): ``fn(a0, ..., a5, steps, t, T)`` (six argument slots, ``()`` for an
unused one) runs share ``t`` of ``T`` of each of its ``steps``' work items, with no ``prange``.
It is compiled once, serially. ``.serial`` runs every step with one share; ``.parallel`` runs
``_stepped_driver``: per step, a ``prange`` over T shares, each calling the kernel through its
address (an int argument). A ``prange`` body is compiled into a function of its own, which Numba
links into three more libraries and optimizes and emits again in each (four times in all: 2.4 of
a parallel batch-norm kernel's 3.5 s of compile). Through an address the kernel's code is
compiled once, and the parallel version adds a driver of a few lines.
"""
import threading
import types

import numba
import numpy as np
from numba import prange
from numba._dispatcher import compute_fingerprint
from numba.core import types as nbtypes
from numba.extending import intrinsic

from .. import _threads

_OPTIONS = dict(cache=True, error_model="numpy")

jit = numba.njit(**_OPTIONS)
pjit = numba.njit(parallel=True, **_OPTIONS)
inline = numba.njit(inline="always", **_OPTIONS)
# Helpers called only from compiled code: no CPython or C wrapper to compile with them. Numba
# types such a helper once per signature (an ``inline`` one is typed again at every call site)
# and LLVM still inlines it where that pays.
inner = numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True, **_OPTIONS)


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

    def run_serial(self, args):
        return self.serial(*args)

    def run_parallel(self, args, nthreads):
        return self.parallel(*args)


def twin(fn):
    """Decorator: ``fn`` compiled as a ``Twin`` (serial and parallel)."""
    return Twin(fn)


NO_STEP = -1  # an unused entry of a stepped kernel's ``steps``


@intrinsic
def _call_at(typingctx, address, args):
    """Call the compiled function at ``address`` (its Numba entry point) with the values of the
    tuple ``args``, and return whether it raised: a call that Numba's linker does not see, so
    the function's code is not compiled into the caller again. The function must take exactly
    ``args``' types and return None. (An exception inside a ``prange`` is lost: the caller
    raises its own after the loop.)"""
    argtys = tuple(args.types)

    def codegen(context, builder, signature, llargs):
        values = [builder.extract_value(llargs[1], i) for i in range(len(argtys))]
        fnptr = builder.inttoptr(llargs[0], context.call_conv.get_function_type(
            nbtypes.none, argtys).as_pointer())
        status, _ = context.call_conv.call_function(builder, fnptr, nbtypes.none, argtys,
                                                    values)
        return status.is_error

    return nbtypes.boolean(address, args), codegen


@numba.njit(parallel=True, **_OPTIONS)
def _stepped_driver(address, a0, a1, a2, a3, a4, a5, steps, nthreads):
    """Each step of ``steps`` in turn (NO_STEP: none), its work split in ``nthreads`` shares run
    in parallel: the kernel at ``address`` (_SteppedParallel) called as ``kernel(a0, ..., a5,
    (step, NO_STEP, NO_STEP), t, nthreads)`` for share t."""
    failed = np.zeros(nthreads, np.bool_)
    for s in range(len(steps)):
        if steps[s] != NO_STEP:
            one = (np.int64(steps[s]), np.int64(NO_STEP), np.int64(NO_STEP))
            for t in prange(nthreads):  # (t: uint64)
                failed[t] = _call_at(address, (a0, a1, a2, a3, a4, a5, one, np.int64(t),
                                               nthreads))
            if failed.any():
                raise RuntimeError("a stepped kernel raised in a parallel share (run it with "
                                   "one thread, fastreg.threads(1), to see its exception)")


class _SteppedParallel:
    """The parallel version of a stepped kernel: ``_stepped_driver`` with the address of the
    kernel compiled for the arguments' types. ``signatures`` (argument types of the kernel) and
    ``compile(argtypes)`` as a dispatcher's, for fastreg.warmup."""

    def __init__(self, serial):
        self._serial = serial
        self._addresses = {}  # fingerprint of the arguments -> the kernel's address
        self.signatures = []

    def _address(self, sig):
        """The kernel's entry point for ``sig``, compiled (or loaded) first."""
        # compile() with the argument types, as a call from Python does: Numba's disk cache is
        # keyed by what compile() gets, and get_compile_result() alone would pass the Signature
        # (the serial and parallel runs would then store and miss each other's machine code)
        self._serial.compile(tuple(sig.args))
        cres = self._serial.get_compile_result(sig)
        if tuple(sig.args) not in self.signatures:
            self.signatures.append(tuple(sig.args))
        return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)

    def compile(self, argtypes):
        """Compile (or load) the kernel and the driver for the kernel's argument types
        ``argtypes`` (as in a dispatcher's ``signatures``)."""
        self._address(nbtypes.none(*argtypes))
        _stepped_driver.compile((nbtypes.int64,) + tuple(argtypes[:-3]) + (
            nbtypes.UniTuple(nbtypes.int64, 3), nbtypes.int64))

    def __call__(self, args, nthreads):
        if not isinstance(self._serial, numba.core.dispatcher.Dispatcher):
            # NUMBA_DISABLE_JIT: plain Python, the shares one after the other
            try:
                for step in args[-1]:
                    if step != NO_STEP:
                        for t in range(nthreads):
                            self._serial(*args[:-1], (step, NO_STEP, NO_STEP), t, nthreads)
            except Exception as e:  # as the compiled driver reports it
                raise RuntimeError("a stepped kernel raised in a parallel share") from e
            return None
        try:
            key = compute_fingerprint(args)
        except (TypeError, ValueError, NotImplementedError):
            key = None
        address = self._addresses.get(key) if key is not None else None
        if address is None:
            # the types the driver passes: its own arguments', steps as (int64,) * 3, t, T
            sig = nbtypes.none(*[numba.typeof(a) for a in args[:-1]],
                               nbtypes.UniTuple(nbtypes.int64, 3), nbtypes.int64, nbtypes.int64)
            address = self._address(sig)
            if key is not None:
                self._addresses[key] = address
        return _stepped_driver(address, *args, nthreads)


class Stepped:
    """A stepped kernel (see the module's text): ``.serial``, the kernel compiled once;
    ``.parallel``, the driver that runs its shares on Numba's threads.

    The parallel version finds the kernel's address by the arguments' fingerprint, which does
    not tell a Python int that fits in int64 from a bigger one (typed uint64): pass such values
    as NumPy scalars. ``steps``: three ints. An exception raised with run-time values inside a
    parallel share leaks Numba's record of it (a fixed message does not); fastreg's kernels do
    not raise."""

    def __init__(self, fn):
        self.py_func = fn
        self.serial = jit(fn)
        self.parallel = _SteppedParallel(self.serial)

    def __call__(self, *args):
        """Run serially (every step, one share)."""
        return self.serial(*args, 0, 1)

    def run_serial(self, args):
        return self.serial(*args, 0, 1)

    def run_parallel(self, args, nthreads):
        return self.parallel(args, nthreads)


def stepped(fn):
    """Decorator: ``fn`` (``fn(a0, ..., a5, steps, t, T)``) as a ``Stepped`` kernel."""
    return Stepped(fn)


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
        return kernel.run_serial(args)
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
        return kernel.run_parallel(args, nthreads)
    finally:
        if previous != nthreads:
            numba.set_num_threads(previous)
