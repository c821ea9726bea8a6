"""DropBlock in plain NumPy: the oracle for every backend's DropBlock kernels.

Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks", NeurIPS 2018,
with the seed rate and normalization of timm's ``drop_block_fast_2d`` (seeds anywhere in the
map, blocks clipped at its edges).

Definition (identical on every backend, bit for bit)
----------------------------------------------------
A batch has N samples, C channels and an H x W map; ``k`` is the clipped block size
``min(block_size, H, W)`` and ``threshold`` an integer in [0, 2**32] (``fastreg.drop_block``
computes both from p, block_size and gamma_scale).

1. Seeds. Position (n, c, h, w) is a seed when stream word

       offset + ((n * C + c) * H + h) * W + w

   of the Philox stream for ``seed`` (fastreg.reference.philox) is ``< threshold``. The index
   is the logical channels-first one whatever the memory layout, so an NHWC batch gets the
   transposed mask of the same batch in NCHW; a call uses N * C * H * W words.
2. Blocks. Element (n, c, i, j) is dropped when a seed (n, c, a, b) lies in the window
   ``i - k // 2 <= a <= i + (k - 1) // 2`` and ``j - k // 2 <= b <= j + (k - 1) // 2`` (seeds
   outside the map do not exist). This is the max-pooling of the seed map with a k x k window,
   stride 1 and padding k // 2 (torch's ``max_pool2d``), keeping its first H x W outputs: the
   whole output for odd k; for even k timm's shapes would not match, and these are the rows
   and columns it would align with the input.
3. Count. ``kept`` = the number of elements of the whole batch (all samples and channels) not
   dropped: an exact integer on every backend.

``drop_block_apply`` then writes ``x * scale`` (one multiply in x's dtype) where kept and
exactly +0.0 where dropped (a select: a dropped inf or NaN gives 0), as dropout does;
``fastreg.drop_block`` passes ``scale = dtype(numel / kept)``.

Kernel contract (registered in fastreg._registry)
-------------------------------------------------
    drop_block_mask(seed, offset, threshold, block, channels_last, mask) -> kept
        mask uint8 4-D, C-contiguous: (N, C, H, W), or (N, H, W, C) when channels_last;
        mask = 1 where kept, 0 where dropped; returns kept (a Python int). ``block`` is k
        (1 <= k <= min(H, W)); threshold a Python int in [0, 2**32] (2**32: every position is
        a seed).
    drop_block_apply(x, mask, scale, out)
        x, out (n,) float32 or float64, mask uint8 (n,): out = where(mask, x * scale, +0.0);
        out may be x.
"""
import numpy as np

from .philox import stream_words


def _dilate(hit, k, axis):
    """OR of ``hit`` over the window ``[i - k // 2, i + (k - 1) // 2]`` along ``axis`` (clipped
    to the array), through a cumulative count."""
    n = hit.shape[axis]
    csum = np.cumsum(hit, axis=axis, dtype=np.int64)
    zero = np.zeros_like(np.take(csum, [0], axis=axis))
    csum = np.concatenate([zero, csum], axis=axis)          # csum[i] = hits in [0, i)
    i = np.arange(n)
    lo = np.clip(i - k // 2, 0, n)
    hi = np.clip(i + (k - 1) // 2 + 1, 0, n)
    return (np.take(csum, hi, axis=axis) - np.take(csum, lo, axis=axis)) > 0


def block_keep(seed, offset, threshold, block, shape):
    """The keep mask (bool, logical shape (N, C, H, W)) of the definition above."""
    n, c, h, w = shape
    words = stream_words(seed, offset, n * c * h * w).reshape(n, c, h, w)
    seeds = words.astype(np.uint64) < np.uint64(threshold)
    dropped = _dilate(_dilate(seeds, block, axis=3), block, axis=2)
    return ~dropped


def drop_block_mask(seed, offset, threshold, block, channels_last, mask):
    """mask = 1 where kept (in mask's layout); returns the number of kept elements."""
    if channels_last:
        n, h, w, c = mask.shape
    else:
        n, c, h, w = mask.shape
    if mask.size == 0:
        return 0
    keep = block_keep(seed, offset, threshold, block, (n, c, h, w))
    mask[...] = keep.transpose(0, 2, 3, 1) if channels_last else keep
    return int(np.count_nonzero(keep))


def drop_block_apply(x, mask, scale, out):
    """out = where(mask, x * scale, +0.0) on 1-D contiguous x, mask and out (out may be x)."""
    out[...] = np.where(mask.astype(bool), x * x.dtype.type(scale), x.dtype.type(0))
