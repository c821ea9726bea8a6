"""The weight-EMA update of backend "c" (csrc/multi_tensor.c).

Same name, signature and result (bit for bit) as fastreg.reference.ema.ema_update: one C call
for the whole list (one parallel region over the tiles of every array), its thread count
planned from the total number of elements. Arrays are passed without copying, except one that
is not aligned for its dtype (possible with views of raw buffers), which goes through an
aligned copy (written back when the kernel writes it).
"""
from . import _check, _plan, ffi
from .penalty import _CTYPE, _aligned, _kernel, _ptr, _scalar, _write_back


def _pointers(ctype, arrays, writable):
    """(cffi pointer array, keep-alive list, sizes) for a list of 1-D arrays."""
    bufs = [_ptr(ctype, a, writable) for a in arrays]
    ptrs = ffi.new(f"{ctype} *[]", bufs)
    sizes = ffi.new("int64_t[]", [a.size for a in arrays])
    return ptrs, bufs, sizes


def ema_update(emas, ps, w):
    """ema = fma(coef, p - ema, base) for each pair (one call for the list)."""
    pairs = [(e, p) for e, p in zip(emas, ps) if e.size]
    if not pairs:
        return
    dt = pairs[0][0].dtype
    ctype = _CTYPE[dt]
    used = [(_aligned(e), _aligned(p)) for e, p in pairs]
    eptrs, ekeep, sizes = _pointers(ctype, [e for e, _ in used], True)
    pptrs, pkeep, _ = _pointers(ctype, [p for _, p in used], False)
    fn, name = _kernel(dt, "ema_update")
    _plan(sum(e.size for e, _ in pairs), "elementwise")
    _check(fn(eptrs, pptrs, sizes, len(used), _scalar(dt, w)), name)
    for (e, _), (ea, _) in zip(pairs, used):
        _write_back(e, ea)
