"""Philox4x32-10 in plain NumPy: the oracle every backend is tested against.

Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.
All arithmetic is done in uint64 lanes holding 32-bit values and masked explicitly,
so nothing relies on implicit uint32 wrap-around.

The stream: element ``g`` (a 64-bit global index, ``g = offset + i``) of the 32-bit
stream for ``seed`` is word ``g & 3`` of Philox4x32-10 applied to the counter
``(b & 0xFFFFFFFF, b >> 32, 0, 0)`` with ``b = g >> 2``, under the key
``(seed & 0xFFFFFFFF, seed >> 32)``.
"""
import numpy as np

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
ROUNDS = 10
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def _rounds(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint64 arrays that hold 32-bit words."""
    for _ in range(ROUNDS):
        p0 = c0 * np.uint64(M0)
        p1 = c2 * np.uint64(M1)
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT) ^ c1 ^ k0,
            p1 & _MASK,
            (p0 >> _SHIFT) ^ c3 ^ k1,
            p0 & _MASK,
        )
        k0 = (k0 + np.uint64(W0)) & _MASK
        k1 = (k1 + np.uint64(W1)) & _MASK
    return c0, c1, c2, c3


def philox4x32(ctr, key, out):
    """out[j] = Philox4x32-10(ctr[j], key[j]); ctr (n, 4), key (n, 2), out (n, 4), all uint32."""
    c = ctr.astype(np.uint64)
    k = key.astype(np.uint64)
    words = _rounds(c[:, 0], c[:, 1], c[:, 2], c[:, 3], k[:, 0], k[:, 1])
    for j in range(4):
        out[:, j] = words[j]


def stream_words(seed, offset, n):
    """Words ``offset .. offset + n - 1`` of the 32-bit stream for ``seed``, as uint32 (n,)."""
    offset = int(offset)
    seed = int(seed)
    if n == 0:
        return np.empty(0, np.uint32)
    first, last = offset >> 2, (offset + n - 1) >> 2
    b = np.arange(last - first + 1, dtype=np.uint64) + np.uint64(first)
    zero = np.zeros_like(b)
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64(seed >> 32)
    words = _rounds(b & _MASK, b >> _SHIFT, zero, zero, k0, k1)
    flat = np.stack(words, axis=1).reshape(-1)  # element order: block b, word 0..3
    skip = offset & 3
    return flat[skip:skip + n].astype(np.uint32)


def random_bits(seed, offset, out):
    """out[i] = word ``offset + i`` of the stream (uint32, 1-D)."""
    out[...] = stream_words(seed, offset, out.size)


def uniform(seed, offset, out):
    """Uniform floats in [0, 1).

    float32: ``(w[offset + i] >> 8) * 2**-24`` (24 random bits, every value exact).
    float64: words ``lo = w[2(offset + i)]`` and ``hi = w[2(offset + i) + 1]`` form a 64-bit
    integer ``u``; the value is ``(u >> 11) * 2**-53``.
    """
    n = out.size
    if out.dtype == np.float32:
        w = stream_words(seed, offset, n)
        out[...] = (w >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
    else:
        w = stream_words(seed, 2 * int(offset), 2 * n).astype(np.uint64)
        u = w[0::2] | (w[1::2] << _SHIFT)
        out[...] = (u >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def split_seed(seed):
    """The two key words of ``seed`` for the Philox helpers of your own kernels
    (``fastreg.cpu.philox.stream_word``, ``fastreg.cuda.philox.stream_word_device``).

    Parameters
    ----------
    seed : int
        In [0, 2**64).

    Returns
    -------
    (numpy.uint64, numpy.uint64)
        ``(seed & 0xFFFFFFFF, seed >> 32)``.
    """
    seed = int(seed)
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


def dropout_threshold(p):
    """The integer threshold fastreg's dropout compares stream words with (kept: word >= it).

    Parameters
    ----------
    p : float
        Drop probability in [0, 1].

    Returns
    -------
    int
        ``round(p * 2**32)``, in [0, 2**32] (2**32: everything dropped).
    """
    from ..dropout import _threshold
    from .._arrays import check_probability
    return _threshold(check_probability(p))
