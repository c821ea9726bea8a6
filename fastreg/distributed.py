"""Data-parallel training over MPI (mpi4py): sharding, gradient Allreduce, synchronized batch norm
statistics, rank-0 decisions, and a watchdog around every collective.

Install with ``pip install "fastreg-kernels[mpi]"`` (mpi4py and the self-contained ``mpich``
wheel from PyPI: no system MPI needed) and start the same script on N processes with the
virtualenv's own launcher::

    .venv/bin/mpiexec -n 4 .venv/bin/python -m mpi4py train.py

(``-m mpi4py`` makes an uncaught exception on any rank call ``MPI_Abort``, which ends every
process of the job instead of leaving the others waiting in a collective.) For several machines
add ``-f hostfile`` (one ``host:slots`` per line); the script does not change.

mpi4py is imported on first use only: ``import fastreg.distributed`` works without it, and so
do ``shard``, ``shard_sizes`` and ``global_indices``; the functions that talk to other processes
raise an ImportError naming ``pip install "fastreg-kernels[mpi]"`` when it is missing.

Exactness. Every rank sees the same values: statistics are gathered and merged in rank order
(each rank does the same float64 arithmetic on the same inputs), and sums use MPI's Allreduce,
whose result MPICH makes identical on every rank. Against one process on the whole global batch
the results agree to rounding (float64: about 1e-12 relative; the order of the sums differs).

Failure handling (the watchdog). A rank that *dies* (crash, kill, ``os._exit``) is noticed by
``mpiexec`` (MPICH's Hydra), which by default kills the remaining processes and exits non-zero.
A rank that *hangs* (or dies under a launcher that does not clean up, e.g. ``mpiexec
-disable-auto-cleanup``) would leave the others blocked in a collective forever, so every
collective here is non-blocking (``Iallreduce``, ``Iallgather``, ``Ibcast``, ``Ibarrier``) and
is waited for by polling ``Request.Test()`` against a deadline: past ``timeout`` seconds it
raises ``CollectiveTimeout`` naming the operation, the rank and the world size. The
communicator is then unusable (the collective is still pending), and MPI_Finalize at exit would
wait forever, so the job is aborted: under ``python -m mpi4py`` the uncaught exception aborts it
at once; in any case (plain ``python script.py``, or an exception that was caught) the process
calls ``comm.Abort()`` when it exits (an ``atexit`` hook armed by the first timeout), and
``mpiexec`` then ends every rank, the hung one included (even one stopped with SIGSTOP). A job
with a hung rank thus ends about ``timeout`` seconds after the collective started on the
surviving ranks, plus the time they take to exit; a rank that is still running code after
catching the exception delays the abort until it exits. MPI errors are
returned, not fatal (``comm.Set_errhandler(MPI.ERRORS_RETURN)``, mpi4py's default for
COMM_WORLD, set again on every communicator passed here) and re-raised as ``CollectiveError``.
The default timeout is 300 s (``FASTREG_MPI_TIMEOUT``); ``timeout=None`` waits forever with the
blocking call.

Polling. MPICH progresses a non-blocking collective only inside MPI calls, so the wait spins on
``Test()`` with ``os.sched_yield()`` between calls (as fast as the blocking call, and it lets
oversubscribed ranks share a core); after 50 ms without completion (a straggler, not data
movement) it sleeps between tests, backing off to 1 ms.
"""
import math
import numbers
import os
import pickle
import time

import numpy as np

from . import _arrays, _config

__all__ = ["CollectiveError", "CollectiveTimeout", "GradientAllreduce", "shard", "shard_sizes",
           "global_indices", "broadcast_object", "decide", "allreduce", "barrier",
           "allgather_stats", "default_timeout", "mpi"]

_MPI = None
_SPIN_S = 0.05      # spin (with sched_yield) this long before sleeping between tests
_NAP_MAX_S = 1e-3   # longest sleep between two tests


def mpi():
    """The ``mpi4py.MPI`` module, imported on first use.

    Parameters
    ----------
    None

    Returns
    -------
    module
        ``mpi4py.MPI`` (importing it initializes MPI).

    Raises
    ------
    ImportError
        mpi4py (or an MPI library) is not installed: ``pip install "fastreg-kernels[mpi]"``.
    """
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(
                "fastreg.distributed needs mpi4py and an MPI library: pip install "
                '"fastreg-kernels[mpi]" '
                "(mpi4py and the self-contained mpich wheel; run with the virtualenv's mpiexec)"
            ) from exc
        _MPI = MPI
    return _MPI


