"""Philox4x32-10 on the CPU with Numba (see fastreg/reference/philox.py for the definition).

Words live in uint64 lanes and every product is a 32x32->64 multiply, which LLVM vectorizes as
vpmuludq over four counters at once.
"""
import numpy as np

from ..reference.philox import dropout_threshold, split_seed  # noqa: F401  (public here too)
from .. import _threads
from ._jit import inline, jit, launch, split

M0 = np.uint64(0xD2511F53)
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)
W1 = np.uint64(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)
ZERO = np.uint64(0)

CHUNK = 2048           # stream words generated per inner block (fits L1 with its data)
TASK = 16 * CHUNK      # elements per parallel task


@inline
def philox_rounds(c0, c1, c2, c3, k0, k1):
    """Ten rounds on uint64 values holding 32-bit words; returns the four output words."""
    for _ in range(10):
        p0 = c0 * M0
        p1 = c2 * M1
        c0, c1, c2, c3 = (p1 >> S32) ^ c1 ^ k0, p1 & MASK, (p0 >> S32) ^ c3 ^ k1, p0 & MASK
        k0 = (k0 + W0) & MASK
        k1 = (k1 + W1) & MASK
    return c0, c1, c2, c3


@inline
def fill_words(buf, lanes, k0, k1, g0, count):
    """Stream words g0 .. g0 + count - 1, as a view of buf (which holds whole Philox blocks).

    The four words of each block first go to four separate rows of ``lanes`` (4, CHUNK // 4 + 1):
    unit-stride stores let LLVM vectorize the rounds over four counters; the transpose into
    element order is then a cheap pass over L1.
    """
    b0 = g0 >> np.uint64(2)
    nblocks = np.int64(((g0 + np.uint64(count - 1)) >> np.uint64(2)) - b0) + 1
    for j in range(nblocks):
        b = b0 + np.uint64(j)
        r0, r1, r2, r3 = philox_rounds(b & MASK, b >> S32, ZERO, ZERO, k0, k1)
        lanes[0, j] = r0
        lanes[1, j] = r1
        lanes[2, j] = r2
        lanes[3, j] = r3
    for j in range(nblocks):
        buf[4 * j] = lanes[0, j]
        buf[4 * j + 1] = lanes[1, j]
        buf[4 * j + 2] = lanes[2, j]
        buf[4 * j + 3] = lanes[3, j]
    skip = np.int64(g0 & np.uint64(3))
    # Slices (not buf[skip + i]) let LLVM drop the negative-index checks and vectorize the
    # callers' loops: measured 2x on the dropout kernel.
    return buf[skip:skip + count]


@inline
def scratch():
    """Scratch buffers for fill_words (one pair per kernel share): element-order words and the
    four word lanes."""
    return np.empty(CHUNK + 8, np.uint32), np.empty((4, CHUNK // 4 + 2), np.uint32)


# The stream kernels share one skeleton: ``split`` kernels (fastreg/cpu/_jit.py) whose share
# runs its part of the tasks of TASK elements, with its scratch buffers, and walks each task's
# blocks of CHUNK elements:
#
#     k0, k1 = key_words(seed)
#     tasks = task_count(n)
#     buf, lanes = scratch()
#     for t in range(share * tasks // shares, (share + 1) * tasks // shares):
#         lo, hi = task_bounds(t, n)
#         for start in range(lo, hi, CHUNK):
#             count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
#             ...  # one plain loop over words[:count]
#
# The helpers are inlined, so each kernel compiles as if written out (and vectorizes the same).

@inline
def key_words(seed):
    """The Philox key (k0, k1) of a uint64 seed: its low and high 32 bits."""
    return seed & MASK, seed >> S32


@inline
def task_count(n):
    """Parallel tasks for n elements."""
    return (n + TASK - 1) // TASK


@inline
def task_bounds(t, n):
    """Elements [lo, hi) of task t."""
    lo = t * TASK
    return lo, min(lo + TASK, n)


@inline
def chunk_words(buf, lanes, k0, k1, offset, start, n):
    """``(count, words)`` for the block of up to CHUNK elements at ``start``: element i of the
    block uses ``words[i]``, stream word ``offset + start + i``."""
    count = min(CHUNK, n - start)
    return count, fill_words(buf, lanes, k0, k1, offset + np.uint64(start), count)


@jit
def _philox_kernel(ctr, key, out):
    for i in range(ctr.shape[0]):
        r0, r1, r2, r3 = philox_rounds(np.uint64(ctr[i, 0]), np.uint64(ctr[i, 1]),
                                       np.uint64(ctr[i, 2]), np.uint64(ctr[i, 3]),
                                       np.uint64(key[i, 0]), np.uint64(key[i, 1]))
        out[i, 0] = r0
        out[i, 1] = r1
        out[i, 2] = r2
        out[i, 3] = r3


@split
def _bits_kernel(seed, offset, out, share, shares):
    n = out.size
    k0, k1 = key_words(seed)
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, CHUNK):
            count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
            for i in range(count):   # not a slice assignment: its shape check compiles for 3 s
                out[start + i] = words[i]


@split
def _uniform32_kernel(seed, offset, out, share, shares):
    n = out.size
    k0, k1 = key_words(seed)
    step = np.float32(2.0 ** -24)
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, CHUNK):
            count, words = chunk_words(buf, lanes, k0, k1, offset, start, n)
            o = out[start:start + count]
            for i in range(count):
                o[i] = np.float32(words[i] >> np.uint32(8)) * step


