"""MPI worker: rank 1 stops itself (SIGSTOP) before a collective; the job must still end, within
FASTREG_MPI_TIMEOUT plus a few seconds, whether it was started with ``python -m mpi4py`` or with
plain ``python`` (no mpi4py handler for uncaught exceptions), and whether or not the surviving
ranks catch the CollectiveTimeout.

Run: FASTREG_MPI_TIMEOUT=T mpiexec -n N python [-m mpi4py] tests/mpi_workers/hang_abort.py MODE
MODE "raise": the CollectiveTimeout propagates (uncaught); "catch": it is caught, and the rank
returns normally from the script (where MPI_Finalize would wait for the stopped rank forever).
Each surviving rank prints "HANG rank R CollectiveTimeout after S s".
"""
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

from fastreg import distributed as dist

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
mode = sys.argv[1]
dist.barrier(comm)                     # a healthy collective first (default timeout)
print(f"HANG rank {rank} ready pid {os.getpid()}", flush=True)
if rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
t0 = time.monotonic()
try:
    dist.allreduce(np.ones(3), comm)   # default timeout: FASTREG_MPI_TIMEOUT
except dist.CollectiveTimeout as exc:
    print(f"HANG rank {rank} CollectiveTimeout after {time.monotonic() - t0:.1f} s: {exc.op}",
          flush=True)
    if mode == "raise":
        raise
print(f"HANG rank {rank} reached the end of the script", flush=True)
