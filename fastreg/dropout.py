"""Dropout with a counter-based RNG: element-wise, channel-wise and per-sample (drop path).

Every random decision comes from the Philox4x32-10 stream of ``fastreg.random``: element ``i``
(flat C order) of a call with ``(seed, offset)`` is decided by stream word ``offset + i`` alone, so
the mask never depends on the backend, thread count, block size or how an array is split, and
backward regenerates it instead of storing it (the low-memory dropout of Triton's tutorial).

Decision rule (identical on every backend, bit for bit): with ``t = round(p * 2**32)``, element i
is kept when its 32-bit word ``w >= t``, i.e. with probability ``1 - t / 2**32`` (``p`` quantized to
2**-32). A kept element is ``x * scale`` (one multiply in x's dtype); a dropped one is exactly
``+0.0`` (a select: a dropped inf or NaN gives 0, never NaN).

Conventions (Srivastava et al., JMLR 2014, for classic; inverted is what PyTorch, JAX and Keras do):

==========  =========================  ====================
mode        training                   inference
==========  =========================  ====================
inverted    ``x * m / (1 - p)``        ``x``
classic     ``x * m``                  ``x * (1 - p)``
==========  =========================  ====================
"""
import math

import numpy as np

from . import _arrays, _dispatch, _half, _registry
from ._dispatch import flat
from ._scalars import typed
from .random import Generator

MODES = ("inverted", "classic")
_TWO32 = 1 << 32
_U64 = 1 << 64


class DropoutState:
    """What a dropout-family forward call drew: enough to regenerate its mask in backward.

    Returned by ``dropout``, ``channel_dropout`` and ``drop_path`` with ``return_state=True``;
    ``op`` is the function's name, ``axis`` the channel axis (``channel_dropout``), ``options``
    the op's other keyword arguments (``drop_block``: block_size, layout, gamma_scale).
    """

    __slots__ = ("op", "p", "seed", "offset", "training", "mode", "axis", "options")

    def __init__(self, op, p, seed, offset, training, mode, axis, options=None):
        self.op, self.p, self.seed, self.offset = op, p, seed, offset
        self.training, self.mode, self.axis = training, mode, axis
        self.options = dict(options or {})

    def backward(self, grad_y, *, out=None, backend="auto"):
        """The gradient with respect to the forward's input: the same mask and scale.

        Parameters
        ----------
        grad_y : array_like, float32, float64, float16 or bfloat16
            Shaped like the forward's input.
        out, backend
            As in the forward.

        Returns
        -------
        array
            ``grad_y * m * scale``.
        """
        if self.op == "drop_block":
            from .dropblock import drop_block_backward
            return drop_block_backward(grad_y, self.p, seed=self.seed, offset=self.offset,
                                       training=self.training, out=out, backend=backend,
                                       **self.options)
        kw = dict(seed=self.seed, offset=self.offset, training=self.training, mode=self.mode,
                  out=out, backend=backend)
        if self.op == "dropout":
            return dropout_backward(grad_y, self.p, **kw)
        if self.op == "channel_dropout":
            return channel_dropout_backward(grad_y, self.p, axis=self.axis, **kw)
        return drop_path_backward(grad_y, self.p, **kw)

    def __repr__(self):
        return (f"DropoutState(op={self.op!r}, p={self.p}, seed={self.seed}, "
                f"offset={self.offset}, training={self.training}, mode={self.mode!r}, "
                f"axis={self.axis})")


def _threshold(p):
    """The integer drop threshold t in [0, 2**32] for probability p."""
    return min(int(math.floor(p * _TWO32 + 0.5)), _TWO32)


def _scale(p, training, mode):
    if training:
        return 1.0 / (1.0 - p) if mode == "inverted" and p < 1.0 else 1.0
    return 1.0 if mode == "inverted" else 1.0 - p


def _result(result, out):
    """``out`` itself when given (also when it was viewed through NumPy), else the result."""
    return result if out is None else out


