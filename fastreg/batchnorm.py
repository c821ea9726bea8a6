"""Batch normalization (Ioffe & Szegedy, 2015): forward, backward, mergeable statistics, folding.

Each channel ``c`` of ``x`` (the channel axis is ``axis``: 1 for (N, C), (N, C, L), (N, C, H, W);
-1 for channels-last (N, H, W, C)) is normalized over all its other elements::

    training   y = (x - mean_B) / sqrt(var_B + eps) * weight + bias     (batch statistics, biased
                                                                         variance)
    inference  y = x * scale + shift, scale = weight / sqrt(running_var + eps),
                                      shift = bias - running_mean * scale

and, with ``residual`` and ``activation="relu"``, ``y = relu(bn(x) + residual)`` in the same pass
(the fused BN + add + ReLU of cuDNN's *Ex* API).

Statistics are accumulated in float64 (the backends use shifted sums or two passes, never
E[x^2] - E[x]^2 in the input's precision), so float32 data with a mean of 1e4 and a standard
deviation of 1 still gives the variance to about 1e-6. Element-wise work is done in x's dtype
with per-channel coefficients computed in float64. Backends agree with the float64 reference to
within the tolerances of tests/test_batchnorm.py (a few ulp of the output scale), not bit for bit:
they sum in different orders.
"""
import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _arrays, _dispatch, _half, _registry

ACTIVATIONS = (None, "relu")
_F32, _F64, _I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)
_I64_MAX = (1 << 63) - 1
# (x.shape, axis) -> (channel axis, (A, C, B), (C,)) for shapes the full checks accepted: the
# fast paths below start from it (bounded; an int axis only, so axis=True cannot hit axis=1)
_GEOMETRY = {}
_GEOMETRY_MAX = 512


class BatchNormSaved(NamedTuple):
    """What ``batch_norm_backward`` needs from the forward pass.

    mean, invstd : float64 arrays (C,)
        The statistics the forward pass normalized with (the batch's in training, the running
        ones in inference), on the device of x.
    training : bool
        Whether they were batch statistics (their gradient terms then enter grad_x).
    axis : int
        The channel axis, as a non-negative index.
    ndim : int
        x's number of dimensions.
    activation : None or "relu"
    residual : bool
        Whether a residual was added (backward then also returns its gradient).
    count : int
        Elements per channel (in this process).
    global_count : int or None
        Elements per channel over all ranks when the forward pass was synchronized
        (``batch_norm(..., comm=comm)`` in training); None otherwise.
    """
    mean: object
    invstd: object
    training: bool
    axis: int
    ndim: int
    activation: object
    residual: bool
    count: int
    global_count: object = None


def _channel_axis(shape, axis):
    """(channel axis as a non-negative int, (A, C, B)) for the (A, C, B) view of ``shape``."""
    axis = _arrays.check_int(axis, "axis")
    nd = len(shape)
    if nd < 2:
        raise ValueError(f"x must have at least 2 dimensions (a batch axis and a channel axis), "
                         f"got shape {tuple(shape)}")
    if not -nd <= axis < nd:
        raise ValueError(f"axis {axis} is out of range for x with {nd} dimensions")
    ax = axis % nd
    return ax, (math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:]))


def _check_eps(eps):
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    eps = _arrays._scalar(eps)
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number > 0, got {type(eps).__name__}")
    eps = _arrays.real_to_float(eps, "eps", "a finite number > 0")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    return eps


def _check_like(a, name, shape, dtype, device, what="x"):
    """An array with x's shape, dtype and device; returns the host view or the device array."""
    if device or type(a) is not np.ndarray:  # a plain ndarray is a host array: skip to shape
        if device != _arrays.is_device(a):
            where = "a CUDA device array" if device else "a host (NumPy) array"
            raise ValueError(f"{name} must be {where} like {what}")
        arr = _arrays.describe(a, name)
    else:
        arr = a
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of {what}, {tuple(shape)}, got "
                         f"{tuple(arr.shape)}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of {what}, {dtype}, got {arr.dtype}")
    return a if device else arr


def _check_channel(a, name, C, dtype, device, writable=False):
    """A (C,) per-channel array of x's dtype on x's device (None passes through)."""
    if a is None:
        return None
    if device or type(a) is not np.ndarray:  # a plain ndarray is a host array: skip to shape
        if device != _arrays.is_device(a):
            where = "a CUDA device array" if device else "a host (NumPy) array"
            raise ValueError(f"{name} must be {where} like x")
        if not device and writable and not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array (it is updated in place), got "
                            f"{type(a).__name__}")
        arr = _arrays.describe(a, name)
    else:
        arr = a
    if tuple(arr.shape) != (C,):
        raise ValueError(f"{name} must have shape ({C},) (one value per channel of x), got "
                         f"{tuple(arr.shape)}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have x's dtype {dtype}, got {arr.dtype}")
    if writable:
        readonly = arr.readonly if device else not arr.flags.writeable
        if readonly:
            raise ValueError(f"{name} is read-only: it is updated in place")
        if device and not arr.c_contiguous:
            raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported")
    return a if device else arr


def _check_counter(nbt, device):
    """num_batches_tracked: a writable 1-element int64 array (host or on x's device)."""
    arr = _arrays.describe(nbt, "num_batches_tracked")
    if arr.dtype != np.int64 or arr.size != 1:
        raise TypeError("num_batches_tracked must be a 1-element int64 array, got dtype "
                        f"{arr.dtype} and shape {tuple(arr.shape)}")
    on_device = _arrays.is_device(nbt)
    if on_device and not device:
        raise ValueError("num_batches_tracked is a CUDA array but x is on the host")
    if not on_device and not isinstance(nbt, np.ndarray):
        raise TypeError("num_batches_tracked must be an array (it is updated in place), got "
                        f"{type(nbt).__name__}")
    readonly = arr.readonly if on_device else not arr.flags.writeable
    if readonly:
        raise ValueError("num_batches_tracked is read-only: it is updated in place")
    return nbt


def _increment(nbt, job):
    """num_batches_tracked += 1 in place; returns the new value (a host read on the device)."""
    if isinstance(nbt, np.ndarray):  # item / fill: 0.6 us, where += 1 takes 2.5
        batches = nbt.item()
        batches = batches + 1 if batches != _I64_MAX else -batches - 1  # int64 wraps
        nbt.fill(batches)
        return batches
    host = job.mod.copy_to_host(nbt)
    host.reshape(-1)[0] += 1
    job.mod.as_device(nbt).copy_to_device(host)
    return int(host.reshape(-1)[0])


