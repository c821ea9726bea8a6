"""The weight-EMA update in plain NumPy: the oracle for every backend, and its exact ``fma``.

The update is PyTorch's ``lerp`` (``torch._foreach_lerp_(ema, p, w)``, with ``w = 1 - decay``),
written the way its vectorized CPU kernel (AVX2 / AVX-512) and its CUDA kernel compute it: one
fused multiply-add, rounded once, in the arrays' dtype::

    small = |w| < 0.5
    coef  = w if small else w - 1          (rounded in the dtype)
    base  = ema if small else p
    ema   = fma(coef, p - ema, base)       (p - ema rounded in the dtype; fma rounded once)

which is ``ema + w * (p - ema)`` for small weights and ``p - (p - ema) * (1 - w)`` otherwise,
each with a single rounding of the multiply-add. Every backend computes exactly this (a
correctly rounded fma: C's ``fma``, LLVM's ``llvm.fma``, CUDA's ``fma``), so all of them, and
torch on a CPU where it runs its AVX2 or AVX-512 kernels (measured: equal on every element),
give the same bits.

``fma`` below computes a correctly rounded fused multiply-add without hardware help:

* float32: the product of two float32 is exact in float64; the sum is rounded to odd in
  float64 (the error of the float64 sum, from TwoSum, decides the last bit), and rounding that
  to float32 is then correct (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums:
  proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008: rounding to odd
  with at least two extra bits, then to nearest, is rounding to nearest once).
* float64: the same paper's emulated FMA, ``(uh, ul) = ExactMult(a, b)`` (Dekker's product with
  Veltkamp's split), ``(th, tl) = TwoSum(c, uh)``, ``v = RO(tl + ul)``, ``RN(th + v)``, on the
  elements where none of these steps can overflow or underflow; the others (huge or tiny
  operands, zeros, infinities, NaN) are computed exactly with Python's ``fractions`` one by
  one, or by IEEE's rules for the special values.
"""
import math
from fractions import Fraction

import numpy as np

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's constant for float64
# float64 operands within [2**-480, 2**480] (and |c| <= 2**1000) keep every step of the
# emulation free of overflow and underflow: products of split halves stay above 2**-1014
_SAFE_LO, _SAFE_HI, _SAFE_C = 2.0 ** -480, 2.0 ** 480, 2.0 ** 1000


def _two_sum(a, b):
    """s = RN(a + b) and the exact error e = a + b - s (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _round_to_odd(s, e):
    """The sum s + e (s = RN(s + e), e its exact error) rounded to odd: s when exact or when its
    last bit is 1, else s's neighbour toward the exact value."""
    s = s.copy()
    fix = (e != 0) & np.isfinite(s) & ((s.view(np.uint64) & np.uint64(1)) == 0)
    s[fix] = np.nextafter(s[fix], np.copysign(np.inf, e[fix]))
    return s


def _fma_f32(a, b, c):
    with np.errstate(all="ignore"):   # inf and NaN operands follow IEEE rules, unannounced
        prod = a.astype(np.float64) * b.astype(np.float64)   # exact
        s, e = _two_sum(prod, c.astype(np.float64))
        return _round_to_odd(s, e).astype(np.float32)


def _fma_exact(a, b, c):
    """fma of three Python floats by exact rational arithmetic and IEEE's special cases."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return a * b + c          # the product is inf or NaN exactly as the fused one
    if not math.isfinite(c):
        return c                  # finite product + inf (or NaN) = c
    if a == 0 or b == 0:
        return a * b + c          # the product is an exact (signed) zero: one rounding
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        return 0.0                # exact cancellation rounds to +0
    try:
        return float(exact)       # int / int true division: correctly rounded
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


def _fma_f64(a, b, c):
    with np.errstate(all="ignore"):
        safe = ((np.abs(a) >= _SAFE_LO) & (np.abs(a) <= _SAFE_HI) & (np.abs(b) >= _SAFE_LO)
                & (np.abs(b) <= _SAFE_HI) & (np.abs(c) <= _SAFE_C))
        # ExactMult: uh + ul = a * b exactly
        uh = a * b
        ca, cb = _SPLIT * a, _SPLIT * b
        ah = ca - (ca - a)
        bh = cb - (cb - b)
        al, bl = a - ah, b - bh
        ul = ((ah * bh - uh) + ah * bl + al * bh) + al * bl
        th, tl = _two_sum(c, uh)
        v = _round_to_odd(*_two_sum(tl, ul))
        out = th + v
    if not safe.all():
        idx = np.nonzero(~safe)
        out[idx] = [_fma_exact(float(x), float(y), float(z))
                    for x, y, z in zip(a[idx], b[idx], c[idx])]
    return out


def fma(a, b, c):
    """``a * b + c`` rounded once (a correctly rounded fused multiply-add), elementwise.

    a, b, c: arrays (or scalars) of one float dtype, float32 or float64, broadcast together;
    returns a new array of that dtype.
    """
    a, b, c = np.broadcast_arrays(np.asarray(a), np.asarray(b), np.asarray(c))
    dtype = np.result_type(a, b, c)
    if dtype not in (np.float32, np.float64) or not a.dtype == b.dtype == c.dtype:
        raise TypeError(f"fma needs one float dtype, got {a.dtype}, {b.dtype}, {c.dtype}")
    a, b, c = (np.ascontiguousarray(x) for x in (a, b, c))
    if dtype == np.float32:
        return _fma_f32(a, b, c)
    return _fma_f64(a, b, c)


def ema_update(emas, ps, w):
    """In place on each ``emas[i]``: ``lerp(ema, p, w)`` as PyTorch computes it (module doc).

    emas, ps: lists of 1-D contiguous arrays, pairwise of equal size, all of one float dtype;
    w: a scalar of that dtype (``1 - decay``).
    """
    if not emas:
        return
    t = emas[0].dtype.type
    w = t(w)
    small = abs(w) < t(0.5)
    coef = w if small else w - t(1)
    for e, p in zip(emas, ps):
        if e.size:
            with np.errstate(all="ignore"):   # inf - inf is NaN, as in the other backends
                d = p - e
            e[...] = fma(coef, d, e if small else p)