def _common(p, seed, offset, mode, training, backward=False):
    """Checked (p, seed, offset, training); a Generator ``seed`` stays a Generator (its range is
    taken by ``_draw`` once the size is known and every other check has passed)."""
    p = _arrays.check_probability(p)
    if isinstance(seed, Generator):
        if backward:
            raise TypeError("seed of a backward call must be the forward's integer seed (with "
                            "its offset), not a Generator: a Generator would hand out a new "
                            "range; use the state returned by the forward with "
                            "return_state=True")
        if offset not in (None, 0):
            raise ValueError("offset must not be given with a Generator as seed: the generator "
                             f"owns the position (got offset={offset!r})")
    else:
        seed = _arrays.check_uint64(seed, "seed")
        offset = _arrays.check_uint64(offset, "offset")
    _arrays.check_choice(mode, "mode", MODES)
    training = _arrays.check_bool(training, "training")
    return p, seed, offset, training


def _prepare(x, out, backend, name="x"):
    """Validate x and out before any work is done; return (job, x for the kernels, its
    description (shape, dtype, size), out array)."""
    arr = _arrays.describe(x, name)
    _arrays.check_float(arr, name, True)  # 16-bit too
    backend = _dispatch.resolve(backend, x, out)
    if arr is x:  # a plain ndarray: on the host
        return (_dispatch.job(backend, True), arr, arr,
                _arrays.check_out(out, "out", arr.shape, arr.dtype, (arr,), False))
    device_in = _arrays.is_device(x)
    out_arr = _arrays.check_out(out, "out", arr.shape, arr.dtype, [x if device_in else arr],
                                device_in)
    return _dispatch.job(backend, not device_in), (x if device_in else arr), arr, out_arr


def _draw(seed, offset, count, training):
    """(seed, offset) as ints: a Generator hands out ``count`` words (none at inference)."""
    if isinstance(seed, Generator):
        return seed.seed, (seed.take(count) if training else seed.position)
    _arrays.check_counter_range(offset, count)
    return seed, offset


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _fast_accepts(x, p, seed, offset, training, mode, out, draws):
    """Whether a host call takes a short path: float32/float64 C-contiguous x, an int seed and
    offset (the ``draws`` words in range), a float p whose threshold is below 2**32, out None
    or a plain C-contiguous writable ndarray that is x or shares no memory with it. As
    batchnorm._fast_forward: every condition is one the general path checks, tested only in its
    accepting form (anything else, errors included, takes the general path, which raises)."""
    dtype = x.dtype
    # p * 2**32 + 0.5 < 2**32: the threshold (_threshold) fits a uint32; a p within 2**-33 of 1
    # rounds to 2**32 (everything dropped), which only the general path handles
    if not ((dtype is _F32 or dtype is _F64) and type(p) is float and 0.0 <= p
            and p * _TWO32 + 0.5 < _TWO32
            and type(seed) is int and type(offset) is int and 0 <= seed < _U64
            and 0 <= offset and offset + draws <= _U64 and (training is True or training is False)
            and type(mode) is str and (mode == "inverted" or mode == "classic")
            and x.flags.c_contiguous):
        return False
    return out is None or _arrays.plain_out(out, x, (x,))


def _fast_elementwise(x, p, seed, offset, training, mode, out, backend):
    """_elementwise's common host call (see _fast_accepts), or None to take the general path."""
    n = x.size
    if n == 0 or not _fast_accepts(x, p, seed, offset, training, mode, out, n):
        return None
    backend = _dispatch.resolve(backend, x)
    if backend == "cuda":
        return None
    dtype = x.dtype
    res = np.empty(x.shape, dtype) if out is None else out
    _dispatch.host_op(backend, "dropout")(x.reshape(-1), seed, offset,
                                          _threshold(p) if training else 0,
                                          typed(dtype, _scale(p, training, mode)),
                                          res.reshape(-1))
    return res, ("dropout", p, seed, offset, training, mode, None)


def _fast_grouped(x, p, seed, offset, training, mode, out, backend, axis):
    """_grouped's common host call (see _fast_accepts; axis None or an int naming a channel
    axis), or None to take the general path."""
    shape = x.shape
    nd = len(shape)
    if axis is None:
        if nd < 1:
            return None
        c, m1, m2 = 1, 1, math.prod(shape[1:])
    else:
        if type(axis) is not int or nd < 2:
            return None
        ax = axis + nd if axis < 0 else axis
        if not 1 <= ax < nd:
            return None
        c, m1, m2 = shape[ax], math.prod(shape[1:ax]), math.prod(shape[ax + 1:])
    groups = shape[0] * c
    if x.size == 0 or not _fast_accepts(x, p, seed, offset, training, mode, out, groups):
        return None
    backend = _dispatch.resolve(backend, x)
    if backend == "cuda":
        return None
    dtype = x.dtype
    res = np.empty(shape, dtype) if out is None else out
    keep = np.empty(groups, np.uint8)
    _dispatch.host_op(backend, "dropout_mask")(seed, offset, _threshold(p) if training else 0,
                                               keep)
    dims = (shape[0], m1, c, m2)
    _dispatch.host_op(backend, "group_dropout")(x.reshape(dims), keep.reshape(shape[0], c),
                                                typed(dtype, _scale(p, training, mode)),
                                                res.reshape(dims))
    kind = "drop_path" if axis is None else "channel_dropout"
    return res, (kind, p, seed, offset, training, mode, axis)