def _remember(shape, axis, ax, dims):
    if type(axis) is int and len(_GEOMETRY) < _GEOMETRY_MAX:
        _GEOMETRY[(shape, axis)] = (ax, dims, (dims[1],))


def _plain_channel(a, cshape, dt):
    """A per-channel argument the fast path takes as it is: None or a plain ndarray (C,) of dt."""
    return a is None or (type(a) is np.ndarray and a.dtype is dt and a.shape == cshape
                         and a.flags.c_contiguous)


def _fast_forward(x, rm, rv, w, b, training, momentum, eps, axis, activation, r, nbt,
                  backend, out=None):
    """batch_norm's common host call, or None to take the general path.

    Every condition below is one the general path checks, tested here only in its accepting
    form on plain ndarrays of x's exact dtype (anything else, including every error case,
    returns None and the general path runs, which raises). The work is then the general path's,
    without its conversions (contig copies, write-backs, device handling). ``out``: None or a
    plain writable C-contiguous ndarray like x, x itself or sharing no memory with x or r (as
    ``_arrays.check_out`` requires; an overlap returns None and the general path raises).
    """
    dt = x.dtype
    if not ((dt is _F32 or dt is _F64) and type(axis) is int and type(eps) is float
            and 0.0 < eps < math.inf and (training is True or training is False)
            and (activation is None or activation == "relu") and x.flags.c_contiguous):
        return None
    if momentum is not None and not (type(momentum) is float and 0.0 <= momentum <= 1.0):
        return None
    shape = x.shape
    geo = _GEOMETRY.get((shape, axis))
    if geo is None:
        return None
    ax, dims, cshape = geo
    A, C, B = dims
    n = A * B
    if n * C == 0 or (training and n == 1):
        return None
    if not (_plain_channel(w, cshape, dt) and _plain_channel(b, cshape, dt)):
        return None
    track = rm is not None
    if track:
        # two distinct arrays owning their memory cannot overlap; views (tensors' memory) must
        # not share bounds (else: np.shares_memory on the general path)
        if not (rv is not None and rm is not rv and _plain_channel(rm, cshape, dt)
                and _plain_channel(rv, cshape, dt)
                and ((rm.flags.owndata and rv.flags.owndata)
                     or not np.may_share_memory(rm, rv))):
            return None
        if training and not (rm.flags.writeable and rv.flags.writeable):
            return None
    elif rv is not None or not training:
        return None
    if nbt is not None:
        if not (track and training and type(nbt) is np.ndarray and nbt.dtype is _I64
                and nbt.size == 1 and nbt.flags.writeable):
            return None
    elif training and track and momentum is None:
        return None
    if r is not None and not (type(r) is np.ndarray and r.dtype is dt and r.shape == shape
                              and r.flags.c_contiguous):
        return None
    if out is not None and not _arrays.plain_out(out, x, (x, r)):
        return None
    backend = _dispatch.resolve(backend, x)
    if backend == "cuda":
        return None
    job = _dispatch.job(backend, True)
    relu = activation == "relu"
    x3 = x.reshape(dims)
    r3 = None if r is None else r.reshape(dims)
    y = np.empty(shape, dt) if out is None else out
    y3 = y.reshape(dims)
    stats = np.empty((3, C))  # one allocation: mean, invstd, m2 (rows, each contiguous)
    mean, invstd = stats[0], stats[1]
    if training:
        m2 = stats[2]
        wc = _const(job, C, dt, 1) if w is None else w
        bc = _const(job, C, dt, 0) if b is None else b
        step = getattr(job.mod, "bn_forward_train_running", None) if track else None
        if track:
            mom = momentum
            if nbt is not None:
                batches = _increment(nbt, job)
                if momentum is None:
                    mom = 1.0 / batches
        if step is not None:  # one call: the two ops below (the C backend)
            step(x3, wc, bc, eps, r3, relu, y3, mean, m2, invstd, rm, rv, mom)
        else:
            job.op("bn_forward_train")(x3, wc, bc, eps, r3, relu, y3, mean, m2, invstd)
            if track:
                job.op("bn_running_update")(mean, m2, n, rm, rv, mom)
    else:
        step = getattr(job.mod, "bn_forward_infer", None)
        if step is not None:  # one call: the two ops below (the C backend)
            step(x3, rm, rv, w, b, eps, r3, relu, y3, mean, invstd)
        else:
            center, scale, shift = np.empty(C, dt), np.empty(C, dt), np.empty(C, dt)
            job.op("bn_forward_coeffs")(rm, rv, 1, w, b, eps, True, mean, invstd, center,
                                        scale, shift)
            job.op("bn_apply")(x3, center, scale, shift, r3, relu, y3)
    return y, BatchNormSaved(mean, invstd, training, ax, len(shape), activation, r is not None,
                             n)


def _fast_backward(grad_y, x, saved, weight, y, backend, out=None):
    """batch_norm_backward's common host call (axis and activation those of the forward pass,
    no comm), or None to take the general path (as _fast_forward; ``out`` as there, with
    grad_y in place of x)."""
    dt = x.dtype
    training = saved.training
    if not ((dt is _F32 or dt is _F64) and type(grad_y) is np.ndarray and grad_y.dtype is dt
            and (training is True or training is False) and saved.global_count is None
            and type(saved.mean) is np.ndarray and type(saved.invstd) is np.ndarray):
        return None
    shape = x.shape
    geo = _GEOMETRY.get((shape, saved.axis))
    if geo is None or grad_y.shape != shape or len(shape) != saved.ndim:
        return None
    ax, dims, cshape = geo
    A, C, B = dims
    n = A * B
    if (n * C == 0 or ax != saved.axis or n != saved.count or saved.mean.shape != cshape
            or not _plain_channel(weight, cshape, dt)
            or not (x.flags.c_contiguous and grad_y.flags.c_contiguous)):
        return None
    relu = saved.activation == "relu"
    if relu:
        if not (type(y) is np.ndarray and y.dtype is dt and y.shape == shape
                and y.flags.c_contiguous):
            return None
    elif saved.activation is not None:
        return None
    if out is not None and not _arrays.plain_out(out, grad_y, (grad_y, x, y if relu else None)):
        return None
    backend = _dispatch.resolve(backend, x)
    if backend == "cuda":
        return None
    job = _dispatch.job(backend, True)
    gx = np.empty(shape, dt) if out is None else out
    gres = np.empty(shape, dt) if saved.residual else None
    gw, gb = np.empty(C, dt), np.empty(C, dt)
    job.op("bn_backward")(grad_y.reshape(dims), x.reshape(dims), y.reshape(dims) if relu else None,
                          saved.mean, saved.invstd,
                          _const(job, C, dt, 1) if weight is None else weight, training,
                          gx.reshape(dims), None if gres is None else gres.reshape(dims), gw, gb)
    return (gx, gw, gb) if gres is None else (gx, gw, gb, gres)


