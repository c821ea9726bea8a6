"""16-bit floats (float16, bfloat16) in the reference: the rounding every backend follows.

A 16-bit op computes in float32 and rounds its float32 result to the 16-bit type to nearest,
ties to even, as NumPy (float16) and ml_dtypes (bfloat16) convert:

- float16 <- float32: overflow (|v| >= 65520) gives inf; subnormals are rounded, not flushed;
  a NaN keeps its sign and the top 10 bits of its payload (payload 0 becomes 1), unquieted.
- bfloat16 <- float32: overflow gives inf; a NaN becomes the quiet NaN 0x7fc0 with its sign.
- float32 <- float16 / bfloat16 is exact (a NaN keeps its sign and payload).

Kernels of the other backends see 16-bit arrays as their uint16 bits (``fastreg._arrays
.half_bits``) and convert with their own bit-level helpers (fastreg/cpu/half.py, csrc/half.h,
fastreg/cuda/half.py), tested against this module on all 65536 patterns.
"""
import numpy as np

from .._arrays import half_dtype

_F32 = np.dtype(np.float32)


def to_float32(a):
    """A float32 copy of a 16-bit (or float32) array: exact."""
    return np.asarray(a).astype(np.float32)


def round_half(a, dtype):
    """float32 ``a`` rounded to nearest even to the 16-bit ``dtype`` (a new array)."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / overflow warnings of the cast
        return np.asarray(a, np.float32).astype(dtype)


def half_to_float32(src, kind, out):
    """out (float32, 1-D) = the values of src (uint16 bits of kind ``kind``, 1-D)."""
    out[...] = src.view(half_dtype(kind)).astype(np.float32)


def float32_to_half(src, kind, out):
    """out (uint16 bits of kind ``kind``, 1-D) = src (float32, 1-D) rounded to nearest even."""
    out[...] = round_half(src, half_dtype(kind)).view(np.uint16)