def _elementwise(x, p, seed, offset, training, mode, out, backend, name, backward=False):
    if type(x) is np.ndarray:
        fast = _fast_elementwise(x, p, seed, offset, training, mode, out, backend)
        if fast is not None:
            return fast
    p, seed, offset, training = _common(p, seed, offset, mode, training, backward)
    job, xa, info, out_arr = _prepare(x, out, backend, name)
    n = info.size
    seed, offset = _draw(seed, offset, n, training)
    t = _threshold(p) if training else 0
    dtype = info.dtype
    if dtype.itemsize == 2:  # float16/bfloat16 (checked): float32 math, rounded (_half.py)
        # (a separate function: a lambda here would turn this function's locals into closure
        # cells, about 1 us per call on the float32 path)
        y = _elementwise_half(job, xa, out_arr, dtype, seed, offset, t,
                              np.float32(_scale(p, training, mode)))
        return _result(y, out), ("dropout", p, seed, offset, training, mode, None)
    scale = typed(dtype, _scale(p, training, mode))   # cached: np.float32(x) costs ~2 us
    xc = job.contig(xa)
    res = job.target(out_arr, info.shape, dtype)
    if n:
        if t >= _TWO32:  # p == 1: everything dropped; one all-dropped group gives exact zeros
            keep = np.zeros((1, 1), np.uint8)
            job.op("group_dropout")(xc.reshape(1, 1, 1, n), job.contig(keep), scale,
                                    res.reshape(1, 1, 1, n))
        else:
            job.op("dropout")(flat(xc), seed, offset, t, scale, flat(res))
    return _result(job.finish(res, out_arr), out), ("dropout", p, seed, offset, training, mode,
                                                    None)


def _elementwise_half(job, xa, out_arr, dtype, seed, offset, t, scale):
    fused = _half.fused(job, "dropout_half")
    if fused is not None and t < _TWO32:  # one pass, the same bits (fastreg/_half.py)
        kind = _arrays.half_kind(dtype)
        return _half.elementwise_fused(
            job, xa, out_arr, dtype, lambda xb, res: fused(xb, kind, seed, offset, t, scale, res))
    return _half.elementwise(job, xa, out_arr, dtype,
                             lambda x32: _dropout_kernels(job, x32, seed, offset, t, scale, x32))


def _dropout_kernels(job, xc, seed, offset, t, scale, res):
    """Element-wise dropout of a non-empty kernel-ready xc into res (res may be xc): the
    float32 path above, for the 16-bit staging."""
    n = xc.size
    if t >= _TWO32:
        keep = np.zeros((1, 1), np.uint8)
        job.op("group_dropout")(xc.reshape(1, 1, 1, n), job.contig(keep), scale,
                                res.reshape(1, 1, 1, n))
    else:
        job.op("dropout")(flat(xc), seed, offset, t, scale, flat(res))


