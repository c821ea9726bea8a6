"""fastreg's own thread pool for the C backend's elementwise kernels (csrc/pool.c).

What it must do: give the reference's bits whoever runs a task (serially, on a cold or hot
pool, with late or missing workers), take the hot grain only while its threads spin, run
serially for a Python thread that finds it busy, and work again in a forked child.
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastreg
from fastreg import _config, _registry, _threads

from conftest import bits

# the fastreg under test (site-packages when installed): subprocesses import that one
ROOT = Path(fastreg.__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(fastreg.available_backends()["c"] is not None,
                                reason="C backend unavailable")


def _python(code, *args, **env):
    """``python -c code *args`` with the fastreg under test and ``env`` added to the
    environment (as test_threads' ``_run_python``)."""
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=full, timeout=120)


@pytest.fixture
def fc():
    """fastreg.c, its pool not borrowing OpenMP teams on its own during the test (on where
    torch loaded the runtime first: a job that runs on the team is neither cold nor hot);
    the tests of borrowing ask for it (borrow_team)."""
    import fastreg.c as fc
    previous = fc.set_omp_borrow(False)
    yield fc
    fc.set_omp_borrow(previous)


@pytest.fixture
def spin(fc):
    """set_pool_spin(us) for the test, restored after it."""
    previous = []

    def set_(us):
        previous.append(fc.set_pool_spin(us))
    yield set_
    if previous:
        fc.set_pool_spin(previous[0])


def _w(n, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def _heat(fc):
    """Run jobs until one finds the workers spinning (set_pool_spin(-1): they stay so; a worker
    woken from an earlier sleep takes a moment to run). Calls in a row: only a burst wakes
    sleeping workers, and a back-off (csrc/pool.c) passes."""
    w, out = _w(4096), np.empty(4096, np.float32)
    deadline = time.monotonic() + 60
    with fastreg.threads(2):
        while time.monotonic() < deadline:
            before = fc.pool_stats()["hot"]
            _registry.get("penalty_grad", "c")(w, np.float32(0), np.float32(1), out, False)
            if fc.pool_stats()["hot"] > before:
                return
    raise AssertionError("the pool's workers never came to spin")


def _cases(n, dtype):
    """(op, make args, index of the output, family) for the kernels that run on the pool."""
    w, g = _w(n, dtype, 1), _w(n, dtype, 2)
    t = dtype
    return [(*case, "elementwise") for case in _elementwise_cases(w, g, t)] + [
        ("dropout", lambda: (w, 7, 3, 2**31, t(2), np.empty_like(w)), 5, "random"),
        ("dropout_mask", lambda: (7, 5, 2**30, np.empty(n, np.uint8)), 3, "random"),
        ("dropout_mask_packed", lambda: (9, 1, 2**31, n, np.empty((n + 7) // 8, np.uint8)), 4,
         "random"),
        ("uniform", lambda: (11, 2, np.empty(n, dtype)), 2, "random"),
    ]


def _elementwise_cases(w, g, t):
    return [
        ("penalty_grad", lambda: (w, t(0.1), t(0.2), np.empty_like(w), False), 3),
        ("penalty_grad", lambda: (w, t(0.1), t(0.2), g.copy(), True), 3),
        ("soft_threshold", lambda: (w, t(0.3), t(1), np.empty_like(w)), 3),
        ("sgd_step", lambda: (w.copy(), g, np.zeros_like(w), t(0.1), t(0.01), t(0), t(0.9),
                              t(1), True, False, t(0)), 0),
        ("adam_step", lambda: (w.copy(), g, np.full_like(w, 0.01), np.full_like(w, 0.02), None,
                               t(0), t(0.99), t(0.1), t(0.999), t(0.001), t(1e-8), t(0.01),
                               t(0.5)), 0),
    ]


def _run_against_reference(fc, op, make, out):
    """Run pool op ``op`` with 2 threads on ``make()``'s arguments, check its output (argument
    ``out``) against the reference's bits; returns the pool's counters before and after."""
    args = make()
    before = fc.pool_stats()
    with fastreg.threads(2):
        _registry.get(op, "c")(*args)
    after = fc.pool_stats()
    expected = make()
    _registry.get(op, "numpy")(*expected)
    got, want = args[out], expected[out]
    if got.dtype.kind == "f":
        got, want = bits(got), bits(want)
    np.testing.assert_array_equal(got, want, err_msg=op)
    return before, after


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, 100, 4099, 70_001])
@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_pool_gives_the_reference_bits(fc, spin, monkeypatch, dtype, n, mode):
    """Cold (workers asleep: the grain for sleeping threads, shrunk) and hot (workers that never
    sleep: the spin grain, shrunk) jobs of every kernel on the pool (elementwise, and the Philox
    stream's tiles): the reference's bits, and the pool's counters say which path ran."""
    for fam in ("elementwise", "random"):
        monkeypatch.setitem(_threads.GRAIN if mode == "cold" else _threads.SPIN_GRAIN, fam, 1)
    if mode == "cold":
        spin(0)
    else:
        spin(-1)
        _heat(fc)
    for op, make, out, _ in _cases(n, dtype):
        before, after = _run_against_reference(fc, op, make, out)
        # a job on the pool ran; hot: it found the workers spinning (they never sleep then).
        # (With workers that sleep at once, one that has just finished a job may still count
        # as spinning for the next: cold or hot.)
        ran = (after["hot"] - before["hot"] if mode == "hot"
               else after["hot"] + after["cold"] - before["hot"] - before["cold"])
        # 5 elements are one 64-byte line, and a stream op's 2048-word tiles (256 bytes of a
        # packed mask) are split only from 2 of them: nothing to split below
        tiles = {"dropout_mask_packed": 2 * 2048 * 8}.get(op, 2 * 2048 if op in (
            "dropout", "dropout_mask", "uniform") else 100)
        if n >= tiles:
            assert ran == 1, (op, before, after)


_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                            reason="the pool (and its borrowing) needs Linux futexes")