def _const(job, C, dtype, value):
    a = np.full(C, value, dtype)
    return job.mod.to_device(a) if job.device else a


def _writeback(job, src, dst):
    """Copy a working copy of an in-place argument back into the caller's array: a contiguous
    copy of a non-contiguous host array, or the device copy of a host array."""
    if src is dst:
        return
    if not job.device:
        dst[...] = src
    elif job.host_input:
        dst[...] = job.mod.copy_to_host(src)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, training,
               momentum=0.1, eps=1e-5, axis=1, activation=None, residual=None,
               num_batches_tracked=None, out=None, backend="auto", comm=None):
    """Batch normalization forward, optionally fused with a residual add and a ReLU.

    Parameters
    ----------
    x : array, float32, float64, float16 or bfloat16 (ml_dtypes), ndim >= 2
        Host (NumPy) or CUDA array; a non-contiguous host array is copied first. For 16-bit x
        see Notes.
    running_mean, running_var : arrays (C,) of x's dtype (float32 for 16-bit x), optional
        Running statistics. Training updates them in place (when given) with PyTorch's rule
        ``r = (1 - momentum) * r + momentum * batch`` using the unbiased batch variance;
        inference normalizes with them (required). An empty batch (no value per channel)
        leaves them alone, as in torch.
    weight, bias : arrays (C,) of x's dtype (float32 for 16-bit x), optional
        The affine parameters (gamma and beta; default 1 and 0).
    training : bool
        Batch statistics (True) or the running statistics (False). Keyword, required.
        ``True``/``False`` or a NumPy bool; an int (0 and 1 included) is a TypeError, as in
        torch and in fastreg's dropout functions.
    momentum : float in [0, 1] or None
        None: a cumulative moving average, momentum = 1 / num_batches_tracked (needs
        ``num_batches_tracked``).
    eps : float > 0
        Added to the variance.
    axis : int
        The channel axis: 1 for (N, C, ...), -1 for channels-last. Any valid axis works.
    activation : None or "relu"
        "relu": ``y = max(bn(x) [+ residual], 0)`` in the same pass (NaN propagates).
    residual : array like x, optional
        Added after the normalization and before the activation.
    num_batches_tracked : int64 array with 1 element, optional
        Incremented in place in training with running statistics (as torch's BatchNorm modules
        do, also for an empty batch); the count for ``momentum=None``.
    out : array like x, optional
        Where to write y; may be x itself (then x is overwritten: backward needs the original).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    comm : mpi4py communicator, optional
        Synchronized batch norm (training only; inference does not communicate): the batch is
        the union of every rank's x, each rank normalizing its own part with the statistics of
        the whole (see Notes). Every rank of ``comm`` must call it, also ranks with no samples.
        Needs ``pip install "fastreg-kernels[mpi]"``.

    Returns
    -------
    y : array
        The output (``out`` when given), of x's dtype; empty for an empty batch.
    saved : BatchNormSaved
        The statistics ``batch_norm_backward`` needs (float64 mean and invstd per channel;
        zeros after an empty training batch).

    Raises
    ------
    TypeError
        x not float32/float64/float16/bfloat16; a per-channel array or residual of another
        dtype (per-channel arrays float32 for 16-bit x); a non-bool training.
    ValueError
        axis out of range; a per-channel array of the wrong length or device; eps <= 0 or NaN;
        momentum outside [0, 1] or NaN; only one of running_mean / running_var; inference
        without running statistics; num_batches_tracked or momentum=None without running
        statistics to update; training with one value per channel (the batch variance of a
        single value is undefined, as in PyTorch; with ``comm``, one value over all ranks); a
        bad ``out``.
    fastreg.distributed.CollectiveTimeout, fastreg.distributed.CollectiveError
        With ``comm``: another rank died or hangs (see fastreg.distributed).

    Notes
    -----
    Ioffe & Szegedy, "Batch normalization: accelerating deep network training by reducing
    internal covariate shift", ICML 2015. Training forward reads x twice (statistics, then
    normalization) unless the backend fuses them per channel while the channel is in cache
    (the cpu and c backends do for channels-first layouts).

    Synchronized (``comm``): each rank computes its (count, mean, M2) per channel; one
    Allgather exchanges them and every rank merges them in rank order with Chan's update
    (``merge_stats``), so all ranks get bit-identical statistics of the global batch, equal to
    those of one process on the concatenated batch up to rounding, whatever the per-rank batch
    sizes (0 included). The running statistics get the global batch's unbiased variance. The
    2C + 1 statistics travel through host memory (copied from and to the device for CUDA
    arrays). Same as PyTorch's SyncBatchNorm, but exact for uneven batches.

    16-bit x (float16, bfloat16), as under ``torch.autocast``: x and residual are converted
    exactly to float32, the float32 op runs with float32 weight, bias and running statistics
    (statistics accumulated as for float32 x), and y is rounded to x's dtype to nearest even
    (fastreg.reference.half). Backend "c" does it in one pass, reading and writing the 16-bit
    arrays (fused kernels, the same bits; not with ``comm``); the other backends run the float32
    op on float32 copies, which cost two float32 arrays of x's size (three with a residual).

    An empty batch (x with no value per channel: N = 0 or an empty spatial axis) gives an
    empty y; training leaves the running statistics alone (torch does the same). One value per
    channel in training raises (see Raises).
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(batch_norm, locals())) is not _dispatch.NOT_TORCH:
            return r
    if type(x) is np.ndarray and comm is None:
        fast = _fast_forward(x, running_mean, running_var, weight, bias, training, momentum, eps,
                             axis, activation, residual, num_batches_tracked, backend, out)
        if fast is not None:
            return fast
    arr = _arrays.describe(x, "x")
    _arrays.check_float(arr, "x", half=True)
    device = arr is not x and _arrays.is_device(x)
    half = arr.dtype.itemsize == 2
    if half and not _half_fused(backend, device, comm):
        return _batch_norm_half(x, arr, running_mean, running_var, weight, bias, training,
                                momentum, eps, axis, activation, residual, num_batches_tracked,
                                out, backend, comm)
    dtype = arr.dtype
    pdt = _F32 if half else dtype  # of the per-channel arrays (16-bit x: see Notes)
    shape = tuple(arr.shape)
    training = _arrays.check_bool(training, "training")
    ax, dims = _channel_axis(shape, axis)
    _remember(shape, axis, ax, dims)
    A, C, B = dims
    n = A * B
    eps = _check_eps(eps)
    if momentum is not None:
        momentum = _arrays.check_probability(momentum, "momentum")
    _arrays.check_choice(activation, "activation", ACTIVATIONS)
    if half:
        for a, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                        (weight, "weight"), (bias, "bias")):
            _check_f32_channel(a, name, dtype)
    rm = _check_channel(running_mean, "running_mean", C, pdt, device, writable=training)
    rv = _check_channel(running_var, "running_var", C, pdt, device, writable=training)
    w = _check_channel(weight, "weight", C, pdt, device)
    b = _check_channel(bias, "bias", C, pdt, device)
    if (rm is None) != (rv is None):
        raise ValueError("pass both running_mean and running_var, or neither")
    # two distinct arrays that each own their memory cannot overlap: skip the slower exact test
    if (rm is not None and not device
            and not (rm is not rv and rm.flags.owndata and rv.flags.owndata)
            and np.shares_memory(rm, rv)):
        raise ValueError("running_mean and running_var share memory: pass two arrays")
    track = rm is not None
    if not training and not track:
        raise ValueError("inference (training=False) normalizes with the running statistics: "
                         "pass running_mean and running_var")
    nbt = None
    if num_batches_tracked is not None:
        nbt = _check_counter(num_batches_tracked, device)
        if training and not track:
            raise ValueError("num_batches_tracked is given but there are no running statistics "
                             "to update: pass running_mean and running_var")
    if training and track and momentum is None and nbt is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    r = None if residual is None else _check_like(residual, "residual", shape, dtype, device)
    x_in = x if device else arr
    inputs = [x_in] + ([r] if r is not None else [])
    out_arr = _arrays.check_out(out, "out", shape, dtype, inputs, device)
    if training and n == 1 and comm is None:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of "
                         f"shape {shape} (axis={axis}): the variance of one value is undefined")
    backend = _dispatch.resolve(backend, x, out, residual, rm, rv, w, b)
    if comm is not None and training:
        return _batch_norm_sync(comm, backend, x_in, device, shape, dtype, ax, dims, r, rm, rv,
                                w, b, nbt, momentum, eps, activation, out, out_arr)

    job = _dispatch.job(backend, not device)
    f64 = np.float64
    work = n * C > 0  # training has n == 0 (an empty batch) or n >= 2
    if work or not training:
        mean, invstd = job.empty((C,), f64), job.empty((C,), f64)
    else:  # an empty batch: no statistics (zeros), the running ones are left alone
        mean, invstd = job.zeros((C,), f64), job.zeros((C,), f64)
    res = job.target(out_arr, shape, dtype)
    relu = activation == "relu"
    if work:
        xc = job.contig(x_in).reshape(dims)
        rc = None if r is None else job.contig(r).reshape(dims)
        res3 = res.reshape(dims)
    if training:
        m2 = job.empty((C,), f64)
        if work:
            wc = _const(job, C, pdt, 1) if w is None else job.contig(w)
            bc = _const(job, C, pdt, 0) if b is None else job.contig(b)
            job.op("bn_forward_train")(xc, wc, bc, eps, rc, relu, res3, mean, m2, invstd)
    if training and track:
        mom = momentum
        if nbt is not None:
            batches = _increment(nbt, job)
            if momentum is None:
                mom = 1.0 / batches
        if work:  # an empty batch leaves the running statistics alone, as in torch
            rmc, rvc = job.contig(rm), job.contig(rv)
            job.op("bn_running_update")(mean, m2, n, rmc, rvc, mom)
            _writeback(job, rmc, rm)
            _writeback(job, rvc, rv)
    if not training:
        center, scale, shift = (job.empty((C,), pdt) for _ in range(3))
        if C:
            job.op("bn_forward_coeffs")(job.contig(rm), job.contig(rv), 1,
                                        None if w is None else job.contig(w),
                                        None if b is None else job.contig(b), eps, True, mean,
                                        invstd, center, scale, shift)
        if work:
            job.op("bn_apply")(xc, center, scale, shift, rc, relu, res3)
    y = job.finish(res, out_arr)
    saved = BatchNormSaved(mean, invstd, training, ax, len(shape), activation, r is not None, n)
    return (y if out is None else out), saved


def batch_norm_backward(grad_y, x, saved, weight=None, *, axis=None, activation=None, y=None,
                        out=None, backend="auto", comm=None):
    """Gradients of ``batch_norm`` with respect to x, weight and bias (and the residual).

    Parameters
    ----------
    grad_y : array like x
        Gradient of the loss with respect to the forward output.
    x : array
        The forward input (unchanged since the forward pass).
    saved : BatchNormSaved
        The second value returned by ``batch_norm``.
    weight : array (C,), optional
        The forward pass's weight (default 1).
    axis : int, optional
        The channel axis; default (and it must agree with) the forward pass's.
    activation : None or "relu", optional
        Default (and it must agree with) the forward pass's.
    y : array like x, optional
        The forward output; required when the forward pass ended in a ReLU (its mask is y > 0).
    out : array like x, optional
        Where to write grad_x; may be grad_y itself.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    comm : mpi4py communicator, optional
        Required (the same one) when the forward pass was synchronized; every rank must call.

    Returns
    -------
    grad_x : array
        Of x's dtype (16-bit x: computed in float32, rounded to nearest even, as in
        ``batch_norm``).
    grad_weight, grad_bias : arrays (C,) of x's dtype (float32 for 16-bit x)
        The gradients of the affine parameters (computed also when the forward pass had none:
        they are the gradients of an implicit weight 1 and bias 0). With ``comm``: this rank's
        contributions (sums over its own elements), to be reduced with the other parameter
        gradients (``fastreg.distributed.GradientAllreduce``), as in PyTorch's SyncBatchNorm.
    grad_residual : array like x
        Only when the forward pass had a residual: the gradient flowing into it (grad_y through
        the ReLU mask).

    Raises
    ------
    TypeError
        saved not a BatchNormSaved; arrays of the wrong dtype.
    ValueError
        Shapes or devices that do not match x or the forward pass; an axis or activation other
        than the forward pass's; y missing with a ReLU; a bad ``out``; ``comm`` missing after a
        synchronized forward pass, or given after an unsynchronized training one.
    fastreg.distributed.CollectiveTimeout, fastreg.distributed.CollectiveError
        With ``comm``: another rank died or hangs.

    Notes
    -----
    With xhat = (x - mean) * invstd and g = grad_y (masked by y > 0 after a ReLU), training:
    ``grad_x = weight * invstd * (g - mean(g) - xhat * mean(g * xhat))``; inference:
    ``grad_x = weight * invstd * g``. grad_weight = sum(g * xhat), grad_bias = sum(g), per
    channel; the sums are accumulated in float64.

    Synchronized (``comm``, training): mean(g) and mean(g * xhat) are over the global batch:
    each rank's two float64 sums per channel are summed with one Allreduce (bit-identical on
    every rank) and divided by the global count. grad_y must then be the gradient of one global
    loss on every rank: with uneven per-rank batches and a mean loss, divide by the global batch
    size (not the local one) and sum the parameter gradients over ranks.
    """
    if type(grad_y) is not np.ndarray:
        if (r := _dispatch.torch_call(batch_norm_backward, locals())) is not _dispatch.NOT_TORCH:
            return r
    if (type(x) is np.ndarray and type(saved) is BatchNormSaved and axis is None
            and activation is None and comm is None):
        fast = _fast_backward(grad_y, x, saved, weight, y, backend, out)
        if fast is not None:
            return fast
    if not isinstance(saved, BatchNormSaved):
        raise TypeError(f"saved must be the BatchNormSaved returned by batch_norm, got "
                        f"{type(saved).__name__}")
    arr = _arrays.describe(x, "x")
    _arrays.check_float(arr, "x", half=True)
    device = arr is not x and _arrays.is_device(x)
    half = arr.dtype.itemsize == 2
    if half and not _half_fused(backend, device, comm):
        return _batch_norm_backward_half(grad_y, x, arr, saved, weight, axis, activation, y, out,
                                         backend, comm)
    dtype = arr.dtype
    pdt = _F32 if half else dtype  # of weight and the parameter gradients
    shape = tuple(arr.shape)
    training = _arrays.check_bool(saved.training, "saved.training")
    if len(shape) != saved.ndim:
        raise ValueError(f"x has {len(shape)} dimensions but the forward pass had {saved.ndim}")
    if axis is None:
        axis = saved.axis
    ax, dims = _channel_axis(shape, axis)
    _remember(shape, axis, ax, dims)
    if ax != saved.axis:
        raise ValueError(f"axis {axis} differs from the forward pass's channel axis {saved.axis}")
    A, C, B = dims
    if A * B != saved.count or C != _arrays.describe(saved.mean, "saved.mean").shape[0]:
        raise ValueError(f"x of shape {shape} does not match the forward pass (C, count) = "
                         f"({saved.mean.shape[0]}, {saved.count})")
    if activation is None:
        activation = saved.activation
    _arrays.check_choice(activation, "activation", ACTIVATIONS)
    if activation != saved.activation:
        raise ValueError(f"activation {activation!r} differs from the forward pass's "
                         f"{saved.activation!r}")
    gy = _check_like(grad_y, "grad_y", shape, dtype, device)
    relu = activation == "relu"
    if relu and y is None:
        raise ValueError("the forward pass ended in a ReLU: pass y, its output, for the mask")
    yv = _check_like(y, "y", shape, dtype, device, "x") if relu else None
    if half:
        _check_f32_channel(weight, "weight", dtype)
    w = _check_channel(weight, "weight", C, pdt, device)
    x_in = x if device else arr
    out_arr = _arrays.check_out(out, "out", shape, dtype,
                                [a for a in (gy, x_in, yv) if a is not None], device)
    backend = _dispatch.resolve(backend, x, grad_y, y, out, weight)
    if training and (comm is None) != (saved.global_count is None):
        raise ValueError("the forward pass was synchronized over a communicator: pass the same "
                         "comm to batch_norm_backward" if comm is None else
                         "comm is given but the forward pass was not synchronized: pass comm to "
                         "batch_norm too")
    if comm is not None and training:
        return _batch_norm_backward_sync(comm, backend, gy, x_in, yv, saved, w, device, shape,
                                         dtype, dims, out, out_arr)

    job = _dispatch.job(backend, not device)
    gx = job.target(out_arr, shape, dtype)
    gres = job.empty(shape, dtype) if saved.residual else None
    if A * B * C:
        gw, gb = job.empty((C,), pdt), job.empty((C,), pdt)
        wc = _const(job, C, pdt, 1) if w is None else job.contig(w)
        job.op("bn_backward")(job.contig(gy).reshape(dims), job.contig(x_in).reshape(dims),
                              None if yv is None else job.contig(yv).reshape(dims),
                              _on(job, saved.mean), _on(job, saved.invstd), wc, training,
                              gx.reshape(dims), None if gres is None else gres.reshape(dims),
                              gw, gb)
    else:  # nothing flows: zero parameter gradients
        gw, gb = job.zeros((C,), pdt), job.zeros((C,), pdt)
    grads = (job.finish(gx, out_arr), _host(job, gw), _host(job, gb))
    if out is not None:
        grads = (out,) + grads[1:]
    if saved.residual:
        grads += (_host(job, gres),)
    return grads


# --- 16-bit x: exact float32 copies, the float32 op, outputs rounded to nearest even ---------------

def _half_fused(backend, device, comm):
    """Whether a 16-bit call runs the backend's fused 16-bit kernels (the general path, with
    16-bit big arrays and float32 per-channel ones) rather than the conversion passes below:
    host arrays, no ``comm``, and a backend whose batch-norm module says ``bn_half`` (backend
    "c": its kernels widen and round in registers, the same bits, one pass over the data)."""
    if device or comm is not None:
        return False
    name = _dispatch.resolve(backend)
    return name != "cuda" and getattr(_dispatch.job(name, True).mod, "bn_half", False)


def _half_job(backend, device):
    """The Job whose conversion passes (fastreg._half) serve a 16-bit call: the CUDA kernels for
    device arrays, else the host backend's own (NumPy's for host arrays sent to "cuda", whose
    float32 op then copies them). Every backend converts exactly as the reference."""
    if device:
        return _dispatch.job("cuda", False)
    name = _dispatch.resolve(backend)
    return _dispatch.job("numpy" if name == "cuda" else name, True)


def _widen(job, a, dtype):
    """An exact float32 C-contiguous copy of the 16-bit array ``a`` (host: a checked ndarray
    view), on job's side."""
    return _half.widen(job, a, _arrays.half_kind(dtype))