def dropout(x, p=0.5, *, seed, offset=0, training=True, mode="inverted", out=None,
            backend="auto", return_state=False):
    """Element-wise dropout with a counter-based (Philox4x32-10) mask.

    Parameters
    ----------
    x : array_like, float32, float64, float16 or bfloat16
        Input of any shape (empty included). Host arrays: anything NumPy views without copying
        (buffer protocol, ``__array_interface__``, DLPack); a non-contiguous input is copied to a
        contiguous one first. Device arrays (``__cuda_array_interface__``: Numba, CuPy, torch
        CUDA) run on the CUDA backend in place, zero-copy; they must be C-contiguous.
    p : float
        Probability of dropping an element, in [0, 1]. ``p = 0`` is the identity (times the
        mode's scale), ``p = 1`` gives exact zeros.
    seed : int or fastreg.random.Generator
        Key of the random stream, in [0, 2**64). A ``Generator`` hands out the next ``x.size``
        words (none at inference) and owns the offset: leave ``offset`` out.
    offset : int
        Position in the stream of element 0, in [0, 2**64); element i uses word ``offset + i``.
        A training loop advances it by ``x.size`` per call so that no draw repeats.
    training : bool
        Training (random mask) or inference (deterministic scaling: the identity in
        "inverted" mode, a multiplication by 1 - p in "classic" mode).
        ``True``/``False`` or a NumPy bool; an int (0 and 1 included) is a TypeError, as in
        torch and in every fastreg function that takes ``training``.
    mode : {"inverted", "classic"}
        Where the 1 / (1 - p) correction goes: at training ("inverted") or inference
        ("classic", multiply by 1 - p).
    out : array, optional
        Where to write the result: same shape and dtype as x, on the same device. ``out=x`` works
        in place; any other overlap with x is refused.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        "auto": "cuda" for device arrays, else FASTREG_BACKEND or the fastest available host
        backend (c, then cpu, then numpy).
    return_state : bool
        Also return a ``DropoutState`` holding the call's p, seed, offset, training and mode:
        ``state.backward(grad_y)`` then regenerates exactly this mask (the parameters of forward
        and backward cannot disagree).

    Returns
    -------
    array
        The result: ``out`` when given, else a new array on x's device (always a new array,
        also at inference). ``(array, DropoutState)`` with ``return_state=True``.

    Raises
    ------
    TypeError
        x not float32, float64, float16 or bfloat16 (integers, bool, complex), or p/training
        of the wrong type.
    ValueError
        p outside [0, 1] or NaN; seed or offset not an integer in [0, 2**64) or offset + x.size
        beyond 2**64; mode unknown; out of the wrong shape, dtype or device, read-only, or
        overlapping x without being x.

    Notes
    -----
    Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, "Dropout: a simple way to prevent
    neural networks from overfitting", JMLR 15, 2014. The mask is a pure function of
    ``(seed, offset + i)``; see ``fastreg.dropout_mask`` to materialize it.
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(dropout, locals())) is not _dispatch.NOT_TORCH:
            return r
    return_state = _arrays.check_bool(return_state, "return_state")
    y, state = _elementwise(x, p, seed, offset, training, mode, out, backend, "x")
    return (y, DropoutState(*state)) if return_state else y


def dropout_backward(grad_y, p=0.5, *, seed, offset=0, training=True, mode="inverted", out=None,
                     backend="auto"):
    """Gradient of ``dropout`` with respect to x, with the mask regenerated from (seed, offset).

    ``grad_x = grad_y * m * scale``, the same select and scale as the forward call with the same
    ``p, seed, offset, training, mode``; no mask is stored between forward and backward.

    Parameters
    ----------
    grad_y : array_like, float32, float64, float16 or bfloat16
        Gradient with respect to dropout's output.
    p, seed, offset, training, mode, out, backend
        As in ``fastreg.dropout``; they must be those of the forward call.

    Returns
    -------
    array
        ``grad_x``, shaped like grad_y (``out`` when given).

    Raises
    ------
    TypeError, ValueError
        As in ``fastreg.dropout``, for grad_y in place of x.
    """
    if type(grad_y) is not np.ndarray:
        if (r := _dispatch.torch_call(dropout_backward, locals())) is not _dispatch.NOT_TORCH:
            return r
    return _elementwise(grad_y, p, seed, offset, training, mode, out, backend, "grad_y", backward=True)[0]


def dropout_mask(shape, p=0.5, *, seed, offset=0, packed=True, backend="auto"):
    """The keep-mask that ``dropout`` uses for an array of ``shape`` with ``(seed, offset)``.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the array the mask is for.
    p, seed, offset
        As in ``fastreg.dropout``.
    packed : bool
        True: one bit per element, uint8 of shape ``(ceil(size / 8),)``, element ``8k + j`` in bit
        ``j`` of byte ``k`` (LSB first, ``np.unpackbits(m, count=size, bitorder="little")``
        unpacks it), 8x smaller than a bool mask; padding bits are 0. False: a bool array of
        ``shape``.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        "cuda" returns a device array.

    Returns
    -------
    ndarray (or device array)
        True / 1 where the element is kept.

    Raises
    ------
    ValueError
        Bad shape, p, seed or offset (see ``fastreg.dropout``).
    """
    shape = _arrays.check_shape(shape)
    p, seed, offset, _ = _common(p, seed, offset, "inverted", True)
    packed = _arrays.check_bool(packed, "packed")
    backend = _registry.resolve(backend)
    n = math.prod(shape)
    seed, offset = _draw(seed, offset, n, True)
    job = _dispatch.Job(backend, host_input=False)
    t = _threshold(p)
    size, dtype = (((n + 7) // 8,), np.uint8) if packed else ((n,), np.bool_)
    if t >= _TWO32 or n == 0:  # p == 1: nothing is kept
        return job.zeros(size, dtype).reshape(size if packed else shape)
    res = job.empty(size, dtype)
    if packed:
        job.op("dropout_mask_packed")(seed, offset, t, n, res)
        return res
    job.op("dropout_mask")(seed, offset, t, res)
    return res.reshape(shape)


def _grouped(x, p, seed, offset, training, mode, out, backend, name, axis, backward=False):
    """Dropout with one draw per group: per (sample, channel) for ``axis`` an int, per sample for
    ``axis=None``. Group (n, c) uses stream word ``offset + n * C + c``."""
    if type(x) is np.ndarray:
        fast = _fast_grouped(x, p, seed, offset, training, mode, out, backend, axis)
        if fast is not None:
            return fast
    p, seed, offset, training = _common(p, seed, offset, mode, training, backward)
    job, xa, info, out_arr = _prepare(x, out, backend, name)
    shape = tuple(info.shape)
    if axis is None:
        if len(shape) < 1:
            raise ValueError(f"{name} must have a sample axis (ndim >= 1), got a 0-d array")
        c, m1, m2 = 1, 1, math.prod(shape[1:])
    else:
        if len(shape) < 2:
            raise ValueError(f"{name} must have a sample axis and a channel axis (ndim >= 2), "
                             f"got shape {shape}")
        axis = _arrays.check_int(axis, "axis")
        ax = axis + len(shape) if axis < 0 else axis
        if not 1 <= ax < len(shape):
            raise ValueError(f"axis must name a channel axis in [1, {len(shape)}) or "
                             f"[-{len(shape) - 1}, -1] (axis 0 is the sample axis), got {axis}")
        c, m1, m2 = shape[ax], math.prod(shape[1:ax]), math.prod(shape[ax + 1:])
    nsamples = shape[0]
    groups = nsamples * c
    seed, offset = _draw(seed, offset, groups, training)
    t = _threshold(p) if training else 0
    dtype = info.dtype
    kind = "drop_path" if axis is None else "channel_dropout"
    if dtype.itemsize == 2:  # float16/bfloat16 (checked): float32 math, rounded (_half.py)
        args = (seed, offset, t, groups, (nsamples, m1, c, m2))
        y = _grouped_half(job, xa, out_arr, dtype, np.float32(_scale(p, training, mode)), args)
        return _result(y, out), (kind, p, seed, offset, training, mode, axis)
    xc = job.contig(xa)
    res = job.target(out_arr, shape, dtype)
    if math.prod(shape):
        _group_kernels(job, xc, typed(dtype, _scale(p, training, mode)), res, seed, offset, t,
                       groups, (nsamples, m1, c, m2))
    return _result(job.finish(res, out_arr), out), (kind, p, seed, offset, training, mode, axis)


def _grouped_half(job, xa, out_arr, dtype, scale, args):
    return _half.elementwise(job, xa, out_arr, dtype,
                             lambda x32: _group_kernels(job, x32, scale, x32, *args))


def _group_kernels(job, xc, scale, res, seed, offset, t, groups, dims):
    """Group dropout of a non-empty kernel-ready xc into res (res may be xc)."""
    if t >= _TWO32:
        keep = job.zeros((groups,), np.uint8)
    else:
        keep = job.empty((groups,), np.uint8)
        job.op("dropout_mask")(seed, offset, t, keep)
    job.op("group_dropout")(xc.reshape(dims), keep.reshape(dims[0], dims[2]), scale,
                            res.reshape(dims))


def channel_dropout(x, p=0.5, *, seed, offset=0, axis=1, training=True, mode="inverted",
                    out=None, backend="auto", return_state=False):
    """Channel dropout (``Dropout1d/2d/3d``): whole channels of a sample are kept or dropped.

    One draw per (sample, channel), shared over every other axis; the sample axis is 0 and the
    channel axis is ``axis`` (1 for NCHW / NCL, -1 for channels-last NHWC). Channel ``c`` of sample
    ``n`` uses stream word ``offset + n * C + c``, so a call consumes ``N * C`` words.

    Parameters
    ----------
    x : array_like, float32, float64, float16 or bfloat16, ndim >= 2
        ``(N, C, ...)`` or channels-last ``(N, ..., C)``.
    p, seed, offset, training, mode, out, backend, return_state
        As in ``fastreg.dropout`` (the state's ``backward`` is ``channel_dropout_backward``).
    axis : int
        The channel axis (not 0).

    Returns
    -------
    array
        ``x`` with dropped channels zeroed and kept ones scaled as ``mode`` says;
        ``(array, DropoutState)`` with ``return_state=True``.

    Raises
    ------
    TypeError, ValueError
        As in ``fastreg.dropout``; ValueError also for ndim < 2 or axis 0 / out of range.

    Notes
    -----
    Tompson, Goroshin, Jain, LeCun & Bregler, "Efficient object localization using convolutional
    networks", CVPR 2015 (SpatialDropout).
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(channel_dropout, locals())) is not _dispatch.NOT_TORCH:
            return r
    return_state = _arrays.check_bool(return_state, "return_state")
    y, state = _grouped(x, p, seed, offset, training, mode, out, backend, "x", axis)
    return (y, DropoutState(*state)) if return_state else y


