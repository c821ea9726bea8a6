"""DropBlock kernels on the GPU (Numba CUDA), bit for bit as fastreg.reference.dropblock.

Three grid-stride passes, no shared memory and no block synchronization:

1. seeds: one thread per Philox block (4 stream words) writes the seed flags of its positions
   (a flat (N * C * H * W,) uint8 array in the logical channels-first order);
2. reach: one thread per position marks whether a seed lies in its row window;
3. mask: one thread per element (in the mask's own layout) looks down its column window of the
   reach flags, writes keep, and adds its thread's kept count to a 64-bit counter with one
   atomic add at the end (integers: exact in any order).

``drop_block_apply`` is dropout's select: x * scale (one multiply, no fastmath) or exactly +0.0.
"""
import numpy as np
from numba import cuda

from .philox import (finish, launch_1d, launch_stream, stream_block_device, to_device_args,
                     dev_out, empty, to_device)

__all__ = ["drop_block_mask", "drop_block_apply"]


@cuda.jit(device=True)
def seed_one_device(out, i, n, w, threshold):
    if 0 <= i < n:
        if w < threshold:
            out[i] = 1
        else:
            out[i] = 0


@cuda.jit(cache=True)
def _seeds_kernel(seed_lo, seed_hi, first, skip, n, nblocks, threshold, out):
    # Thread t: Philox block first + t, positions 4t - skip .. 4t - skip + 3.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        i0 = 4 * t - skip
        seed_one_device(out, i0, n, w0, threshold)
        seed_one_device(out, i0 + 1, n, w1, threshold)
        seed_one_device(out, i0 + 2, n, w2, threshold)
        seed_one_device(out, i0 + 3, n, w3, threshold)


@cuda.jit(cache=True)
def _reach_kernel(seeds, w, left, right, reach):
    # reach[e] = 1 when a seed lies in columns [j - left, j + right] of e's row
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, seeds.size, stride):
        j = e % w
        row = e - j
        lo = max(j - left, 0)
        hi = min(j + right, w - 1)
        hit = 0
        for b in range(lo, hi + 1):
            hit |= seeds[row + b]
        reach[e] = hit


@cuda.jit(cache=True)
def _mask_kernel(reach, c, h, w, left, right, channels_last, mask, kept):
    # mask flat, in its layout; reach flat (N, C, H, W)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    local = np.int64(0)
    for e in range(start, mask.size, stride):
        if channels_last:
            ch = e % c
            q = e // c
            j = q % w
            q = q // w
            i = q % h
            n = q // h
        else:
            j = e % w
            q = e // w
            i = q % h
            q = q // h
            ch = q % c
            n = q // c
        base = ((n * c + ch) * h) * w + j
        lo = max(i - left, 0)
        hi = min(i + right, h - 1)
        hit = 0
        for a in range(lo, hi + 1):
            hit |= reach[base + a * w]
        if hit == 0:
            mask[e] = 1
            local += 1
        else:
            mask[e] = 0
    if local != 0:
        cuda.atomic.add(kept, 0, local)


@cuda.jit(cache=True)
def _apply_kernel(x, mask, scale, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.size, stride):
        if mask[i] != 0:
            out[i] = x[i] * scale
        else:
            out[i] = 0


def drop_block_mask(seed, offset, threshold, block, channels_last, mask):
    """mask = 1 where kept (see fastreg.reference.dropblock); returns the kept count.

    Parameters
    ----------
    seed, offset : int
        In [0, 2**64).
    threshold : int
        In [0, 2**32]: a position is a seed when its word is below it.
    block : int
        The clipped block size, in [1, min(H, W)].
    channels_last : bool
        mask is (N, H, W, C) rather than (N, C, H, W).
    mask : device or host array, uint8, 4-D

    Returns
    -------
    int
        The number of kept elements.
    """
    if channels_last:
        n, h, w, c = mask.shape
    else:
        n, c, h, w = mask.shape
    size = n * c * h * w
    if size == 0:
        return 0
    mask_d = dev_out(mask)
    seeds = empty((size,), np.uint8)
    reach = empty((size,), np.uint8)
    kept = to_device(np.zeros(1, np.int64))
    launch_stream(_seeds_kernel, seed, offset, size, tail=(np.uint64(int(threshold)), seeds))
    left, right = np.int64(block // 2), np.int64((block - 1) // 2)
    launch_1d(_reach_kernel, size, seeds, np.int64(w), left, right, reach)
    launch_1d(_mask_kernel, size, reach, np.int64(c), np.int64(h), np.int64(w), left, right,
              bool(channels_last), mask_d.reshape(-1), kept)
    finish(mask, mask_d)
    return int(kept.copy_to_host()[0])


def drop_block_apply(x, mask, scale, out):
    """out = mask ? x * scale : +0.0 on 1-D x, mask (uint8) and out (out may be x).

    Parameters
    ----------
    x, out : device or host arrays (n,), the same float dtype
    mask : device or host array (n,), uint8
    scale : scalar
        Cast to x's dtype.

    Returns
    -------
    None
    """
    (x_d, m_d), out_d = to_device_args((x, mask), out)
    if x_d.size == 0:
        return
    scale = np.dtype(x_d.dtype).type(scale)
    launch_1d(_apply_kernel, x_d.size, x_d, m_d, scale, out_d)
    finish(out, out_d)