def _narrow(job, a32, dtype, out_arr):
    """float32 ``a32`` rounded to nearest even to the 16-bit ``dtype``: into out_arr (the
    checked ``out``) when given, else a new array (device: the caller's array type)."""
    kind = _arrays.half_kind(dtype)
    if out_arr is not None:
        _half.store(job, a32, kind, out_arr)
        return out_arr
    res = job.empty(tuple(a32.shape), np.uint16)
    _half.narrow(job, a32, kind, res)
    return _half.as_dtype(job.finish(res, None), dtype)


def _check_f32_channel(a, name, dtype):
    if a is not None and _arrays.describe(a, name).dtype != np.float32:
        raise TypeError(f"{name} must be float32 when x is {dtype} (parameters and running "
                        f"statistics stay float32, as under torch.autocast), got "
                        f"{_arrays.describe(a, name).dtype}")


def _batch_norm_half(x, arr, running_mean, running_var, weight, bias, training, momentum, eps,
                     axis, activation, residual, num_batches_tracked, out, backend, comm):
    """batch_norm for 16-bit x (see its Notes): the float32 op on exact float32 copies."""
    device = arr is not x and _arrays.is_device(x)
    dtype, shape = arr.dtype, tuple(arr.shape)
    training = _arrays.check_bool(training, "training")
    _channel_axis(shape, axis)
    for a, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_f32_channel(a, name, dtype)
    r = None if residual is None else _check_like(residual, "residual", shape, dtype, device)
    x_in = x if device else arr
    out_arr = _arrays.check_out(out, "out", shape, dtype,
                                [x_in] + ([r] if r is not None else []), device)
    job = _half_job(backend, device)
    r32 = None if r is None else _widen(job, r, dtype)
    y32, saved = batch_norm(_widen(job, x_in, dtype), running_mean, running_var, weight, bias,
                            training=training, momentum=momentum, eps=eps, axis=axis,
                            activation=activation, residual=r32,
                            num_batches_tracked=num_batches_tracked, backend=backend, comm=comm)
    y = _narrow(job, y32, dtype, out_arr)
    return (y if out is None else out), saved


