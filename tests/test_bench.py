"""The benchmark machinery: the table of ``python -m fastreg.bench``, the ``fastreg`` command and
the pytest plugin's ``bandwidth_benchmark`` fixture (timed, disabled, without pytest-benchmark)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastreg
from fastreg.bench import bandwidth, cases, load, small, table

pytest_plugins = ["pytester"]

# Where the fastreg under test lives (site-packages when installed, the checkout otherwise):
# subprocesses must import that one, not the sources next to the tests (no compiled C there).
ROOT = Path(fastreg.__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(*args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=_env(**env), timeout=300)


def test_nbytes_counts_what_must_move():
    n = 1 << 20
    assert cases.nbytes("dropout", n, np.float32) == 2 * 4 * n
    assert cases.nbytes("dropout_backward", n, np.float64) == 2 * 8 * n
    assert cases.nbytes("dropout_mask_packed", n) == n // 8
    assert cases.nbytes("dropout_mask_packed", 9) == 2
    assert cases.nbytes("random_bits", n) == 4 * n
    assert cases.nbytes("uniform", n, np.float64) == 8 * n
    assert cases.nbytes("l1_grad", n, np.float32) == 2 * 4 * n
    assert cases.nbytes("l2_grad_accumulate", n, np.float64) == 3 * 8 * n
    assert cases.nbytes("prox_l1", n, np.float32) == 2 * 4 * n
    assert cases.nbytes("l1_penalty", n, np.float64) == 8 * n
    assert cases.nbytes("sgd_step", n, np.float32) == 5 * 4 * n
    assert cases.nbytes("adamw_step", n, np.float64) == 7 * 8 * n
    # a 16-bit parameter's state is float32: p, g (read) and p (written) at 2 bytes, the state
    # at 4 (SGD: the buffer read and written; AdamW: m and v read and written)
    assert cases.nbytes("sgd_step", n, np.float16) == (3 * 2 + 2 * 4) * n
    assert cases.nbytes("adamw_step", n, np.float16) == (3 * 2 + 4 * 4) * n
    with pytest.raises(ValueError):
        cases.nbytes("nope", n)


@pytest.mark.parametrize("op", list(cases.OPS))
@pytest.mark.parametrize("preallocated", [True, False], ids=["out", "fresh"])
def test_cases_compute_what_fastreg_computes(op, preallocated):
    """The timed closures are the real calls: their results equal the reference backend's."""
    if not preallocated and "fresh" not in cases.ALLOCS[op]:
        with pytest.raises(ValueError, match="no fresh variant"):
            cases.fastreg_call(op, "numpy", np.ones(4, np.float32), preallocated=False)
        return
    if cases.unavailable(op, "cpu"):
        pytest.skip(cases.unavailable(op, "cpu"))
    x = cases.input_array(1000, np.float32)
    got = cases.fastreg_call(op, "cpu", x, preallocated=preallocated)()
    expected = cases.fastreg_call(op, "numpy", x, preallocated=preallocated)()
    if op == "l1_penalty":   # float64 sums: backends differ by summation order only
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_array_equal(x, cases.input_array(1000, np.float32))   # x left alone


_NEW_OPS = ("l1_grad", "l2_grad_accumulate", "prox_l1", "l1_penalty", "sgd_step", "adamw_step")


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])
@pytest.mark.parametrize("op", _NEW_OPS)
def test_torch_peers_do_the_same_work(op, fused):
    """Each torch peer computes what the fastreg case computes (one call on the same data)."""
    pytest.importorskip("torch")
    if fused and op not in cases.FUSED_OPS:
        with pytest.raises(ValueError, match="no fused"):
            cases.torch_call(op, np.ones(4, np.float32), fused=True)
        return
    x = cases.input_array(1000, np.float32)
    expected = np.asarray(cases.fastreg_call(op, "numpy", x, preallocated=True)())
    got = cases.torch_call(op, x, fused=fused)()
    np.testing.assert_allclose(np.asarray(got.detach()), expected, rtol=1e-5, atol=1e-7)


