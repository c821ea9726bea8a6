"""Stepped kernels (fastreg/cpu/_jit.py) and Numba's on-disk cache: the serial call and the
parallel version run one compiled kernel, so one process's compile must serve the other's call.

The serial call compiles through the dispatcher (cache key: the argument types); the parallel
version asked ``get_compile_result(Signature)``, which Numba 0.68 compiles, looks up and saves
under the full ``Signature`` (return type included): a different key, so a kernel compiled by a
small (serial) call, or by ``fastreg warmup``, was compiled again by the first parallel call of
the next process, and the other way round.

The second half reviews the thread pool that runs the shares (``_jit._Shares``) for races and
deadlocks. Its kernels there are Python callables (``run`` calls any callable), so that a test
can hold a share, or the launching thread, at a chosen point: ``_Probe`` stands in for the
``threading`` module that ``_jit`` sees and lets a test act when the launching thread leaves the
pool's mutex, releases a lock or is about to block on one (a thread may be preempted, or
interrupted by a signal, at any of those points).
"""
import json
import os
import subprocess
import sys
import threading
import time

import numba
import pytest

from fastreg.cpu import _jit

_needs_jit = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="needs Numba's compiler")


@_jit.stepped
def _copy_twice(arrays, a1, a2, a3, a4, tile, steps, t, T):
    x, out = arrays
    for step in steps:
        if step == _jit.NO_STEP:
            continue
        for i in range(t * x.size // T, (t + 1) * x.size // T):
            out[i] = x[i] * tile[0]


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_stepped_review as m
from fastreg.cpu import _jit
e = np.empty(0)
for dtype, nthreads in {runs!r}:
    x = np.arange(64, dtype=dtype)
    out = np.zeros_like(x)
    _jit.launch(m._copy_twice, nthreads, (x, out), e, e, e, e, (2,), (0, _jit.NO_STEP, _jit.NO_STEP))
    assert (out == 2 * x).all()
print(json.dumps({{"misses": sum(m._copy_twice.serial.stats.cache_misses.values()),
                  "parallel": _jit.launches["parallel"]}}))
"""


def _child(cache_dir, runs):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), NUMBA_NUM_THREADS="2")
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)), runs=runs)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@_needs_jit
def test_a_kernel_compiled_serially_is_loaded_by_the_parallel_version_and_back(tmp_path):
    """Process 1 compiles the kernel serially for float32 and in parallel for float64; process
    2, with the same cache, runs them the other way round: it must load both, compile none."""
    first = _child(tmp_path, [("float32", 1), ("float64", 2)])
    assert first["misses"] == 2 and first["parallel"] == 1
    second = _child(tmp_path, [("float32", 2), ("float64", 1)])
    assert second["parallel"] == 1
    assert second["misses"] == 0, "the kernel was compiled again instead of loaded"


# --- the thread pool (_jit._Shares) -----------------------------------------------------------

_SAFETY = 20.0  # seconds: only a hang waits this long (every wait below ends on an event)


class _ProbeLock:
    """A threading.Lock whose launching-thread events call the probe's hooks."""

    def __init__(self, probe):
        self.probe = probe
        self.lock = threading.Lock()

    def _mine(self):
        return self.probe.caller == threading.get_ident()

    def acquire(self, blocking=True, timeout=-1):
        name = threading.current_thread().name
        if blocking and self.lock.locked():   # about to sleep on a held lock
            if not self._mine():
                self.probe.asleep.add(name)
            elif "block" in self.probe.hooks:
                self.probe.hooks["block"](self)
        try:
            return self.lock.acquire(blocking, timeout)
        finally:
            self.probe.asleep.discard(name)

    def release(self):
        self.lock.release()
        if self._mine() and "release" in self.probe.hooks:
            self.probe.hooks["release"](self)

    def locked(self):
        return self.lock.locked()

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()
        if "exit" in self.probe.hooks:
            self.probe.hooks["exit"](self, sys._getframe(1), self._mine())


class _Probe:
    """Stands in for the ``threading`` module in ``_jit`` (monkeypatched): its locks are
    _ProbeLocks, the rest is threading's. ``caller``: the launching thread's ident; ``asleep``:
    the names of the other threads sleeping on one of its locks now."""

    def __init__(self):
        self.hooks = {}
        self.caller = threading.get_ident()
        self.asleep = set()

    def settled(self):
        """Until every worker thread sleeps on a lock or has ended."""
        deadline = time.monotonic() + _SAFETY
        while time.monotonic() < deadline:
            if all(th.name in self.asleep or not th.is_alive()
                   for th in threading.enumerate() if th.name.startswith("fastreg-share")):
                return True
            time.sleep(0.001)
        return False

    def Lock(self):
        return _ProbeLock(self)

    def __getattr__(self, name):
        return getattr(threading, name)


@pytest.fixture
def probe(monkeypatch):
    p = _Probe()
    monkeypatch.setattr(_jit, "threading", p)
    return p


def _on_worker():
    return threading.current_thread().name.startswith("fastreg-share")


def _held_share(probe):
    """A kernel of two shares whose worker share returns only once the launching thread has
    either returned from the launch (``returned``, set by the test) or gone to sleep on a lock
    (waiting for that share, as it must). ``outlived`` records the first: the launch returned
    while a share still ran. The caller's share returns once the worker's has started, so the
    worker runs one share and the caller the other."""
    ev = dict(started=threading.Event(), go=threading.Event(), returned=threading.Event(),
              ended=threading.Event())
    outlived = []

    def kernel(tag, one, t, count):
        if _on_worker():
            ev["started"].set()
            assert ev["go"].wait(_SAFETY)
            outlived.append(ev["returned"].is_set())
            ev["ended"].set()
        else:
            assert ev["started"].wait(_SAFETY)
            if tag == "raise":
                raise KeyboardInterrupt  # raised by the caller's own share

    def block(lock):
        ev["go"].set()

    probe.hooks["block"] = block
    return kernel, ev, outlived


def _launch(shares, kernel, ev, tag=None, count=2):
    try:
        return shares.run(kernel, (tag, (0,)), count)
    finally:
        ev["returned"].set()
        ev["go"].set()
        if ev["started"].is_set():
            assert ev["ended"].wait(_SAFETY)  # (a worker's share that outlived the launch)


def test_an_exception_in_the_callers_own_share_waits_for_the_workers_share(probe):
    """KeyboardInterrupt raised by the launching thread's share while a worker runs the other:
    the launch raises it only after the worker's share returned, and the pool works after."""
    shares = _jit._Shares()
    kernel, ev, outlived = _held_share(probe)
    with pytest.raises(KeyboardInterrupt):
        _launch(shares, kernel, ev, "raise")
    assert outlived == [False]
    kernel, ev, outlived = _held_share(probe)
    assert _launch(shares, kernel, ev) is True
    assert outlived == [False]


def test_an_interrupted_wait_still_waits_and_leaves_the_pool_sound(probe):
    """KeyboardInterrupt while the launching thread sleeps waiting for a worker's share: the
    launch raises it once that share has returned, and the next launch waits for its own."""
    shares = _jit._Shares()
    kernel, ev, outlived = _held_share(probe)
    go = probe.hooks["block"]

    def interrupt(lock):  # SIGINT while the launching thread sleeps on a held lock
        probe.hooks["block"] = go
        raise KeyboardInterrupt

    probe.hooks["block"] = interrupt
    with pytest.raises(KeyboardInterrupt):
        _launch(shares, kernel, ev)
    second_kernel, second, second_outlived = _held_share(probe)
    assert _launch(shares, second_kernel, second) is True
    assert (outlived, second_outlived) == ([False], [False])


def test_a_worker_finishing_right_after_the_caller_decided_to_wait(probe):
    """The launching thread is preempted just after the mutex section in which it decided to
    wait for the worker's share; the worker finishes meanwhile. The next launch must still
    wait for its worker's share."""
    shares = _jit._Shares()
    started, go, booked = threading.Event(), threading.Event(), threading.Event()

    def kernel(tag, one, t, count):
        if _on_worker():
            started.set()
            assert go.wait(_SAFETY)
        else:
            assert started.wait(_SAFETY)

    def exit_hook(lock, frame, mine):
        if mine and frame.f_code.co_name == "_step" and started.is_set() and not go.is_set():
            go.set()                        # the launching thread is preempted here:
            assert booked.wait(_SAFETY)     # the worker returns and does its bookkeeping
        elif not mine and go.is_set():
            booked.set()

    probe.hooks["exit"] = exit_hook
    assert shares.run(kernel, (None, (0,)), 2) is True
    assert go.is_set() and booked.is_set()  # (the preemption happened)
    del probe.hooks["exit"]
    kernel, ev, outlived = _held_share(probe)
    assert _launch(shares, kernel, ev) is True
    assert outlived == [False]


_INTERRUPTED_WAKE = """
import sys, threading
sys.path.insert(0, {tests!r})
import test_stepped_review as m
from fastreg.cpu import _jit
probe = m._Probe()
_jit.threading = probe
shares = _jit._Shares()
warm, meet = threading.Semaphore(0), threading.Barrier(2)
def both(tag, one, t, count):  # each worker runs a share: both wake-ups are consumed
    if m._on_worker():
        warm.release()
        meet.wait(m._SAFETY)
    else:
        assert warm.acquire(timeout=m._SAFETY) and warm.acquire(timeout=m._SAFETY)
assert shares.run(both, (None, (0,)), 3)  # two workers now
assert probe.settled()                    # both asleep
started, go = threading.Event(), threading.Event()
def kernel(tag, one, t, count):
    if m._on_worker():
        started.set()
        assert go.wait(m._SAFETY)
releases = []
def release(lock):  # SIGINT just after the launching thread woke the first worker
    releases.append(lock)
    if len(releases) == 2:
        assert started.wait(m._SAFETY)
        raise KeyboardInterrupt
probe.hooks["release"] = release
probe.hooks["block"] = lambda lock: go.set()
try:
    shares.run(kernel, (None, (0,)), 3)
except KeyboardInterrupt:
    pass
else:
    raise AssertionError("no KeyboardInterrupt")
go.set()
probe.hooks.clear()
assert probe.settled()  # the workers have run what they found and sleep (or have died)
done = []
def later():
    done.append(shares.run(lambda *a: None, (None, (0, 1)), 3))
th = threading.Thread(target=later, daemon=True)
th.start()
th.join({timeout})
print("ok" if done == [True] else "hang")
"""


def test_an_interrupt_while_waking_the_workers_does_not_hang_the_next_launch():
    code = _INTERRUPTED_WAKE.format(tests=os.path.dirname(os.path.abspath(__file__)), timeout=5)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ok", done.stderr


def test_a_workers_exception_is_raised_once_and_stops_the_launch():
    """A share that raises on a worker: the launch raises it after that step (no later step
    runs), and it does not leak into the next launch."""
    shares = _jit._Shares()
    ran = []
    lock = threading.Lock()

    def kernel(tag, one, t, count):
        if _on_worker():
            with lock:
                ran.append((one[0], t))
            if tag == "raise" and one[0] == 0:
                raise ValueError("from a worker")
        else:
            deadline = time.monotonic() + _SAFETY  # (a safety bound only)
            while not any(step == one[0] for step, _ in ran) and time.monotonic() < deadline:
                time.sleep(0.0005)  # the worker takes the other share
            with lock:
                ran.append((one[0], t))

    with pytest.raises(ValueError, match="from a worker"):
        shares.run(kernel, ("raise", (0, 1, 2)), 2)
    assert sorted(ran) == [(0, 0), (0, 1)]
    ran.clear()
    assert shares.run(kernel, (None, (0, 1)), 2) is True
    assert sorted(ran) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_launch_from_inside_a_share_runs_serially_not_deadlocked():
    """A share (on the launching thread or on a worker) that launches again: the inner launch
    finds the workers held and returns False at once (its caller then runs it serially)."""
    shares = _jit._Shares()
    inner = []
    lock = threading.Lock()

    def kernel(tag, one, t, count):
        result = shares.run(lambda *a: None, (None, (0,)), 2)
        with lock:
            inner.append(result)

    assert shares.run(kernel, (None, (0, 1)), 3) is True
    assert inner == [False] * 6


def test_many_steps_and_share_counts_every_share_once_in_step_order():
    """Launches of many steps with 2, 3 and 4 shares (workers started by a larger launch wake
    late into smaller ones): each share of each step runs exactly once, and no share of a step
    starts before every share of the previous step has returned."""
    shares = _jit._Shares()
    lock = threading.Lock()
    state = {"step": -1, "left": 0, "bad": []}
    seen = []

    def kernel(tag, one, t, count):
        step = one[0]
        with lock:
            if state["left"] == 0 and state["step"] == step - 1:
                state["step"], state["left"] = step, count
            elif state["step"] != step:
                state["bad"].append((step, t))
            seen.append((tag, step, t))
        time.sleep(0)
        with lock:
            state["left"] -= 1

    for launch, count in enumerate([2, 4, 3, 2, 4, 2]):
        state["step"], state["left"] = -1, 0
        steps = tuple(range(60)) + (_jit.NO_STEP,)
        assert shares.run(kernel, (launch, steps), count) is True
        assert state["left"] == 0 and state["step"] == 59
    assert state["bad"] == []
    expected = [(launch, s, t) for launch, count in enumerate([2, 4, 3, 2, 4, 2])
                for s in range(60) for t in range(count)]
    assert sorted(seen) == sorted(expected)


_FORK_DURING_LAUNCH = """
import os, sys, threading
sys.path.insert(0, {tests!r})
import test_stepped_review as m
from fastreg.cpu import _jit
started, go = threading.Event(), threading.Event()
def held(tag, one, t, count):
    if m._on_worker():
        started.set()
        assert go.wait(m._SAFETY)
    else:
        assert started.wait(m._SAFETY)
result = []
th = threading.Thread(target=lambda: result.append(_jit._shares.run(held, (None, (0,)), 2)))
th.start()
assert started.wait(m._SAFETY)       # a launch of another thread holds the workers
pid = os.fork()
if pid == 0:
    ran = []
    def share(tag, one, t, count):
        ran.append((m._on_worker(), t))
    try:
        ok = _jit._shares.run(share, (None, (0, 1)), 2) is True and len(ran) == 4
    except BaseException:
        ok = False
    os._exit(0 if ok else 1)
go.set()
th.join(m._SAFETY)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert result == [True]
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_during_another_threads_launch():
    """fork() while another thread's launch holds the workers (and a worker runs a share): the
    child's pool starts free, with workers of its own, and its launch completes."""
    code = _FORK_DURING_LAUNCH.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


class _NoThread(threading.Thread):
    def start(self):
        raise RuntimeError("can't start new thread")


def test_a_worker_that_cannot_start_makes_the_launch_serial_not_failed(probe):
    shares = _jit._Shares()
    ran = []
    probe.Thread = _NoThread
    assert shares.run(lambda tag, one, t, count: ran.append((one[0], t)), (None, (0, 1)), 2)
    assert sorted(ran) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    del probe.Thread                 # threads can be had again: the next launch starts one
    kernel, ev, outlived = _held_share(probe)
    assert _launch(shares, kernel, ev) is True
    assert outlived == [False]
