"""DropBlock: contiguous square blocks of a feature map dropped together (Ghiasi et al. 2018).

Counter-based like ``fastreg.dropout``: seed position (n, c, h, w) of a call with
``(seed, offset)`` is decided by Philox stream word ``offset + ((n * C + c) * H + h) * W + w``
alone (the logical channels-first index, in either layout), so the mask never depends on the
backend, the thread count or the memory layout, and backward regenerates it instead of storing
it. fastreg/reference/dropblock.py has the exact definition.

Seed rate and normalization as timm's ``drop_block_fast_2d``::

    k     = min(block_size, H, W)                          # clipped block size
    gamma = gamma_scale * p * (W * H) / k**2 / ((W - block_size + 1) * (H - block_size + 1))
    t     = min(round(gamma * 2**32), 2**32)               # a seed: word < t
    y     = x * keep * (numel / kept)                      # kept: elements not dropped, whole batch
"""
import math

import numpy as np

from . import _arrays, _dispatch, _half
from ._dispatch import flat
from .dropout import DropoutState, _common, _draw
from .random import Generator

LAYOUTS = ("NCHW", "NHWC")
_TWO32 = 1 << 32


def _check_layout(layout):
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout.upper()


def _check_block_size(block_size):
    block_size = _arrays.check_int(block_size, "block_size")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return block_size