def _batch_norm_backward_half(grad_y, x, arr, saved, weight, axis, activation, y, out, backend,
                              comm):
    """batch_norm_backward for 16-bit x: the float32 op on exact float32 copies of grad_y, x
    and y; grad_x (and grad_residual, exact) rounded to x's dtype; float32 grad_weight and
    grad_bias."""
    device = arr is not x and _arrays.is_device(x)
    dtype, shape = arr.dtype, tuple(arr.shape)
    gy = _check_like(grad_y, "grad_y", shape, dtype, device)
    yv = None if y is None else _check_like(y, "y", shape, dtype, device, "x")
    _check_f32_channel(weight, "weight", dtype)
    x_in = x if device else arr
    out_arr = _arrays.check_out(out, "out", shape, dtype,
                                [a for a in (gy, x_in, yv) if a is not None], device)
    job = _half_job(backend, device)
    grads = batch_norm_backward(
        _widen(job, gy, dtype), _widen(job, x_in, dtype), saved, weight, axis=axis,
        activation=activation, y=None if yv is None else _widen(job, yv, dtype),
        backend=backend, comm=comm)
    gx = _narrow(job, grads[0], dtype, out_arr)
    result = ((gx if out is None else out),) + tuple(grads[1:3])
    if len(grads) == 4:
        result += (_narrow(job, grads[3], dtype, None),)
    return result