@_LINUX
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, 4099, 70_001])
def test_jobs_on_a_borrowed_openmp_team_give_the_reference_bits(fc, spin, monkeypatch, dtype, n):
    """While the pool borrows the calling thread's OpenMP team (after missed jobs, when that
    team lingers: torch's, csrc/pool.c fr_pool_omp), every kernel on the pool runs there, with
    the reference's bits, and the counters say so."""
    spin(0)
    for fam in ("elementwise", "random"):
        monkeypatch.setitem(_threads.GRAIN, fam, 1)
    try:
        for op, make, out, _ in _cases(n, dtype):
            # again for each job: a team that starts late (its thread is created by the first
            # job, or a busy machine delays it) ends the borrowing after that job
            fc.borrow_team(60e6)
            before, after = _run_against_reference(fc, op, make, out)
            # a job that has something to split runs on the team, not on the pool
            assert (after["cold"], after["hot"]) == (before["cold"], before["hot"]), op
            if n >= 70_000:
                assert after["omp"] == before["omp"] + 1, (op, before, after)
    finally:
        fc.borrow_team(0)


@_LINUX
def test_borrowing_ends(fc, spin, monkeypatch):
    """borrow_team(0) ends it: the next job runs on the pool again."""
    spin(0)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 1)
    w = _w(70_001)
    fc.borrow_team(60e6)
    fc.borrow_team(0)
    before = fc.pool_stats()
    with fastreg.threads(2):
        got = fastreg.l2_grad(w, 0.5, backend="c")
    after = fc.pool_stats()
    assert after["omp"] == before["omp"]
    assert after["cold"] + after["hot"] == before["cold"] + before["hot"] + 1
    np.testing.assert_array_equal(got, fastreg.l2_grad(w, 0.5, backend="numpy"))