def test_table_quick():
    proc = _run("-m", "fastreg.bench", "--quick", "--sizes", "4096")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for column in ("op", "backend", "alloc", "min ms", "med ms", "max ms", "GB/s", "of bw",
                   "x torch", "x fused"):
        assert column in out
    assert "GB/s memory bandwidth" in out and "threads:" in out
    assert "probe kernels, GB/s: numpy copy" in out and "numba update" in out
    # the small-ops section: auto and every host backend, idle only (no --load, no --pin)
    small_lines = [line for line in out.splitlines() if line.startswith("dropout 64x128")]
    assert small_lines and all(" idle " in line for line in small_lines)
    assert any(line.split()[2] == "auto" for line in small_lines)
    for label, _ in cases.SMALL_OPS.values():
        assert label in out
    rows = [line.split() for line in out.splitlines() if " 2^12 " in line]
    available = [b for b, why in fastreg.available_backends().items()
                 if why is None and b != "cuda"]
    for backend in available:
        mine = [r for r in rows if backend in r]
        assert mine, f"no rows for backend {backend}"
        assert {"out=", "fresh"} <= {token for r in mine for token in r}
    for op in ("dropout p=0.5", "dropout_backward", "dropout_mask packed", "random_bits",
               "uniform float32", "l1_grad", "l2_grad accumulate", "prox_l1", "l1_penalty",
               "sgd step", "adamw step"):
        assert op in out
    lines = out.splitlines()
    assert any(line.startswith("l2_grad accumulate") and " numpy " in line and " in place " in line
               for line in lines)
    assert any(line.startswith("l1_penalty") and " scalar " in line for line in lines)
    if importlib.util.find_spec("torch") is not None:
        assert any(line.startswith("adamw step") and line.split()[-1].endswith("x")
                   for line in lines), "no x fused ratio for adamw step"


