"""Data-parallel pieces over MPI (fastreg.distributed, batch_norm(..., comm=...)).

The MPI tests start the workers in tests/mpi_workers/ under the virtualenv's own ``mpiexec``
(found next to sys.executable; the mpich wheel from PyPI ships it) with ``python -m mpi4py``,
for 1, 2 and 3 ranks on uneven shards (3 ranks oversubscribe a 2-core machine: fine). Each
worker checks its own results with assertions and prints one OK line per rank; a failure raises
on that rank, which makes ``-m mpi4py`` abort the job (non-zero exit).

Tolerances: float64 results (weights after several SGD steps, batch-norm statistics, outputs and
gradients) agree with one process on the concatenated global batch within 1e-12 relative to the
largest value (only the order of the sums differs); float32 batch-norm outputs within 8 ulp of
the output scale (the float64 coefficients may round to a neighbouring float32). Values that
must agree between ranks (merged statistics, reduced gradients, weights) are compared bit for
bit. Every launch is bounded by a subprocess timeout.
"""
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastreg import distributed as dist

HERE = Path(__file__).resolve().parent
# Subprocesses import the fastreg this test imported (the installed one in CI, whose C extension
# is built; the checkout in development) and run from tests/, so the checkout's sources never
# shadow an installed fastreg.
import fastreg as _fastreg  # noqa: E402
PKG_PARENT = Path(_fastreg.__file__).resolve().parent.parent
WORKERS = HERE / "mpi_workers"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _mpi_missing():
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastreg-kernels[mpi]")'
    if not MPIEXEC.exists():
        return f"no mpiexec next to {sys.executable} (pip install mpich)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def launch(n, worker, *args, mpiexec_opts=(), timeout=90, module=True, env=None):
    """Run ``mpiexec -n n python -m mpi4py worker args`` (``module=False``: plain ``python
    worker args``); (returncode, output, seconds)."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(
        [str(PKG_PARENT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    cmd = [str(MPIEXEC), *mpiexec_opts, "-n", str(n), sys.executable,
           *(("-m", "mpi4py") if module else ()), str(WORKERS / worker), *map(str, args)]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


# ---- sharding: no MPI needed --------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 7, 30, 31])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("strided", [False, True])
def test_shards_are_disjoint_and_cover(n, size, strided):
    parts = [np.arange(n)[dist.shard(n, r, size, strided=strided)] for r in range(size)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert [len(p) for p in parts] == dist.shard_sizes(n, size)
    if not strided:
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))  # rank order


def test_shard_sizes_and_global_indices():
    assert dist.shard_sizes(10, 3) == [4, 3, 3]
    assert dist.shard_sizes(2, 3) == [1, 1, 0]
    assert dist.shard(10, 1, 3) == slice(4, 7)
    np.testing.assert_array_equal(dist.global_indices(10, 2, 3, start=100), [107, 108, 109])
    np.testing.assert_array_equal(dist.global_indices(10, 1, 3, strided=True), [1, 4, 7])
    assert dist.global_indices(2, 2, 3).size == 0
    with pytest.raises(ValueError, match="rank"):
        dist.shard(5, 3, 3)
    with pytest.raises(ValueError, match="non-negative"):
        dist.shard(-1, 0, 1)


def test_missing_mpi4py_names_the_extra(monkeypatch):
    # in this process: no mpi4py to import (None in sys.modules), nothing imported before
    monkeypatch.setattr(dist, "_MPI", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=re.escape('pip install "fastreg-kernels[mpi]"')):
        dist.mpi()


def test_default_timeout(monkeypatch):
    monkeypatch.delenv("FASTREG_MPI_TIMEOUT", raising=False)
    assert dist.default_timeout() == 300.0
    monkeypatch.setenv("FASTREG_MPI_TIMEOUT", "none")
    assert dist.default_timeout() is None
    monkeypatch.setenv("FASTREG_MPI_TIMEOUT", "-2")
    with pytest.raises(ValueError, match="FASTREG_MPI_TIMEOUT"):
        dist.default_timeout()


# ---- under mpiexec -------------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3])
def test_sync_batch_norm_equals_global_batch(n):
    """Forward, running statistics and backward on uneven shards (and a rank with none) equal
    one process on the concatenated batch; the merged statistics are identical on every rank."""
    rc, out, _ = launch(n, "sync_bn.py", "numpy,c")
    assert rc == 0, out
    assert sum(f"SYNC_BN OK rank {r} " in out for r in range(n)) == n, out


@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3])
def test_data_parallel_sgd_equals_single_process(n):
    """Weighted gradient Allreduce (uneven shards, a rank with no samples, one or many buckets,
    mixed dtypes) and a synchronized-BN model: weights after 6 SGD steps equal single-process
    training on the same global batches, bit-identical on every rank; dropout keyed by the
    global index; decide / broadcast_object / allreduce."""
    rc, out, _ = launch(n, "grad_allreduce.py")
    assert rc == 0, out
    assert sum(f"GRAD OK rank {r}" in out for r in range(n)) == n, out


WATCHDOG_TIMEOUT = 3.0   # seconds a collective waits in the worker


@needs_mpi
@pytest.mark.parametrize("mode, opts", [
    ("exit", ()),                          # Hydra notices the dead rank and ends the job
    ("exit", ("-disable-auto-cleanup",)),  # nobody cleans up: the watchdog must fire
    ("hang", ()),                          # a live rank that never arrives: the watchdog
], ids=["dead-rank", "dead-rank-no-cleanup", "hung-rank"])
def test_dead_or_hung_rank_ends_with_an_error(mode, opts):
    # a job that hangs instead of ending raises subprocess.TimeoutExpired at 60 s (no speed
    # threshold: the watchdog's message below says it, not the time taken)
    rc, out, _ = launch(3, "watchdog.py", mode, WATCHDOG_TIMEOUT, mpiexec_opts=opts,
                        timeout=60)
    assert rc != 0, out
    assert "completed: no error" not in out, out
    if mode == "hang" or opts:
        # a surviving rank raised, naming the operation and its rank (the first to abort
        # the job may end the other before it prints)
        assert re.search(r"WATCHDOG rank [02] Collective(Timeout|Error)", out), out
        assert "Iallreduce (gradient bucket" in out and re.search(r"on rank [02] of 3", out), out


def _running(pid):
    """True while process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@needs_mpi