@_LINUX
def test_one_late_region_after_a_long_good_run_is_let_pass(fc, spin, monkeypatch):
    """A borrowed region that comes late (made so: fr_pool_borrow_late) pauses the borrowing
    early in a run, but one after 64 good regions in a row (csrc/pool.c FR_POOL_OMP_FORGIVE) is
    let pass; a second one soon after pauses it."""
    spin(0)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 1)
    w = _w(70_001)
    expected = fastreg.l2_grad(w, 0.5, backend="numpy")

    def job(good):
        """One late borrowed l2_grad of 2 threads after ``good`` good ones: whether the thread
        borrows after it"""
        fc.lib.fr_pool_borrow_late(1, good)
        before = fc.pool_stats()
        np.testing.assert_array_equal(fastreg.l2_grad(w, 0.5, backend="c"), expected)
        after = fc.pool_stats()
        assert (after["omp"] - before["omp"], after["omp_late"] - before["omp_late"]) == (1, 1)
        return bool(fc.lib.fr_pool_borrowing())

    with fastreg.threads(2):
        for good, borrows in ((0, False), (63, False), (64, True), (1000, True)):
            fc.borrow_team(60e6)
            assert fc.lib.fr_pool_borrowing()
            assert job(good) is borrows, good
        assert job(0) is False   # right after a forgiven one
        before = fc.pool_stats()
        fastreg.l2_grad(w, 0.5, backend="c")
        assert fc.pool_stats()["omp"] == before["omp"]   # paused: the pool ran it
    fc.borrow_team(0)


_PROBE = r"""
import os
import threading
import time
import numpy as np
import fastreg, fastreg.c as fc
from fastreg import _threads
assert _threads.openmp_team_lingers() and fc.set_omp_borrow(True)   # on by default here
_threads.GRAIN["elementwise"] = 1
fc.set_pool_spin(0)
w = np.random.default_rng(0).standard_normal(70_001).astype(np.float32)
expected = fastreg.l2_grad(w, 0.5, backend="numpy")

def job():
    # 1: the job ran on the team, decided at once (not after missed jobs: fr_borrow_decide)
    before = fc.pool_stats()
    assert fastreg.l2_grad(w, 0.5, backend="c").tobytes() == expected.tobytes()
    after = fc.pool_stats()
    return int(after["omp"] > before["omp"] and after["missed"] == before["missed"])

def team_share():
    # the largest share of 1 ms, right after a region, that another thread of this process ran
    # for (Linux thread CPU clocks, as the probe reads them), over 20 tries
    me, best = threading.get_native_id(), 0.0
    for _ in range(20):
        fc.borrow_team(60e6)
        job()
        fc.borrow_team(0)
        tids = [int(t) for t in os.listdir("/proc/self/task") if int(t) != me]
        clocks = {t: ((~t) << 3) | 6 for t in tids}
        c0 = {t: time.clock_gettime_ns(c) for t, c in clocks.items()}
        t0 = time.monotonic_ns()
        time.sleep(0.001)
        t1 = time.monotonic_ns()
        for t, c in clocks.items():
            best = max(best, (time.clock_gettime_ns(c) - c0[t]) / (t1 - t0))
    return best

def tries(seconds):
    outcomes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fc.borrow_team(60e6)
        job()                # the team's thread is known from here; it spins after the region
        fc.borrow_team(0)    # no borrowing now, no pause, no sample
        time.sleep(0.0025)   # (a sample 2 ms old would be no evidence either)
        assert job() == 0    # a first sample of that thread's CPU time: the pool runs this one
        # this thread sleeps, as between a training loop's calls: the team's thread spins on
        # (GOMP_SPINCOUNT below: tens of ms) with a CPU even when another process holds one
        time.sleep(0.001)
        outcomes.append(job())
        if outcomes[-1]:
            break
    return outcomes

with fastreg.threads(2):
    # tries for up to 5 s: beside a busy process (the suite's other worker) the team's thread
    # shares a CPU and runs for less than 75% of the time, until that process pauses
    outcomes = tries(5)
    if 1 not in outcomes:
        # never borrowed: a fault only where the team's thread does run through such sleeps
        # (the suite's other worker can hold the other CPU for seconds): if it does now, again
        share = team_share()
        if share >= 0.9:
            outcomes = tries(2)
            assert 1 in outcomes, (len(outcomes), share, team_share())
        else:
            print("busy", len(outcomes), round(share, 2))
            raise SystemExit
    fc.borrow_team(0)
    time.sleep(0.5)          # the team's spin has ended: its thread sleeps
    assert job() == 0        # a first sample
    time.sleep(0.001)
    assert job() == 0        # the team's thread did not run: the pool runs this one
print("ok")
"""


