"""Philox4x32-10 and the 32-bit stream on the GPU (Numba CUDA), bit for bit as fastreg.reference.

The stream: word ``g`` (a 64-bit global index) of the stream for ``seed`` is word ``g & 3`` of
Philox4x32-10 applied to the counter ``(b & 0xFFFFFFFF, b >> 32, 0, 0)``, ``b = g >> 2``, under
the key ``(seed & 0xFFFFFFFF, seed >> 32)`` (Salmon et al., SC'11).

Device functions for your own ``@cuda.jit`` kernels (a fused kernel of yours then draws exactly
the masks fastreg's ops draw)::

    import numpy as np
    from numba import cuda
    from fastreg.cuda import philox

    @cuda.jit
    def my_dropout(x, out, seed_lo, seed_hi, offset, threshold, scale):
        i = cuda.grid(1)
        if i < x.size:
            w = philox.stream_word_device(seed_lo, seed_hi, offset + np.uint64(i))
            if w >= threshold:          # as fastreg.cuda.dropout: select, one multiply
                out[i] = x[i] * scale   # scale passed as x.dtype.type(scale)
            else:
                out[i] = 0

    seed_lo, seed_hi = philox.split_seed(seed)    # two np.uint64 holding 32 bits each
    my_dropout[blocks, tpb](x, out, seed_lo, seed_hi, np.uint64(offset), np.uint64(thr), scale)

Pass every 64-bit quantity as ``np.uint64`` (Numba types a Python int as int64, and int64 mixed
with uint64 becomes float64). Words come back as uint64 holding 32-bit values.

All arithmetic is in uint64 lanes holding 32-bit values, masked explicitly: the 32x32 -> 64-bit
product gives mulhi/mullo, nothing relies on implicit uint32 wrap-around, and the code runs the
same compiled or under NUMBA_ENABLE_CUDASIM.
"""
import numpy as np
from numba import cuda

from .. import _config
from ..reference.philox import dropout_threshold, split_seed  # noqa: F401  (public here too)