def channel_dropout_backward(grad_y, p=0.5, *, seed, offset=0, axis=1, training=True,
                             mode="inverted", out=None, backend="auto"):
    """Gradient of ``channel_dropout``, mask regenerated from (seed, offset).

    Parameters
    ----------
    grad_y : array_like, float32, float64, float16 or bfloat16
        Gradient with respect to channel_dropout's output.
    p, seed, offset, axis, training, mode, out, backend
        Those of the forward call.

    Returns
    -------
    array
        ``grad_x``.
    """
    if type(grad_y) is not np.ndarray:
        r = _dispatch.torch_call(channel_dropout_backward, locals())
        if r is not _dispatch.NOT_TORCH:
            return r
    return _grouped(grad_y, p, seed, offset, training, mode, out, backend, "grad_y", axis, backward=True)[0]


def drop_path(x, p=0.5, *, seed, offset=0, training=True, mode="inverted", out=None,
              backend="auto", return_state=False):
    """Drop path / stochastic depth: each sample (axis 0) is kept or zeroed as a whole.

    Sample ``n`` uses stream word ``offset + n``. With ``mode="inverted"`` kept samples are scaled
    by 1 / (1 - p) (timm's ``scale_by_keep=True``); "classic" scales at inference instead.

    Parameters
    ----------
    x : array_like, float32, float64, float16 or bfloat16, ndim >= 1
        A batch, sample axis first (typically a residual branch's output).
    p, seed, offset, training, mode, out, backend, return_state
        As in ``fastreg.dropout`` (the state's ``backward`` is ``drop_path_backward``).

    Returns
    -------
    array
        ``x`` with dropped samples zeroed; ``(array, DropoutState)`` with
        ``return_state=True``.

    Raises
    ------
    TypeError, ValueError
        As in ``fastreg.dropout``; ValueError also for ndim < 1.

    Notes
    -----
    Huang, Sun, Liu, Sedra & Weinberger, "Deep networks with stochastic depth", ECCV 2016.
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(drop_path, locals())) is not _dispatch.NOT_TORCH:
            return r
    return_state = _arrays.check_bool(return_state, "return_state")
    y, state = _grouped(x, p, seed, offset, training, mode, out, backend, "x", None)
    return (y, DropoutState(*state)) if return_state else y


def drop_path_backward(grad_y, p=0.5, *, seed, offset=0, training=True, mode="inverted",
                       out=None, backend="auto"):
    """Gradient of ``drop_path``, mask regenerated from (seed, offset).

    Parameters
    ----------
    grad_y : array_like, float32, float64, float16 or bfloat16
        Gradient with respect to drop_path's output.
    p, seed, offset, training, mode, out, backend
        Those of the forward call.

    Returns
    -------
    array
        ``grad_x``.
    """
    if type(grad_y) is not np.ndarray:
        if (r := _dispatch.torch_call(drop_path_backward, locals())) is not _dispatch.NOT_TORCH:
            return r
    return _grouped(grad_y, p, seed, offset, training, mode, out, backend, "grad_y", None, backward=True)[0]