@_LINUX
def test_borrowing_starts_again_at_once_while_the_team_spins():
    """Once a thread has borrowed its team (one that lingers: GNU's default spin, as when torch
    loaded the runtime first), a job finds whether the team's thread ran through the time since
    its previous job (csrc/pool.c fr_borrow_probe): right after a region, while the team spins,
    a job 30 us to 2 ms after the previous one runs on the team with no missed jobs first;
    once the team sleeps it does not. (GNU's spin count times 10: the team spins for tens of
    ms, so that the test's sleeps fall inside it on a slow machine.)"""
    res = _python(_PROBE, GOMP_SPINCOUNT="3000000")
    assert res.returncode == 0, res.stderr
    if res.stdout.startswith("busy"):   # the team's thread had no CPU for 5 s: nothing to see
        pytest.skip(f"the machine was busy throughout (tries, team's CPU share): {res.stdout}")
    assert res.stdout.strip() == "ok"


@_LINUX
def test_turning_borrowing_off_stops_every_thread(fc, spin, monkeypatch):
    """set_omp_borrow(False) in one thread ends another thread's borrowing (one it decided on
    its own, after missed jobs: not forced) at that thread's next job."""
    spin(0)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 1)
    w = _w(70_001)
    expected = fastreg.l2_grad(w, 0.5, backend="numpy")
    fc.set_omp_borrow(True)
    go, ran, counts = threading.Event(), threading.Event(), []

    def other():
        with fastreg.threads(2):
            for _ in range(2):
                # as fr_borrow_decide leaves it: borrowing until a time, not forced (again before
                # each job: a late first region, which creates the team's thread, ends it)
                fc.lib.fr_pool_borrow_ns(int(60e9), 0)
                before = fc.pool_stats()["omp"]
                ok = np.array_equal(fastreg.l2_grad(w, 0.5, backend="c"), expected)
                counts.append((fc.pool_stats()["omp"] - before, ok))
                ran.set()
                go.wait(30)

    t = threading.Thread(target=other)
    t.start()
    assert ran.wait(30)
    fc.set_omp_borrow(False)
    go.set()
    t.join(30)
    assert counts == [(1, True), (0, True)]


@pytest.mark.parametrize("environ, start, expected", [
    ({}, "started by fastreg with GOMP_SPINCOUNT=10000 ...", False),
    ({}, "loaded before fastreg's (by torch?), with its own policy", True),
    ({"OMP_WAIT_POLICY": "Passive"}, "loaded before fastreg's (by torch?), with its own policy",
     False),
    ({"OMP_WAIT_POLICY": "active"}, "as the environment sets it: OMP_WAIT_POLICY=active", True),
    ({"GOMP_SPINCOUNT": "100"}, "as the environment sets it: GOMP_SPINCOUNT=100", False),
    ({"GOMP_SPINCOUNT": "300k"}, "as the environment sets it: GOMP_SPINCOUNT=300k", True),
    ({"GOMP_SPINCOUNT": "1M"}, "as the environment sets it: GOMP_SPINCOUNT=1M", True),
    ({"GOMP_SPINCOUNT": "infinite"}, "as the environment sets it: GOMP_SPINCOUNT=infinite",
     True),
    ({"GOMP_SPINCOUNT": "99999"}, "as the environment sets it: GOMP_SPINCOUNT=99999", False),
    ({}, None, False),
])
def test_which_openmp_teams_linger(monkeypatch, environ, start, expected):
    """The pool borrows the OpenMP team only where it spins for long after a region: not the one
    fastreg started (a short spin), nor a passive one, nor one with a short spin count."""
    monkeypatch.setattr(_threads, "openmp_start", start)
    assert _threads.openmp_team_lingers(environ) is expected


_TORCH_FIRST = r"""
import torch   # loads GNU OpenMP first, with its default spin
import fastreg, fastreg.c as fc
from fastreg import _threads
from fastreg.c import lib
print(_threads.openmp_team_lingers())
"""


def test_torch_loaded_first_makes_the_team_linger():
    pytest.importorskip("torch")
    res = _python(_TORCH_FIRST)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "True"


