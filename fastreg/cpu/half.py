"""16-bit floats in the Numba kernels: the one place that converts their bits.

Numba has no bfloat16 and slow float16 arithmetic, so 16-bit arrays reach the kernels as their
uint16 bits and float32 arrays as their uint32 bits; the helpers below convert bit patterns with
integer arithmetic only (no float operation, so no flush-to-zero or NaN quieting can creep in),
exactly as NumPy (float16) and ml_dtypes (bfloat16) do (fastreg/reference/half.py):
round to nearest even, overflow to inf, subnormals kept, NaN rules of reference/half.py.
tests/test_half.py checks them on all 65536 patterns and on float32 ties, subnormals, inf, NaN.
"""
import numpy as np

from .. import _threads
from ._jit import inline, launch, split


@inline
def f16_to_f32_bits(h):
    """float32 bits (uint32) of the float16 with bits h: exact."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:                      # inf, NaN (payload kept)
        return np.uint32(sign | 0x7F800000 | (m << 13))
    if e == 0:
        if m == 0:
            return np.uint32(sign)
        e2 = 113                       # subnormal m * 2**-24: normalize
        while (m & 0x400) == 0:
            m <<= 1
            e2 -= 1
        return np.uint32(sign | (e2 << 23) | ((m & 0x3FF) << 13))
    return np.uint32(sign | ((e + 112) << 23) | (m << 13))


@inline
def f32_to_f16_bits(u):
    """float16 bits (uint16) of the float32 with bits u, rounded to nearest even."""
    u = np.int64(u)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:                 # NaN: top 10 payload bits, never payload 0 (= inf)
        m = (a >> 13) & 0x3FF
        return np.uint16(sign | 0x7C00 | (m if m != 0 else 1))
    if a >= 0x477FF000:                # >= 65520 (the tie above 65504 rounds up): inf
        return np.uint16(sign | 0x7C00)
    if a >= 0x38800000:                # normal float16: rebias, round at bit 13
        r = a - 0x38000000
        r += 0xFFF + ((r >> 13) & 1)
        return np.uint16(sign | (r >> 13))
    if a <= 0x33000000:                # <= 2**-25 (the tie with 0 rounds to even 0)
        return np.uint16(sign)
    e = a >> 23                        # subnormal float16: significand in units of 2**-24
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1
    return np.uint16(sign | q)


@inline
def bf16_to_f32_bits(h):
    """float32 bits of the bfloat16 with bits h: exact."""
    return np.uint32(np.int64(h) << 16)


@inline
def f32_to_bf16_bits(u):
    """bfloat16 bits of the float32 with bits u, rounded to nearest even (NaN: quiet 0x7fc0
    with its sign)."""
    u = np.int64(u)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16(((u >> 16) & 0x8000) | 0x7FC0)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@inline
def half_to_f32_bits(h, kind):
    """kind 0: float16, 1: bfloat16 (fastreg._arrays.HALF_F16 / HALF_BF16)."""
    return bf16_to_f32_bits(h) if kind == 1 else f16_to_f32_bits(h)


@inline
def f32_to_half_bits(u, kind):
    return f32_to_bf16_bits(u) if kind == 1 else f32_to_f16_bits(u)


@split
def _widen_kernel(src, kind, out, share, shares):
    n = src.size
    for i in range(share * n // shares, (share + 1) * n // shares):
        out[i] = half_to_f32_bits(src[i], kind)


@split
def _narrow_kernel(src, kind, out, share, shares):
    n = src.size
    for i in range(share * n // shares, (share + 1) * n // shares):
        out[i] = f32_to_half_bits(src[i], kind)


def half_to_float32(src, kind, out):
    """out (float32, 1-D) = the 16-bit values with bits src (uint16, 1-D) of kind ``kind``."""
    launch(_widen_kernel, _threads.plan(src.size, "elementwise"), src, np.int64(kind),
           out.view(np.uint32))


def float32_to_half(src, kind, out):
    """out (uint16 bits, 1-D) = float32 src (1-D) rounded to nearest even to kind ``kind``."""
    launch(_narrow_kernel, _threads.plan(src.size, "elementwise"), src.view(np.uint32),
           np.int64(kind), out)