def default_timeout():
    """Seconds a collective may wait before ``CollectiveTimeout``: FASTREG_MPI_TIMEOUT or 300.

    Parameters
    ----------
    None

    Returns
    -------
    float or None
        None (wait forever) when FASTREG_MPI_TIMEOUT is "none" or "0".
    """
    return _config.mpi_timeout()


class CollectiveError(RuntimeError):
    """An MPI collective failed (an MPI error, or a timeout: ``CollectiveTimeout``).

    Attributes: ``op`` (the operation, e.g. "Iallreduce (gradient bucket 2/3)"), ``rank`` and
    ``size`` of the communicator.
    """

    def __init__(self, message, op=None, rank=None, size=None):
        super().__init__(message)
        self.op, self.rank, self.size = op, rank, size


class CollectiveTimeout(CollectiveError, TimeoutError):
    """A collective did not complete within its timeout: another rank died, hangs or never
    reached the same call. The communicator cannot be used afterwards; the process calls
    ``comm.Abort()`` when it exits (see the module notes), which ends the whole job."""


# ---- communicators and the watchdog ----------------------------------------------------------

def _check_comm(comm):
    MPI = mpi()
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got "
                        f"{type(comm).__name__}")
    if comm.Is_inter():
        raise ValueError("comm must be an intra-communicator")
    comm.Set_errhandler(MPI.ERRORS_RETURN)  # errors become exceptions, never a silent abort
    return comm


def _timeout(timeout):
    if timeout == "default":
        return default_timeout()
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, got "
                        f"{type(timeout).__name__}")
    timeout = _arrays.real_to_float(timeout, "timeout", "a number of seconds > 0 or None")
    if not (timeout > 0):
        raise ValueError(f"timeout must be > 0 seconds (or None: wait forever), got {timeout}")
    return timeout


def _start(comm, op, start):
    """Call ``start()`` (which posts a non-blocking collective), MPI errors as CollectiveError."""
    try:
        return start()
    except mpi().Exception as exc:
        raise CollectiveError(f"{op} failed on rank {comm.Get_rank()} of {comm.Get_size()}: "
                              f"{exc}", op, comm.Get_rank(), comm.Get_size()) from exc


def _wait(comm, req, op, timeout):
    """Wait for ``req`` until done or ``timeout`` seconds (None: forever) have passed."""
    MPI = mpi()
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        if timeout is None:
            req.Wait()
            return
        t0 = time.monotonic()
        deadline = t0 + timeout
        nap = 2e-5
        while not req.Test():
            now = time.monotonic()
            if now >= deadline:
                exc = CollectiveTimeout(
                    f"{op} on rank {rank} of {size} did not complete within {timeout:g} s: "
                    "another rank died, hangs or did not reach the same collective. The "
                    "communicator is unusable now: this process will abort the MPI job "
                    "(MPI_Abort) when it exits, since MPI_Finalize would wait forever.",
                    op, rank, size)
                _abort_at_exit(comm, exc)
                raise exc
            if now - t0 < _SPIN_S:
                os.sched_yield()
            else:
                time.sleep(nap)
                nap = min(2 * nap, _NAP_MAX_S)
    except MPI.Exception as exc:
        raise CollectiveError(f"{op} failed on rank {rank} of {size}: {exc}", op, rank,
                              size) from exc


_ABORT_CODE = 70          # the exit status MPI_Abort asks for after a collective timeout
_abort = None             # (comm, exception) of the first collective timeout of this process


def _abort_at_exit(comm, exc):
    """Make sure that the job ends after a collective timeout: at interpreter exit (after an
    uncaught exception's traceback, or a normal exit after the exception was caught) call
    ``comm.Abort``, before mpi4py's MPI_Finalize, which would wait forever for the pending
    collective (and for a rank that hangs). Under ``python -m mpi4py`` an uncaught exception
    aborts the job already; this covers plain ``python script.py`` and caught exceptions."""
    global _abort
    if _abort is None:
        import atexit
        atexit.register(_abort_now)   # registered after mpi4py's finalizer: runs before it
        _abort = (comm, exc)


