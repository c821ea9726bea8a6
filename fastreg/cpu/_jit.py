"""The one place that fixes how CPU kernels are compiled and launched.

Compiled lazily (nothing at import), cached on disk (``cache=True``), no fastmath (exact tests
compare bit for bit), NumPy's error model, no C-callable wrapper (fastreg never takes a kernel's
address).

Every kernel that Python launches is run in *shares*: ``split(fn)`` is ``fn(*args, t, T)``,
which runs share ``t`` of ``T`` of its work items; ``stepped(fn)`` is ``fn(*args, steps, t,
T)``, whose ``steps`` (three ints, NO_STEP for none) run one after the other, each in its own
round of shares (batch norm: the sums, then the coefficients, then the normalization). A kernel
is compiled once, serially, without ``prange``, and releases the GIL. ``launch(kernel, nthreads,
*args)`` runs it on the calling thread as share 0 of 1 when ``nthreads`` is 1 (the decision of
``fastreg._threads.plan``), else in ``nthreads`` shares on the calling thread and fastreg's own
sleeping Python threads (``_Shares``). Both give the same bits: a kernel's result may not depend
on how its work is split.

Why not Numba's ``parallel=True``: a ``prange`` body is compiled into a function of its own,
which Numba links into three more libraries and optimizes and emits again in each (four times
in all: 2.4 of a parallel batch-norm kernel's 3.5 s of compile), and every kernel then had a
serial and a parallel version to compile. Python threads compile nothing. Measured on the
2-vCPU Xeon VM: they wake faster than Numba's passive OpenMP pool (batch norm forward,
(8, 64, 16, 16), 2 threads: 136-141 against 184-211 us; dropout on 2^18 float32: 185-212
against 207-230 us), and a share that a busy machine keeps a worker from starting is run by
the calling thread instead of waited for. Numba's threading layer is never started.
"""
import os
import threading
import types

import numba

from .. import _threads
from . import _cache

_cache.guard()  # processes that fill Numba's cache at the same time keep every signature

# no_cfunc_wrapper: fastreg never takes a kernel's C address, and the wrapper is code to compile
# (about 0.1 s of a batch-norm kernel's first call)
_OPTIONS = dict(cache=True, error_model="numpy", no_cfunc_wrapper=True)

jit = numba.njit(**_OPTIONS)
inline = numba.njit(inline="always", **_OPTIONS)
nogil_jit = numba.njit(nogil=True, **_OPTIONS)  # stepped kernels: their shares run at once
# Helpers called only from compiled code: no CPython wrapper to compile with them either. Numba
# types such a helper once per signature (an ``inline`` one is typed again at every call site)
# and LLVM still inlines it where that pays.
inner = numba.njit(no_cpython_wrapper=True, **_OPTIONS)


def _renamed(fn, suffix):
    """``fn`` under the name ``fn.__name__ + suffix``. Numba's on-disk cache is keyed by the
    function's qualified name and bytecode, not by its compile options: a version compiled with
    other options needs a name of its own, or the two would load each other's machine code."""
    renamed = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                                 fn.__defaults__, fn.__closure__)
    renamed.__qualname__ = fn.__qualname__ + suffix
    renamed.__module__ = fn.__module__
    return renamed


NO_STEP = -1  # an unused entry of a stepped kernel's ``steps``


class _Step:
    """One step of a launch: its shares, who runs them, its errors. Everything the threads of a
    step share lives here, not in ``_Shares``, so that a step left early (an exception or a
    KeyboardInterrupt in the launching thread) cannot leave a released lock, a running share or
    an error behind for a later step."""

    __slots__ = ("kernel", "args", "count", "next", "running", "waiting", "done", "errors")

    def __init__(self, kernel, args, count):
        self.kernel, self.args, self.count = kernel, args, count
        self.next = 0            # next share to claim
        self.running = 0         # shares a worker is running
        self.waiting = False     # the launching thread sleeps on ``done``
        self.done = threading.Lock()
        self.done.acquire()
        self.errors = []


