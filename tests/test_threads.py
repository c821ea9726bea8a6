"""Threads: the policy of fastreg._threads (grain, set_num_threads, threads()), and that every
kernel of the host backends gives the same bits on its serial path (below the grain: the calling
thread, no thread pool) and on its parallel one, with the path that ran checked each time."""
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastreg
from fastreg import _registry, _threads
from fastreg.train import trainer as _trainer

from conftest import bits

# the fastreg under test (site-packages when installed): subprocesses import that one
ROOT = Path(fastreg.__file__).resolve().parents[1]
HOST = ("cpu", "c")


def _run_python(code, *args, timeout=240, **env):
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=full, timeout=timeout)


@pytest.fixture(params=HOST)
def host(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


# --- the settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                      ("2", TypeError), (True, TypeError), (None, TypeError),
                                      (np.bool_(True), TypeError)])
def test_thread_counts_are_validated(bad, exc):
    before = fastreg.get_num_threads()
    with pytest.raises(exc, match="n must be a positive integer"):
        fastreg.set_num_threads(bad)
    with pytest.raises(exc, match="n must be a positive integer"):
        with fastreg.threads(bad):
            pass
    assert fastreg.get_num_threads() == before


def test_set_num_threads_returns_previous_and_threads_restores():
    first = fastreg.set_num_threads(3)
    try:
        assert fastreg.get_num_threads() == 3
        assert fastreg.set_num_threads(np.int64(2)) == 3
        with fastreg.threads(1):
            assert fastreg.get_num_threads() == 1
            with fastreg.threads(5):
                assert fastreg.get_num_threads() == 5
            assert fastreg.get_num_threads() == 1
        with pytest.raises(RuntimeError):
            with fastreg.threads(4):
                raise RuntimeError("inside")
        assert fastreg.get_num_threads() == 2
    finally:
        fastreg.set_num_threads(first)


def test_one_threads_object_entered_again_restores_each_level():
    """The same threads(n) object entered inside its own block, and by two Python threads at
    once: each exit restores what its own enter found."""
    outside = fastreg.get_num_threads()
    t = fastreg.threads(1)
    with t:
        with fastreg.threads(3):
            with t:
                assert fastreg.get_num_threads() == 1
            assert fastreg.get_num_threads() == 3
        assert fastreg.get_num_threads() == 1
    assert fastreg.get_num_threads() == outside and _threads._local.override is None
    inside, release, seen = threading.Event(), threading.Event(), {}

    def worker():
        with fastreg.threads(5):
            with t:
                inside.set()
                release.wait(10)
            seen["worker"] = fastreg.get_num_threads()

    th = threading.Thread(target=worker)
    th.start()
    inside.wait(10)
    with t:
        release.set()
        th.join()
    assert seen == {"worker": 5} and fastreg.get_num_threads() == outside
    assert not t._saved

    def block():
        with fastreg.threads(1):
            yield

    gen = block()
    th = threading.Thread(target=next, args=(gen,))   # entered in another thread
    th.start()
    th.join()
    gen.close()   # exited here: that thread's setting is not this one's to restore
    assert fastreg.get_num_threads() == outside


