"""Dropout kernels on the CPU with Numba (definitions in fastreg/reference/dropout.py).

Each task walks its elements in blocks of CHUNK: first the stream words of the block go into a
small L1-resident buffer in element order, then one plain loop applies the select, which LLVM
vectorizes. The words depend only on (seed, offset + i), never on the task split.

The kernels are ``split`` kernels (fastreg/cpu/_jit.py): ``fn(*args, share, shares)`` runs the
tasks [share * tasks // shares, (share + 1) * tasks // shares), with its scratch buffers
allocated once per share.
"""
import numpy as np

from .. import _threads
from ._jit import launch, split
from .philox import CHUNK, chunk_words, key_words, scratch, task_bounds, task_count


@split
def _dropout_kernel(x, out, seed, offset, threshold, scale, share, shares):
    n = x.size
    zero = scale - scale  # a zero of the array dtype
    if threshold == 0:  # nothing dropped: no random numbers needed
        for i in range(share * n // shares, (share + 1) * n // shares):
            out[i] = x[i] * scale
        return
    k0, k1 = key_words(seed)
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, CHUNK):
            count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
            xs = x[start:start + count]
            o = out[start:start + count]
            for i in range(count):
                v = xs[i] * scale
                o[i] = v if words[i] >= threshold else zero


@split
def _mask_kernel(seed, offset, threshold, out, share, shares):
    n = out.size
    k0, k1 = key_words(seed)
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, CHUNK):
            count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
            o = out[start:start + count]
            for i in range(count):
                o[i] = np.uint8(words[i] >= threshold)


@split
def _mask_packed_kernel(seed, offset, threshold, n, out, share, shares):
    # TASK and CHUNK are multiples of 8, so every block starts on a byte boundary.
    k0, k1 = key_words(seed)
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, CHUNK):
            count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
            o = out[start // 8:(start + count + 7) // 8]
            full = count // 8
            for j in range(full):
                byte = np.uint8(0)
                for b in range(8):
                    byte |= np.uint8(words[8 * j + b] >= threshold) << np.uint8(b)
                o[j] = byte
            if full * 8 < count:  # the last, partial byte: pad bits are 0
                byte = np.uint8(0)
                for b in range(count - full * 8):
                    byte |= np.uint8(words[8 * full + b] >= threshold) << np.uint8(b)
                o[full] = byte


@split
def _group_kernel(x, keep, scale, out, share, shares):
    nsamples, m1, c, m2 = x.shape
    zero = scale - scale
    rows = nsamples * m1
    for q in range(share * rows // shares, (share + 1) * rows // shares):
        s = q // m1
        a = q - s * m1
        for ch in range(c):
            if keep[s, ch]:
                for b in range(m2):
                    out[s, a, ch, b] = x[s, a, ch, b] * scale
            else:
                for b in range(m2):
                    out[s, a, ch, b] = zero


def dropout(x, seed, offset, threshold, scale, out):
    launch(_dropout_kernel, _threads.plan(x.size, "random"), x, out, np.uint64(seed),
           np.uint64(offset), np.uint32(threshold), scale)


def dropout_mask(seed, offset, threshold, out):
    launch(_mask_kernel, _threads.plan(out.size, "random"), np.uint64(seed), np.uint64(offset),
           np.uint32(threshold), out.view(np.uint8))


def dropout_mask_packed(seed, offset, threshold, n, out):
    launch(_mask_packed_kernel, _threads.plan(n, "random"), np.uint64(seed), np.uint64(offset),
           np.uint32(threshold), n, out)


def group_dropout(x, keep, scale, out):
    launch(_group_kernel, _threads.plan(x.size, "elementwise"), x, keep, scale, out)
