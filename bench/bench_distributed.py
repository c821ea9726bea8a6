"""Data-parallel benchmarks over MPI: Allreduce time against message size, and samples per second
of a data-parallel training step (MLP with synchronized batch norm) on 1 and N ranks.

Run under the virtualenv's mpiexec (one BLAS thread per rank, so N ranks use N cores)::

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python bench/bench_distributed.py
    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 1 .venv/bin/python bench/bench_distributed.py --train

``--sizes`` picks the Allreduce sizes (default 1 KiB .. 64 MiB, x4 steps), ``--train`` only the
training step, ``--trainer`` only the Trainer section: samples per second of
``fastreg.train.Trainer(..., comm=COMM_WORLD)`` on the demo's MLP (64-256-256-10, batch norm +
ReLU, dropout 0.2, AdamW, float32) over all 1797 digits, global batches 64 and 256 (one warm-up
epoch, then ``--trainer-epochs`` timed epochs; samples/s = samples / the slowest rank's time).
Compare ``-n 1`` and ``-n 2``::

    for n in 1 2; do OMP_NUM_THREADS=1 .venv/bin/mpiexec -n $n .venv/bin/python -m mpi4py \
        bench/bench_distributed.py --trainer; done

In the Allreduce sweep rank 0 prints one line per size: the blocking ``Allreduce`` and
fastreg's watched ``Iallreduce`` (the one GradientAllreduce uses) in milliseconds (min and
median of the repeats,
after a warm-up; each repeat's time is the slowest rank's), the algorithm bandwidth bytes /
time and the bus bandwidth 2 (N - 1) / N * bytes / time (what a ring Allreduce moves per
rank, comparable across N).

Under pytest (``pytest bench --benchmark-disable``) a smoke test runs the script on 2 ranks with
tiny sizes when mpi4py and mpiexec are installed.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _sizes(spec):
    lo, hi = (int(float(v) * 1024) for v in spec.split(":"))
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= 4
    return out


def bench_allreduce(comm, sizes, repeat):
    from mpi4py import MPI

    from fastreg import distributed as dist
    size = comm.Get_size()
    rows = []
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 8))
        reps = repeat if nbytes <= 4 << 20 else max(3, repeat // 4)
        timings = {}
        for name in ("blocking", "watched"):
            ts = []
            for i in range(reps + 1):
                comm.Barrier()
                t0 = time.perf_counter()
                if name == "blocking":
                    comm.Allreduce(MPI.IN_PLACE, buf)
                else:
                    dist._allreduce_inplace(comm, buf, "bench", 60.0)
                ts.append(time.perf_counter() - t0)
            # every rank's time for this call is the slowest rank's: take the max over ranks
            t = np.array(ts[1:])
            comm.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
            timings[name] = (float(np.min(t)), float(np.median(t)))
        rows.append((buf.nbytes, timings["blocking"], timings["watched"]))
    if comm.Get_rank() == 0:
        print(f"# Allreduce (float64 sum, in place), {size} ranks; ms as min / median of the "
              f"repeats; bandwidths from the watched min")
        print(f"{'bytes':>10} {'blocking ms':>17} {'watched ms':>17} {'algbw GB/s':>11} "
              f"{'busbw GB/s':>11}")
        for nbytes, tb, tw in rows:
            alg = nbytes / tw[0] / 1e9
            print(f"{nbytes:>10} {tb[0] * 1e3:>8.3f} /{tb[1] * 1e3:>7.3f} "
                  f"{tw[0] * 1e3:>8.3f} /{tw[1] * 1e3:>7.3f} {alg:>11.2f} "
                  f"{alg * 2 * (size - 1) / size:>11.2f}", flush=True)
    return rows


def _bn_backend():
    """The first host backend that has the batch-norm pieces the synchronized path uses."""
    from fastreg import _registry
    for name in ("cpu", "c", "numpy"):
        try:
            for op in ("bn_stats", "bn_apply", "bn_backward_reduce", "bn_backward_apply"):
                _registry.get(op, name)
            return name
        except _registry.BackendUnavailableError:
            continue
    return "numpy"


def bench_train(comm, global_batch, steps, d_in=512, hidden=1024, classes=10):
    """Samples per second of data-parallel SGD steps: linear -> sync BN -> ReLU -> linear ->
    softmax cross-entropy, float32, the loss scaled by the global batch, gradients summed with
    GradientAllreduce."""
    import fastreg
    from fastreg import distributed as dist
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(0)
    f32 = np.float32
    W1 = (rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(f32)
    W2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(f32)
    gamma, beta = np.ones(hidden, f32), np.zeros(hidden, f32)
    rm, rv = np.zeros(hidden, f32), np.ones(hidden, f32)
    params = [W1, gamma, beta, W2]
    ar = dist.GradientAllreduce(params, comm, average=False)
    X = rng.standard_normal((global_batch, d_in)).astype(f32)
    T = rng.integers(0, classes, global_batch)
    s = dist.shard(global_batch, rank, size)
    Xs, Ts = X[s], T[s]
    n = Xs.shape[0]
    backend = _bn_backend()

    def step():
        h = Xs @ W1
        z, saved = fastreg.batch_norm(h, rm, rv, gamma, beta, training=True, activation="relu",
                                      comm=comm, backend=backend)
        logits = z @ W2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), Ts] -= 1
        p /= global_batch                       # the global mean loss
        gW2 = z.T @ p
        gz = p @ W2.T
        gh, ggamma, gbeta = fastreg.batch_norm_backward(gz, h, saved, gamma, y=z, comm=comm,
                                                        backend=backend)
        gW1 = Xs.T @ gh
        grads = ar.reduce([gW1, ggamma, gbeta, gW2])
        for w, g in zip(params, grads):
            w -= f32(0.01) * g

    step()                                      # warm-up (JIT, first touch)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    comm.Barrier()
    dt = time.perf_counter() - t0
    t_reduce = 0.0
    # time of the gradient Allreduce alone, same buffers
    grads = [np.ones_like(p) for p in params]
    comm.Barrier()
    t1 = time.perf_counter()
    for _ in range(steps):
        ar.reduce(grads)
    t_reduce = (time.perf_counter() - t1) / steps
    if rank == 0:
        print(f"# training step: global batch {global_batch}, {size} rank(s), MLP {d_in}-"
              f"{hidden}-{classes} float32 with sync BN ({backend}), gradients {ar.nbytes} "
              f"bytes in "
              f"{len(ar.buckets)} bucket(s)")
        print(f"samples/s {global_batch * steps / dt:.0f}  step {dt / steps * 1e3:.2f} ms  "
              f"gradient Allreduce {t_reduce * 1e3:.2f} ms", flush=True)


def bench_trainer(comm, batches, epochs):
    """Samples per second of data-parallel ``Trainer.fit`` epochs on the demo MLP (digits)."""
    from mpi4py import MPI

    from fastreg import optim
    from fastreg.distributed import shard_sizes
    from fastreg.train import Trainer, mlp
    from fastreg.train.data import load_digits
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    rank, size = comm.Get_rank(), comm.Get_size()
    rows = []
    for batch in batches:
        model = mlp((64, 256, 256, 10), dropout=0.2, batch_norm=True, seed=0)
        opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        trainer = Trainer(model, opt, seed=0, verbose=0, comm=comm)
        trainer.fit(X, labels, epochs=1, batch_size=batch)           # warm-up: JIT, buffers
        comm.Barrier()
        t0 = time.perf_counter()
        trainer.fit(X, labels, epochs=1 + epochs, batch_size=batch)
        dt = np.array([time.perf_counter() - t0])
        comm.Allreduce(MPI.IN_PLACE, dt, op=MPI.MAX)
        sps = len(X) * epochs / float(dt[0])
        rows.append((batch, sps, trainer.history["loss"][-1]))
        if rank == 0:
            print(f"# Trainer: {size} rank(s), digits {len(X)} samples, MLP 64-256-256-10 BN + "
                  f"dropout 0.2, AdamW float32, global batch {batch} (per rank "
                  f"{max(shard_sizes(batch, size))}), {epochs} epoch(s)")
            print(f"trainer samples/s {sps:.0f}  epoch {float(dt[0]) / epochs * 1e3:.1f} ms  "
                  f"loss {trainer.history['loss'][-1]:.4f}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1:65536", help="KiB range lo:hi, x4 steps")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--train", action="store_true", help="only the training step")
    ap.add_argument("--no-train", action="store_true", help="only the Allreduce sweep")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--trainer", action="store_true", help="only the Trainer section")
    ap.add_argument("--trainer-batches", default="64,256",
                    help="global batch sizes of the Trainer section")
    ap.add_argument("--trainer-epochs", type=int, default=3)
    args = ap.parse_args(argv)
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if not args.train and not args.trainer:
        bench_allreduce(comm, _sizes(args.sizes), args.repeat)
    if not args.no_train and not args.trainer:
        bench_train(comm, args.batch, args.steps)
    if not args.train and not args.no_train or args.trainer:
        bench_trainer(comm, [int(b) for b in args.trainer_batches.split(",")],
                      args.trainer_epochs)


def test_bench_distributed_smoke():
    """Two ranks, tiny sizes, once: the script runs (skipped without mpi4py / mpiexec)."""
    import importlib.util

    import pytest
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if importlib.util.find_spec("mpi4py") is None or not mpiexec.exists():
        pytest.skip("needs mpi4py and the venv's mpiexec: pip install "
                    "'fastreg-kernels[mpi]'")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    p = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "mpi4py", __file__,
                        "--sizes", "1:16", "--repeat", "2", "--batch", "64", "--steps", "2",
                        "--trainer-batches", "256", "--trainer-epochs", "1"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "samples/s" in p.stdout and "busbw" in p.stdout
    assert "trainer samples/s" in p.stdout


if __name__ == "__main__":
    main()