class _Shares:
    """The Python threads that run the shares of the kernels, next to the calling thread.

    Per step, the shares are claimed one at a time, by the calling thread and by the workers it
    woke, whoever is free first; the calling thread runs shares until none is left, then waits
    only for shares a worker is running. A worker that wakes late (its core busy with other
    work) finds nothing left and goes back to sleep: a busy machine makes a launch serial, not
    stalled. Workers are started at first use and sleep on a lock between launches (no
    spinning). The kernels release the GIL (``nogil``), so shares run at once.

    A step starts after every share of the previous one has returned, also when the launching
    thread is interrupted (the interrupt is raised once they have). One launch at a time: a
    launch from another Python thread while one runs is run serially on its own thread (the
    same bits: a stepped kernel's result does not depend on its split). A forked child starts
    with no workers (they do not survive ``fork``)."""

    def __init__(self):
        # held by the launch in progress; an RLock for its _is_owned() (see run_steps)
        self.busy = threading.RLock()
        self.local = threading.local()  # .active: this thread runs a launch
        self.mutex = threading.Lock()   # guards ``step`` and the claims of its fields
        self.workers = []               # each worker's wake-up lock (held while it sleeps)
        self.step = None                # the _Step whose shares may be claimed, or None

    def _claim(self, step):
        """The next share of ``step`` for the launching thread, or -1."""
        with self.mutex:
            if step.next >= step.count:
                return -1
            step.next += 1
            return step.next - 1

    def _work(self, wake):
        while True:
            wake.acquire()
            while True:
                with self.mutex:
                    step = self.step
                    if step is None or step.next >= step.count:
                        break
                    t = step.next
                    step.next += 1
                    step.running += 1
                try:
                    step.kernel(*step.args, t, step.count)
                except BaseException as e:  # re-raised by the launching thread
                    step.errors.append(e)
                with self.mutex:
                    step.running -= 1
                    if step.running == 0 and step.waiting:
                        step.waiting = False
                        step.done.release()

    def _wake(self, count):
        while len(self.workers) < count:
            wake = threading.Lock()
            wake.acquire()
            try:
                threading.Thread(target=self._work, args=(wake,), daemon=True,
                                 name=f"fastreg-share-{len(self.workers) + 1}").start()
            except RuntimeError:  # no thread to be had (a limit): the caller runs what is left
                break
            self.workers.append(wake)  # (after start: a thread that failed to start is no worker)
        for wake in self.workers[:count]:
            try:
                wake.release()
            except RuntimeError:  # already woken, not asleep yet: it will look for shares
                pass

    def _wait(self, step):
        """Until every share of ``step`` that a worker runs has returned (they write into the
        caller's arrays). An exception from a signal handler meanwhile (KeyboardInterrupt) is
        raised after that."""
        interrupted = None
        while True:
            try:
                step.done.acquire()
                break
            except BaseException as e:
                interrupted = e
                with self.mutex:
                    if step.running == 0:  # (raised after the lock was taken)
                        break
        if interrupted is not None:
            raise interrupted

    def _step(self, kernel, args, count):
        step = _Step(kernel, args, count)
        try:
            with self.mutex:
                self.step = step
            self._wake(count - 1)
            while True:
                t = self._claim(step)
                if t < 0:
                    break
                kernel(*args, t, count)
        finally:  # every share has returned before anything else runs
            with self.mutex:
                step.next = step.count  # (after an exception: no worker starts another)
                self.step = None
                wait = step.waiting = step.running > 0
            if wait:
                self._wait(step)
        if step.errors:
            raise step.errors[0]

    def run(self, kernel, args, count):
        """``kernel(*args[:-1], (step, NO_STEP, NO_STEP), t, count)`` for each step of
        ``args[-1]`` and each share t < count; True, or False (nothing run) when another
        launch holds the workers."""
        return self.run_steps(kernel, [args[:-1] + ((int(step), NO_STEP, NO_STEP),)
                                       for step in args[-1] if step != NO_STEP], count)

    def run_steps(self, kernel, steps, count):
        """``kernel(*args, t, count)`` for each ``args`` of ``steps`` in turn and each share
        t < count; True, or False (nothing run) when another launch holds the workers."""
        busy, local = self.busy, self.local
        if getattr(local, "active", False):
            return False   # a launch from a share of this thread's launch: run it serially
        try:
            local.active = True
            # A KeyboardInterrupt can land right after acquire() or _is_owned() returned,
            # before the next line: the lock then stayed with this thread. It has no launch
            # running (checked above), so a lock it owns here is such a leftover: freed.
            while busy._is_owned():
                busy.release()
            if not busy.acquire(blocking=False):
                return False
            for args in steps:
                self._step(kernel, args, count)
            return True
        finally:
            local.active = False
            if busy._is_owned():
                busy.release()

    def after_fork_in_child(self):
        self.__init__()


_shares = _Shares()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shares.after_fork_in_child)


class Stepped:
    """A kernel run in shares (see the module's text): ``.serial``, the kernel compiled once
    (it releases the GIL); ``run_parallel`` runs its shares on ``_Shares``' threads. A
    ``split`` kernel is ``fn(*args, t, T)``, one step; a ``stepped`` one ``fn(*args, steps, t,
    T)``, whose parallel run gives each step of ``steps`` (three ints, NO_STEP for none) its
    own round of shares."""

    def __init__(self, fn, steps):
        self.py_func = fn
        self.steps = steps
        # (named apart from the versions without ``nogil`` that earlier fastreg releases cached)
        self.serial = nogil_jit(_renamed(fn, "__nogil"))

    def __call__(self, *args):
        """Run serially (every step, one share)."""
        return self.run_serial(args)

    def run_serial(self, args):
        return self.serial(*args, 0, 1)

    def run_parallel(self, args, nthreads):
        ran = (_shares.run(self.serial, args, nthreads) if self.steps
               else _shares.run_steps(self.serial, [args], nthreads))
        if not ran:  # another Python thread's launch holds the workers
            self.run_serial(args)


def stepped(fn):
    """Decorator: ``fn(*args, steps, t, T)`` as a ``Stepped`` kernel: share t of T of each
    step's work items, steps one after the other."""
    return Stepped(fn, steps=True)


def split(fn):
    """Decorator: ``fn(*args, t, T)`` as a ``Stepped`` kernel of one step: share t of T of its
    work items (work items whose results do not depend on how they are split)."""
    return Stepped(fn, steps=False)


#: launches so far by path, for tests that check which one ran (plain int adds, no lock: a
#: count lost to a race between Python threads only makes a test that runs them fail loudly)
launches = {"serial": 0, "parallel": 0}


def launch(kernel, nthreads, *args):
    """Run ``kernel`` (split or stepped) with ``nthreads`` threads: on the calling thread when 1.
    NUMBA_NUM_THREADS caps the count (NUMBA_NUM_THREADS=1 keeps the backend on one thread, as it
    did when the kernels ran on Numba's pool)."""
    if nthreads > 1:
        nthreads = min(nthreads, numba.config.NUMBA_NUM_THREADS)
    if nthreads <= 1:
        launches["serial"] += 1
        return kernel.run_serial(args)
    launches["parallel"] += 1
    _threads.mark_parallel()
    return kernel.run_parallel(args, nthreads)