def gamma(p, block_size, height, width, gamma_scale=1.0):
    """The seed rate of timm's ``drop_block_fast_2d`` (float64, its order of operations).

    Parameters
    ----------
    p : float
        Drop probability in [0, 1].
    block_size : int
        Block side (>= 1).
    height, width : int
        The feature map (>= 1 each).
    gamma_scale : float
        Factor on the rate (finite, >= 0).

    Returns
    -------
    float
        ``gamma_scale * p * W * H / k**2 / ((W - block_size + 1) * (H - block_size + 1))`` with
        ``k = min(block_size, H, W)``; it may exceed 1 (``drop_block`` then seeds everywhere).

    Raises
    ------
    ValueError
        When ``(W - block_size + 1) * (H - block_size + 1) <= 0``: the rate is undefined or
        negative there (timm divides by zero or draws with a negative probability).
    """
    p = _arrays.check_probability(p)
    block_size = _check_block_size(block_size)
    gamma_scale = _arrays.check_nonneg(gamma_scale, "gamma_scale")
    for v, name in ((height, "height"), (width, "width")):
        if _arrays.check_int(v, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    return _gamma(p, block_size, int(height), int(width), gamma_scale)


def _gamma(p, block_size, h, w, gamma_scale):
    places = (w - block_size + 1) * (h - block_size + 1)
    if places <= 0:
        raise ValueError(
            f"block_size={block_size} does not fit the {h}x{w} feature map: timm's seed rate "
            f"divides by (W - block_size + 1) * (H - block_size + 1) = {places}; use a "
            f"block_size of at most min(H, W) = {min(h, w)}")
    k = min(block_size, w, h)
    return gamma_scale * p * (w * h) / k ** 2 / places


def _threshold(g):
    """The integer seed threshold in [0, 2**32]: a position is a seed when its word is below."""
    return int(math.floor(min(g, 1.0) * _TWO32 + 0.5))   # g may be huge (gamma_scale)


def _run(x, p, block_size, seed, offset, training, layout, gamma_scale, out, backend, name,
         backward=False):
    p, seed, offset, training = _common(p, seed, offset, "inverted", training, backward)
    block_size = _check_block_size(block_size)
    layout = _check_layout(layout)
    gamma_scale = _arrays.check_nonneg(gamma_scale, "gamma_scale")
    arr = _arrays.describe(x, name)
    _arrays.check_float(arr, name, True)  # 16-bit too
    shape = tuple(arr.shape)
    if len(shape) != 4:
        raise ValueError(f"{name} must be a 4-D batch ({layout}), got shape {shape}")
    n, c, h, w = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
    size = math.prod(shape)
    if not isinstance(seed, Generator):
        _arrays.check_counter_range(offset, size)
    threshold = 0
    if training and h and w:
        threshold = _threshold(_gamma(p, block_size, h, w, gamma_scale))
    backend = _dispatch.resolve(backend, x, out)
    device_in = _arrays.is_device(x)
    job = _dispatch.job(backend, not device_in)
    xin = x if device_in else arr
    out_arr = _arrays.check_out(out, "out", shape, arr.dtype, [xin], device_in)
    dtype = np.dtype(arr.dtype)
    seed, offset = _draw(seed, offset, size, training)  # last: a refused call draws nothing
    if dtype.itemsize == 2:  # float16/bfloat16 (checked): float32 math, rounded (_half.py)
        args = (seed, offset, threshold, min(block_size, h, w), layout == "NHWC", size)
        result = _run_half(job, xin, out_arr, dtype, args)
    else:
        xc = job.contig(xin)
        res = job.target(out_arr, shape, dtype)
        if size:
            _kernels(job, xc, dtype.type, res, seed, offset, threshold, min(block_size, h, w),
                     layout == "NHWC", size)
        result = job.finish(res, out_arr)
    state = ("drop_block", p, seed, offset, training, "inverted", None,
             (("block_size", block_size), ("layout", layout), ("gamma_scale", gamma_scale)))
    return (result if out is None else out), state


def _run_half(job, xin, out_arr, dtype, args):
    # a function of its own: a lambda in _run would make _run's locals closure cells (slower
    # float32 calls)
    return _half.elementwise(job, xin, out_arr, dtype,
                             lambda x32: _kernels(job, x32, np.float32, x32, *args))


def _kernels(job, xc, ftype, res, seed, offset, threshold, block, channels_last, size):
    """DropBlock of a non-empty kernel-ready xc into res (res may be xc); ftype the type of the
    scale (the arrays' dtype, float32 for the 16-bit staging)."""
    if threshold == 0:  # inference, or no seed possible: the identity (a copy)
        job.op("dropout")(flat(xc), seed, offset, 0, ftype(1), flat(res))
    else:
        mask = job.empty(xc.shape, np.uint8)
        kept = job.op("drop_block_mask")(seed, offset, threshold, block, channels_last, mask)
        scale = ftype(size / kept if kept else 1)  # kept 0: all +0.0 anyway
        job.op("drop_block_apply")(flat(xc), flat(mask), scale, flat(res))


def drop_block(x, p=0.1, block_size=7, *, seed, offset=0, training=True, layout="NCHW",
               gamma_scale=1.0, out=None, backend="auto", return_state=False):
    """DropBlock with a counter-based (Philox4x32-10) seed mask.

    Parameters
    ----------
    x : array_like, float32, float64, float16 or bfloat16, 4-D
        A batch ``(N, C, H, W)`` (``layout="NCHW"``) or ``(N, H, W, C)`` (``"NHWC"``): host
        arrays (a non-contiguous one is copied first) or C-contiguous CUDA device arrays
        (backend "cuda", zero-copy).
    p : float
        Drop probability in [0, 1] (timm's ``drop_prob``): the seed rate ``gamma`` is chosen so
        that about a fraction p of an interior map is dropped.
    block_size : int
        Side of the square blocks (>= 1), clipped to ``min(H, W)``; odd sizes centre the block
        on its seed. ``(W - block_size + 1) * (H - block_size + 1)`` must be positive.
    seed : int or fastreg.random.Generator
        Key of the random stream, in [0, 2**64); a Generator hands out the call's ``x.size``
        words (none at inference) and owns the offset.
    offset : int
        Stream position of seed position (0, 0, 0, 0); a call uses ``x.size`` words, so a
        training loop advances it by ``x.size`` per call.
    training : bool
        False: the identity (a copy), as timm's module in eval mode.
    layout : {"NCHW", "NHWC"}
        Axis order of x. The mask follows the logical (n, c, h, w) index: an NHWC batch gets
        exactly the transposed result of the same batch in NCHW.
    gamma_scale : float
        Factor on the seed rate (timm's ``gamma_scale``), finite and >= 0.
    out : array, optional
        Result array: x's shape and dtype, on x's device; ``out=x`` works in place.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    return_state : bool
        Also return a ``DropoutState``: ``state.backward(grad_y)`` is ``drop_block_backward``
        with this call's parameters.

    Returns
    -------
    array
        ``x * keep * scale``: dropped elements exactly +0.0 (also inf and NaN), kept ones
        ``x * scale`` with ``scale = dtype(numel / kept)`` (kept counted exactly over the whole
        batch, as timm normalizes; all dropped: zeros). ``out`` when given, else a new array.

    Raises
    ------
    TypeError
        x not float32/float64, p / block_size / training of the wrong type.
    ValueError
        x not 4-D, p outside [0, 1], block_size < 1 or not fitting the map (see above),
        gamma_scale negative or not finite, unknown layout, seed/offset out of range or
        offset + x.size beyond 2**64, bad out.

    Notes
    -----
    Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks",
    NeurIPS 2018; the rate and normalization of timm's ``drop_block_fast_2d`` (seeds anywhere,
    blocks clipped at the edges). gamma above 1 seeds every position (timm raises there).
    Costs: one pass generating ``x.size`` stream words and the block mask (a temporary uint8
    array of x's shape), one pass applying it.
    """
    if type(x) is not np.ndarray:
        if (r := _dispatch.torch_call(drop_block, locals())) is not _dispatch.NOT_TORCH:
            return r
    return_state = _arrays.check_bool(return_state, "return_state")
    y, state = _run(x, p, block_size, seed, offset, training, layout, gamma_scale, out, backend,
                    "x")
    return (y, DropoutState(*state)) if return_state else y


def drop_block_backward(grad_y, p=0.1, block_size=7, *, seed, offset=0, training=True,
                        layout="NCHW", gamma_scale=1.0, out=None, backend="auto"):
    """Gradient of ``drop_block``, with the mask and its count regenerated from (seed, offset).

    ``grad_x = grad_y * keep * scale``: the same mask, select and scale as the forward call with
    the same arguments; nothing is stored between forward and backward.

    Parameters
    ----------
    grad_y : array_like, float32, float64, float16 or bfloat16, 4-D
        Gradient with respect to drop_block's output.
    p, block_size, seed, offset, training, layout, gamma_scale, out, backend
        Those of the forward call.

    Returns
    -------
    array
        ``grad_x``, shaped like grad_y (``out`` when given).

    Raises
    ------
    TypeError, ValueError
        As ``drop_block``, for grad_y in place of x.
    """
    if type(grad_y) is not np.ndarray:
        if (r := _dispatch.torch_call(drop_block_backward, locals())) is not _dispatch.NOT_TORCH:
            return r
    return _run(grad_y, p, block_size, seed, offset, training, layout, gamma_scale, out,
                backend, "grad_y", backward=True)[0]