@pytest.mark.parametrize("module", [False, True], ids=["python", "python-m-mpi4py"])
@pytest.mark.parametrize("mode", ["raise", "catch"])
def test_a_stopped_rank_makes_the_job_abort(module, mode):
    """Rank 1 stops itself (SIGSTOP) before a collective. Rank 0 raises CollectiveTimeout after
    FASTREG_MPI_TIMEOUT and the job is aborted (status 70, fastreg's MPI_Abort code), ending the
    stopped rank too: with an uncaught exception or a caught one (where rank 0 reaches the end
    of its script and MPI_Finalize would wait forever), under plain python or -m mpi4py.
    Without the abort the job never ends: the subprocess limit then fails the test."""
    rc, out, _ = launch(2, "hang_abort.py", mode, module=module, timeout=120,
                        env={"FASTREG_MPI_TIMEOUT": "3"})
    assert rc == 70, out
    assert "HANG rank 0 CollectiveTimeout after" in out and "Iallreduce (sum, 3 values)" in out
    assert "aborting the MPI job after a collective timeout" in out, out
    if mode == "catch":
        assert "HANG rank 0 reached the end of the script" in out, out
    # the ranks share one stdout: their lines may interleave ("...pid 12HANG rank 0 ...")
    pids = [int(pid) for pid in re.findall(r"HANG rank \d+ ready pid (\d+)", out)]
    assert len(pids) == 2, out
    deadline = time.monotonic() + 10
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, pids)), out