def _abort_now():
    comm, exc = _abort
    try:
        import sys
        sys.stdout.flush()
        sys.stderr.write(f"fastreg.distributed: aborting the MPI job after a collective "
                         f"timeout ({exc.op} on rank {exc.rank} of {exc.size})\n")
        sys.stderr.flush()
        # mpiexec forwards the ranks' output through its proxies, and the abort tears them
        # down: give them a moment to pass the line on (under load it was lost now and then)
        import time
        time.sleep(0.5)
    except Exception:   # pragma: no cover - closed streams must not prevent the abort
        pass
    comm.Abort(_ABORT_CODE)


def _allreduce_inplace(comm, buf, op, timeout, mpi_op=None):
    MPI = mpi()
    req = _start(comm, op, lambda: comm.Iallreduce(MPI.IN_PLACE, buf,
                                                   op=MPI.SUM if mpi_op is None else mpi_op))
    _wait(comm, req, op, timeout)


def barrier(comm, *, timeout="default"):
    """A barrier with the watchdog.

    Parameters
    ----------
    comm : mpi4py communicator
    timeout : float, None or "default"
        Seconds to wait (None: forever; "default": ``default_timeout()``).

    Returns
    -------
    None

    Raises
    ------
    CollectiveTimeout, CollectiveError
    """
    comm = _check_comm(comm)
    req = _start(comm, "Ibarrier", comm.Ibarrier)
    _wait(comm, req, "Ibarrier", _timeout(timeout))


_OPS = ("sum", "max", "min")


def allreduce(values, comm, *, op="sum", timeout="default"):
    """Reduce a small array (or scalar) over all ranks; every rank gets the result.

    Parameters
    ----------
    values : array_like or scalar
        Same shape and dtype on every rank (metrics, counts).
    comm : mpi4py communicator
    op : {"sum", "max", "min"}
    timeout : float, None or "default"

    Returns
    -------
    ndarray or scalar
        A new array of values' dtype (a NumPy scalar for scalar input).

    Raises
    ------
    CollectiveTimeout, CollectiveError
    """
    _arrays.check_choice(op, "op", _OPS)
    comm = _check_comm(comm)
    MPI = mpi()
    arr = np.array(values, copy=True, order="C")
    buf = arr.reshape(-1) if arr.ndim else arr.reshape(1)
    mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    _allreduce_inplace(comm, buf, f"Iallreduce ({op}, {buf.size} values)", _timeout(timeout),
                       mpi_op)
    return arr if arr.ndim else arr[()]


def broadcast_object(obj, comm, *, root=0, timeout="default"):
    """Rank ``root``'s picklable ``obj`` on every rank (other ranks' ``obj`` is ignored).

    Parameters
    ----------
    obj : picklable
        Significant on ``root`` only.
    comm : mpi4py communicator
    root : int
    timeout : float, None or "default"

    Returns
    -------
    object
        The root's object (on the root itself, ``obj`` unchanged).

    Raises
    ------
    CollectiveTimeout, CollectiveError

    Notes
    -----
    Two watched ``Ibcast`` calls: the pickle's length, then its bytes.
    """
    comm = _check_comm(comm)
    timeout = _timeout(timeout)
    rank = comm.Get_rank()
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if rank == root else b""
    length = np.array([len(payload)], np.int64)
    req = _start(comm, "Ibcast (object length)", lambda: comm.Ibcast(length, root=root))
    _wait(comm, req, "Ibcast (object length)", timeout)
    data = (np.frombuffer(payload, np.uint8).copy() if rank == root
            else np.empty(int(length[0]), np.uint8))
    if data.size:
        req = _start(comm, "Ibcast (object)", lambda: comm.Ibcast(data, root=root))
        _wait(comm, req, "Ibcast (object)", timeout)
    return obj if rank == root else pickle.loads(data.tobytes())


def decide(decision, comm, *, root=0, timeout="default"):
    """A decision taken on ``root`` (e.g. early stopping), the same on every rank.

    Parameters
    ----------
    decision : bool
        Significant on ``root`` only (pass anything, e.g. None, elsewhere).
    comm : mpi4py communicator
    root : int
    timeout : float, None or "default"

    Returns
    -------
    bool
        The root's decision.

    Raises
    ------
    CollectiveTimeout, CollectiveError
    """
    comm = _check_comm(comm)
    flag = np.array([1 if (comm.Get_rank() == root and decision) else 0], np.int8)
    req = _start(comm, "Ibcast (decision)", lambda: comm.Ibcast(flag, root=root))
    _wait(comm, req, "Ibcast (decision)", _timeout(timeout))
    return bool(flag[0])


