"""L1 / L2 / elastic-net penalties and proximal steps in plain NumPy: the oracle for every backend.

Scalars arrive already cast to the array's dtype (the public wrappers do that), so every product
below is one multiply in the array's dtype, in the order written; kernels must not fuse a
multiply and an add (no FMA), so that the backends agree bit for bit with this file.
"""
import numpy as np


def _sgn(w):
    """np.sign: 1 for w > 0, -1 for w < 0, +0.0 for w = +-0 (never -0.0), NaN for NaN."""
    return np.sign(w)


def penalty_sums(w):
    """(sum |w|, sum w**2) of a 1-D array, accumulated in float64."""
    w64 = w.astype(np.float64)
    with np.errstate(over="ignore"):   # an overflowed sum is inf, quietly, as on the kernels
        return float(np.abs(w64).sum()), float(np.dot(w64, w64))


def _grad(w, l1, c2):
    if c2 == 0:
        return l1 * _sgn(w)
    if l1 == 0:
        return c2 * w
    return l1 * _sgn(w) + c2 * w


def penalty_grad(w, l1, c2, out, accumulate):
    """Gradient of ``l1 * sum|w| + (c2 / 2) * sum w**2``.

    g = l1 * sgn(w) when c2 == 0; c2 * w when l1 == 0 (and c2 != 0); l1 * sgn(w) + c2 * w
    otherwise. ``accumulate``: out = out + g (one add); else out = g. w, out 1-D, same dtype.
    """
    g = _grad(w, l1, c2)
    if accumulate:
        out[...] = out + g
    else:
        out[...] = g


def soft_threshold(w, t, s, out):
    """out = s * soft(w, t): w - t where w > t, w + t where w < -t, NaN where w is NaN, else +0.

    ``t >= 0`` and ``s`` (1 for plain L1, 1 / (1 + 2 * t2) for elastic net) in w's dtype. The
    zeros are exact: this is what makes proximal L1 give sparse weights.
    """
    zero = w.dtype.type(0)
    v = np.where(w > t, w - t, np.where(w < -t, w + t, np.where(np.isnan(w), w, zero)))
    out[...] = v * s


def group_lasso(w, t, out):
    """w, out of shape (A, L, B): each (a, b) group ``w[a, :, b]`` is scaled by
    ``f = max(0, 1 - t / ||group||_2)`` (norm and f in float64, f cast to w's dtype, one
    multiply; a zero-norm group gives 0). Groups whose norm is <= t become exact zeros."""
    w64 = w.astype(np.float64)
    norm = np.sqrt(np.einsum("alb,alb->ab", w64, w64))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(norm > t, 1.0 - t / norm, 0.0)
    out[...] = w * f.astype(w.dtype)[:, None, :]


def all_finite(a):
    """True when no element of the 1-D array is NaN or inf."""
    return bool(np.isfinite(a).all())
