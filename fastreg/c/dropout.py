"""Dropout kernels of backend "c" (csrc/dropout.c).

Same names, signatures and results as fastreg.reference.dropout; inputs are already validated
and contiguous, ``out`` may be ``x`` (in place).
"""
import numpy as np

from . import _check, _plan, ffi, lib
from .penalty import _array_type, _scalar
from .philox import _call_out, _in, _out

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_F32 = np.dtype(np.float32)
if lib is not None:
    # dtype -> (kernel, its name, cffi array type): one lookup for the common call
    _DROPOUT = {dt: (getattr(lib, f"fr_dropout_{suf}"), f"fr_dropout_{suf}", _array_type(ctype))
                for dt, ctype, suf in ((np.dtype(np.float32), "float", "f32"),
                                       (np.dtype(np.float64), "double", "f64"))}


def _kernel(dtype, name):
    suffix = "f32" if dtype == np.float32 else "f64"
    return getattr(lib, f"fr_{name}_{suffix}"), f"fr_{name}_{suffix}"


def dropout(x, seed, offset, threshold, scale, out):
    """out = where(word(offset + i) >= threshold, x * scale, +0.0) on 1-D x and out (out may be x)."""
    n = x.size
    if n == 0:
        return
    fn, name, T = _DROPOUT[x.dtype]
    s = _scalar(x.dtype, scale)
    _plan(n, "random")
    if out is not x and x.flags.aligned and out.flags.aligned:  # the common call, out of place
        _check(fn(ffi.from_buffer(T, x), seed, offset, threshold, s,
                  ffi.from_buffer(T, out, require_writable=True), n), name)
        return
    ctype = _CTYPE[x.dtype]
    if out is x and x.flags.aligned:
        p = _out(ctype, x)
        _check(fn(p, seed, offset, threshold, s, p, n), name)
        return
    xp = _in(ctype, x)
    _call_out(out, lambda o: _check(fn(xp, seed, offset, threshold, s, _out(ctype, o), n), name))


def dropout_half(x, kind, seed, offset, threshold, scale, out):
    """``dropout`` on 16-bit x and out (uint16 bits of kind 0 float16 / 1 bfloat16, 1-D; out may
    be x), float32 scale: the float32 result on the widened x rounded to nearest even, in one
    pass (csrc/dropout.c fr_dropout_half); bit for bit the conversion passes of fastreg._half
    around ``dropout``."""
    n = x.size
    if n == 0:
        return
    s = _scalar(_F32, scale)
    _plan(n, "random")
    if out is x and x.flags.aligned:
        p = _out("uint16_t", x)
        _check(lib.fr_dropout_half(p, kind, seed, offset, threshold, s, p, n), "fr_dropout_half")
        return
    xp = _in("uint16_t", x)
    _call_out(out, lambda o: _check(lib.fr_dropout_half(xp, kind, seed, offset, threshold, s,
                                                        _out("uint16_t", o), n),
                                    "fr_dropout_half"))


def dropout_mask(seed, offset, threshold, out):
    """out[i] = 1 where element i is kept, else 0 (uint8 or bool, 1-D)."""
    n = out.size
    if n == 0:
        return
    _plan(n, "random")
    _call_out(out, lambda o: _check(
        lib.fr_dropout_mask(seed, offset, threshold, _out("uint8_t", o), n), "fr_dropout_mask"))


def dropout_mask_packed(seed, offset, threshold, n, out):
    """Keep bits for n elements packed LSB-first into out (uint8, (n + 7) // 8); pad bits 0."""
    if n == 0:
        return
    _plan(n, "random")
    _call_out(out, lambda o: _check(
        lib.fr_dropout_mask_packed(seed, offset, threshold, n, _out("uint8_t", o)),
        "fr_dropout_mask_packed"))


def group_dropout(x, keep, scale, out):
    """x, out (N, M1, C, M2); keep (N, C) uint8 or bool: out = where(keep[n, c], x * scale, 0)."""
    if x.size == 0:
        return
    N, M1, C, M2 = x.shape
    fn, name = _kernel(x.dtype, "group_dropout")
    ctype = _CTYPE[x.dtype]
    s = _scalar(x.dtype, scale)
    k = _in("uint8_t", keep)
    _plan(x.size, "elementwise")
    if out is x and x.flags.aligned:
        p = _out(ctype, x)
        _check(fn(p, k, s, p, N, M1, C, M2), name)
        return
    xp = _in(ctype, x)
    _call_out(out, lambda o: _check(fn(xp, k, s, _out(ctype, o), N, M1, C, M2), name))