def test_set_num_threads_overrides_a_bad_environment(monkeypatch):
    """A bad FASTREG_NUM_THREADS is refused where the count is read; an explicit
    set_num_threads takes effect anyway (returning None: there was no valid value)."""
    monkeypatch.setattr(_threads, "_default", None)
    monkeypatch.setenv("FASTREG_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="FASTREG_NUM_THREADS"):
        fastreg.get_num_threads()
    assert fastreg.set_num_threads(1) is None
    assert fastreg.get_num_threads() == 1
    assert fastreg.set_num_threads(2) == 1


def test_threads_context_is_per_python_thread():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker():
        with fastreg.threads(1):
            seen["worker"] = fastreg.get_num_threads()
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    with fastreg.threads(7):
        t.start()
        inside.wait(10)
        seen["main"] = fastreg.get_num_threads()
        release.set()
        t.join()
    assert seen == {"worker": 1, "main": 7}


def test_environment_defaults(monkeypatch):
    monkeypatch.setattr(_threads, "_default", None)
    monkeypatch.delenv("FASTREG_NUM_THREADS", raising=False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1,4")  # a list per nesting level: the first counts
    assert fastreg.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert fastreg.get_num_threads() == _threads.available_cpus()
    monkeypatch.setenv("FASTREG_NUM_THREADS", "3")  # overrides the others, and the CPU count
    assert fastreg.get_num_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("FASTREG_NUM_THREADS", bad)
        for _ in range(2):  # a refused value is not remembered as parsed
            with pytest.raises(ValueError, match="FASTREG_NUM_THREADS"):
                fastreg.get_num_threads()
    # the parse is kept between calls (os.environ.get costs ~0.6 us a name): every change and
    # removal must still be seen at the next call
    monkeypatch.delenv("FASTREG_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fastreg.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert fastreg.get_num_threads() == 1
    os.environ["NUMBA_NUM_THREADS"] = "64"   # plain assignment, as a user would
    assert fastreg.get_num_threads() == _threads.available_cpus()
    del os.environ["NUMBA_NUM_THREADS"]
    assert fastreg.get_num_threads() == _threads.available_cpus()


def _c_backend():
    """fastreg.c, or None where the C backend is unavailable."""
    if fastreg.available_backends()["c"] is not None:
        return None
    import fastreg.c as fc
    return fc


def _c_plan_setup(monkeypatch, value):
    """fastreg.c (the test skips without it) and work above every grain of "elementwise", with
    no set_num_threads and FASTREG_NUM_THREADS=value."""
    fc = _c_backend()
    if fc is None:
        pytest.skip("C backend unavailable")
    monkeypatch.setattr(_threads, "_default", None)
    monkeypatch.setenv("FASTREG_NUM_THREADS", value)
    return fc, 64 * _threads.GRAIN["elementwise"]


def _c_plan(monkeypatch, fc, work, family, spinning, pool_spins):
    """The counts (workers asleep, spinning) that fastreg.c._plan sets in C for a pool family,
    with the OpenMP team spinning or not and the pool's workers spinning or not."""
    monkeypatch.setattr(fc, "SPINNING", spinning)
    monkeypatch.setattr(fc, "_pool_spins", pool_spins)
    n = fc._plan(work, family)
    cold, hot = fc.lib.fr_get_threads(), fc.lib.fr_get_hot_threads()
    assert n == max(cold, hot)
    return cold, hot


@pytest.mark.parametrize("source", ["threads", "set_num_threads", "default", "fork child"])
def test_plan_pair_is_two_plans(monkeypatch, source):
    """The C backend's pool families plan both counts with one read of the thread count (the
    arithmetic written out in plan_pair, and in C, fr_plan_pool, on the count it keeps): the
    same answers as two plans, whichever setting gives the count, also with a grain shrunk below
    the spin grain (as tests do)."""
    fc = _c_backend()
    monkeypatch.setattr(_threads, "_default", None)
    if source == "fork child":
        monkeypatch.setattr(_threads, "_forked_after_parallel", True)
    for shrink in (False, True):
        if shrink:
            monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)
        for fam in ("elementwise", "random"):
            g, sg = _threads.GRAIN[fam], _threads.SPIN_GRAIN[fam]
            for n in (1, 2, 3, 8):
                if source == "set_num_threads":
                    monkeypatch.setattr(_threads, "_default", n)
                elif source == "default":
                    monkeypatch.setenv("FASTREG_NUM_THREADS", str(n))
                with (fastreg.threads(n) if source == "threads" else contextlib.nullcontext()):
                    for work in (0, 1, 31, 32, sg, 2 * sg - 1, 2 * sg, 5 * sg + 3, 2 * g - 1,
                                 2 * g, 7 * g, 100 * g):
                        for a in (False, True):
                            for b in (False, True):
                                assert _threads.plan_pair(work, fam, a, b) == (
                                    _threads.plan(work, fam, a), _threads.plan(work, fam, b))
                        if fc is not None:   # the C backend plans the same in C
                            for a, b in ((False, False), (False, True), (True, False),
                                         (True, True)):
                                assert _c_plan(monkeypatch, fc, work, fam, a, b) == (
                                    _threads.plan(work, fam, a), _threads.plan(work, fam, b))


def test_c_plan_sees_every_change_of_the_count_at_once(monkeypatch):
    """The C backend keeps the thread count per thread for its pool families' plans
    (fr_plan_pool): a new value of any of the three variables in os.environ, threads(n)
    entered and left, set_num_threads, fastreg's own affinity change and a fork child's serial
    rule are each planned with at the next call; the count read from the affinity mask stands
    no longer than that read (AFFINITY_TTL); each Python thread keeps its own; counts and grains
    beyond int64 are planned in Python."""
    fc = _c_backend()
    if fc is None:
        pytest.skip("C backend unavailable")
    monkeypatch.setattr(_threads, "_default", None)
    for name in ("FASTREG_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    g = _threads.GRAIN["elementwise"]
    big = 64 * g

    def planned():
        expected = (_threads.plan(big, "elementwise", fc.SPINNING),
                    _threads.plan(big, "elementwise", fc._pool_spins))
        assert _c_plan(monkeypatch, fc, big, "elementwise", fc.SPINNING,
                       fc._pool_spins) == expected
        return expected[0]

    cpus = _threads.available_cpus()
    assert planned() == min(cpus, 64)
    for text, n in (("5", 5), ("5", 5), ("7", 7), ("3", 3)):
        monkeypatch.setenv("FASTREG_NUM_THREADS", text)
        assert planned() == n
    os.environ["FASTREG_NUM_THREADS"] = "6"   # plain assignment, as a user would
    assert planned() == 6
    del os.environ["FASTREG_NUM_THREADS"]
    assert planned() == min(cpus, 64)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert planned() == 1
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert planned() == 1
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    assert planned() == min(cpus, 64)
    with fastreg.threads(9):
        assert planned() == 9
        with fastreg.threads(4):
            assert planned() == 4
        assert planned() == 9
    assert planned() == min(cpus, 64)
    fastreg.set_num_threads(11)
    try:
        assert planned() == 11
        monkeypatch.setattr(_threads, "_forked_after_parallel", True)
        assert planned() == 1
        monkeypatch.setattr(_threads, "_forked_after_parallel", False)
        assert planned() == 11
    finally:
        _threads._default = None
    assert planned() == min(cpus, 64)
    # fastreg's affinity change, and the age limit of the read (a mask changed by anyone)
    monkeypatch.setattr(_threads, "_cgroup_cache", (1,))
    _threads._forget_affinity()
    assert planned() == 1
    monkeypatch.setattr(_threads, "AFFINITY_TTL", 0.05)
    monkeypatch.setattr(_threads, "_cgroup_cache", (None,))
    _threads._forget_affinity()
    assert planned() == min(cpus, 64)
    monkeypatch.setattr(_threads, "_cgroup_cache", (1,))   # unseen until the read ages
    time.sleep(0.06)
    assert planned() == 1
    monkeypatch.setattr(_threads, "_cgroup_cache", (None,))
    _threads._forget_affinity()
    # per Python thread, with its own count kept in C
    seen = {}

    def worker():
        with fastreg.threads(3):
            seen["worker"] = planned()

    with fastreg.threads(2):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen["main"] = planned()
    assert seen == {"worker": 3, "main": 2}
    with fastreg.threads(2 ** 70):   # beyond int64: Python's plan_pair
        assert planned() == 64
    # grains beyond int64's halves, beyond int64, and 0 (an error, as plan() gives)
    for grain in (2 ** 62, 2 ** 63 - 1, 2 ** 70):
        monkeypatch.setitem(_threads.GRAIN, "elementwise", grain)
        assert _c_plan(monkeypatch, fc, big, "elementwise", False, False) == (1, 1)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 0)
    with pytest.raises(ZeroDivisionError):
        fc._plan(big, "elementwise")
    monkeypatch.setitem(_threads.GRAIN, "elementwise", g)
    monkeypatch.setattr(_threads, "AFFINITY_TTL", 1e300)   # an age limit beyond int64 ns
    _threads._forget_affinity()
    assert planned() == min(cpus, 64)


def test_c_plan_keeps_no_count_read_from_values_changed_and_put_back(monkeypatch):
    """Another thread sets a variable while this one reads the count and puts back the very
    value object seen before (one-character values are shared objects): the count read from
    the intermediate value plans this call at most, and is not kept in C under the settings
    seen, where the environment looks unchanged."""
    fc, big = _c_plan_setup(monkeypatch, "5")
    assert fc._plan(big, "elementwise") == 5
    real = _threads.get_num_threads_until
    reads = []

    def meanwhile():   # the other thread's writes, between the settings' generation and the read
        os.environ["FASTREG_NUM_THREADS"] = "7"
        try:
            reads.append(real())
            return reads[-1]
        finally:
            os.environ["FASTREG_NUM_THREADS"] = "5"

    monkeypatch.setattr(_threads, "get_num_threads_until", meanwhile)
    _threads._forget_affinity()   # the next plan reads the count
    fc._plan(big, "elementwise")
    assert reads and reads[0][0] == 7
    monkeypatch.setattr(_threads, "get_num_threads_until", real)
    for _ in range(3):
        assert fc._plan(big, "elementwise") == 5 == _threads.plan(big, "elementwise")


def test_c_plan_follows_the_environment_written_by_other_threads(monkeypatch):
    """A Python thread rewriting the variables while this one plans: no crash (the C plan reads
    no environment: cffi calls run without the GIL, beside setenv in another thread), and once
    the writes stop, the next plan follows the last value."""
    fc, big = _c_plan_setup(monkeypatch, "3")
    stop = threading.Event()

    def writer():
        k = 0
        while not stop.is_set():
            os.environ["FASTREG_NUM_THREADS"] = ("3", "5")[k % 2]
            os.environ["OMP_NUM_THREADS"] = str(64 + k % 3)
            k += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert fc._plan(big, "elementwise") in (3, 5)
    finally:
        stop.set()
        t.join()
    for value in ("7", "3", "5"):
        os.environ["FASTREG_NUM_THREADS"] = value
        assert fc._plan(big, "elementwise") == int(value)
    monkeypatch.delenv("OMP_NUM_THREADS")


def test_default_count_is_kept_only_while_its_sources_hold(monkeypatch):
    """default_num_threads keeps its answer per thread: a new value of any of its variables
    (even the same text, set again), a removal, and fastreg's own affinity change are each seen
    at the next call, in this thread and in another."""
    monkeypatch.setattr(_threads, "_default", None)
    for name in ("FASTREG_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    cpus = _threads.available_cpus()
    assert _threads.default_num_threads() == cpus
    monkeypatch.setenv("FASTREG_NUM_THREADS", "5")
    assert _threads.default_num_threads() == 5
    monkeypatch.setenv("FASTREG_NUM_THREADS", "5")
    assert _threads.default_num_threads() == 5
    monkeypatch.setenv("FASTREG_NUM_THREADS", "6")
    assert _threads.default_num_threads() == 6
    seen = []
    t = threading.Thread(target=lambda: seen.append(_threads.default_num_threads()))
    t.start()
    t.join()
    assert seen == [6]
    monkeypatch.delenv("FASTREG_NUM_THREADS")
    assert _threads.default_num_threads() == cpus
    # a changed affinity read (as after fastreg's pinning or a fork): the count is read again
    monkeypatch.setattr(_threads, "_cgroup_cache", (1,))
    _threads._forget_affinity()
    assert _threads.default_num_threads() == 1
    monkeypatch.undo()
    _threads._forget_affinity()
    assert _threads.default_num_threads() == _threads.available_cpus()


def test_available_cpus_within_affinity():
    n = _threads.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


_PIN_IN_CHILD = r"""
import os
import fastreg
from fastreg import _threads
n = fastreg.get_num_threads()          # the parent's read (kept 0.1 s)
pid = os.fork()
if pid == 0:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os._exit(0 if fastreg.get_num_threads() == 1 else 3)
_, status = os.waitpid(pid, 0)
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
_threads._forget_affinity()            # what fastreg's own pinning does (bench --pin)
print(n, os.waitstatus_to_exitcode(status), fastreg.get_num_threads())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not hasattr(os, "fork"),
                    reason="needs sched_setaffinity and fork")
def test_affinity_read_again_after_fork_and_after_pinning():
    """The affinity mask is kept 0.1 s per thread, but a fork child that pins itself at once
    sees its own mask (found by review: it inherited the parent's read), as does the thread
    after fastreg's own pinning."""
    if _threads.available_cpus() < 2:
        pytest.skip("one CPU: nothing to see")
    res = _run_python(_PIN_IN_CHILD)
    assert res.returncode == 0, res.stderr
    n, child, after = map(int, res.stdout.split())
    assert n >= 2 and child == 0 and after == 1


def test_plan():
    g = _threads.GRAIN["random"]
    with fastreg.threads(4):
        assert _threads.plan(0, "random") == 1
        assert _threads.plan(2 * g - 1, "random") == 1
        assert _threads.plan(2 * g, "random") == 2
        assert _threads.plan(3 * g + 5, "random") == 3
        assert _threads.plan(100 * g, "random") == 4
    with fastreg.threads(1):
        assert _threads.plan(100 * g, "random") == 1


@pytest.mark.parametrize("env, spins", [
    ({}, False), ({"OMP_WAIT_POLICY": "active"}, True), ({"OMP_WAIT_POLICY": " Active "}, True),
    ({"OMP_WAIT_POLICY": "passive"}, False), ({"GOMP_SPINCOUNT": "infinite"}, True),
    ({"GOMP_SPINCOUNT": "INFINITY"}, True), ({"GOMP_SPINCOUNT": "10000"}, False)])
def test_openmp_spins(env, spins):
    assert _threads.openmp_spins(env) is spins


def test_plan_with_a_spinning_team(monkeypatch):
    """A spinning team (the C backend under OMP_WAIT_POLICY=active) takes SPIN_GRAIN, which is
    smaller; a grain shrunk below it (as tests do) still counts."""
    for fam, g in _threads.SPIN_GRAIN.items():
        assert g < _threads.GRAIN[fam]
        with fastreg.threads(4):
            assert _threads.plan(2 * g - 1, fam, True) == 1
            assert _threads.plan(2 * g, fam, True) == 2
            assert _threads.plan(2 * g, fam) == 1
            assert _threads.plan(100 * g, fam, True) == 4
        with fastreg.threads(1):
            assert _threads.plan(100 * g, fam, True) == 1
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)
    with fastreg.threads(2):
        assert _threads.plan(32, "elementwise", True) == 2


_SPINNING = r"""
import numpy as np
import fastreg, fastreg.c
rng = np.random.default_rng(0)
w = rng.standard_normal(100_000).astype(np.float32)   # above 2 SPIN_GRAIN, below 2 GRAIN
x = rng.standard_normal((64, 256, 8)).astype(np.float32)
before = fastreg.c.parallel_regions()
g = fastreg.l2_grad(w, 0.25, backend="c")
y, _ = fastreg.batch_norm(x, training=True, backend="c")
d = fastreg.dropout(w, 0.3, seed=1, backend="c")
regions = fastreg.c.parallel_regions() - before
assert np.array_equal(g, fastreg.l2_grad(w, 0.25, backend="numpy"))
assert np.array_equal(d, fastreg.dropout(w, 0.3, seed=1, backend="numpy"))
ref, _ = fastreg.batch_norm(x, training=True, backend="numpy")
assert np.allclose(y, ref, rtol=1e-5, atol=1e-5)
print(fastreg.c.SPINNING, regions)
"""


@pytest.mark.parametrize("policy, expected", [("active", "True 3"), ("passive", "False 0"),
                                              (None, "False 0")])
def test_c_backend_takes_the_spin_grain_when_told_to_spin(policy, expected):
    """With OMP_WAIT_POLICY=active (the user's choice: fastreg starts OpenMP with a short spin)
    mid-size
    ops enter a parallel region on the C backend; otherwise they run serially. Same results."""
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(FASTREG_NUM_THREADS="2", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    res = subprocess.run([sys.executable, "-c", _SPINNING], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected


def test_trainer_threads_use_fastreg_threads():
    outside = fastreg.get_num_threads()
    with _trainer._thread_limits(1, "auto"):
        assert fastreg.get_num_threads() == 1
    assert fastreg.get_num_threads() == outside
    with _trainer._thread_limits(None, "auto"):
        assert fastreg.get_num_threads() == outside
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        with _trainer._thread_limits(0, "auto"):
            pass


def test_trainer_restores_threads_when_fit_raises_before_its_first_epoch():
    """fit's warning about an interrupted fit, raised as an error (a warnings filter), leaves
    no thread setting of fit's behind."""
    import warnings

    from fastreg import optim
    from fastreg.train import Trainer, mlp

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, 32)
    model = mlp((4, 3, 2), seed=0)
    tr = Trainer(model, optim.SGD(model.parameters(), lr=0.1), seed=0, verbose=0, threads=1)
    tr._partial_epoch = 0   # as an interrupted fit leaves it
    outside = fastreg.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="interrupted"):
            tr.fit(X, y, epochs=1, batch_size=16)
    assert fastreg.get_num_threads() == outside and _threads._local.override is None


# --- same bits on both paths, and the path that ran ----------------------------------------------

RNG = np.random.default_rng(12)
N = 3 * 65536 + 5  # several Numba tasks and C tiles; not a multiple of any block


def _f(dtype, n=N, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, n).astype(dtype)


def _images(dtype=np.uint8, shape=(5, 40, 33, 3)):
    if dtype == np.uint8:
        return RNG.integers(0, 256, shape, dtype=np.uint8)
    return RNG.uniform(0, 1, shape).astype(dtype)


def _cases():
    """op -> builder; builder() -> (args maker, outputs to compare). The maker returns fresh
    copies each time (kernels write in place)."""
    cases = []

    def add(name, op, family, make, outputs):
        cases.append(pytest.param(op, family, make, outputs, id=name))

    f32, f64 = np.float32, np.float64
    add("random_bits", "random_bits", "random",
        lambda: (5, 7, np.empty(N, np.uint32)), [2])
    for dt in (f32, f64):
        add(f"uniform-{dt.__name__}", "uniform", "random",
            lambda dt=dt: (5, 7, np.empty(N, dt)), [2])
        x = _f(dt)
        add(f"dropout-{dt.__name__}", "dropout", "random",
            lambda x=x, dt=dt: (x.copy(), 9, 3, 1 << 30, dt(1 / 0.75), np.empty_like(x)), [5])
        add(f"dropout-inplace-{dt.__name__}", "dropout", "random",
            lambda x=x, dt=dt: (lambda y: (y, 9, 3, 1 << 30, dt(1 / 0.75), y))(x.copy()), [0])
    ctr = RNG.integers(0, 2**32, (N // 4, 4), dtype=np.uint32)
    key = RNG.integers(0, 2**32, (N // 4, 2), dtype=np.uint32)
    add("philox4x32", "philox4x32", "random",
        lambda: (ctr, key, np.empty((N // 4, 4), np.uint32)), [2])
    add("dropout_mask", "dropout_mask", "random",
        lambda: (9, 3, 1 << 31, np.empty(N, np.uint8)), [3])
    add("dropout_mask_packed", "dropout_mask_packed", "random",
        lambda: (9, 3, 1 << 31, N, np.empty((N + 7) // 8, np.uint8)), [4])
    xg = _f(f32, 6 * 50 * 7 * 97).reshape(6, 50, 7, 97)
    keep = RNG.integers(0, 2, (6, 7), dtype=np.uint8)
    add("group_dropout", "group_dropout", "elementwise",
        lambda: (xg, keep, f32(2), np.empty_like(xg)), [3])
    xc = _f(f32, 6 * 9000 * 7).reshape(6, 9000, 7, 1)
    add("group_dropout-channels-last", "group_dropout", "elementwise",
        lambda: (xc, keep, f32(2), np.empty_like(xc)), [3])
    for dt in (f32, f64):
        w = _f(dt)
        w[::1000] = 0
        add(f"penalty_sums-{dt.__name__}", "penalty_sums", "elementwise", lambda w=w: (w,), None)
        for l1, c2, acc in ((0.1, 0.0, False), (0.0, 0.2, True), (0.1, 0.2, False)):
            add(f"penalty_grad-{dt.__name__}-{l1}-{c2}-{acc}", "penalty_grad", "elementwise",
                lambda w=w, dt=dt, l1=l1, c2=c2, acc=acc: (
                    w, dt(l1), dt(c2), np.full_like(w, 0.5), acc), [3])
        add(f"soft_threshold-{dt.__name__}", "soft_threshold", "elementwise",
            lambda w=w, dt=dt: (w, dt(0.3), dt(0.9), np.empty_like(w)), [3])
        add(f"soft_threshold-inplace-{dt.__name__}", "soft_threshold", "elementwise",
            lambda w=w, dt=dt: (lambda y: (y, dt(0.3), dt(0.9), y))(w.copy()), [0])
        wg = _f(dt, 40 * 30 * 171).reshape(40, 30, 171)
        add(f"group_lasso-{dt.__name__}", "group_lasso", "elementwise",
            lambda wg=wg: (wg, 5.5, np.empty_like(wg)), [2])
        wr = _f(dt, 300 * 700).reshape(300, 700, 1)
        add(f"group_lasso-rows-{dt.__name__}", "group_lasso", "elementwise",
            lambda wr=wr: (wr, 14.0, np.empty_like(wr)), [2])
        bad = w.copy()
        bad[N - 3] = np.inf
        add(f"all_finite-{dt.__name__}", "all_finite", "elementwise", lambda w=w: (w,), None)
        add(f"all_finite-inf-{dt.__name__}", "all_finite", "elementwise",
            lambda bad=bad: (bad,), None)
        g = _f(dt)
        add(f"sgd_step-{dt.__name__}", "sgd_step", "elementwise",
            lambda w=w, g=g, dt=dt: (w.copy(), g, w[::-1].copy(), dt(0.1), dt(0.01), dt(1),
                                     dt(0.9), dt(0.9), True, False, dt(0.001)), [0, 2])
        add(f"adam_step-{dt.__name__}", "adam_step", "elementwise",
            lambda w=w, g=g, dt=dt: (w.copy(), g, g * 0.1, g * g, g * g * 2, dt(0), dt(0.99),
                                     dt(0.1), dt(0.999), dt(0.001), dt(1e-8), dt(1e-3),
                                     dt(0.3)), [0, 2, 3, 4])
    img = _images()
    m = img.shape[0]
    hf = np.array([1, 0, 1, 1, 0], np.uint8)
    vf = np.array([0, 0, 1, 1, 1], np.uint8)
    add("aug_flip", "aug_flip", "augment", lambda: (img, hf, vf, np.empty_like(img)), [3])
    ang = RNG.uniform(-0.5, 0.5, m)
    mats = np.stack([np.array([[np.cos(a), -np.sin(a), 3.0], [np.sin(a), np.cos(a), -2.0]])
                     for a in ang])
    for dt in (np.uint8, np.float32):
        im = _images(dt)
        for nearest in (False, True):
            add(f"aug_affine-{np.dtype(dt).name}-{'nearest' if nearest else 'bilinear'}",
                "aug_affine", "augment",
                lambda im=im, nearest=nearest: (im, mats, 1, 7, nearest, np.empty_like(im)), [5])
        flat = im.reshape(m, -1)
        stds = RNG.uniform(0, 20, m).astype(np.float32)
        add(f"aug_noise-{np.dtype(dt).name}", "aug_noise", "augment",
            lambda flat=flat, stds=stds: (flat, 99, 4, stds, np.empty_like(flat)), [4])
        partner = np.array([4, 0, 1, 2, 3], np.int64)
        lam = RNG.uniform(0, 1, m).astype(np.float32)
        add(f"aug_mix-{np.dtype(dt).name}", "aug_mix", "augment",
            lambda flat=flat, lam=lam, partner=partner: (flat, partner, lam,
                                                         np.empty_like(flat)), [3])
    rects = np.array([[3, 4, 10, 20], [0, 0, 40, 33], [5, 30, 8, 8], [0, 0, 0, 0],
                      [39, 32, 1, 1]], np.int64)
    add("aug_erase", "aug_erase", "augment", lambda: (img, rects, 17, np.empty_like(img)), [3])
    add("aug_paste", "aug_paste", "augment",
        lambda: (img, np.array([1, 2, 3, 4, 0], np.int64), rects, np.empty_like(img)), [3])
    return cases


def _result(ret, args, outputs):
    if outputs is None:
        return ret
    return [np.array(args[i], copy=True) for i in outputs]


def _same(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and u.shape == v.shape
            if u.dtype.kind == "f":
                np.testing.assert_array_equal(bits(u), bits(v))
            else:
                np.testing.assert_array_equal(u, v)
    else:
        assert a == b or (a != a and b != b), (a, b)


def _close(got, ref):
    if isinstance(got, list):
        for u, v in zip(got, ref):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    elif isinstance(got, tuple):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    else:
        assert got == ref


def _path_counter(backend):
    """A function returning (serial, parallel) launches so far on ``backend``."""
    if backend == "c":
        import fastreg.c as fc
        return lambda: (None, fc.parallel_regions())
    from fastreg.cpu import _jit
    return lambda: (_jit.launches["serial"], _jit.launches["parallel"])


@pytest.mark.parametrize("op, family, make, outputs", _cases())
def test_serial_and_parallel_paths_give_the_same_bits(host, op, family, make, outputs,
                                                      monkeypatch):
    """Every kernel with the grain shrunk: 1 thread (serial path) and 2 threads (parallel path,
    several tasks each) give identical bits, which match the reference (within the reductions'
    rounding where the contract allows it)."""
    for fam in _threads.GRAIN:
        monkeypatch.setitem(_threads.GRAIN, fam, 16)
    kernel = _registry.get(op, host)
    count = _path_counter(host)
    results = {}
    serial_only = host == "cpu" and op == "philox4x32"  # a plain @jit loop on the cpu backend
    for n in (1, 2):
        args = make()
        before = count()
        with fastreg.threads(n):
            ret = kernel(*args)
        after = count()
        results[n] = _result(ret, args, outputs)
        if n == 1 and host == "c":
            assert after[1] == before[1], "a serial call entered a parallel region"
        elif n == 1 and not serial_only:
            assert (after[0] - before[0], after[1] - before[1]) == (1, 0)
        elif n == 2 and not serial_only:
            assert after[1] > before[1], "2 threads above the grain ran serially"
    _same(results[1], results[2])
    args = make()
    ref = _result(_registry.get(op, "numpy")(*args), args, outputs)
    if op in ("penalty_sums", "group_lasso"):  # float64 sums in another order (the contract)
        _close(results[1], ref)
    else:
        _same(results[1], ref)


@pytest.mark.parametrize("n", [1, 17, 5003, 40_000])
def test_c_elementwise_splits_short_arrays_into_lines(n, stream_stores, monkeypatch):
    """Below one tile per thread the C elementwise driver splits the work into runs of whole
    64-byte lines (streamed or not): still the reference's bits."""
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    import fastreg.c as fc
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 1)
    w = _f(np.float32, n)
    for op, make in (("penalty_grad", lambda: (w, np.float32(0.1), np.float32(0.2),
                                               np.empty_like(w), False)),
                     ("soft_threshold", lambda: (w, np.float32(0.3), np.float32(1),
                                                 np.empty_like(w)))):
        args = make()
        before = fc.parallel_regions()
        with fastreg.threads(2):
            _registry.get(op, "c")(*args)
        if n >= 5003:
            assert fc.parallel_regions() > before
        expected = make()
        _registry.get(op, "numpy")(*expected)
        np.testing.assert_array_equal(bits(args[-2 if op == "penalty_grad" else -1]),
                                      bits(expected[-2 if op == "penalty_grad" else -1]))


def test_default_grain_keeps_small_ops_serial(host, monkeypatch):
    """The issue's small ops (dropout on 64x128, l2_grad on 1e5, an AdamW step on 1e5) never
    reach a parallel region with the shipped GRAIN, even with threads to spare; a large one
    does. (On the C backend, with its pool's threads asleep: while they spin, the elementwise
    kernels take SPIN_GRAIN, tests/test_pool.py.)"""
    if host == "c":
        import fastreg.c as fc
        monkeypatch.setattr(fc, "_pool_spins", False)
    count = _path_counter(host)
    x = _f(np.float32, 64 * 128).reshape(64, 128)
    w = _f(np.float32, 100_000)
    opt = fastreg.optim.AdamW([w.copy()], backend=host)
    with fastreg.threads(2):
        before = count()
        fastreg.dropout(x, 0.5, seed=1, backend=host)
        fastreg.l2_grad(w, 1e-4, backend=host)
        opt.step([w])
        assert count()[1] == before[1]
        big = _f(np.float32, 2 * _threads.GRAIN["random"])
        fastreg.dropout(big, 0.5, seed=1, backend=host)
        assert count()[1] > before[1]


def test_threadpoolctl_openmp_limit_caps_the_c_backend(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    import fastreg.c as fc
    monkeypatch.setitem(_threads.GRAIN, "random", 16)
    x = _f(np.float32)
    expected = fastreg.dropout(x, 0.5, seed=3, backend="numpy")
    with fastreg.threads(2), threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fc.omp_max_threads() == 1
        before = fc.parallel_regions()
        got = fastreg.dropout(x, 0.5, seed=3, backend="c")
        assert fc.parallel_regions() == before
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_concurrent_calls_from_python_threads(host, monkeypatch):
    """Python threads calling ops at once, each with its own thread count (the C backend's count
    is thread-local): every result is right."""
    monkeypatch.setitem(_threads.GRAIN, "random", 64)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 64)
    xs = [_f(np.float32, 50_000 + i) for i in range(4)]
    expected = [(fastreg.dropout(x, 0.3, seed=i, backend="numpy"),
                 fastreg.l2_grad(x, 0.1, backend="numpy")) for i, x in enumerate(xs)]
    errors = []

    def work(i):
        try:
            with fastreg.threads(1 + i % 2):
                for _ in range(10):
                    d = fastreg.dropout(xs[i], 0.3, seed=i, backend=host)
                    g = fastreg.l2_grad(xs[i], 0.1, backend=host)
                    np.testing.assert_array_equal(d, expected[i][0])
                    np.testing.assert_array_equal(g, expected[i][1])
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[0]


# --- processes ---------------------------------------------------------------------------------

def test_fr_set_threads_rejects_bad_counts():
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    from fastreg.c import lib
    assert lib.fr_set_threads(0) != 0 and lib.fr_set_threads(-3) != 0
    assert lib.fr_set_threads(1) == 0 and lib.fr_get_threads() == 1


_WAIT_POLICY = r"""
import os, sys
if sys.argv[1:] == ["torch"]:
    import torch  # brings its own GNU OpenMP, loaded before fastreg's
import fastreg.c
from fastreg import _threads
print(os.environ.get("OMP_WAIT_POLICY", "-"), os.environ.get("GOMP_SPINCOUNT", "-"),
      _threads.openmp_start.split()[0])
"""


def _openmp_settings(stderr):
    """{name: value} from what GNU OpenMP prints under OMP_DISPLAY_ENV=verbose."""
    out = {}
    for line in stderr.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep and name.isupper():
            out.setdefault(name, value.strip("'"))
    return out


# GNU OpenMP reports OMP_WAIT_POLICY as PASSIVE unless it is ACTIVE, also for its default (spin
# GOMP_SPINCOUNT = 300000 times, then sleep): the spin count tells the policies apart.
@pytest.mark.parametrize("setting, spin", [(None, str(_threads.OPENMP_SPINCOUNT)),
                                           (("OMP_WAIT_POLICY", "active"), "30000000000"),
                                           (("OMP_WAIT_POLICY", "passive"), "0"),
                                           (("GOMP_SPINCOUNT", "1234"), "1234"),
                                           ("torch", "300000")])
def test_c_backend_starts_openmp_with_a_bounded_spin_unless_told(setting, spin, monkeypatch):
    """The OpenMP runtime fastreg loads starts with GOMP_SPINCOUNT=OPENMP_SPINCOUNT (a short spin,
    not GNU's default 300000, nor passive, which slows a torch sharing the runtime), unless the
    user chose a policy or the runtime was loaded before (here by torch, which keeps its
    default); the environment is left as it was."""
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    env = {"OMP_DISPLAY_ENV": "verbose"}
    args = []
    if setting == "torch":
        pytest.importorskip("torch")
        args = ["torch"]
    elif setting is not None:
        env[setting[0]] = setting[1]
    res = _run_python(_WAIT_POLICY, *args, **env)
    assert res.returncode == 0, res.stderr
    shown = _openmp_settings(res.stderr)
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("this OpenMP runtime does not display GNU OpenMP's settings")
    assert shown["GOMP_SPINCOUNT"] == spin
    policy, count, start = res.stdout.split()
    assert policy == (setting[1] if setting and setting[0] == "OMP_WAIT_POLICY" else "-")
    assert count == (setting[1] if setting and setting[0] == "GOMP_SPINCOUNT" else "-")
    # what `fastreg info` prints about it
    assert start == {None: "started", "torch": "loaded"}.get(setting, "as")


_WORKQUEUE = r"""
import threading
import numpy as np
import numba
import fastreg
from fastreg import _threads
for fam in _threads.GRAIN:
    _threads.GRAIN[fam] = 16
rng = np.random.default_rng(0)
xs = [rng.standard_normal(200_003).astype(np.float32) for _ in range(4)]
expected = [fastreg.dropout(x, 0.3, seed=i, backend="numpy") for i, x in enumerate(xs)]
grads = [fastreg.l2_grad(x, 0.1, backend="numpy") for x in xs]
errors = []

def work(i):
    try:
        with fastreg.threads(2):
            for _ in range(15):
                got = fastreg.dropout(xs[i], 0.3, seed=i, backend="cpu")
                assert np.array_equal(got, expected[i])
                assert np.array_equal(fastreg.l2_grad(xs[i], 0.1, backend="cpu"), grads[i])
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
from fastreg.cpu import _jit
assert _jit.launches["parallel"] >= 60, _jit.launches
try:
    layer = numba.threading_layer()
except ValueError:  # Numba's threading layer was never started
    layer = "none"
print(layer, len(errors), errors[:1])
"""


def test_concurrent_calls_under_workqueue_layer():
    """Numba's workqueue layer aborts the process when two threads enter a parallel region at
    once. The cpu backend's kernels run in shares on fastreg's own threads and never start
    Numba's threading layer: concurrent calls from Python threads work under any layer (a
    launch while another holds the workers runs serially)."""
    if fastreg.available_backends()["cpu"] is not None:
        pytest.skip("cpu backend unavailable")
    res = _run_python(_WORKQUEUE, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[:2] == ["none", "0"], res.stdout


def test_cpu_launch_lock_left_by_an_interrupt_is_freed(monkeypatch):
    """A KeyboardInterrupt right after the launch lock was taken left it held by the calling
    thread, and every later cpu launch ran serially; the next launch now frees it."""
    if fastreg.available_backends()["cpu"] is not None:
        pytest.skip("cpu backend unavailable")
    from fastreg.cpu import _jit
    for fam in _threads.GRAIN:
        monkeypatch.setitem(_threads.GRAIN, fam, 16)
    x = np.arange(4096, dtype=np.float32)
    expected = fastreg.dropout(x, 0.3, seed=1, backend="numpy")
    wakes = []
    wake = _jit._shares._wake
    monkeypatch.setattr(_jit._shares, "_wake", lambda c: (wakes.append(c), wake(c)))
    assert _jit._shares.busy.acquire(blocking=False)    # what the interrupt left
    with fastreg.threads(2):
        got = fastreg.dropout(x, 0.3, seed=1, backend="cpu")
    assert np.array_equal(got, expected)
    assert wakes and not _jit._shares.busy._is_owned()


_GENERATOR_FORK = r"""
import os, signal
import fastreg
g = fastreg.random.Generator(5)
g._lock.acquire()          # held by "another thread" when the process forks
pid = os.fork()
if pid == 0:
    signal.alarm(20)       # a hang ends the child with SIGALRM
    os._exit(0 if g.take(5) == 0 and g.position == 5 else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_generator_usable_in_a_fork_child_whatever_its_lock():
    res = _run_python(_GENERATOR_FORK, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"
