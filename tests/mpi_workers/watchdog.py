"""MPI worker: a rank that dies or hangs before a collective; the others must fail with
CollectiveTimeout (or an MPI error) within the timeout instead of waiting forever.

Run: mpiexec -n N python -m mpi4py tests/mpi_workers/watchdog.py MODE TIMEOUT
MODE "exit": rank 1 leaves with os._exit(1); "hang": rank 1 sleeps far past the timeout. Each
surviving rank prints "WATCHDOG rank R <exception type>: <message>" and re-raises, so that
``-m mpi4py`` aborts the job (which also ends the hanging rank).
"""
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from fastreg import distributed as dist

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
mode, timeout = sys.argv[1], float(sys.argv[2])
grads = [np.full(1000, float(rank)), np.ones((3, 4))]
ar = dist.GradientAllreduce(grads, comm, timeout=timeout)
ar.reduce(grads)                      # one healthy step first
dist.barrier(comm, timeout=timeout)
if rank == 1:
    if mode == "exit":
        os._exit(1)
    time.sleep(600)
t0 = time.monotonic()
try:
    ar.reduce(grads)
except dist.CollectiveError as exc:
    print(f"WATCHDOG rank {rank} {type(exc).__name__} after {time.monotonic() - t0:.1f} s: "
          f"{exc}", flush=True)
    raise
print(f"WATCHDOG rank {rank} completed: no error", flush=True)
