"""The weight-EMA update of backend "c" (csrc/multi_tensor.c).

Same name, signature and result (bit for bit) as fastreg.reference.ema.ema_update: one C call
for the whole list (one parallel region over the tiles of every array), its thread count
planned from the total number of elements. Arrays are passed without copying, except one that
is not aligned for its dtype (possible with views of raw buffers), which goes through an
aligned copy (written back when the kernel writes it).

``address_lists`` and the ``*_at`` functions (here and in clip.py) run the same kernels on
pointer arrays built once from data addresses: fastreg/_multi.py keeps them in its plans of
lists already checked, so that a call with the same arrays as before builds nothing.
"""
from . import _check, _plan, ffi
from .penalty import _CTYPE, _aligned, _kernel, _ptr, _scalar, _write_back


def _pointers(ctype, arrays, writable):
    """(cffi pointer array, keep-alive list, sizes) for a list of 1-D arrays."""
    bufs = [_ptr(ctype, a, writable) for a in arrays]
    ptrs = ffi.new(f"{ctype} *[]", bufs)
    sizes = ffi.new("int64_t[]", [a.size for a in arrays])
    return ptrs, bufs, sizes


class AddressLists:
    """Pointer arrays for lists of contiguous, aligned 1-D arrays of one dtype, given by data
    address, and their element counts: built once by ``address_lists``. Holds no reference to
    the arrays: whoever passes it to a kernel makes sure that they are alive and unchanged
    (fastreg/_multi.py's plans)."""
    __slots__ = ("dtype", "ptrs", "sizes", "count", "total", "_addrs")

    def __init__(self, dtype, columns, sizes):
        ctype = _CTYPE[dtype]
        self.dtype = dtype
        self._addrs = [ffi.new("uintptr_t[]", col) for col in columns]   # owns the memory
        self.ptrs = [ffi.cast(f"{ctype} **", a) for a in self._addrs]
        self.sizes = ffi.new("int64_t[]", sizes)
        self.count = len(sizes)
        self.total = sum(sizes)


def address_lists(dtype, columns, sizes):
    """AddressLists of ``columns`` (lists of addresses: one per array list, e.g. ema and p;
    every address non-null, the same ``sizes`` > 0 for each column)."""
    return AddressLists(dtype, columns, sizes)


def ema_update_at(lists, w):
    """ema_update on AddressLists of (ema, p)."""
    fn, name = _kernel(lists.dtype, "ema_update")
    _plan(lists.total, "elementwise")
    _check(fn(lists.ptrs[0], lists.ptrs[1], lists.sizes, lists.count,
              _scalar(lists.dtype, w)), name)


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
