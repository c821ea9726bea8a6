"""MPI worker: data-parallel SGD with GradientAllreduce on uneven shards against one process on
the same global batches, with and without synchronized batch norm; dropout keyed by the global
sample index.

Run: mpiexec -n N python -m mpi4py tests/mpi_workers/grad_allreduce.py
Prints "GRAD OK rank R" on success; any failure raises (and -m mpi4py aborts the job).
"""
import numpy as np
from mpi4py import MPI

import fastreg
from fastreg import distributed as dist

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
RTOL = 1e-12   # float64, relative to the largest weight
STEPS = 6
BATCHES = [23, 17, 2, 30, 9, 31]   # global batch sizes; 2 < 3 ranks: a rank with no samples


def close(got, want, what, rtol=RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), 1.0)
    err = float(np.max(np.abs(got - want)))
    assert err <= rtol * scale, \
        f"rank {rank}: {what}: max error {err:.3g} > {rtol:.3g} * {scale:.3g}"


def same_everywhere(arrays, what):
    blob = np.concatenate([np.ascontiguousarray(a).view(np.uint8).ravel() for a in arrays])
    allv = np.empty((size, blob.size), np.uint8)
    comm.Allgather(blob, allv)
    assert (allv == blob).all(), f"{what}: ranks hold different bits"


def data(step, n, d, k):
    rng = np.random.default_rng(1000 + step)
    return rng.standard_normal((n, d)) * 2 + 1, rng.standard_normal((n, k))


def linear_grads(W, b, X, T):
    """Mean squared error 0.5 * mean_i ||x_i W + b - t_i||^2 over X's rows: gradients (W, b)."""
    n = X.shape[0]
    E = (X @ W + b - T) / n          # NaN when n == 0 (0 / 0): the weighting must ignore it
    return X.T @ E, E.sum(axis=0) if n else np.full(b.shape, np.nan)


def test_linear_weighted_mean(bucket_bytes):
    d, k, lr = 7, 3, 0.1
    rng = np.random.default_rng(5)
    W0, b0 = rng.standard_normal((d, k)), rng.standard_normal(k)
    W, b, Wr, br = W0.copy(), b0.copy(), W0.copy(), b0.copy()
    ar = dist.GradientAllreduce([W, b], comm, bucket_bytes=bucket_bytes)
    for step, N in enumerate(BATCHES):
        X, T = data(step, N, d, k)
        gW, gb = linear_grads(Wr, br, X, T)          # one process, the global batch
        Wr -= lr * gW
        br -= lr * gb
        s = dist.shard(N, rank, size)
        gW, gb = linear_grads(W, b, X[s], T[s])      # this rank's mean over its shard
        global_count = N if step % 2 else None       # known, or summed by one Allreduce
        ar.reduce([gW, gb], local_count=s.stop - s.start, global_count=global_count)
        W -= lr * gW
        b -= lr * gb
    close(W, Wr, f"linear W, bucket {bucket_bytes} B")
    close(b, br, f"linear b, bucket {bucket_bytes} B")
    same_everywhere([W, b], "linear weights")
    return len(ar.buckets)


def test_mixed_dtypes_plain_mean():
    """average=True without counts: the mean over ranks; float32 and float64 buffers."""
    a = np.full((3, 5), rank + 1, np.float32)
    c = np.arange(4, dtype=np.float64) * (rank + 1)
    ar = dist.GradientAllreduce([a.shape, c], comm, dtype=np.float32, bucket_bytes=16)
    assert set(ar.buffers) == {np.dtype(np.float32), np.dtype(np.float64)}
    ar.reduce([a, c])
    mean_factor = sum(range(1, size + 1)) / size
    np.testing.assert_allclose(a, np.full((3, 5), mean_factor, np.float32), rtol=1e-6)
    np.testing.assert_allclose(c, np.arange(4) * mean_factor, rtol=1e-15)
    s = dist.GradientAllreduce([c], comm, average=False)
    c[:] = 1.0
    s.reduce([c])
    np.testing.assert_array_equal(c, np.full(4, float(size)))
    class Fresh:   # an array-like whose every conversion is a new array
        def __array__(self, dtype=None, copy=None):
            return np.arange(8.0)[:4] * 1.0

    for bad in ([1.0, 2.0, 3.0, 4.0], Fresh()):   # reduced into a copy: refused
        try:
            s.reduce([bad])
        except TypeError as exc:
            assert "converts to a copy" in str(exc), exc
        else:
            raise AssertionError(f"a {type(bad).__name__} gradient was accepted")
    view = np.zeros(8)[::2]   # a view converts to itself: reduced in place
    view[:] = 1.0
    s.reduce([view])
    np.testing.assert_array_equal(view, np.full(4, float(size)))