def test_console_command(capsys):
    proc = _run("-m", "fastreg", "bench", "--quick", "--sizes", "1000", "--ops", "dropout",
                "--backends", "numpy", "--no-torch", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "threads: 1 (fastreg), 1 (numba)" in proc.stdout
    assert "torch: not timed (--no-torch)" in proc.stdout
    assert "dropout p=0.5" in proc.stdout and " 1000 " in proc.stdout
    # the usage and argument errors of the same entry point, in this process (no timing needed)
    from fastreg.__main__ import main
    assert main([]) == 2 and "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--sizes", "2^x"])
    assert exc.value.code == 2 and "--sizes" in capsys.readouterr().err
    for bad in (["--threads", "0"], ["--budget", "-1"], ["--slow-limit", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main(["bench", *bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "usage:" in err and bad[0] in err, err


# FASTREG_BACKEND=cuda names a backend that cannot run here (no GPU, no simulator)
NO_CUDA = pytest.mark.skipif(fastreg.available_backends()["cuda"] is None
                             or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                             reason="the cuda backend runs here")


@pytest.mark.parametrize("var,value", [("FASTREG_BACKEND", "bogus"),
                                       ("FASTREG_NUM_THREADS", "abc"),
                                       pytest.param("FASTREG_BACKEND", "cuda", marks=NO_CUDA)])
def test_console_command_names_a_bad_environment_variable(var, value):
    """A typo in the environment is one line and exit status 2, not a traceback (in a process
    of its own: this one has read its settings already)."""
    proc = _run("-m", "fastreg", "info", **{var: value})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("fastreg info: error:") and var in proc.stderr
    assert proc.stderr.count("\n") == 1 and not proc.stdout


_SUITE = """
def test_kernel(bandwidth_benchmark):
    data = bytearray(1 << 16)
    bandwidth_benchmark.group = "copy"
    assert bandwidth_benchmark(bytes, data, nbytes=2 * len(data)) == bytes(data)
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    """Runs a one-test suite in a subprocess with exactly the plugins named (none autoloaded:
    the result does not depend on whether fastreg is installed)."""
    pytester.makepyfile(test_suite=_SUITE)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    return lambda *args: pytester.runpytest_subprocess("-p", "fastreg.bench.plugin", *args)


def test_plugin_records_bandwidth(suite, pytester):
    out = pytester.path / "bench.json"
    result = suite("-p", "pytest_benchmark.plugin", "--machine-gb-per-s=10",
                           "--benchmark-min-rounds=3", "--benchmark-max-time=0.01",
                           f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*fastreg bandwidth*", "machine bandwidth: 10.0 GB/s*",
                                 "*test_suite.py::test_kernel*%"])
    info = json.loads(out.read_text())["benchmarks"][0]["extra_info"]
    assert info["nbytes"] == 2 << 16
    assert info["machine_gb_per_s"] == 10.0
    assert info["gb_per_s"] > 0
    assert info["bandwidth_fraction"] == pytest.approx(info["gb_per_s"] / 10.0)


def test_plugin_refuses_a_bandwidth_that_is_not_positive(suite):
    for bad in ("0", "-5", "nan", "inf"):
        result = suite("-p", "pytest_benchmark.plugin", f"--machine-gb-per-s={bad}")
        assert result.ret != 0
        result.stderr.fnmatch_lines(["*--machine-gb-per-s*finite number > 0*"])


def test_plugin_under_benchmark_disable(suite):
    result = suite("-p", "pytest_benchmark.plugin", "--benchmark-disable")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 bandwidth benchmarks ran once, untimed*"])


def test_plugin_under_benchmark_only(suite):
    result = suite("-p", "pytest_benchmark.plugin", "--benchmark-only",
                           "--machine-gb-per-s=10", "--benchmark-max-time=0.01")
    result.assert_outcomes(passed=1)


def test_plugin_without_pytest_benchmark(suite):
    result = suite("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*bandwidth_benchmark needs pytest-benchmark*"])


def test_plugin_import_is_cheap():
    proc = _run("-c", "import sys, fastreg.bench.plugin, fastreg.bench.table; "
                      "print(sorted(m for m in ('numba', 'torch') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- small ops, --load, --pin, min/median/max, the bandwidth probe --------------------------------

def _parse(*argv):
    import argparse
    return table.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_load_and_pin_arguments(capsys):
    args = _parse()
    assert args.load is None and args.load_procs is None and args.pin is False
    assert _parse("--load").load == "mixed"
    args = _parse("--load", "spin", "--load-procs", "3", "--pin", "--ops", "small_dropout")
    assert (args.load, args.load_procs, args.pin, args.ops) == ("spin", 3, True,
                                                                ["small_dropout"])
    for bad in (["--load", "busy"], ["--load-procs", "0"], ["--load-procs", "x"],
                ["--ops", "small_nope"]):
        with pytest.raises(SystemExit) as exc:
            _parse(*bad)
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("op", list(cases.SMALL_OPS))
def test_small_cases_agree(op):
    """The small-op calls compute what the reference does on every host backend and what their
    torch peer does (dropout: the same mask everywhere, torch's only in its kept fraction)."""
    expected = np.asarray(cases.small_call(op, "numpy")())
    for backend in ("cpu", "c", "auto"):
        if backend != "auto" and fastreg.available_backends()[backend] is not None:
            continue
        got = np.asarray(cases.small_call(op, backend)())
        if op in ("small_dropout", "small_l2_grad"):
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    pytest.importorskip("torch")
    peer = np.asarray(cases.small_torch_call(op)().detach())
    assert peer.shape == expected.shape
    if op == "small_dropout":
        assert 0.4 < (peer == 0).mean() < 0.6
    else:
        np.testing.assert_allclose(peer, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown small op"):
        cases.small_call("dropout", "numpy")


def test_time_calls_takes_turns():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = small.time_calls(calls, rounds=4, per_round=3, budget=1e9, warmup=2)
    assert order[:4] == ["a"] * 2 + ["b"] * 2   # warm-up, then rounds of 3 calls each, in turn
    rounds = [order[4 + 6 * r: 10 + 6 * r] for r in range(4)]
    assert all(sorted(r) == ["a"] * 3 + ["b"] * 3 and r[0] == r[2] and r[3] == r[5]
               for r in rounds)
    assert {k: len(v) for k, v in times.items()} == {"a": 12, "b": 12}
    assert all((v >= 0).all() for v in times.values())
    order.clear()
    times = small.time_calls(calls, rounds=100, per_round=2, budget=0.0, warmup=0)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}   # 3 rounds at least


def test_time_calls_orders_each_round_anew():
    """Each round takes the contenders in a new order (the same orders in every run), so that no
    row follows the same contender (torch's turn, after which fastreg's pool is asleep) in most
    rounds: over 300 rounds of four contenders, each follows each other one in 20-47% of the
    rounds where it is not first, and comes first in 15-35% of them."""
    def followers():
        order = []
        calls = {k: (lambda k=k: order.append(k)) for k in "abct"}
        small.time_calls(calls, rounds=300, per_round=1, budget=1e9, warmup=0)
        return order

    order = followers()
    assert order == followers()   # the same orders in every run
    rounds = [order[4 * r: 4 * r + 4] for r in range(300)]
    for x in "abct":
        first = sum(r[0] == x for r in rounds)
        assert 45 <= first <= 105, (x, first)
        after = [r[r.index(x) - 1] for r in rounds if r[0] != x]
        for y in "abct":
            if y != x:
                assert 0.2 <= after.count(y) / len(after) <= 0.47, (x, y, after.count(y))


def test_time_calls_takes_turns_with_a_remote_contender():
    """A contender with ``timed(n)`` (the torch peer) makes its calls elsewhere, in turn."""
    order = []

    class Remote:
        def timed(self, n):
            order.append(("remote", n))
            return [1e-6] * n

    calls = {"a": lambda: order.append("a"), "peer": Remote()}
    times = small.time_calls(calls, rounds=2, per_round=3, budget=1e9, warmup=2)
    assert order[:3] == ["a"] * 2 + [("remote", 2)]
    assert order[3:].count("a") == 6 and order[3:].count(("remote", 3)) == 2
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "peer": 6}
    assert (times["peer"] == 1e-6).all()


def test_torch_peer_runs_torch_in_a_process_of_its_own():
    """The peer imports torch before fastreg loads OpenMP, without fastreg's temporary wait
    policy, and times the same calls as cases.small_torch_call; it ends with the benchmark."""
    pytest.importorskip("torch")
    from fastreg.bench import torch_peer
    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    with torch_peer.TorchPeer(1) as peer:
        assert peer.pid != os.getpid() and peer.info["threads"] == 1
        assert peer.version == __import__("torch").__version__
        assert (peer.info["wait_policy"], peer.info["spincount"]) == (
            env["OMP_WAIT_POLICY"], env["GOMP_SPINCOUNT"])
        if peer.info["openmp"]:   # Linux: the first OpenMP runtime mapped is torch's own
            assert "torch" in peer.info["openmp"][0]
        remote = peer.call("small_l2_grad")
        times = remote.timed(4)
        assert len(times) == 4 and all(t > 0 for t in times)
        with pytest.raises(torch_peer.PeerError, match="unknown small op"):
            peer.call("l2_grad")
        cpus = sorted(os.sched_getaffinity(0))
        assert peer.pin(None, 2) == (2, cpus)
        if small.can_pin():   # --pin moves the peer with this process, and back
            with small.pinned(cpus[0], 2, peer):
                assert peer.ask("cpus") == [cpus[0]]
            assert peer.ask("cpus") == cpus
    assert peer.proc.returncode == 0
    with pytest.raises(torch_peer.PeerError, match="ended"):
        peer.ask("hello")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not cases.torch_available(),
                    reason="thread states from Linux's /proc; needs torch")
def test_torch_peer_is_stopped_when_its_turn_ends():
    """After the peer's turn, every thread of it is stopped before the next contender's turn
    starts: kill(SIGSTOP) returns before the signal stops a thread that spins in user space
    (torch's OpenMP team after its calls: ~0.25 ms here), which then took a CPU from the next
    turn. Two threads, so that the team exists and spins."""
    from fastreg.bench import torch_peer
    with torch_peer.TorchPeer(2) as peer:
        remote = peer.call("small_l2_grad")
        for _ in range(20):
            remote.timed(5)
            states = torch_peer._thread_states(peer.pid)
            assert states and all(s in "Tt" for s in states), states
        assert torch_peer.wait_stopped(peer.pid)
        peer.ask("hello")   # resumed for a request
        assert not torch_peer.wait_stopped(peer.pid, timeout=0.0)   # running (or asleep): not T
    assert torch_peer._thread_states(peer.pid) is None   # ended and reaped
    assert not torch_peer.wait_stopped(peer.pid)


def test_time_stats_min_median_max():
    timing = table.time_stats(lambda: None, budget=0.0, min_reps=5)
    assert timing.reps == 5
    assert 0 <= timing.min <= timing.median <= timing.max


def _section(ops, backends=("numpy",)):
    lines = []
    section = small.Section(ops, list(backends), None, True, None, None, False, lines.append,
                            lambda text: lines.append("note: " + text))
    return section, lines


def test_small_section_format():
    """Rows grouped by op, then condition; x torch from the medians of the same condition."""
    section, lines = _section(["small_l2_grad", "small_dropout"])
    section.labels = {"auto": "auto (c)", "c": "c"}
    us = 1e-6
    section.conditions = [("idle", "quiet"), ("load", "busy")]
    section.results = {
        ("small_l2_grad", "idle"): {"auto": np.array([10, 20, 90]) * us,
                                    "c": np.array([8, 10, 12]) * us,
                                    "torch": np.array([30, 40, 50]) * us},
        ("small_l2_grad", "load"): {"auto": np.array([10, 400, 9000]) * us,
                                    "c": np.array([20, 40, 60]) * us,
                                    "torch": np.array([30, 80, 50]) * us},
        ("small_dropout", "idle"): {"c": np.array([5.0, 5.0]) * us},
    }
    section.print()
    header = lines.index(next(line for line in lines if line.startswith("op ")))
    assert lines[header].split() == ["op", "backend", "where", "calls", "min", "us", "med", "us",
                                     "max", "us", "x", "torch"]
    assert "  idle: quiet" in lines and "  load: busy" in lines
    rows = lines[header + 2:header + 9]
    assert all(len(r) == len(lines[header]) for r in rows)
    cells = [r.split() for r in rows]
    assert [c[:4] for c in cells] == [
        ["l2_grad", "1e5", "auto", "(c)"], ["l2_grad", "1e5", "c", "idle"],
        ["l2_grad", "1e5", "torch", "idle"], ["l2_grad", "1e5", "auto", "(c)"],
        ["l2_grad", "1e5", "c", "load"], ["l2_grad", "1e5", "torch", "load"],
        ["dropout", "64x128", "c", "idle"]]
    assert cells[0][-5:] == ["3", "10.0", "20.0", "90.0", "2.0x"]
    assert cells[1][-1] == "4.0x" and cells[2][-1] == "-"
    assert cells[3][-5:] == ["3", "10.0", "400.0", "9000.0", "0.1x"]
    assert cells[4][-1] == "1.2x"
    assert cells[6][-1] == "-"   # no torch peer


def test_of_bw_says_cache_below_the_cache_size():
    from types import SimpleNamespace
    stub = SimpleNamespace(cache_bytes=32 << 20, highest=None)
    assert table._Table.fraction(stub, 50.0, 1 << 20, 100.0, "small") == "cache"
    assert stub.highest is None
    assert table._Table.fraction(stub, 50.0, 64 << 20, 100.0, "big") == "50%"
    assert table._Table.fraction(stub, 90.0, 64 << 20, 100.0, "bigger") == "90%"
    assert table._Table.fraction(stub, 70.0, 64 << 20, 100.0, "other") == "70%"
    assert stub.highest == (0.9, "bigger")
    assert table.cache_bytes() > 0


def test_bandwidth_probe_reports_its_kernels():
    probe = bandwidth.probe(n=1 << 12, rounds=2)
    assert list(probe.kernels) == list(bandwidth.KERNEL_STREAMS)
    assert probe.gb_per_s == max(probe.kernels.values()) == probe.kernels[probe.kernel]
    assert (probe.n, probe.rounds) == (1 << 12, 2) and probe.threads >= 1
    assert bandwidth.machine_bandwidth(n=1 << 12, repeat=2) == probe.gb_per_s   # cached
    again = bandwidth.probe(n=1 << 12, rounds=2, again=True)
    assert again is not probe and bandwidth.probe(n=1 << 12, rounds=2) is again
    with pytest.raises(ValueError):
        bandwidth.probe(n=0)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_load_ends_its_processes():
    with load.background_load("spin", 2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(KeyError):
        with load.background_load("spin", 1) as procs:
            assert procs[0].poll() is None
            raise KeyError("boom")
    assert procs[0].poll() is not None
    with load.background_load(None) as procs:
        assert procs == []
    for bad in ({"kind": "busy"}, {"procs": 0}, {"procs": 1.5}):
        with pytest.raises(ValueError):
            load.start(**bad)


def test_mixed_load_runs_numba_and_ends():
    with load.background_load("mixed", 1) as procs:
        assert procs[0].poll() is None
        with open(f"/proc/{procs[0].pid}/cmdline") as f:
            assert "mixed" in f.read().split("\0")
    assert procs[0].poll() is not None


_ORPHAN = """
import os, signal, sys, time
from fastreg.bench import load
if sys.argv[1] == "interrupt":
    # Ctrl-C's handler, also where this test runs with SIGINT ignored (a job started with & by
    # a non-interactive shell passes SIG_IGN on, and Python then installs no handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with load.background_load("spin", 1) as procs:
        print(procs[0].pid, flush=True)
        time.sleep(60)   # Ctrl-C (SIGINT) here: KeyboardInterrupt, the with block ends the load
procs = load.start("spin", 1)
print(procs[0].pid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)          # no stop(): atexit ends it
time.sleep(60)           # killed with SIGKILL here: the worker notices its parent is gone
"""


@pytest.mark.parametrize("how", ["exit", "kill", "interrupt"])
def test_load_never_outlives_the_benchmark(how):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN, how], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    worker = int(proc.stdout.readline())
    if how != "exit":
        assert _alive(worker)
        os.kill(proc.pid, signal.SIGKILL if how == "kill" else signal.SIGINT)
    proc.wait(timeout=60)
    if how == "interrupt":
        assert "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.monotonic() + 60
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def test_pinned_restores_affinity_and_threads():
    if not small.can_pin():
        pytest.skip("no sched_setaffinity here")
    before = os.sched_getaffinity(0)
    threads_before = fastreg.get_num_threads()
    cpu = min(before)
    with pytest.raises(KeyError):
        with small.pinned(cpu, 2):
            assert os.sched_getaffinity(0) == {cpu}
            assert fastreg.get_num_threads() == 2
            raise KeyError("boom")
    assert os.sched_getaffinity(0) == before
    assert fastreg.get_num_threads() == threads_before


def test_table_small_ops_under_load_and_pinned():
    """--load and --pin time the same small rows again; the load is gone when the run ends."""
    proc = _run("-m", "fastreg.bench", "--quick", "--ops", "small_l2_grad", "--backends",
                "numpy", "--no-torch", "--load", "spin", "--load-procs", "1", "--pin")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("l2_grad 1e5")]
    assert [r[-6] for r in rows] == ["idle", "idle", "load", "load", "pinned", "pinned"]
    assert [r[2] for r in rows] == ["auto", "numpy"] * 3
    assert "load: beside the background load spin x1" in out
    assert "pinned: every thread of this process on CPU" in out
    assert "memory bandwidth" not in out   # no large rows: no probe


def test_bn_cache_states_quick():
    """bench/bn_cache_states.py runs (the small layouts): a row per layout, op and backend in
    the three cache states."""
    script = Path(__file__).resolve().parents[1] / "bench" / "bn_cache_states.py"
    if not script.exists():
        pytest.skip("no bench/ directory beside the tests")
    backends = [b for b in ("c", "cpu") if fastreg.available_backends()[b] is None]
    if not backends:
        pytest.skip("neither host kernel backend is available")
    res = _run(str(script), "--quick", "--backends", ",".join(backends), "--layouts", "nchw,nc")
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith(("nchw", "nc "))]
    expected = 2 * 2 * (len(backends) + (importlib.util.find_spec("torch") is not None))
    assert len(rows) == expected, res.stdout
    assert all(("hot" in r and "written" in r and "flushed" in r) for r in rows)


def test_optim_steps_runs():
    """bench/optim_steps.py runs: three rows, a number per optimizer in each."""
    pytest.importorskip("torch")
    script = Path(__file__).resolve().parents[1] / "bench" / "optim_steps.py"
    if not script.exists():
        pytest.skip("no bench/ directory beside the tests")
    res = _run(str(script), "--rounds", "3")
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if "values" in line]
    assert len(rows) == 3 and all(len(r) == 7 for r in rows), res.stdout


