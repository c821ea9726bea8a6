"""Dropout in plain NumPy: the oracle for every backend's dropout kernels.

Element ``i`` is kept when word ``offset + i`` of the Philox stream is ``>= threshold``
(an integer in [0, 2**32 - 1], see ``fastreg.dropout``); a kept element becomes
``x * scale`` (one multiply in x's dtype), a dropped one becomes exactly +0.0
(a select, so a dropped inf or NaN gives 0, not NaN).
"""
import numpy as np

from .philox import stream_words


def _keep(seed, offset, threshold, n):
    return stream_words(seed, offset, n) >= np.uint32(threshold)


def dropout(x, seed, offset, threshold, scale, out):
    """out = where(keep, x * scale, 0) on 1-D contiguous x and out (out may be x)."""
    keep = _keep(seed, offset, threshold, x.size)
    out[...] = np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))


def dropout_mask(seed, offset, threshold, out):
    """out[i] = 1 where element i is kept, else 0 (uint8 or bool, 1-D)."""
    out[...] = _keep(seed, offset, threshold, out.size)


def dropout_mask_packed(seed, offset, threshold, n, out):
    """Keep bits for n elements packed LSB-first: bit j of out[k] is element 8k + j; pad bits 0."""
    out[...] = np.packbits(_keep(seed, offset, threshold, n), bitorder="little")


def group_dropout(x, keep, scale, out):
    """x, out of shape (N, M1, C, M2); keep (N, C): out = where(keep[n, c], x * scale, 0)."""
    k = keep.astype(bool)[:, None, :, None]
    out[...] = np.where(k, x * x.dtype.type(scale), x.dtype.type(0))