# ---- sharding ---------------------------------------------------------------------------------

def _check_rank(rank, size):
    for v, name in ((rank, "rank"), (size, "size")):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size and size >= 1, got rank={rank}, size={size}")
    return int(rank), int(size)


def _check_count(n, name="n"):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return int(n)


def shard_sizes(n, size):
    """How many of ``n`` samples each of ``size`` ranks takes: n // size, and one more for the
    first n % size ranks.

    Parameters
    ----------
    n : int >= 0
    size : int >= 1

    Returns
    -------
    list of int
        ``size`` counts summing to n (some are 0 when n < size).
    """
    n = _check_count(n)
    _check_rank(0, size)
    q, r = divmod(n, size)
    return [q + (i < r) for i in range(size)]


def shard(n, rank, size, *, strided=False):
    """The samples of a batch of ``n`` that ``rank`` of ``size`` takes: disjoint, deterministic,
    covering the batch, uneven sizes allowed.

    Parameters
    ----------
    n : int >= 0
        Samples in the (global) batch.
    rank, size : int
    strided : bool
        False (default): a contiguous block (ranks in order concatenate to the batch in order;
        block sizes from ``shard_sizes``). True: every size-th sample from ``rank``.

    Returns
    -------
    slice
        Index the global batch (or its index array) with it.

    Raises
    ------
    ValueError
        n < 0, rank outside [0, size).
    """
    n = _check_count(n)
    rank, size = _check_rank(rank, size)
    if strided:
        return slice(rank, n, size)
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def global_indices(n, rank, size, *, start=0, strided=False):
    """The global sample positions this rank handles in a batch of ``n`` starting at global
    position ``start``: key dropout masks and augmentations by these (e.g. Philox offset =
    position * words per sample) so N ranks draw exactly what one process draws for the same
    global batch.

    Parameters
    ----------
    n : int >= 0
    rank, size : int
    start : int >= 0
        Global position of the batch's first sample (e.g. step * global batch size).
    strided : bool
        As in ``shard``.

    Returns
    -------
    ndarray of int64
        ``start + arange(n)[shard(n, rank, size)]``.
    """
    s = shard(n, rank, size, strided=strided)
    start = _check_count(start, "start")
    return start + np.arange(n, dtype=np.int64)[s]


# ---- gradient Allreduce ----------------------------------------------------------------------

def _spec(p, dtype):
    """(shape, dtype) of a parameter given as an array or as a shape."""
    if hasattr(p, "shape") and hasattr(p, "dtype"):
        return tuple(int(d) for d in p.shape), np.dtype(p.dtype)
    if isinstance(p, numbers.Integral) and not isinstance(p, (bool, np.bool_)):
        return (int(p),), np.dtype(dtype)
    if isinstance(p, (tuple, list)) and all(isinstance(d, numbers.Integral) for d in p):
        return tuple(int(d) for d in p), np.dtype(dtype)
    raise TypeError(f"each parameter must be an array or a shape (tuple of ints), got "
                    f"{type(p).__name__}")


