"""DropBlock kernels on the CPU with Numba (definition in fastreg/reference/dropblock.py).

The mask kernel runs one task per (sample, channel) plane: the plane's H * W stream words (in
blocks of CHUNK, see fastreg.cpu.philox) give its seeds; a sliding count along each row marks
the columns within reach of a seed, a sliding count down the columns then marks the dropped
elements. Both windows are counts of 0/1 flags, so the result and the kept count are exact and
independent of the task split.
"""
import numpy as np

from .. import _threads
from ._jit import inner, launch, split
from .philox import CHUNK, chunk_words, key_words, scratch, task_bounds, task_count


@inner
def _plane_seeds(seeds, buf, lanes, k0, k1, g0, threshold):
    """seeds[q] = 1 when stream word g0 + q is below threshold (q < seeds.size)."""
    hw = seeds.size
    for start in range(0, hw, CHUNK):
        count, words = chunk_words(buf, lanes, k0, k1, g0, start, hw)
        s = seeds[start:start + count]
        for i in range(count):
            s[i] = np.uint8(np.uint64(words[i]) < threshold)


@inner
def _row_reach(src, dst, w, left, right):
    """dst[j] = 1 when src has a 1 in [j - left, j + right] (clipped to [0, w))."""
    c = 0
    for b in range(min(w, right + 1)):
        c += src[b]
    for j in range(w):
        dst[j] = np.uint8(c > 0)
        if j + 1 + right < w:
            c += src[j + 1 + right]
        if j - left >= 0:
            c -= src[j - left]


@inner
def _any(a):
    acc = np.uint8(0)
    for i in range(a.size):
        acc |= a[i]
    return acc != 0


@split
def _mask_kernel(seed, offset, threshold, k, channels_last, mask, kept, t, T):
    """Share t of T of the (sample, channel) planes (a split kernel, see fastreg/cpu/_jit.py):
    their mask, and kept[p] the kept elements of plane p."""
    if channels_last:
        nsamples, h, w, c = mask.shape
    else:
        nsamples, c, h, w = mask.shape
    hw = h * w
    left = k // 2          # a seed at a covers rows a - (k - 1) // 2 .. a + k // 2, so row i
    right = (k - 1) // 2   # is covered by the seeds in [i - k // 2, i + (k - 1) // 2]
    k0, k1 = key_words(seed)
    planes = nsamples * c
    seeds = np.empty(hw, np.uint8)
    reach = np.empty(hw, np.uint8)
    row_hit = np.empty(h, np.bool_)
    cnt = np.empty(w, np.int32)
    buf, lanes = scratch()
    for p in range(t * planes // T, (t + 1) * planes // T):
        for j in range(w):
            cnt[j] = 0
        n = p // c
        ch = p - n * c
        _plane_seeds(seeds, buf, lanes, k0, k1, offset + np.uint64(p * hw), threshold)
        # seeds are sparse at the usual rates: rows without one, and output rows with no reach
        # in their window, take a shortcut (the same values)
        for a in range(h):
            row_hit[a] = _any(seeds[a * w:(a + 1) * w])
            if row_hit[a]:
                _row_reach(seeds[a * w:(a + 1) * w], reach[a * w:(a + 1) * w], w, left, right)
        live = 0
        for a in range(min(h, right + 1)):
            if row_hit[a]:
                live += 1
                for j in range(w):
                    cnt[j] += reach[a * w + j]
        local = 0
        for i in range(h):
            if live == 0:
                if channels_last:
                    for j in range(w):
                        mask[n, i, j, ch] = 1
                else:
                    for j in range(w):
                        mask[n, ch, i, j] = 1
                local += w
            elif channels_last:
                for j in range(w):
                    keep = np.uint8(cnt[j] == 0)
                    mask[n, i, j, ch] = keep
                    local += keep
            else:
                for j in range(w):
                    keep = np.uint8(cnt[j] == 0)
                    mask[n, ch, i, j] = keep
                    local += keep
            r = i + 1 + right
            if r < h and row_hit[r]:
                live += 1
                for j in range(w):
                    cnt[j] += reach[r * w + j]
            r = i - left
            if r >= 0 and row_hit[r]:
                live -= 1
                for j in range(w):
                    cnt[j] -= reach[r * w + j]
        kept[p] = local


@split
def _apply_kernel(x, mask, scale, out, share, shares):
    n = x.size
    zero = scale - scale  # a zero of the array dtype
    tasks = task_count(n)
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        xs = x[lo:hi]
        ms = mask[lo:hi]
        o = out[lo:hi]
        for i in range(hi - lo):
            v = xs[i] * scale
            o[i] = v if ms[i] != 0 else zero


def drop_block_mask(seed, offset, threshold, block, channels_last, mask):
    if mask.size == 0:
        return 0
    planes = mask.shape[0] * mask.shape[3 if channels_last else 1]
    kept = np.empty(planes, np.int64)
    launch(_mask_kernel, _threads.plan(mask.size, "random"), np.uint64(seed), np.uint64(offset),
           np.uint64(threshold), np.int64(block), bool(channels_last), mask, kept)
    return int(kept.sum())


def drop_block_apply(x, mask, scale, out):
    launch(_apply_kernel, _threads.plan(x.size, "elementwise"), x, mask, scale, out)


__all__ = ["drop_block_mask", "drop_block_apply"]
