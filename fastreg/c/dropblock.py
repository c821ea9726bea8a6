"""DropBlock kernels of backend "c" (csrc/dropblock.c).

Same names, signatures and results (bit for bit) as fastreg.reference.dropblock; arrays are
already validated and C-contiguous, ``out`` may be ``x`` for drop_block_apply.
"""
import numpy as np

from . import _check, _plan, ffi, lib
from .philox import _call_out, _in, _out

__all__ = ["drop_block_mask", "drop_block_apply"]

_CTYPE = {np.dtype(np.float32): ("float", "f32"), np.dtype(np.float64): ("double", "f64")}


def drop_block_mask(seed, offset, threshold, block, channels_last, mask):
    """mask = 1 where kept (its layout: (N, C, H, W), or (N, H, W, C) when channels_last);
    returns the number of kept elements."""
    if channels_last:
        n, h, w, c = mask.shape
    else:
        n, c, h, w = mask.shape
    if mask.size == 0:
        return 0
    kept = ffi.new("int64_t *")
    _plan(mask.size, "random")
    _call_out(mask, lambda o: _check(lib.fr_drop_block_mask(
        seed, offset, threshold, block, int(bool(channels_last)), _out("uint8_t", o), n, c, h,
        w, kept), "fr_drop_block_mask"))
    return int(kept[0])


def drop_block_apply(x, mask, scale, out):
    """out = where(mask, x * scale, +0.0) on 1-D x, mask and out (out may be x)."""
    n = x.size
    if n == 0:
        return
    ctype, suffix = _CTYPE[x.dtype]
    fn, name = getattr(lib, f"fr_drop_block_apply_{suffix}"), f"fr_drop_block_apply_{suffix}"
    s = float(x.dtype.type(scale))
    m = _in("uint8_t", np.ascontiguousarray(mask).view(np.uint8))
    _plan(n, "elementwise")
    if out is x and x.flags.aligned:
        p = _out(ctype, x)
        _check(fn(p, m, s, p, n), name)
        return
    xp = _in(ctype, x)
    _call_out(out, lambda o: _check(fn(xp, m, s, _out(ctype, o), n), name))
