"""MPI worker: data-parallel Trainer(comm=...) against single-process training on the same
global batches.

Run: mpiexec -n N python -m mpi4py tests/mpi_workers/train_dp.py MODE [ARG]

MODE
  equal         3 epochs of an MLP with batch norm (synchronized), dropout (input and hidden),
                AdamW, an L2 penalty, keyed augmentation, validation and EarlyStopping, on
                uneven shards (global batches 16, 16, 16, 2: with 3 ranks the last one leaves a
                rank without rows). Every rank also trains the single-process reference and
                compares: parameters, batch-norm running statistics, optimizer moments, history
                and evaluate() within RTOL (bit for bit on 1 rank), dropout offsets exactly,
                everything bit-identical between ranks. Then a callback that stops on rank 0
                only: every rank must stop at the same epoch (rank 0's decision is broadcast).
                Prints "DP EQUAL OK rank R".
  ckpt_write P  2 epochs with checkpoint=P (rank 0 writes it). Prints "DP CKPT WRITE OK rank R".
  ckpt_resume P resume P to 4 epochs; compare with 4 single-process epochs (RTOL). Prints
                "DP CKPT RESUME OK rank R".
  ckpt_load P   Trainer.load_checkpoint(P) (collective: rank 0 reads, every rank gets the
                state) equals a single-process load; a damaged copy of P raises on every rank
                (ValueError on rank 0, RuntimeError elsewhere) and changes nothing. Prints
                "DP CKPT LOAD OK rank R".
  exit | hang   rank 1 dies (os._exit) or hangs in its 3rd training step; the survivors print
                "DP FAIL rank R <exception>" and re-raise (run with FASTREG_MPI_TIMEOUT small).
"""
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from fastreg import optim
from fastreg.train import Callback, EarlyStopping, Trainer, mlp

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
RTOL = 1e-10      # float64, relative to the largest magnitude of each array
EXACT = size == 1  # one rank runs the single-process arithmetic: bit for bit

SIZES = (6, 16, 12, 3)
N, NV, BATCH = 50, 23, 16


def data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N + NV, SIZES[0]))
    y = (np.abs(X[:, 0] * 2 + X[:, 1]).astype(np.int64) + rng.integers(0, 2, N + NV)) % 3
    return (X[:N], y[:N]), (X[N:], y[N:])


def augment(batch, seed, epoch, index_offset):
    """Noise keyed by (seed, epoch, position of the sample in the epoch's order)."""
    for j in range(len(batch)):
        rng = np.random.default_rng([seed, epoch, index_offset + j])
        batch[j] += 0.1 * rng.standard_normal(batch.shape[1])
    return batch


def build(comm_, callbacks=(), aug=augment):
    model = mlp(SIZES, dropout=0.3, input_dropout=0.1, batch_norm=True, dtype=np.float64,
                seed=3)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    return Trainer(model, opt, l2=1e-3, callbacks=list(callbacks), augment=aug, seed=11,
                   verbose=0, comm=comm_)


def close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if EXACT:
        assert np.array_equal(got, want, equal_nan=True), f"rank {rank}: {what} differs (1 rank)"
        return
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= RTOL * scale, f"rank {rank}: {what}: max error {err:.3g} > {RTOL} * {scale:.3g}"


def same_everywhere(a, what):
    a = np.ascontiguousarray(a)
    allv = np.empty((size,) + a.shape, a.dtype)
    comm.Allgather(a, allv)
    assert all(np.array_equal(v.view(np.uint8), a.view(np.uint8)) for v in allv), \
        f"{what} differs between ranks"


def compare(dp, ref):
    a, b = dp.state_dict(), ref.state_dict()
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for k in sorted(a):
        if a[k].dtype.kind in "US" or k.startswith("trainer/"):
            assert np.array_equal(a[k], b[k]), k
        elif k.startswith("rng/"):
            assert np.array_equal(a[k], b[k]), f"rank {rank}: {k}: {a[k]} != {b[k]}"
        elif k == "history/time":
            continue
        else:
            close(a[k], b[k], k)
        if a[k].dtype.kind == "f" and k != "history/time":
            same_everywhere(a[k], k)
    return a


