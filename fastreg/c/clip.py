"""Gradient-norm reductions and scaling of backend "c" (csrc/multi_tensor.c).

Same names, signatures and results as fastreg.reference.clip: scaling bit for bit, the
reductions in double in another order (per tile, tiles merged in order: the same result for any
number of threads). A list op makes one C call for the whole list; pointers are passed as in
fastreg/c/ema.py (``norm_sum_at`` and ``scale_at``: on its AddressLists).
"""

import numpy as np

from . import _check, _plan, ffi
from .ema import _pointers
from ..reference.clip import reduction_mode as _mode
from .penalty import _CTYPE, _aligned, _kernel, _ptr, _scalar, _write_back


def norm_sum(arrays, p):
    """sum |x|**p over every element (max |x| for p = inf), float64."""
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return 0.0
    dt = arrays[0].dtype
    ptrs, keep, sizes = _pointers(_CTYPE[dt], [_aligned(a) for a in arrays], False)
    fn, name = _kernel(dt, "norm_sum")
    result = ffi.new("double *")
    _plan(sum(a.size for a in arrays), "elementwise")
    _check(fn(ptrs, sizes, len(arrays), _mode(p), float(p), result), name)
    return float(result[0])


def norm_sum_at(lists, p):
    """norm_sum on AddressLists (fastreg/c/ema.py) of one list."""
    fn, name = _kernel(lists.dtype, "norm_sum")
    result = ffi.new("double *")
    _plan(lists.total, "elementwise")
    _check(fn(lists.ptrs[0], lists.sizes, lists.count, _mode(p), float(p), result), name)
    return float(result[0])


def scale_at(lists, s):
    """scale on AddressLists of one list."""
    fn, name = _kernel(lists.dtype, "scale")
    _plan(lists.total, "elementwise")
    _check(fn(lists.ptrs[0], lists.sizes, lists.count, _scalar(lists.dtype, s)), name)


def row_norm_sums(a, p, out):
    """out[u] = the reduction of row u of a (U, K); out float64 (U,)."""
    U, K = a.shape
    if U == 0:
        return
    fn, name = _kernel(a.dtype, "row_norm_sums")
    o = _aligned(out)
    _plan(a.size, "elementwise")
    _check(fn(_ptr(_CTYPE[a.dtype], _aligned(a)), U, K, _mode(p), float(p),
              _ptr("double", o, True)), name)
    _write_back(out, o)


def scale(arrays, s):
    """a = a * s in place for each array (one call for the list)."""
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return
    dt = arrays[0].dtype
    used = [_aligned(a) for a in arrays]
    ptrs, keep, sizes = _pointers(_CTYPE[dt], used, True)
    fn, name = _kernel(dt, "scale")
    _plan(sum(a.size for a in arrays), "elementwise")
    _check(fn(ptrs, sizes, len(used), _scalar(dt, s)), name)
    for a, u in zip(arrays, used):
        _write_back(a, u)


def scale_rows(a, s):
    """a[u, :] = a[u, :] * s[u] in place; a (U, K), s (U,) of a's dtype."""
    U, K = a.shape
    if a.size == 0:
        return
    fn, name = _kernel(a.dtype, "scale_rows")
    ctype = _CTYPE[a.dtype]
    aa = _aligned(a)
    _plan(a.size, "elementwise")
    _check(fn(_ptr(ctype, aa, True), _ptr(ctype, _aligned(np.ascontiguousarray(s))), U, K),
           name)
    _write_back(a, aa)