class GradientAllreduce:
    """Sum or average gradients over all ranks with few, large, in-place Allreduce calls.

    Parameters
    ----------
    params : sequence of arrays or shapes
        The parameters (or gradients, or their shapes: tuples of ints, with ``dtype``), in the
        order ``reduce`` will receive the gradients.
    comm : mpi4py communicator
    bucket_bytes : int
        Largest message of one Allreduce (default 25 MiB, PyTorch DDP's bucket size).
    average : bool
        True: a (weighted) mean over ranks (see ``reduce``); False: the plain sum.
    dtype : dtype
        The dtype of parameters given as shapes (default float64).
    timeout : float, None or "default"
        The watchdog's limit for each bucket's Allreduce.

    Returns
    -------
    GradientAllreduce
        ``reduce(grads, local_count=None, global_count=None)`` reduces in place. Attributes:
        ``buffers`` (one flat float buffer per dtype, allocated once), ``buckets`` (list of
        (dtype, start, stop) element ranges, one Allreduce each), ``nbytes``.

    Notes
    -----
    Layout: the gradients are packed, in the given order, into one flat buffer per dtype; each
    buffer is cut into buckets of at most ``bucket_bytes`` (cuts fall anywhere, not only between
    parameters, so every message but the last of a buffer is full size). Each bucket is one
    ``Iallreduce(MPI.IN_PLACE, ...)`` with the watchdog; several buckets instead of one message
    keep every call bounded in size and, as in DDP, would let a trainer overlap the reduction of
    early buckets with the backward pass of later layers.

    Weighting for uneven shards: with a mean loss over each rank's own samples, the gradient of
    the mean loss over the global batch is ``sum_r (n_r / N) g_r`` (n_r samples on rank r, N the
    global batch), not the plain mean over ranks. ``reduce(grads, local_count=n_r)`` computes
    exactly that (N is summed over ranks, or pass ``global_count``); a rank with n_r = 0
    contributes zeros (its gradient, a mean over nothing, is ignored, NaN included). With
    synchronized batch norm and uneven shards, scale the loss by 1 / N on every rank instead
    (the grad_y entering the BN backward must be the global loss's) and sum (``average=False``):
    see ``fastreg.batch_norm``.
    """

    def __init__(self, params, comm, *, bucket_bytes=25 * 2**20, average=True,
                 dtype=np.float64, timeout="default"):
        self.comm = _check_comm(comm)
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, numbers.Integral) \
                or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be an int >= 1, got {bucket_bytes!r}")
        self.bucket_bytes = int(bucket_bytes)
        self.average = _check_bool(average, "average")
        self.timeout = _timeout(timeout)
        self.specs = [_spec(p, dtype) for p in params]
        for shape, dt in self.specs:
            if dt.kind != "f":
                raise TypeError(f"gradients must be floating point, got {dt}")
        sizes = {}
        self.slots = []  # per parameter: (dtype, start, stop) in its dtype's buffer
        for shape, dt in self.specs:
            start = sizes.get(dt, 0)
            stop = start + math.prod(shape)
            self.slots.append((dt, start, stop))
            sizes[dt] = stop
        self.buffers = {dt: np.zeros(n, dt) for dt, n in sizes.items()}
        self.buckets = []
        for dt, n in sizes.items():
            per = max(1, self.bucket_bytes // dt.itemsize)
            self.buckets += [(dt, s, min(s + per, n)) for s in range(0, n, per)]
        self.nbytes = sum(b.nbytes for b in self.buffers.values())
        self._count = np.zeros(1, np.int64)

    def global_count(self, local_count):
        """Sum of ``local_count`` over ranks (one small watched Allreduce).

        Parameters
        ----------
        local_count : int >= 0

        Returns
        -------
        int
        """
        self._count[0] = _check_count(local_count)
        _allreduce_inplace(self.comm, self._count, "Iallreduce (sample count)", self.timeout)
        return int(self._count[0])

    def reduce(self, grads, local_count=None, global_count=None):
        """Replace each gradient, in place, by its sum or (weighted) mean over all ranks.

        Parameters
        ----------
        grads : sequence of arrays
            Writable host arrays with the shapes and dtypes given at construction, in order.
        local_count : int >= 0, optional
            This rank's number of samples. With ``average=True``: each rank's gradient is
            weighted by local_count / global_count (exact for a mean loss and uneven shards);
            without it, the plain mean over ranks (1 / size each). Ignored for sums.
        global_count : int, optional
            The global batch size, when every rank knows it (saves one small Allreduce).

        Returns
        -------
        grads
            The same arrays, now holding the reduced gradients (bit-identical on every rank).

        Raises
        ------
        ValueError, TypeError
            Gradients that do not match the construction; counts < 0; a global count of 0.
        CollectiveTimeout, CollectiveError
            See the module notes.
        """
        grads = list(grads)
        if len(grads) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} gradients, got {len(grads)}")
        views = []
        for i, (g, (shape, dt)) in enumerate(zip(grads, self.specs)):
            if _arrays.is_device(g):
                raise ValueError(f"grads[{i}] is a CUDA device array: GradientAllreduce works "
                                 "on host arrays (copy the gradients to the host first)")
            a = np.asarray(g)
            if a is not g and a.size and not np.shares_memory(a, np.asarray(g)):
                # two conversions in different memory: a copy each time (a list, an __array__
                # that makes a new array), so the reduction would be lost
                raise TypeError(f"grads[{i}] must be an array whose memory can be written in "
                                f"place (an ndarray, a CPU tensor, a buffer), got "
                                f"{type(g).__name__}, which converts to a copy")
            if a.shape != shape or a.dtype != dt:
                raise ValueError(f"grads[{i}] has shape {a.shape} and dtype {a.dtype}, expected "
                                 f"{shape} and {dt}")
            if not a.flags.writeable:
                raise ValueError(f"grads[{i}] is read-only: the reduced gradient is written "
                                 "back in place")
            views.append(a)
        scale = None  # multiply before the sum (weights); divide after (plain mean)
        if self.average and local_count is not None:
            n = _check_count(local_count)
            N = self.global_count(n) if global_count is None else _check_count(global_count)
            if N == 0:
                raise ValueError("the global sample count is 0: nothing to average")
            scale = n / N
        for a, (dt, s, e) in zip(views, self.slots):
            dst = self.buffers[dt][s:e].reshape(a.shape)
            if scale is None:
                dst[...] = a
            elif scale == 0:
                dst[...] = 0  # no samples here: ignore whatever the gradient holds (NaN)
            else:
                np.multiply(a, dt.type(scale), out=dst)
        nb = len(self.buckets)
        for k, (dt, s, e) in enumerate(self.buckets):
            _allreduce_inplace(self.comm, self.buffers[dt][s:e],
                               f"Iallreduce (gradient bucket {k + 1}/{nb}, {(e - s) * dt.itemsize}"
                               f" bytes)", self.timeout)
        div = self.comm.Get_size() if (self.average and scale is None) else None
        for a, (dt, s, e) in zip(views, self.slots):
            src = self.buffers[dt][s:e].reshape(a.shape)
            if div is None:
                a[...] = src
            else:
                np.divide(src, dt.type(div), out=a)
        return grads