_BORROW_THEN_FORK = r"""
import os
import numpy as np
import fastreg, fastreg.c as fc
import fastreg.c.penalty as fcp
from fastreg import _registry, _threads
from fastreg.c import lib
_threads.GRAIN["elementwise"] = 1
fc.set_pool_spin(0)
w = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
expected = fastreg.l2_grad(w, 0.25, backend="numpy")

def run():
    # the pool path with 2 threads, whatever fastreg's Python side plans in a fork child
    out = np.empty_like(w)
    orig = fcp._plan
    fcp._plan = lambda work, family: lib.fr_set_pool_threads(2, 2)
    try:
        _registry.get("penalty_grad", "c")(w, np.float32(0), np.float32(0.5), out, False)
    finally:
        fcp._plan = orig
    return out.tobytes() == expected.tobytes()

fc.borrow_team(60e6)
assert run()
assert fc.pool_stats()["omp"] == 1
fc.borrow_team(60e6)   # borrowing at the fork (a late first region may have ended it)
pid = os.fork()
if pid == 0:
    ok = run() and run() and fc.pool_stats()["omp"] == 1
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@_LINUX
def test_a_fork_child_does_not_borrow_the_parents_team():
    """GNU OpenMP's team does not survive fork (entering it in the child hangs): a child forked
    while its parent borrows runs its jobs of 2 threads on fastreg's pool, and right."""
    res = _python(_BORROW_THEN_FORK)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


def test_streamed_outputs_on_the_pool(fc, spin, monkeypatch):
    """Streaming stores from several threads (each task fences its own): the reference's bits."""
    spin(-1)
    monkeypatch.setitem(_threads.SPIN_GRAIN, "elementwise", 1)
    _heat(fc)
    previous = fc.set_stream_stores("always")
    try:
        for n in (4099, 300_001):
            w = _w(n)
            out = np.empty(n + 3, np.float32)[3:]   # not 64-byte aligned: a head tile
            with fastreg.threads(2):
                _registry.get("penalty_grad", "c")(w, np.float32(0.1), np.float32(0.2), out,
                                                   False)
            expected = np.empty_like(w)
            _registry.get("penalty_grad", "numpy")(w, np.float32(0.1), np.float32(0.2),
                                                   expected, False)
            np.testing.assert_array_equal(bits(out), bits(expected))
    finally:
        fc.set_stream_stores(previous)


def test_sleeping_workers_keep_mid_size_calls_serial(fc, spin):
    """With the default grains and workers that sleep at once, an l2_grad on 1e5 never starts a
    job; with workers that spin, calls in a row do (the first may find them asleep)."""
    w = _w(100_000)
    spin(0)
    with fastreg.threads(2):
        before = fc.pool_stats()
        for _ in range(5):
            fastreg.l2_grad(w, 1e-4, backend="c")
        after = fc.pool_stats()
        assert (after["cold"], after["hot"]) == (before["cold"], before["hot"])
    spin(-1)
    with fastreg.threads(2):
        for _ in range(5):
            got = fastreg.l2_grad(w, 1e-4, backend="c")
        after = fc.pool_stats()
    assert after["hot"] + after["cold"] > before["hot"] + before["cold"]
    np.testing.assert_array_equal(got, fastreg.l2_grad(w, 1e-4, backend="numpy"))


def test_one_thread_never_uses_the_pool(fc, spin, monkeypatch):
    spin(-1)
    monkeypatch.setitem(_threads.SPIN_GRAIN, "elementwise", 1)
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 1)
    w = _w(70_001)
    before = fc.pool_stats()
    with fastreg.threads(1):
        fastreg.l2_grad(w, 0.5, backend="c")
    after = fc.pool_stats()
    assert (after["cold"], after["hot"]) == (before["cold"], before["hot"])


def test_python_threads_share_the_pool(fc, spin, monkeypatch):
    """Calls from several Python threads at once: one holds the pool, the others run serially
    meanwhile; every result is right."""
    spin(-1)
    monkeypatch.setitem(_threads.SPIN_GRAIN, "elementwise", 1)
    errors = []

    def work(seed):
        try:
            w = _w(50_000 + seed, seed=seed)
            expected = fastreg.l2_grad(w, 0.3, backend="numpy")
            with fastreg.threads(2):
                for _ in range(50):
                    got = fastreg.l2_grad(w, 0.3, backend="c")
                    if not np.array_equal(bits(got), bits(expected)):
                        errors.append(seed)
                        return
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


