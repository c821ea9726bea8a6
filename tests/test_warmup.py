"""``fastreg warmup``: compiles the cpu backend's kernels (both twins) into Numba's cache.

One op group only, in a subprocess with an empty NUMBA_CACHE_DIR (a full warm-up compiles every
kernel: minutes). penalties is among the cheapest groups: one twin kernel and its helper, two
dtypes.
"""
import os
import subprocess
import sys

import pytest

import fastreg
from fastreg import warmup as warm
from fastreg.__main__ import main


def _cpu_or_skip():
    reason = fastreg.available_backends()["cpu"]
    if reason is not None:
        pytest.skip(f"backend 'cpu' unavailable: {reason}")


def test_warmup_fills_an_empty_numba_cache_with_both_twins(tmp_path):
    _cpu_or_skip()
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "fastreg", "warmup", "--ops", "penalties"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/1] penalties" in proc.stdout and "total" in proc.stdout
    assert str(cache) in proc.stdout
    index = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
    data = list(cache.rglob("*.nbc"))
    # the serial twin ran (tiny input), the parallel one was compiled from its signatures
    assert {"penalty._sums_kernel", "penalty._sums_kernel__serial"} <= index, index
    assert data


def test_plain_progress_lines_without_tqdm(monkeypatch, capsys):
    _cpu_or_skip()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # "from tqdm import tqdm" now fails
    seconds = warm.warmup("cpu", ops=["penalties"])
    assert list(seconds) == ["penalties"] and seconds["penalties"] >= 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[1/1] penalties") and out[0].endswith(" s")
    assert out[1].startswith("total ")


def test_a_group_compiles_only_its_own_kernels():
    # in a process that already ran other kernels serially (a test suite, a user's session),
    # warming up one group leaves their parallel versions alone (they once were all compiled)
    _cpu_or_skip()
    import fastreg.random
    fastreg.random.uniform(8, seed=1, backend="cpu")          # a serial twin, another module
    twins = warm._twins()

    def versions():
        return {id(tw): (set(tw.serial.signatures), set(tw.parallel.signatures)) for tw in twins}

    before = versions()   # (run alone, uniform's serial version has no parallel one yet)
    warm.warmup("cpu", ops=["penalties"], progress=False)
    after = versions()
    changed = {tw.py_func.__module__ for tw in twins if after[id(tw)] != before[id(tw)]}
    assert changed <= {"fastreg.cpu.penalty"}, changed


def test_quiet_returns_seconds_only(capsys):
    _cpu_or_skip()
    assert list(warm.warmup("cpu", ops=["penalties"], progress=False)) == ["penalties"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_ahead_of_time_backends_have_nothing_to_compile(backend, capsys):
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend!r} unavailable")
    assert main(["warmup", "--backend", backend]) == 0
    assert "nothing to compile" in capsys.readouterr().out


def test_bad_arguments(capsys):
    assert main(["warmup", "--ops", "penalties,nope"]) == 2
    assert "unknown op(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="backend must be"):
        warm.warmup("cuda")
    with pytest.raises(SystemExit):
        main(["warmup", "--backend", "gpu"])


def test_list_names_every_group(capsys):
    assert main(["warmup", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(warm.OPS)


@pytest.mark.parametrize("name", list(warm.OPS))
def test_every_group_runs_on_the_reference(name):
    # the same calls as on "cpu", cheap on "numpy": a group that no longer matches the API (or
    # the kernel contract, for batch_norm_sync) fails here rather than at warm-up time
    warm.OPS[name]("numpy")
