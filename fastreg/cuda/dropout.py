"""Dropout kernels on the GPU (Numba CUDA), bit for bit as fastreg.reference.dropout.

Element ``i`` is kept when word ``offset + i`` of the Philox stream is ``>= threshold``; a kept
element becomes ``x * scale`` (one multiply in x's dtype, no fastmath), a dropped one exactly +0.0
(a select: a dropped inf or NaN gives 0). The mask is never stored: backward regenerates it from
(seed, offset).

Each thread of the stream kernels computes one Philox block (4 stream words) and handles the up
to 4 elements those words belong to; the packed mask uses one thread per output byte (8 words, 2
Philox blocks, or 3 when ``offset`` is not a multiple of 4).
"""
import numpy as np
from numba import cuda

from .philox import (U1, U2, keep4_device, stream_block_device, split_seed, stream_layout,
                     launch_1d, launch_stream, to_device_args, finish, as_device)


@cuda.jit(device=True)
def dropout_one_device(x, out, i, n, w, threshold, scale):
    """out[i] = x[i] * scale if w >= threshold else +0.0, for 0 <= i < n."""
    if 0 <= i < n:
        if w >= threshold:
            out[i] = x[i] * scale
        else:
            out[i] = 0


@cuda.jit(device=True)
def mask_one_device(out, i, n, w, threshold):
    if 0 <= i < n:
        if w >= threshold:
            out[i] = 1
        else:
            out[i] = 0


@cuda.jit(cache=True)
def _dropout_kernel(x, seed_lo, seed_hi, first, skip, n, nblocks, threshold, scale, out):
    # Thread t: Philox block first + t, elements 4t - skip .. 4t - skip + 3. Each element is read
    # before it is written by the same thread, so out may be x.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        i0 = 4 * t - skip
        dropout_one_device(x, out, i0, n, w0, threshold, scale)
        dropout_one_device(x, out, i0 + 1, n, w1, threshold, scale)
        dropout_one_device(x, out, i0 + 2, n, w2, threshold, scale)
        dropout_one_device(x, out, i0 + 3, n, w3, threshold, scale)


@cuda.jit(cache=True)
def _dropout_mask_kernel(seed_lo, seed_hi, first, skip, n, nblocks, threshold, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        i0 = 4 * t - skip
        mask_one_device(out, i0, n, w0, threshold)
        mask_one_device(out, i0 + 1, n, w1, threshold)
        mask_one_device(out, i0 + 2, n, w2, threshold)
        mask_one_device(out, i0 + 3, n, w3, threshold)


@cuda.jit(cache=True)
def _dropout_mask_packed_kernel(seed_lo, seed_hi, first, skip, n, nbytes, threshold, out):
    # Thread k: byte k = elements 8k .. 8k + 7 = stream words offset + 8k .. offset + 8k + 7,
    # which start at word `skip` of block first + 2k and span 2 blocks, or 3 when skip > 0.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for k in range(start, nbytes, stride):
        b = first + U2 * np.uint64(k)
        a0, a1, a2, a3 = stream_block_device(seed_lo, seed_hi, b)
        c0, c1, c2, c3 = stream_block_device(seed_lo, seed_hi, b + U1)
        bits = keep4_device(a0, a1, a2, a3, threshold) | (keep4_device(c0, c1, c2, c3,
                                                                      threshold) << 4)
        if skip > 0:
            d0, d1, d2, d3 = stream_block_device(seed_lo, seed_hi, b + U2)
            bits |= keep4_device(d0, d1, d2, d3, threshold) << 8
        byte = (bits >> skip) & 0xFF
        rem = n - 8 * k
        if rem < 8:  # last byte: padding bits are 0
            byte &= (1 << rem) - 1
        out[k] = byte


@cuda.jit(cache=True)
def _group_dropout_kernel(x, keep, m1, c, m2, scale, out):
    # x, out flat views of (N, M1, C, M2); keep flat (N, C).
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    m1c = m1 * c
    for e in range(start, x.size, stride):
        r = e // m2
        kk = (r // m1c) * c + r % c
        if keep[kk] != 0:
            out[e] = x[e] * scale
        else:
            out[e] = 0


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def _threshold(threshold):
    return np.uint64(int(threshold))


def dropout(x, seed, offset, threshold, scale, out):
    """out[i] = x[i] * scale if word(offset + i) >= threshold else +0.0; out may be x.

    Parameters
    ----------
    x, out : device or host arrays (n,), the same float dtype
    seed, offset : int
        In [0, 2**64).
    threshold : int
        In [0, 2**32 - 1].
    scale : scalar
        Cast to x's dtype, so float32 stays float32.

    Returns
    -------
    None
    """
    (x_d,), out_d = to_device_args((x,), out)
    n = x_d.size
    if n == 0:
        return
    scale = np.dtype(x_d.dtype).type(scale)
    launch_stream(_dropout_kernel, seed, offset, n, lead=(x_d,),
                  tail=(_threshold(threshold), scale, out_d))
    finish(out, out_d)


def _u8_view(out):
    """A bool ``out`` seen as uint8 (same bytes), so one kernel serves both."""
    if np.dtype(out.dtype) != np.bool_:
        return out
    if not isinstance(out, np.ndarray):
        out = as_device(out)
    return out.view(np.uint8)


def dropout_mask(seed, offset, threshold, out):
    """out[i] = 1 where element i is kept, else 0.

    Parameters
    ----------
    seed, offset, threshold : int
    out : device or host array (n,), uint8 or bool

    Returns
    -------
    None
    """
    out = _u8_view(out)
    _, out_d = to_device_args((), out)
    n = out_d.size
    if n == 0:
        return
    launch_stream(_dropout_mask_kernel, seed, offset, n, tail=(_threshold(threshold), out_d))
    finish(out, out_d)


def dropout_mask_packed(seed, offset, threshold, n, out):
    """Keep bits of n elements packed LSB first: bit j of out[k] is element 8k + j; pad bits 0.

    Parameters
    ----------
    seed, offset, threshold : int
    n : int
        Number of elements.
    out : device or host array, uint8 (ceil(n / 8),)

    Returns
    -------
    None
    """
    _, out_d = to_device_args((), out)
    nbytes = out_d.size
    if nbytes == 0:
        return
    first, skip, _ = stream_layout(offset, 0)
    lo, hi = split_seed(seed)
    launch_1d(_dropout_mask_packed_kernel, nbytes, lo, hi, first, skip, np.int64(n),
              np.int64(nbytes), _threshold(threshold), out_d)
    finish(out, out_d)


def group_dropout(x, keep, scale, out):
    """out = keep[n, c] ? x * scale : +0.0 on x, out of shape (N, M1, C, M2); keep (N, C).

    Parameters
    ----------
    x, out : device or host arrays (N, M1, C, M2), the same float dtype; out may be x
    keep : device or host array (N, C), uint8 (or bool)
    scale : scalar
        Cast to x's dtype.

    Returns
    -------
    None
    """
    keep = _u8_view(keep)
    (x_d, keep_d), out_d = to_device_args((x, keep), out)
    shape = tuple(x_d.shape)
    if x_d.size == 0:
        return
    _, m1, c, m2 = shape
    scale = np.dtype(x_d.dtype).type(scale)
    launch_1d(_group_dropout_kernel, x_d.size, x_d.reshape(-1), keep_d.reshape(-1),
              np.int64(m1), np.int64(c), np.int64(m2), scale, out_d.reshape(-1))
    finish(out, out_d)