def _batch_norm_sync(comm, backend, x_in, device, shape, dtype, ax, dims, r, rm, rv, w, b, nbt,
                     momentum, eps, activation, out, out_arr):
    """Training forward synchronized over ``comm`` (arguments validated by batch_norm)."""
    from . import distributed
    A, C, B = dims
    n = A * B
    job = _dispatch.job(backend, not device)
    f64 = np.float64
    res = job.target(out_arr, shape, dtype)
    work = n * C > 0
    lmean, lm2 = job.zeros((C,), f64), job.zeros((C,), f64)
    if work:
        xc = job.contig(x_in).reshape(dims)
        rc = None if r is None else job.contig(r).reshape(dims)
        job.op("bn_stats")(xc, lmean, lm2)
    count, gmean, gm2 = distributed.allgather_stats(n, _host64(job, lmean), _host64(job, lm2),
                                                    comm)
    if count == 1:  # every rank sees the same count, so every rank raises
        raise ValueError(f"Expected more than 1 value per channel when training, got {count} "
                         f"over all ranks of the communicator (this rank: shape {shape})")
    gmean, gm2 = _on(job, gmean), _on(job, gm2)
    # an empty global batch: empty outputs, zero statistics, running statistics left alone
    mean, invstd = (job.empty((C,), f64), job.empty((C,), f64)) if count else \
        (job.zeros((C,), f64), job.zeros((C,), f64))
    center, scale, shift = (job.empty((C,), dtype) for _ in range(3))
    if C and count:
        job.op("bn_forward_coeffs")(gmean, gm2, count, None if w is None else job.contig(w),
                                    None if b is None else job.contig(b), eps, False, mean,
                                    invstd, center, scale, shift)
    if work:
        job.op("bn_apply")(xc, center, scale, shift, rc, activation == "relu",
                           res.reshape(dims))
    if rm is not None:
        mom = momentum
        if nbt is not None:
            batches = _increment(nbt, job)
            if momentum is None:
                mom = 1.0 / batches
        if C and count:
            rmc, rvc = job.contig(rm), job.contig(rv)
            job.op("bn_running_update")(gmean, gm2, count, rmc, rvc, mom)
            _writeback(job, rmc, rm)
            _writeback(job, rvc, rv)
    y = job.finish(res, out_arr)
    saved = BatchNormSaved(mean, invstd, True, ax, len(shape), activation, r is not None, n,
                           count)
    return (y if out is None else out), saved