class StopOnRoot(Callback):
    """Stops after epoch ``at`` -- on rank 0 only: the other ranks learn it from rank 0."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.at and trainer.rank == 0:
            trainer.stop_training = True


def mode_equal():
    (X, y), val = data()
    kw = dict(validation=val, epochs=3, batch_size=BATCH)
    ref = build(None, [EarlyStopping("val_loss", patience=5, restore_best_weights=False)])
    ref.fit(X, y, **kw)
    dp = build(comm, [EarlyStopping("val_loss", patience=5, restore_best_weights=False)])
    # a second, local trainer built on the same model must not turn dp's synchronized batch
    # norm off (it did when trainers set the model's communicator as they were built)
    Trainer(dp.model, optim.SGD(dp.model.parameters(), lr=0.1), verbose=0)
    dp.fit(X, y, **kw)
    state = compare(dp, ref)
    assert int(state["trainer/epoch"]) == 3
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        close(dp.history[k], ref.history[k], f"history {k}")
    ev, er = dp.evaluate(*val), ref.evaluate(*val)
    close([ev["loss"], ev["accuracy"]], [er["loss"], er["accuracy"]], "evaluate")
    # running statistics of the synchronized batch norm = the single-process ones
    bn = [k for k in state if "running_" in k]
    assert len(bn) == 4, bn

    # rank 0 alone decides to stop after epoch 2 (index 1): every rank stops there
    stopper = build(comm, [StopOnRoot(1)])
    stopper.fit(X, y, epochs=6, batch_size=BATCH)
    assert stopper.epoch == 2 and stopper.stop_training, (rank, stopper.epoch)
    same_everywhere(np.array([stopper.epoch]), "stopped epoch")
    print(f"DP EQUAL OK rank {rank} of {size}", flush=True)


def mode_ckpt_write(path):
    (X, y), val = data()
    dp = build(comm, [EarlyStopping("val_loss", patience=10)])
    dp.fit(X, y, validation=val, epochs=2, batch_size=BATCH, checkpoint=path)
    comm.Barrier()
    folder = os.path.dirname(os.path.abspath(path))
    assert sorted(os.listdir(folder)) == [os.path.basename(path)], os.listdir(folder)
    print(f"DP CKPT WRITE OK rank {rank} of {size}", flush=True)


def mode_ckpt_resume(path):
    (X, y), val = data()
    mtime = os.path.getmtime(path)
    dp = build(comm, [EarlyStopping("val_loss", patience=10)])
    dp.fit(X, y, validation=val, epochs=4, batch_size=BATCH, checkpoint=path, resume=True)
    assert dp.epoch == 4 and len(dp.history["loss"]) == 4, (dp.epoch, dp.history)
    ref = build(None, [EarlyStopping("val_loss", patience=10)])
    ref.fit(X, y, validation=val, epochs=4, batch_size=BATCH)
    compare(dp, ref)
    comm.Barrier()
    assert os.path.getmtime(path) >= mtime
    print(f"DP CKPT RESUME OK rank {rank} of {size}", flush=True)


def mode_ckpt_load(path):
    dp = build(comm, [EarlyStopping("val_loss", patience=10)])
    before = [p.copy() for p in dp.model.parameters()]
    bad = os.path.join(os.path.dirname(os.path.abspath(path)), "damaged.npz")
    if rank == 0:
        with open(path, "rb") as f:
            data = f.read()
        with open(bad, "wb") as f:
            f.write(data[:len(data) // 2])
    comm.Barrier()
    try:
        dp.load_checkpoint(bad)
    except (ValueError, RuntimeError) as exc:
        assert isinstance(exc, ValueError if rank == 0 else RuntimeError), (rank, exc)
    else:
        raise AssertionError("a damaged checkpoint loaded")
    for a, b in zip(before, dp.model.parameters()):
        assert np.array_equal(a, b), rank
    dp.load_checkpoint(path)
    ref = build(None, [EarlyStopping("val_loss", patience=10)])
    ref.load_checkpoint(path)
    assert dp.epoch == ref.epoch == 2, (dp.epoch, ref.epoch)
    for (k, a), b in zip(dp.state_dict().items(), ref.state_dict().values()):
        assert np.array_equal(a, b), (rank, k)
    print(f"DP CKPT LOAD OK rank {rank} of {size}", flush=True)


def mode_fail(how):
    (X, y), _ = data()
    steps = []

    def failing(batch, seed, epoch, index_offset):
        steps.append(index_offset)
        if rank == 1 and len(steps) == 3:
            if how == "exit":
                os._exit(1)
            time.sleep(600)
        return augment(batch, seed, epoch, index_offset)

    dp = build(comm, aug=failing)
    t0 = time.monotonic()
    try:
        dp.fit(X, y, epochs=50, batch_size=BATCH)
    except Exception as exc:
        print(f"DP FAIL rank {rank} {type(exc).__name__} after {time.monotonic() - t0:.1f} s: "
              f"{exc}", flush=True)
        raise
    print(f"DP FAIL rank {rank} completed: no error", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "equal":
        mode_equal()
    elif mode == "ckpt_write":
        mode_ckpt_write(sys.argv[2])
    elif mode == "ckpt_resume":
        mode_ckpt_resume(sys.argv[2])
    elif mode == "ckpt_load":
        mode_ckpt_load(sys.argv[2])
    elif mode in ("exit", "hang"):
        mode_fail(mode)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
