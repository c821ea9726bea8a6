"""MPI worker: synchronized batch norm (forward, running statistics, backward) on uneven shards
against one process on the concatenated global batch.

Run: mpiexec -n N python -m mpi4py tests/mpi_workers/sync_bn.py BACKEND[,BACKEND...]
Prints "SYNC_BN OK rank R cases K" on success; any failure raises (and -m mpi4py aborts the job).
"""
import sys

import numpy as np
from mpi4py import MPI

import fastreg
from fastreg import distributed as dist

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
RTOL = {np.float64: 1e-12, np.float32: 8 * float(np.finfo(np.float32).eps)}

# (global shape, axis, batch axis, residual + relu): batch axis 0 is sharded, uneven sizes
CASES = [((11, 5), 1, False), ((7, 3, 4, 5), 1, False), ((7, 4, 5, 3), -1, True),
         ((9, 6, 13), 1, True), ((2, 4, 3), 1, False),   # 2 samples: rank 2 of 3 gets none
         ((5, 2, 3), 2, False)]


def close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= rtol * scale, \
        f"rank {rank}: {what}: max error {err:.3g} > {rtol:.3g} * {scale:.3g}"


def same_everywhere(a, what):
    a = np.ascontiguousarray(a)
    allv = np.empty((size,) + a.shape, a.dtype)
    comm.Allgather(a, allv)
    assert all(np.array_equal(v.view(np.uint8), a.view(np.uint8)) for v in allv), \
        f"{what} differs between ranks"


def run(backend, dtype, shape, axis, fused, seed):
    rng = np.random.default_rng(seed)
    N, C = shape[0], shape[axis]
    xg = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    gyg = rng.standard_normal(shape).astype(dtype)
    resg = rng.standard_normal(shape).astype(dtype) if fused else None
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    act = "relu" if fused else None
    s = dist.shard(N, rank, size)
    kw = dict(training=True, momentum=0.1, axis=axis, activation=act)

    # one process, the whole global batch, the float64 NumPy reference backend
    rm_ref, rv_ref, nbt_ref = rm0.copy(), rv0.copy(), np.zeros(1, np.int64)
    y_ref, saved_ref = fastreg.batch_norm(xg, rm_ref, rv_ref, w, b, residual=resg,
                                          num_batches_tracked=nbt_ref, backend="numpy", **kw)
    g_ref = fastreg.batch_norm_backward(gyg, xg, saved_ref, w, y=y_ref if fused else None,
                                        backend="numpy")

    # this rank's shard, synchronized
    rm, rv, nbt = rm0.copy(), rv0.copy(), np.zeros(1, np.int64)
    x = np.ascontiguousarray(xg[s])
    res = None if resg is None else np.ascontiguousarray(resg[s])
    y, saved = fastreg.batch_norm(x, rm, rv, w, b, residual=res, num_batches_tracked=nbt,
                                  backend=backend, comm=comm, **kw)
    g = fastreg.batch_norm_backward(np.ascontiguousarray(gyg[s]), x, saved, w,
                                    y=y if fused else None, backend=backend, comm=comm)
    rtol = RTOL[dtype]
    what = f"{backend} {np.dtype(dtype).name} {shape} axis={axis} fused={fused}"
    assert saved.global_count == saved_ref.count and saved.count == x.size // C
    close(saved.mean, saved_ref.mean, 1e-12, what + " mean")
    close(saved.invstd, saved_ref.invstd, 1e-12, what + " invstd")
    same_everywhere(np.asarray(saved.mean), what + " mean")
    same_everywhere(np.asarray(saved.invstd), what + " invstd")
    close(y, y_ref[s], rtol, what + " y")
    close(rm, rm_ref, rtol, what + " running_mean")
    close(rv, rv_ref, rtol, what + " running_var")
    assert nbt[0] == 1
    close(g[0], g_ref[0][s], rtol * 4, what + " grad_x")
    if fused:
        close(g[3], g_ref[3][s], rtol, what + " grad_residual")
    # parameter gradients are this rank's contributions: their sum over ranks is the global one
    for k, name in ((1, "grad_weight"), (2, "grad_bias")):
        total = np.asarray(g[k], np.float64).copy()
        comm.Allreduce(MPI.IN_PLACE, total)
        close(total, g_ref[k], rtol * 4, what + " " + name)
    # inference with comm: the running statistics, no communication
    yi, _ = fastreg.batch_norm(x, rm, rv, w, b, training=False, axis=axis, backend=backend,
                               comm=comm)
    yi_ref, _ = fastreg.batch_norm(x, rm, rv, w, b, training=False, axis=axis, backend=backend)
    np.testing.assert_array_equal(yi, yi_ref)


def main():
    avail = fastreg.available_backends()
    n = 0
    for backend in sys.argv[1].split(","):
        if avail[backend] is not None:
            if rank == 0:
                print(f"SYNC_BN SKIP {backend}: {avail[backend]}", flush=True)
            continue
        for dtype in (np.float64, np.float32):
            for i, (shape, axis, fused) in enumerate(CASES):
                run(backend, dtype, shape, axis, fused, seed=100 + i)
                n += 1
    # a global batch of one value per channel is refused on every rank (no deadlock)
    x = np.ones((1 if rank == 0 else 0, 3))
    try:
        fastreg.batch_norm(x, training=True, backend="numpy", comm=comm)
    except ValueError as exc:
        assert "more than 1 value" in str(exc)
    else:
        raise AssertionError("one value over all ranks was accepted")
    # ranks with different channel counts: refused on every rank (rows of other lengths were
    # merged as statistics before)
    if size > 1:
        x = np.ones((4, 3 + rank))
        try:
            fastreg.batch_norm(x, training=True, backend="numpy", comm=comm)
        except (ValueError, dist.CollectiveError) as exc:
            assert isinstance(exc, dist.CollectiveError) or "channel counts" in str(exc), exc
        else:
            raise AssertionError("different channel counts were accepted")
    dist.barrier(comm, timeout=30)
    print(f"SYNC_BN OK rank {rank} cases {n}", flush=True)


main()
