"""Data-parallel training: ``Trainer(..., comm=...)`` and ``fastreg demo --distributed``.

The MPI tests start tests/mpi_workers/train_dp.py under the virtualenv's own ``mpiexec`` with
``python -m mpi4py`` (as tests/test_distributed.py does), on 1, 2 and 3 ranks: global batches of
16, 16, 16 and 2 samples give uneven shards, and with 3 ranks one rank has no rows in the last
batch. Each worker trains the single-process reference itself and checks with assertions; a
failure raises on that rank, which makes ``-m mpi4py`` abort the job (non-zero exit).

Tolerances (float64 model: batch norm, dropout, AdamW, L2, augmentation): on 1 rank everything
is bit-identical to single-process training (the trainer then runs the single-process
arithmetic); on 2 and 3 ranks parameters, batch-norm running statistics, optimizer moments,
history and evaluate() agree within 1e-10 relative to each array's largest magnitude (measured:
~4e-16 after 3 epochs; only the order of the sums differs), dropout offsets and epoch counts
exactly, and every float is bit-identical across ranks. Every launch is bounded by a subprocess
timeout (a hang raises subprocess.TimeoutExpired; no test asserts a duration).
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastreg import optim
from fastreg.train import Dropout, Trainer, mlp, softmax_cross_entropy

HERE = Path(__file__).resolve().parent
# Subprocesses import the fastreg this test imported (the installed one in CI, whose C extension
# is built; the checkout in development) and run from tests/, so the checkout's sources never
# shadow an installed fastreg.
import fastreg as _fastreg  # noqa: E402
PKG_PARENT = Path(_fastreg.__file__).resolve().parent.parent
WORKER = HERE / "mpi_workers" / "train_dp.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _mpi_missing():
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastreg-kernels[mpi]")'
    if not MPIEXEC.exists():
        return f"no mpiexec next to {sys.executable} (pip install mpich)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PKG_PARENT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    env.update(extra)
    return env


def launch(n, *args, mpiexec_opts=(), timeout=90, env=None, module=False):
    """``mpiexec -n n python -m mpi4py WORKER args`` -> (returncode, output, seconds)."""
    target = ["-m", *map(str, args)] if module else [str(WORKER), *map(str, args)]
    cmd = [str(MPIEXEC), *mpiexec_opts, "-n", str(n), sys.executable, "-m", "mpi4py", *target]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=HERE, env=env or _env(), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


# ---- no MPI needed ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_row_windows_draw_the_whole_batch_masks(mode):
    """Rows first..first+k of a global batch, in any split, get the whole batch's mask, and the
    offset advances by the global batch either way."""
    x = np.random.default_rng(0).standard_normal((7, 5))
    whole = Dropout(0.4, mode, seed=3)
    whole.offset = 35
    ref = whole.forward(x).copy()
    for cuts in ([0, 3, 7], [0, 0, 2, 7], [0, 7]):
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            d = Dropout(0.4, mode, seed=3)
            d.offset = 35
            d.set_row_window(a, 7)
            parts.append(d.forward(x[a:b]).copy())
            g = d.backward(np.ones((b - a, 5)))
            np.testing.assert_array_equal(g != 0, parts[-1] != 0)
            assert d.offset == whole.offset == 35 + x.size
        np.testing.assert_array_equal(np.concatenate(parts), ref)


def test_softmax_cross_entropy_total():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    g_all = np.empty((6, 4))
    loss, correct, _ = softmax_cross_entropy(logits, labels, g_all)
    g = [np.empty((k, 4)) for k in (4, 2, 0)]
    parts = [softmax_cross_entropy(logits[a:b], labels[a:b], gp, total=6)
             for (a, b), gp in zip(((0, 4), (4, 6), (6, 6)), g)]
    assert parts[2][:2] == (0.0, 0)
    assert sum(p[0] for p in parts) == pytest.approx(loss, rel=1e-14)
    assert sum(p[1] for p in parts) == correct
    np.testing.assert_allclose(np.concatenate(g), g_all, rtol=1e-15)


def test_trainer_rejects_a_non_communicator():
    pytest.importorskip("mpi4py")
    model = mlp((4, 3, 2), seed=0)
    with pytest.raises(TypeError, match="communicator"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), comm=object(), verbose=0)


def test_demo_distributed_outside_mpiexec_is_a_clear_error():
    env = {k: v for k, v in _env().items() if not k.startswith(("PMI", "PMIX", "OMPI_"))}
    p = subprocess.run([sys.executable, "-m", "fastreg", "demo", "--distributed", "--quick"],
                       cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "mpiexec" in p.stderr


def test_demo_distributed_without_mpi4py_names_the_extra():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import importlib.util; importlib.util.find_spec = lambda name, *a: None\n"
            "from fastreg.__main__ import main\n"
            "sys.exit(main(['demo', '--distributed']))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and 'pip install "fastreg-kernels[mpi]"' in p.stderr, p.stderr


# ---- under mpiexec ------------------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3])
def test_data_parallel_training_equals_single_process(n):
    """Weights, BN running statistics, optimizer state and metrics after 3 epochs equal
    single-process training on the same global batches; rank 0's stop decision is everyone's."""
    rc, out, _ = launch(n, "equal")
    assert rc == 0, out
    assert sum(f"DP EQUAL OK rank {r} of {n}" in out for r in range(n)) == n, out


@needs_mpi
def test_checkpoint_from_two_ranks_resumes_on_three(tmp_path):
    """Rank 0 alone writes the checkpoint (atomically: no temporary file is left); 3 ranks
    resume it and end where 4 uninterrupted single-process epochs end (within the tolerance)."""
    path = tmp_path / "run.npz"
    rc, out, _ = launch(2, "ckpt_write", path)
    assert rc == 0, out
    assert sum(f"DP CKPT WRITE OK rank {r} of 2" in out for r in range(2)) == 2, out
    rc, out, _ = launch(3, "ckpt_resume", path)
    assert rc == 0, out
    assert sum(f"DP CKPT RESUME OK rank {r} of 3" in out for r in range(3)) == 3, out


@needs_mpi
def test_load_checkpoint_is_collective(tmp_path):
    """load_checkpoint with comm: rank 0 reads and checks the file, every rank gets the state
    (it equals a single-process load); a damaged file raises on every rank."""
    path = tmp_path / "run.npz"
    rc, out, _ = launch(2, "ckpt_write", path)
    assert rc == 0, out
    rc, out, _ = launch(2, "ckpt_load", path)
    assert rc == 0, out
    assert sum(f"DP CKPT LOAD OK rank {r} of 2" in out for r in range(2)) == 2, out


WATCHDOG_TIMEOUT = "3"   # FASTREG_MPI_TIMEOUT of the workers, seconds


@needs_mpi
@pytest.mark.parametrize("mode, opts", [
    ("exit", ()),                          # Hydra notices the dead rank and ends the job
    ("exit", ("-disable-auto-cleanup",)),  # nobody cleans up: the watchdog must fire
    ("hang", ()),                          # a live rank that never arrives: the watchdog
], ids=["dead-rank", "dead-rank-no-cleanup", "hung-rank"])
def test_dead_or_hung_rank_ends_training_with_an_error(mode, opts):
    rc, out, _ = launch(3, mode, mpiexec_opts=opts, timeout=60,
                              env=_env(FASTREG_MPI_TIMEOUT=WATCHDOG_TIMEOUT))
    assert rc != 0, out
    assert "completed: no error" not in out, out
    if mode == "hang" or opts:
        # a surviving rank raised (the first to abort the job may end the other before it
        # prints)
        assert re.search(r"DP FAIL rank [02] Collective(Timeout|Error)", out), out
        assert re.search(r"on rank [02] of 3", out), out


@needs_mpi
def test_demo_distributed_two_ranks(tmp_path):
    rc, out, _ = launch(2, "fastreg", "demo", "--distributed", "--epochs", "1", "--out",
                        tmp_path, module=True, timeout=120)
    assert rc == 0, out
    assert "2 rank(s)" in out and out.count("samples/s") == 2, out
    with open(tmp_path / "distributed.json") as f:
        report = json.load(f)
    assert report["ranks"] == 2
    assert set(report["results"]) <= {"batch norm + dropout", "everything"}
    for r in report["results"].values():
        assert r["mean_std"]["samples_per_s"][0] > 0
        assert 0.0 <= r["mean_std"]["test_accuracy"][0] <= 1.0