@split
def _uniform64_kernel(seed, offset, out, share, shares):
    # Element i uses stream words 2(offset + i) and 2(offset + i) + 1: blocks of CHUNK / 2
    # elements, each filled with its 2 * count words.
    n = out.size
    k0, k1 = key_words(seed)
    half = CHUNK // 2
    tasks = task_count(n)
    buf, lanes = scratch()
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        lo, hi = task_bounds(t, n)
        for start in range(lo, hi, half):
            count = min(half, n - start)
            g0 = np.uint64(2) * (offset + np.uint64(start))
            words = fill_words(buf, lanes, k0, k1, g0, 2 * count)
            o = out[start:start + count]
            for i in range(count):
                u = np.uint64(words[2 * i]) | (np.uint64(words[2 * i + 1]) << S32)
                o[i] = np.float64(u >> np.uint64(11)) * (2.0 ** -53)


def philox4x32(ctr, key, out):
    _philox_kernel(ctr, key, out)


def random_bits(seed, offset, out):
    launch(_bits_kernel, _threads.plan(out.size, "random"), np.uint64(seed), np.uint64(offset),
           out)


def uniform(seed, offset, out):
    kernel = _uniform32_kernel if out.dtype == np.float32 else _uniform64_kernel
    words = out.size * (out.itemsize // 4)  # stream words: 1 or 2 per element
    launch(kernel, _threads.plan(words, "random"), np.uint64(seed), np.uint64(offset), out)


# --- for your own @njit code ----------------------------------------------------------------------
# A fused kernel of yours draws exactly fastreg's masks when it decides element i of a call with
# (seed, offset) by stream word offset + i, kept when word >= dropout_threshold(p):
#
#     import numpy as np
#     from numba import njit
#     from fastreg.cpu import philox
#
#     @njit
#     def my_dropout(x, out, seed_lo, seed_hi, offset, threshold, scale):
#         for i in range(x.size):
#             w = philox.stream_word(seed_lo, seed_hi, offset + np.uint64(i))
#             out[i] = x[i] * scale if w >= threshold else 0   # scale: x.dtype.type(1 / (1 - p))
#
#     lo, hi = philox.split_seed(seed)
#     my_dropout(x, out, lo, hi, np.uint64(offset), np.uint64(philox.dropout_threshold(p)),
#                x.dtype.type(1 / (1 - p)))
#
# (The same names exist in fastreg.cuda.philox as *_device functions for @cuda.jit kernels.)
# One Philox call per word: a loop over consecutive elements is 4x cheaper with stream_block.

@inline
def stream_block(seed_lo, seed_hi, b):
    """Stream words ``4b .. 4b + 3`` (one Philox call), inside your own ``@njit`` code.

    Parameters
    ----------
    seed_lo, seed_hi : uint64
        The key words, see ``split_seed``.
    b : uint64
        Block index, ``g >> 2`` for stream word ``g``.

    Returns
    -------
    tuple of 4 uint64
        The words, each in [0, 2**32).
    """
    bb = np.uint64(b)
    return philox_rounds(bb & MASK, bb >> S32, ZERO, ZERO, np.uint64(seed_lo) & MASK,
                         np.uint64(seed_hi) & MASK)


@inline
def stream_word(seed_lo, seed_hi, g):
    """Word ``g`` of the stream for the seed ``(seed_hi << 32) | seed_lo``, inside your own
    ``@njit`` code: what ``fastreg.random`` and the dropout ops draw for position ``g``.

    Parameters
    ----------
    seed_lo, seed_hi : uint64
        The key words, see ``split_seed``.
    g : uint64
        Global stream position (``offset + i``); pass it as uint64.

    Returns
    -------
    uint64
        The 32-bit word.
    """
    gg = np.uint64(g)
    w0, w1, w2, w3 = stream_block(seed_lo, seed_hi, gg >> np.uint64(2))
    j = gg & np.uint64(3)
    if j == ZERO:
        return w0
    if j == np.uint64(1):
        return w1
    if j == np.uint64(2):
        return w2
    return w3