def _check_bool(v, name):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


# ---- synchronized batch norm statistics --------------------------------------------------------

def allgather_stats(count, mean, m2, comm, *, timeout="default"):
    """Per-channel (count, mean, M2) of all ranks merged in rank order: the statistics of the
    union of every rank's batch, bit-identical on every rank.

    Parameters
    ----------
    count : int >= 0
        This rank's elements per channel (0 allowed: the rank still takes part).
    mean, m2 : float64 host arrays (C,)
        This rank's statistics (``fastreg.batch_norm_stats``; zeros when count is 0). Same C on
        every rank.
    comm : mpi4py communicator
    timeout : float, None or "default"

    Returns
    -------
    count : int
    mean, m2 : float64 ndarrays (C,)

    Raises
    ------
    CollectiveTimeout, CollectiveError

    Notes
    -----
    One watched ``Iallgather`` of [count, C, mean, m2] (2 + 2C float64 per rank; counts are
    exact below 2**53; a rank that finds another C raises ValueError), then ``fastreg.merge_stats`` (Chan, Golub & LeVeque's update) over the parts in
    rank order, so every rank does the same arithmetic on the same numbers.
    """
    from .batchnorm import _merge_rows, _stats_row
    comm = _check_comm(comm)
    mean = np.asarray(mean, np.float64).reshape(-1)
    m2 = np.asarray(m2, np.float64).reshape(-1)
    C = mean.shape[0]
    send = _stats_row(_check_count(count), mean, m2)
    recv = np.full((comm.Get_size(), send.size), np.nan)
    op = f"Iallgather (batch-norm statistics, {C} channels)"
    req = _start(comm, op, lambda: comm.Iallgather(send, recv))
    _wait(comm, req, op, _timeout(timeout))
    return _merge_rows(recv, C)


def allreduce_sums(sums, comm, *, timeout="default"):
    """In place: float64 per-channel sums (e.g. the batch-norm backward's) summed over ranks.

    Parameters
    ----------
    sums : float64 contiguous host ndarray
    comm : mpi4py communicator
    timeout : float, None or "default"

    Returns
    -------
    ndarray
        ``sums``, now the totals (identical on every rank).

    Raises
    ------
    CollectiveTimeout, CollectiveError
    """
    comm = _check_comm(comm)
    _allreduce_inplace(comm, sums, f"Iallreduce (batch-norm backward sums, {sums.size} values)",
                       _timeout(timeout))
    return sums