def test_cache_bytes_reads_the_index_entries(tmp_path):
    """Linux lists "uevent" (a file) beside index0..N in the cache folder: it is skipped, not a
    reason to give up on every index; the limit is at most 32 MiB (a VM's reported L3 is the
    host's)."""
    (tmp_path / "uevent").write_text("")
    for i, size in enumerate(["48K", "2048K", "8M"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    (tmp_path / "index3").mkdir()   # no size file: skipped
    assert table.cache_bytes(str(tmp_path)) == 8 << 20
    (tmp_path / "index2" / "size").write_text("491520K\n")   # a VM told the host's L3
    assert table.cache_bytes(str(tmp_path)) == 32 << 20
    assert table.cache_bytes(str(tmp_path / "missing")) == 32 << 20


@pytest.mark.parametrize("bad", [["--ops", ""], ["--ops", ","], ["--backends", ""],
                                 ["--layouts", ""], ["--sizes", ""], ["--sizes", ","]])
def test_bench_refuses_an_empty_list(bad, capsys):
    """An empty list is a usage error, not "all of them" / "the defaults"."""
    from fastreg.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(["bench", *bad])
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err


@NO_CUDA
def test_bench_with_only_unavailable_backends_fails():
    proc = _run("-m", "fastreg", "bench", "--quick", "--no-torch", "--backends", "cuda",
                "--ops", "dropout")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "none of the backends asked for can run here: cuda" in proc.stderr
    assert "machine:" not in proc.stdout   # refused before the bandwidth probe


@pytest.mark.skipif(not sys.platform.startswith("linux") or not cases.torch_available(),
                    reason="the torch peer's parent-death signal is Linux's; needs torch")
def test_torch_peer_ends_when_the_bench_is_killed_while_it_is_stopped():
    """kill -9 of `fastreg bench` while its torch peer is stopped between turns (SIGSTOP: it
    reads no closed pipe) leaves no peer behind: the kernel kills it with its parent."""
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "fastreg", "bench", "--quick", "--ops",
                             "small_dropout,small_l2_grad", "--backends", "c"], cwd=ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    peer, deadline = None, time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if peer is None:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    for k in f.read().split():
                        try:
                            with open(f"/proc/{k}/cmdline") as c:
                                if "torch_peer" in c.read():
                                    peer = int(k)
                        except OSError:
                            pass
            elif state(peer) == "T":
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        else:
            pytest.skip("the bench ended before its peer was seen stopped")
        proc.wait(30)
        for _ in range(100):   # the kernel's SIGKILL; the peer is reaped by init
            if state(peer) in (None, "Z"):
                break
            time.sleep(0.05)
        assert state(peer) in (None, "Z"), state(peer)
    finally:
        proc.kill()
        proc.wait(30)
        if peer is not None and state(peer) not in (None, "Z"):
            os.kill(peer, signal.SIGKILL)