# uint64 constants: a Python int literal would be typed int64 and promote uint64 maths to float64.
M0 = np.uint64(0xD2511F53)
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)
W1 = np.uint64(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
U0 = np.uint64(0)
U1 = np.uint64(1)
U2 = np.uint64(2)
U3 = np.uint64(3)
U8 = np.uint64(8)
U11 = np.uint64(11)
U32 = np.uint64(32)
F32_2M24 = np.float32(2.0 ** -24)
F64_2M53 = np.float64(2.0 ** -53)


@cuda.jit(device=True)
def philox4x32_device(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1), inside a CUDA kernel.

    Parameters
    ----------
    c0, c1, c2, c3, k0, k1 : integers holding 32-bit values (uint32 or uint64 preferred)

    Returns
    -------
    tuple of 4 uint64
        The four output words, each in [0, 2**32).
    """
    # New names, not reassigned arguments: an int64 argument must not unify with uint64.
    x0 = np.uint64(c0) & MASK32
    x1 = np.uint64(c1) & MASK32
    x2 = np.uint64(c2) & MASK32
    x3 = np.uint64(c3) & MASK32
    y0 = np.uint64(k0) & MASK32
    y1 = np.uint64(k1) & MASK32
    for _ in range(10):
        p0 = x0 * M0  # both < 2**32: the full 64-bit product, hi and lo words below
        p1 = x2 * M1
        n0 = (p1 >> U32) ^ x1 ^ y0
        n2 = (p0 >> U32) ^ x3 ^ y1
        x1 = p1 & MASK32
        x3 = p0 & MASK32
        x0 = n0
        x2 = n2
        y0 = (y0 + W0) & MASK32
        y1 = (y1 + W1) & MASK32
    return x0, x1, x2, x3


@cuda.jit(device=True)
def stream_block_device(seed_lo, seed_hi, b):
    """Stream words ``4b .. 4b + 3`` (one Philox call), inside a CUDA kernel.

    Parameters
    ----------
    seed_lo, seed_hi : uint64
        The key words, see ``split_seed``.
    b : uint64
        Block index, ``g >> 2`` for stream word ``g``.

    Returns
    -------
    tuple of 4 uint64
        Words ``4b, 4b + 1, 4b + 2, 4b + 3`` of the stream.
    """
    bb = np.uint64(b)
    return philox4x32_device(bb & MASK32, bb >> U32, U0, U0, seed_lo, seed_hi)


@cuda.jit(device=True)
def stream_word_device(seed_lo, seed_hi, g):
    """Word ``g`` of the stream for the seed ``(seed_hi << 32) | seed_lo``, inside a CUDA kernel.

    One Philox call per word; where a thread needs 4 consecutive words, ``stream_block_device``
    gives them for the price of one.

    Parameters
    ----------
    seed_lo, seed_hi : uint64
        The key words, see ``split_seed``.
    g : uint64
        Global stream position (``offset + i``); pass it as uint64.

    Returns
    -------
    uint64
        The 32-bit word, as fastreg.reference.philox.stream_words gives it.
    """
    gg = np.uint64(g)
    w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, gg >> U2)
    j = gg & U3
    if j == U0:
        return w0
    if j == U1:
        return w1
    if j == U2:
        return w2
    return w3


@cuda.jit(device=True)
def keep4_device(w0, w1, w2, w3, threshold):
    """Keep bits (word >= threshold) of four words, word 0 in bit 0, as an int."""
    k = 0
    if w0 >= threshold:
        k |= 1
    if w1 >= threshold:
        k |= 2
    if w2 >= threshold:
        k |= 4
    if w3 >= threshold:
        k |= 8
    return k


@cuda.jit(device=True)
def store4_device(out, i0, n, w0, w1, w2, w3):
    """out[i0 + j] = wj for those of the 4 positions in [0, n)."""
    if i0 >= 0 and i0 + 3 < n:
        out[i0] = w0
        out[i0 + 1] = w1
        out[i0 + 2] = w2
        out[i0 + 3] = w3
    else:
        if 0 <= i0 < n:
            out[i0] = w0
        if 0 <= i0 + 1 < n:
            out[i0 + 1] = w1
        if 0 <= i0 + 2 < n:
            out[i0 + 2] = w2
        if 0 <= i0 + 3 < n:
            out[i0 + 3] = w3


# --- launch and array plumbing, shared with dropout.py, penalty.py and optim.py ---------------

_SIM_MAX_BLOCKS = 8   # the simulator runs blocks one after another: keep grids small there
_WAVES = 4            # grid cap: this many full-occupancy waves; grid-stride loops do the rest
_max_blocks_cache = {}


def _simulated():
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def max_blocks(tpb):
    """Cap on the grid: ``_WAVES`` waves of resident blocks on the current device."""
    if _simulated():
        return _SIM_MAX_BLOCKS
    dev = cuda.get_current_device()
    key = (dev.id, tpb)
    if key not in _max_blocks_cache:
        per_sm = max(1, dev.MAX_THREADS_PER_MULTI_PROCESSOR // tpb)
        _max_blocks_cache[key] = dev.MULTIPROCESSOR_COUNT * per_sm * _WAVES
    return _max_blocks_cache[key]


def launch_1d(kernel, nwork, *args):
    """Launch a grid-stride ``kernel`` over ``nwork`` work items (threads per block from
    FASTREG_CUDA_TPB, read now; grid capped by ``max_blocks``)."""
    if nwork <= 0:
        return
    tpb = _config.cuda_threads_per_block()
    blocks = min((nwork + tpb - 1) // tpb, max_blocks(tpb))
    kernel[blocks, tpb](*args)


def as_device(obj):
    """A Numba device-array view of ``obj`` (anything with ``__cuda_array_interface__``), no copy."""
    if getattr(obj, "__cuda_ndarray__", False):  # already Numba's (or the simulator's) own
        return obj
    return cuda.as_cuda_array(obj)


def empty(shape, dtype):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def to_device(ary):
    """A device copy of the host array ``ary``."""
    return cuda.to_device(np.ascontiguousarray(ary))


def copy_to_host(devarr):
    """A host (NumPy) copy of the device array ``devarr``."""
    return as_device(devarr).copy_to_host()


def dev_in(a):
    """A device array for the input ``a``: a view of a device array, a copy of a host one."""
    return to_device(a) if isinstance(a, np.ndarray) else as_device(a)


def dev_out(a, copy_in=False):
    """A device array for the output ``a``: a view of a device array; for a host one a device
    copy (``copy_in``, when the kernel reads it) or a fresh device array (``finish`` copies it
    back)."""
    if not isinstance(a, np.ndarray):
        return as_device(a)
    if copy_in:
        return to_device(a)
    return empty(a.shape, a.dtype)


def to_device_args(inputs, out):
    """Device arrays for ``inputs`` and ``out`` (see ``dev_in``, ``dev_out``)."""
    return tuple(dev_in(a) for a in inputs), dev_out(out)


def finish(out, out_d):
    """Copy the result back when the caller's ``out`` is a host array (nothing to do for a
    device one)."""
    if isinstance(out, np.ndarray):
        out_d.copy_to_host(out)


# --- kernels -------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _philox4x32_kernel(ctr, key, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for j in range(start, out.shape[0], stride):
        w0, w1, w2, w3 = philox4x32_device(ctr[j, 0], ctr[j, 1], ctr[j, 2], ctr[j, 3],
                                           key[j, 0], key[j, 1])
        out[j, 0] = w0
        out[j, 1] = w1
        out[j, 2] = w2
        out[j, 3] = w3


@cuda.jit(cache=True)
def _random_bits_kernel(seed_lo, seed_hi, first, skip, n, nblocks, out):
    # Thread t: Philox block first + t, i.e. elements 4t - skip .. 4t - skip + 3.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        store4_device(out, 4 * t - skip, n, w0, w1, w2, w3)


@cuda.jit(cache=True)
def _uniform_f32_kernel(seed_lo, seed_hi, first, skip, n, nblocks, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        store4_device(out, 4 * t - skip, n,
                      np.float32(w0 >> U8) * F32_2M24, np.float32(w1 >> U8) * F32_2M24,
                      np.float32(w2 >> U8) * F32_2M24, np.float32(w3 >> U8) * F32_2M24)


@cuda.jit(cache=True)
def _uniform_f64_kernel(seed_lo, seed_hi, first, skip, n, nblocks, out):
    # Element i uses stream words 2(offset + i) and 2(offset + i) + 1: both in block
    # (offset + i) >> 1, so one Philox block gives two float64 values.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, nblocks, stride):
        w0, w1, w2, w3 = stream_block_device(seed_lo, seed_hi, first + np.uint64(t))
        i0 = 2 * t - skip
        if 0 <= i0 < n:
            out[i0] = np.float64(((w1 << U32) | w0) >> U11) * F64_2M53
        if 0 <= i0 + 1 < n:
            out[i0 + 1] = np.float64(((w3 << U32) | w2) >> U11) * F64_2M53


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def stream_layout(offset, n, per_block=4):
    """Host-side split of stream positions offset .. offset + n - 1 into Philox blocks.

    Returns ``(first, skip, nblocks)``: the first block index (np.uint64), how many positions of
    that block precede ``offset`` (np.int64), and how many blocks cover the range (np.int64),
    for ``per_block`` values per block (4 words, or 2 float64 pairs).
    """
    offset = int(offset)
    skip = offset % per_block
    first = offset // per_block
    nblocks = (skip + n + per_block - 1) // per_block
    return np.uint64(first), np.int64(skip), np.int64(nblocks)


def launch_stream(kernel, seed, offset, n, lead=(), tail=(), per_block=4):
    """Launch a stream kernel ``kernel(*lead, seed_lo, seed_hi, first, skip, n, nblocks, *tail)``
    over elements 0 .. n - 1 at stream position ``offset``: one thread per Philox block
    (``first``, ``skip``, ``nblocks`` from ``stream_layout``)."""
    first, skip, nblocks = stream_layout(offset, n, per_block)
    lo, hi = split_seed(seed)
    launch_1d(kernel, int(nblocks), *lead, lo, hi, first, skip, np.int64(n), nblocks, *tail)


def philox4x32(ctr, key, out):
    """out[j] = Philox4x32-10(ctr[j], key[j]); ctr (n, 4), key (n, 2), out (n, 4), all uint32.

    Parameters
    ----------
    ctr, key, out : device or host arrays, uint32

    Returns
    -------
    None
        The result is in ``out``.
    """
    (ctr_d, key_d), out_d = to_device_args((ctr, key), out)
    launch_1d(_philox4x32_kernel, out_d.shape[0], ctr_d, key_d, out_d)
    finish(out, out_d)


def random_bits(seed, offset, out):
    """out[i] = word ``offset + i`` of the stream for ``seed`` (uint32, 1-D).

    Parameters
    ----------
    seed, offset : int
        In [0, 2**64).
    out : device or host array, uint32 (n,)

    Returns
    -------
    None
    """
    _, out_d = to_device_args((), out)
    n = out_d.size
    if n == 0:
        return
    launch_stream(_random_bits_kernel, seed, offset, n, tail=(out_d,))
    finish(out, out_d)


def uniform(seed, offset, out):
    """Uniform floats in [0, 1), as fastreg.reference.uniform.

    float32: ``(w[offset + i] >> 8) * 2**-24``; float64: ``((hi << 32 | lo) >> 11) * 2**-53``
    with ``lo, hi = w[2(offset + i)], w[2(offset + i) + 1]``.

    Parameters
    ----------
    seed, offset : int
    out : device or host array, float32 or float64 (n,)

    Returns
    -------
    None
    """
    _, out_d = to_device_args((), out)
    n = out_d.size
    if n == 0:
        return
    if np.dtype(out_d.dtype) == np.float32:
        launch_stream(_uniform_f32_kernel, seed, offset, n, tail=(out_d,), per_block=4)
    else:
        launch_stream(_uniform_f64_kernel, seed, offset, n, tail=(out_d,), per_block=2)
    finish(out, out_d)
