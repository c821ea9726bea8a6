"""16-bit floats in the CUDA kernels: the one place that converts their bits.

16-bit arrays reach the kernels as their uint16 bits and float32 arrays as their uint32 bits;
integer arithmetic only, so the results do not depend on the GPU's half-precision units, flush-
to-zero or NaN quieting, and the simulator runs the same code. Same rules and code as
fastreg/cpu/half.py and csrc/half.h (see fastreg/reference/half.py); tests/test_half.py checks
them on all 65536 patterns.
"""
import numpy as np
from numba import cuda

from .philox import finish, launch_1d, to_device_args


@cuda.jit(device=True)
def f16_to_f32_bits_device(h):
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:
        return np.uint32(sign | 0x7F800000 | (m << 13))
    if e == 0:
        if m == 0:
            return np.uint32(sign)
        e2 = 113
        while (m & 0x400) == 0:
            m <<= 1
            e2 -= 1
        return np.uint32(sign | (e2 << 23) | ((m & 0x3FF) << 13))
    return np.uint32(sign | ((e + 112) << 23) | (m << 13))


@cuda.jit(device=True)
def f32_to_f16_bits_device(u):
    u = np.int64(u)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:
        m = (a >> 13) & 0x3FF
        if m == 0:
            m = 1
        return np.uint16(sign | 0x7C00 | m)
    if a >= 0x477FF000:
        return np.uint16(sign | 0x7C00)
    if a >= 0x38800000:
        r = a - 0x38000000
        r += 0xFFF + ((r >> 13) & 1)
        return np.uint16(sign | (r >> 13))
    if a <= 0x33000000:
        return np.uint16(sign)
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e
    q = m >> shift
    rem = m & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1
    return np.uint16(sign | q)


@cuda.jit(device=True)
def half_to_f32_bits_device(h, kind):
    """kind 0: float16, 1: bfloat16."""
    if kind == 1:
        return np.uint32(np.int64(h) << 16)
    return f16_to_f32_bits_device(h)


@cuda.jit(device=True)
def f32_to_half_bits_device(u, kind):
    if kind == 1:
        v = np.int64(u)
        if (v & 0x7FFFFFFF) > 0x7F800000:
            return np.uint16(((v >> 16) & 0x8000) | 0x7FC0)
        return np.uint16((v + 0x7FFF + ((v >> 16) & 1)) >> 16)
    return f32_to_f16_bits_device(u)


@cuda.jit(cache=True)
def _widen_kernel(src, kind, out, n):
    start = cuda.grid(1)
    for i in range(start, n, cuda.gridsize(1)):
        out[i] = half_to_f32_bits_device(src[i], kind)


@cuda.jit(cache=True)
def _narrow_kernel(src, kind, out, n):
    start = cuda.grid(1)
    for i in range(start, n, cuda.gridsize(1)):
        out[i] = f32_to_half_bits_device(src[i], kind)


def half_to_float32(src, kind, out):
    """out (float32, 1-D) = the 16-bit values with bits src (uint16, 1-D); device arrays, or
    host arrays (copied over and back)."""
    n = src.size
    if n:
        (s,), o = to_device_args((src,), out)
        launch_1d(_widen_kernel, n, s.view(np.uint16), np.int64(kind), o.view(np.uint32),
                  np.int64(n))
        finish(out, o)


def float32_to_half(src, kind, out):
    """out (uint16 bits, 1-D) = float32 src (1-D) rounded to nearest even to kind ``kind``."""
    n = src.size
    if n:
        (s,), o = to_device_args((src,), out)
        launch_1d(_narrow_kernel, n, s.view(np.uint32), np.int64(kind), o.view(np.uint16),
                  np.int64(n))
        finish(out, o)