def _batch_norm_backward_sync(comm, backend, gy, x_in, yv, saved, w, device, shape, dtype, dims,
                              out, out_arr):
    """Training backward synchronized over ``comm`` (arguments validated by
    batch_norm_backward)."""
    from . import distributed
    A, C, B = dims
    n = A * B
    job = _dispatch.job(backend, not device)
    f64 = np.float64
    gx = job.target(out_arr, shape, dtype)
    gres = job.empty(shape, dtype) if saved.residual else None
    mean, invstd = _on(job, saved.mean), _on(job, saved.invstd)
    s_dy, s_dyx = job.zeros((C,), f64), job.zeros((C,), f64)
    work = n * C > 0
    if work:
        gyc = job.contig(gy).reshape(dims)
        xc = job.contig(x_in).reshape(dims)
        yc = None if yv is None else job.contig(yv).reshape(dims)
        job.op("bn_backward_reduce")(gyc, xc, yc, mean, s_dy, s_dyx)
    sums = np.concatenate([_host64(job, s_dy), _host64(job, s_dyx)])
    distributed.allreduce_sums(sums, comm)
    tot_dy, tot_dyx = _on(job, sums[:C].copy()), _on(job, sums[C:].copy())
    wc = _const(job, C, dtype, 1) if w is None else job.contig(w)
    center, a, bc, d, gw, gb = (job.empty((C,), dtype) for _ in range(6))
    if not saved.global_count:  # an empty global batch: nothing flows
        gw, gb = job.zeros((C,), dtype), job.zeros((C,), dtype)
    elif C:
        # grad_x's coefficients from the global sums and count ...
        job.op("bn_backward_coeffs")(tot_dy, tot_dyx, mean, invstd, wc, saved.global_count, True,
                                     center, a, bc, d, gw, gb)
        # ... and this rank's own parameter gradients, from its local sums (this call rewrites
        # center and a with the same values)
        job.op("bn_backward_coeffs")(s_dy, s_dyx, mean, invstd, wc, max(n, 1), False, center,
                                     a, None, None, gw, gb)
    if work:
        job.op("bn_backward_apply")(gyc, xc, yc, center, a, bc, d, gx.reshape(dims),
                                    None if gres is None else gres.reshape(dims))
    grads = (job.finish(gx, out_arr), _host(job, gw), _host(job, gb))
    if out is not None:
        grads = (out,) + grads[1:]
    if saved.residual:
        grads += (_host(job, gres),)
    return grads


def _host64(job, a):
    """A float64 per-channel array on the host (MPI moves host memory here)."""
    return np.asarray(job.mod.copy_to_host(a) if job.device else a, dtype=np.float64)


def _on(job, a):
    """A saved per-channel array where the kernels run."""
    if job.device:
        return job.mod.as_device(a) if _arrays.is_device(a) else job.mod.to_device(a)
    return a


def _host(job, a):
    """Results go back where the caller's data lives."""
    return job.mod.copy_to_host(a) if job.device and job.host_input else a