def bn_model_grads(params, X, T, N, comm_):
    """x -> batch norm (synchronized with comm_) -> linear; loss = 0.5 * sum ||y - t||^2 / N
    over the rows here, N the *global* batch size (the sync-BN recipe for uneven shards)."""
    gamma, beta, W, b, rm, rv = params
    h, saved = fastreg.batch_norm(X, rm, rv, gamma, beta, training=True, backend="numpy",
                                  comm=comm_)
    E = (h @ W + b - T) / N
    gW, gb = h.T @ E, E.sum(axis=0)
    gh = E @ W.T
    _, ggamma, gbeta = fastreg.batch_norm_backward(gh, X, saved, gamma, backend="numpy",
                                                   comm=comm_)
    return [ggamma, gbeta, gW, gb]


def test_sync_bn_model():
    d, k, lr = 6, 2, 0.05
    rng = np.random.default_rng(9)
    init = [rng.uniform(0.5, 1.5, d), rng.standard_normal(d) * 0.1, rng.standard_normal((d, k)),
            rng.standard_normal(k), np.zeros(d), np.ones(d)]
    mine = [p.copy() for p in init]
    ref = [p.copy() for p in init]
    ar = dist.GradientAllreduce(mine[:4], comm, average=False)   # the loss is already / N
    for step, N in enumerate(b for b in BATCHES if b >= 2):
        X, T = data(50 + step, N, d, k)
        for p, g in zip(ref, bn_model_grads(ref, X, T, N, None)):
            p -= lr * g
        s = dist.shard(N, rank, size)
        grads = ar.reduce(bn_model_grads(mine, X[s], T[s], N, comm))
        for p, g in zip(mine, grads):
            p -= lr * g
    names = ["gamma", "beta", "W", "b", "running_mean", "running_var"]
    for p, r, name in zip(mine, ref, names):
        close(p, r, f"sync-BN model {name}")
    same_everywhere(mine, "sync-BN model weights")


def test_dropout_by_global_index():
    """Dropout keyed by the global sample index: the ranks' masks make the single-process one."""
    N, F, seed = 13, 10, 77
    X = np.random.default_rng(3).standard_normal((N, F))
    whole = fastreg.dropout(X.ravel(), 0.3, seed=seed, backend="numpy").reshape(N, F)
    rows = dist.global_indices(N, rank, size, start=0)
    s = dist.shard(N, rank, size)
    if rows.size:
        mine = fastreg.dropout(X[s].ravel(), 0.3, seed=seed, offset=int(rows[0]) * F,
                               backend="numpy").reshape(-1, F)
        np.testing.assert_array_equal(mine, whole[s])


def main():
    nb = [test_linear_weighted_mean(bb) for bb in (25 * 2**20, 40)]
    assert nb[0] == 1 and nb[1] > 1, nb
    test_mixed_dtypes_plain_mean()
    test_sync_bn_model()
    test_dropout_by_global_index()
    assert dist.decide(rank == 0, comm) is True
    assert dist.broadcast_object({"epoch": 3} if rank == 0 else None, comm) == {"epoch": 3}
    assert dist.allreduce(rank, comm) == size * (size - 1) // 2
    dist.barrier(comm, timeout=30)
    print(f"GRAD OK rank {rank}", flush=True)


main()
