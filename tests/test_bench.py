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
from fastreg.bench import cases

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
    for column in ("op", "backend", "alloc", "ms (min)", "GB/s", "of bw", "x torch", "x fused"):
        assert column in out
    assert "GB/s memory bandwidth" in out and "threads:" in out
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


def test_console_command():
    proc = _run("-m", "fastreg", "bench", "--quick", "--sizes", "1000", "--ops", "dropout",
                "--backends", "numpy", "--no-torch", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "threads: 1 (numba)" in proc.stdout
    assert "torch: not timed (--no-torch)" in proc.stdout
    assert "dropout p=0.5" in proc.stdout and " 1000 " in proc.stdout
    usage = _run("-m", "fastreg")
    assert usage.returncode == 2 and "bench" in usage.stdout
    bad = _run("-m", "fastreg", "bench", "--sizes", "2^x")
    assert bad.returncode == 2 and "--sizes" in bad.stderr


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