def batch_norm_stats(x, *, axis=1, backend="auto"):
    """Per-channel statistics of x that merge exactly: (count, mean, M2).

    Parameters
    ----------
    x : array, float32, float64, float16 or bfloat16, ndim >= 2
    axis : int
        The channel axis.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    count : int
        Elements per channel.
    mean, m2 : float64 arrays (C,)
        The mean and the sum of squared deviations from it (on x's device). An empty batch gives
        count 0 and zeros, the identity of ``merge_stats``.

    Raises
    ------
    TypeError, ValueError
        x not float32/float64, axis out of range.

    Notes
    -----
    The statistics are accumulated in float64 with a stable method (shifted sums or two
    passes); ``merge_stats`` combines them with Chan, Golub & LeVeque's pairwise update, so
    statistics of parts (micro-batches, processes) combine into exactly those of the whole, up
    to rounding. Range: float64 sums of squares overflow once a channel's values reach about
    1e154 (float32, float16 and bfloat16 inputs never get there); beyond, M2 (and for values
    near the float64 maximum the mean) is inf or NaN, and which of the two may differ between
    backends.
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(batch_norm_stats, locals())) is not _dispatch.NOT_TORCH:
            return r
    arr = _arrays.describe(x, "x")
    _arrays.check_float(arr, "x", half=True)
    device = _arrays.is_device(x)
    ax, dims = _channel_axis(tuple(arr.shape), axis)
    if arr.dtype.itemsize == 2 and not _half_fused(backend, device, None):
        # statistics of the exact float32 values
        return batch_norm_stats(_widen(_half_job(backend, device), x if device else arr,
                                       arr.dtype), axis=axis, backend=backend)
    A, C, B = dims
    backend = _dispatch.resolve(backend, x)
    job = _dispatch.job(backend, not device)
    if A * B == 0:
        mean, m2 = job.zeros((C,), np.float64), job.zeros((C,), np.float64)
    else:
        mean, m2 = job.empty((C,), np.float64), job.empty((C,), np.float64)
        if C:
            job.op("bn_stats")(job.contig(x if device else arr).reshape(dims), mean, m2)
    return A * B, _host(job, mean), _host(job, m2)


def _stats_to_host(a, name):
    if _arrays.is_device(a):
        return np.asarray(_registry.module("cuda").copy_to_host(a), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def _list_of_parts(s):
    """Whether merge_stats' single argument is a list of (count, mean, m2) parts rather than
    one part: every item a 3-sequence whose second item is not a number (a part's mean is an
    array; one part's per-channel count list has numbers there)."""
    return (isinstance(s, (list, tuple)) and len(s) > 0
            and all(isinstance(p, (list, tuple)) and len(p) == 3
                    and not isinstance(p[1], numbers.Number) for p in s))


def _stats_row(count, mean, m2):
    """One rank's statistics as the row the synchronized batch norms gather (MPI and
    torch.distributed): ``[count, C, mean, m2]`` in float64. C lets every rank check the
    others' (``_merge_rows``): rows of another length would otherwise merge as statistics."""
    C = mean.shape[0]
    row = np.empty(2 + 2 * C, np.float64)
    row[0], row[1], row[2:2 + C], row[2 + C:] = count, C, mean, m2
    return row


def _merge_rows(rows, C):
    """``merge_stats`` of the gathered ``_stats_row`` rows (2-D, in rank order); ValueError
    where a rank had another channel count than this one's ``C``."""
    if not np.all(rows[:, 1] == C):
        raise ValueError(f"the ranks' inputs have different channel counts (this rank: {C}); "
                         "synchronized batch norm needs the same C on every rank")
    return merge_stats([(int(r[0]), r[2:2 + C], r[2 + C:]) for r in rows])


def merge_stats(*stats):
    """Merge per-channel (count, mean, M2) statistics of disjoint parts into those of the whole.

    Parameters
    ----------
    *stats : tuples (count, mean, m2)
        As returned by ``batch_norm_stats`` (or a single list of them). ``count`` is an int (or
        an array of per-channel counts); parts with count 0 are ignored.

    Returns
    -------
    count : int or ndarray
    mean, m2 : float64 ndarrays (C,)
        The statistics of the union; the biased variance is ``m2 / count``, the unbiased one
        ``m2 / (count - 1)``.

    Raises
    ------
    ValueError
        No statistics, negative counts or M2, or per-channel arrays of different shapes.

    Notes
    -----
    Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing sample
    variances", 1979: with delta = mean_b - mean_a and n = n_a + n_b,
    ``mean = mean_a + delta * n_b / n`` and ``M2 = M2_a + M2_b + delta**2 * n_a * n_b / n``.
    Computed in float64 on the host (device statistics are copied).
    """
    if len(stats) == 1 and _list_of_parts(stats[0]):
        stats = tuple(stats[0])  # one list (or tuple) of (count, mean, m2) parts
    if not stats:
        raise ValueError("merge_stats needs at least one (count, mean, m2)")
    parts = []
    for i, s in enumerate(stats):
        if not isinstance(s, (tuple, list)) or len(s) != 3:
            raise TypeError(f"stats[{i}] must be a (count, mean, m2) tuple")
        count = np.asarray(s[0])
        if count.dtype.kind not in "iu" or np.any(count < 0):
            raise ValueError(f"stats[{i}]: count must be a non-negative integer, got {s[0]!r}")
        if count.dtype.kind == "u" and np.any(count > _I64_MAX):
            raise ValueError(f"stats[{i}]: count must fit in int64, got {s[0]!r}")
        mean, m2 = _stats_to_host(s[1], f"stats[{i}] mean"), _stats_to_host(s[2], f"stats[{i}] m2")
        if mean.shape != m2.shape or mean.ndim != 1:
            raise ValueError(f"stats[{i}]: mean and m2 must be 1-D arrays of one shape, got "
                             f"{mean.shape} and {m2.shape}")
        if parts and mean.shape != parts[0][1].shape:
            raise ValueError(f"stats[{i}] has {mean.shape[0]} channels, stats[0] has "
                             f"{parts[0][1].shape[0]}")
        if count.ndim not in (0, 1) or (count.ndim == 1 and count.shape != mean.shape):
            raise ValueError(f"stats[{i}]: count must be an int or one count per channel "
                             f"(shape {mean.shape}), got shape {count.shape}")
        if np.any(m2 < 0):
            raise ValueError(f"stats[{i}]: m2 must be >= 0")
        parts.append((count.astype(np.int64), mean, m2))
    n, mean, m2 = parts[0]
    for i, (nb, mb, m2b) in enumerate(parts[1:], 1):
        if np.any(nb > _I64_MAX - n):   # (nothing is written before: the merge is local)
            raise ValueError(f"merge_stats: the total count overflows int64 at stats[{i}]")
        total = n + nb
        safe = np.maximum(total, 1).astype(np.float64)
        with np.errstate(all="ignore"):   # the branches not taken below may overflow
            delta = mb - mean
            merged_mean = mean + delta * (nb / safe)
            merged_m2 = m2 + m2b + delta * delta * (n * (nb / safe))
        # a part with count 0 is ignored, whatever its mean and M2 (a NaN, or a delta whose
        # square overflows, must not reach the other part); one after only empty parts is taken
        # as it is
        mean = np.where(nb == 0, mean, np.where(n == 0, mb, merged_mean))
        m2 = np.where(nb == 0, m2, np.where(n == 0, m2b, merged_m2))
        n = total
    count = int(n) if n.ndim == 0 else n
    return count, mean, m2


def fold_batch_norm(weight, bias, running_mean, running_var, bn_weight=None, bn_bias=None, *,
                    eps=1e-5, axis=0):
    """Fold an inference-mode batch norm into the linear (or convolution) layer before it.

    ``bn(x @ W.T + b)`` with running statistics equals ``x @ W'.T + b'`` with
    ``W' = W * s`` (s scaling W's output-channel axis) and ``b' = (b - running_mean) * s +
    bn_bias``, ``s = bn_weight / sqrt(running_var + eps)``.

    Parameters
    ----------
    weight : ndarray, float32 or float64
        The layer's weight; its output channels run along ``axis`` (0 for PyTorch's Linear
        (out, in) and Conv (out, in, kh, kw); 1 or -1 for an (in, out) matrix used as x @ W).
    bias : ndarray (C,) or None
        The layer's bias (None: zero).
    running_mean, running_var : ndarrays (C,)
    bn_weight, bn_bias : ndarrays (C,), optional
        The batch norm's affine parameters (default 1 and 0).
    eps : float > 0
    axis : int
        The output-channel axis of ``weight``.

    Returns
    -------
    weight, bias : ndarrays
        New arrays of weight's dtype (computed in float64); the inputs are not modified.

    Raises
    ------
    TypeError, ValueError
        weight not float32/float64; per-channel arrays of the wrong length; eps <= 0; axis out
        of range.
    """
    if type(weight) is not np.ndarray:
        if (r := _dispatch.torch_call(fold_batch_norm, locals())) is not _dispatch.NOT_TORCH:
            return r
    W = _arrays.describe(weight, "weight")
    _arrays.check_float(W, "weight")
    if _arrays.is_device(weight):
        raise ValueError("fold_batch_norm works on host (NumPy) arrays")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -W.ndim <= axis < W.ndim:
        raise ValueError(f"axis {axis} is out of range for weight with {W.ndim} dimensions")
    eps = _check_eps(eps)
    ax = int(axis) % W.ndim
    C = W.shape[ax]

    def vec(a, name, default):
        if a is None:
            return np.full(C, default, np.float64)
        v = np.asarray(a, dtype=np.float64)
        if v.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) (weight's axis {axis}), got "
                             f"{v.shape}")
        return v

    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required")
    rm = vec(running_mean, "running_mean", 0.0)
    rv = vec(running_var, "running_var", 1.0)
    if not (np.all(rv >= 0) and np.all(np.isfinite(rv)) and np.all(np.isfinite(rm))):
        raise ValueError("running_var must be finite and >= 0 and running_mean finite")
    s = vec(bn_weight, "bn_weight", 1.0) / np.sqrt(rv + eps)
    b = vec(bias, "bias", 0.0)
    shape = [1] * W.ndim
    shape[ax] = C
    new_w = (W.astype(np.float64) * s.reshape(shape)).astype(W.dtype)
    new_b = ((b - rm) * s + vec(bn_bias, "bn_bias", 0.0)).astype(W.dtype)
    return new_w, new_b