_FORK = r"""
import os, sys
import numpy as np
import fastreg, fastreg.c as fc
import fastreg.c.penalty as fcp
from fastreg import _registry
from fastreg.c import lib
fc.set_pool_spin(float(sys.argv[1]))
w = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
expected = np.empty_like(w)
_registry.get("penalty_grad", "numpy")(w, np.float32(0), np.float32(0.5), expected, False)

def run():
    out = np.empty_like(w)
    # the pool path itself, whatever fastreg's Python side would plan in a fork child
    kernel = _registry.get("penalty_grad", "c")
    orig = fcp._plan
    fcp._plan = lambda work, family: lib.fr_set_pool_threads(2, 2)
    try:
        kernel(w, np.float32(0), np.float32(0.5), out, False)
    finally:
        fcp._plan = orig
    return np.array_equal(out, expected)

assert run() and run()
assert fc.pool_stats()["cold"] + fc.pool_stats()["hot"] >= 1
pid = os.fork()
if pid == 0:
    ok = run() and run() and fastreg.l2_grad(w, 0.25, backend="c").tobytes() == expected.tobytes()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("spin_us", ["0", "-1"])
def test_pool_works_in_a_fork_child(spin_us):
    """A child forked after the pool ran (its workers asleep or spinning) runs pool jobs: its
    first job starts new workers."""
    res = _python(_FORK, spin_us)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


@pytest.mark.parametrize("value, expected", [("", 50), ("0", 0), ("12.5", 12.5),
                                             ("infinite", -1), ("INF", -1), ("-1", -1)])
def test_spin_setting(monkeypatch, value, expected):
    monkeypatch.setenv("FASTREG_SPIN_US", value)
    assert _config.spin_us(50) == expected


@pytest.mark.parametrize("value", ["-2", "nan", "soon", "1e15"])
def test_bad_spin_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv("FASTREG_SPIN_US", value)
    with pytest.raises(ValueError, match="FASTREG_SPIN_US"):
        _config.spin_us(50)


@pytest.mark.parametrize("bad", [-2, -0.5, float("nan"), float("inf"), 1e15])
def test_set_pool_spin_refuses_bad_values(fc, bad):
    before = fc.pool_spin_us()
    with pytest.raises(ValueError, match="us must be"):
        fc.set_pool_spin(bad)
    assert fc.pool_spin_us() == before


_AFTER_A_BIG_TEAM = r"""
import numpy as np
import fastreg, fastreg.c as fc
from fastreg import _threads
fc.set_pool_spin(-1)
_threads.SPIN_GRAIN["elementwise"] = 1024
w = np.ones(65536, np.float32)
with fastreg.threads(3):
    fastreg.l2_grad(w, 0.1, backend="c")           # a job of 3: two workers
with fastreg.threads(2):
    for _ in range(200):                          # jobs of 2: the third worker sleeps
        fastreg.l2_grad(w, 0.1, backend="c")
    before = fc.pool_stats()
    for _ in range(200):
        got = fastreg.l2_grad(w, 0.1, backend="c")
    after = fc.pool_stats()
assert np.array_equal(got, fastreg.l2_grad(w, 0.1, backend="numpy"))
print(after["hot"] - before["hot"], after["cold"] - before["cold"])
"""


def test_a_worker_outside_the_team_does_not_cool_the_pool():
    """After a job of 3 threads, jobs of 2 still find the pool hot: the third worker sleeps,
    and only the workers a job needs count (found by review: every later job was cold)."""
    res = _python(_AFTER_A_BIG_TEAM, OMP_NUM_THREADS="3", FASTREG_NUM_THREADS="3")
    assert res.returncode == 0, res.stderr
    hot, cold = map(int, res.stdout.split())
    assert hot == 200 and cold == 0, (hot, cold)


def test_a_bad_spin_setting_warns_and_keeps_the_backend():
    code = ("import warnings, fastreg\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import fastreg.c as fc\n"
            "print(fastreg.available_backends()['c'], fc.pool_spin_us(), "
            "[str(x.message) for x in w])")
    res = _python(code, FASTREG_SPIN_US="soon")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("None 50.0 ") and "FASTREG_SPIN_US='soon'" in res.stdout
