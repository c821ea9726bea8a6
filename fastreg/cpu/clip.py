"""Gradient-norm reductions and scaling on the CPU with Numba (definitions in
fastreg/reference/clip.py).

Reductions accumulate in float64 over ``LANES`` partial results per task (a row of accumulators
that LLVM vectorizes without fastmath, as ``_block_sums`` in fastreg/cpu/penalty.py), tasks of
TASK elements in parallel (split kernels: share ``share`` of ``shares`` of the tasks, see
fastreg/cpu/_jit.py), their partials written to an array and combined in task order
(``_merge_parts``, ``_merge_tiles``): the same result for any number of threads. The mode
(sum of squares, of absolute values, of ``|x|**p``, or a NaN-propagating max) is decided once
per call. Scaling is one multiply in the array's dtype. ``norm_sum_at`` and ``scale_at`` run on
a whole list at once (fastreg/cpu/ema.py's AddressLists).
"""
import math

import numpy as np
from numba import carray

from .. import _threads
from ._jit import jit, launch, split
from .ema import _as_pointer
from ..reference.clip import ABS, MAX, POW, SQ  # noqa: F401  (the reductions)
from ..reference.clip import reduction_mode as _mode
from .penalty import LANES, TASK



@jit
def _merge(a, b, mode):
    """Two partial results: a sum, or a max that keeps NaN."""
    if mode != MAX:
        return a + b
    if a != a or b != b:
        return math.nan
    return a if a >= b else b


@jit
def _term(x, mode, p):
    """One element's contribution, float64: x**2, |x|, |x| (for the max) or |x|**p."""
    a = abs(np.float64(x))
    if mode == SQ:
        return a * a
    if mode == POW:
        return a ** p
    return a


@jit
def _block(xs, mode, p, lanes):
    """The float64 reduction of a slice (module doc) over ``lanes`` accumulators, four rows of
    ``lanes`` elements per pass (as ``_block_sums`` in fastreg/cpu/penalty.py: 4x fewer
    accumulator loads and stores than one row per pass; measured 3x faster on 1e7 float32)."""
    acc = np.zeros(lanes)
    passes = xs.size // (4 * lanes)
    if mode == MAX:
        for r in range(passes):
            rows = xs[4 * r * lanes:4 * (r + 1) * lanes]
            for k in range(lanes):
                m = acc[k]
                for j in range(4):
                    a = abs(np.float64(rows[j * lanes + k]))
                    # a NaN replaces the maximum and is never replaced (a > NaN is false)
                    m = a if (a > m) | (a != a) else m
                acc[k] = m
    else:
        for r in range(passes):
            rows = xs[4 * r * lanes:4 * (r + 1) * lanes]
            for k in range(lanes):
                acc[k] += ((_term(rows[k], mode, p) + _term(rows[lanes + k], mode, p))
                           + (_term(rows[2 * lanes + k], mode, p)
                              + _term(rows[3 * lanes + k], mode, p)))
    s = 0.0
    for k in range(lanes):
        s = _merge(s, acc[k], mode)
    for v in xs[passes * 4 * lanes:]:
        s = _merge(s, _term(v, mode, p), mode)
    return s


@split
def _norm_kernel(a, mode, p, lanes, parts, share, shares):
    """parts[task]: the reduction of each task of TASK elements (merged by _merge_parts)."""
    n = a.size
    ntasks = parts.size
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        parts[task] = _block(a[lo:min(lo + TASK, n)], mode, p, lanes)


@jit
def _merge_parts(parts, mode):
    """One array's result: its tasks' partials merged in order from 0 (as _merge_tiles does per
    array; a function of its own so that norm_sum_at's path does not compile it)."""
    s = 0.0
    for task in range(parts.size):
        s = _merge(s, parts[task], mode)
    return s


@split
def _row_norm_kernel(a, mode, p, lanes, out, share, shares):
    nrows = a.shape[0]
    for u in range(share * nrows // shares, (share + 1) * nrows // shares):
        out[u] = _block(a[u], mode, p, lanes)


@jit
def _scale_task(xs, s):
    for i in range(xs.size):
        xs[i] = xs[i] * s


@split
def _scale_kernel(a, s, share, shares):
    n = a.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        _scale_task(a[lo:min(lo + TASK, n)], s)


@split
def _scale_rows_kernel(a, s, share, shares):
    nrows = a.shape[0]
    for u in range(share * nrows // shares, (share + 1) * nrows // shares):
        _scale_task(a[u], s[u])


def _plan(n):
    return _threads.plan(n, "elementwise")


def norm_sum(arrays, p):
    mode, total = _mode(p), 0.0
    for a in arrays:
        if a.size:
            parts = np.empty((a.size + TASK - 1) // TASK)
            launch(_norm_kernel, _plan(a.size), a, mode, float(p), LANES[a.itemsize], parts)
            total = _merge(total, _merge_parts(parts, mode), mode)
    return float(total)


def row_norm_sums(a, p, out):
    if a.shape[0]:
        launch(_row_norm_kernel, _plan(a.size), a, _mode(p), float(p), LANES[a.itemsize], out)


def scale(arrays, s):
    for a in arrays:
        if a.size:
            launch(_scale_kernel, _plan(a.size), a, s)


def scale_rows(a, s):
    if a.size:
        launch(_scale_rows_kernel, _plan(a.size), a, s)


# ---- the list ops on AddressLists (fastreg/cpu/ema.py): one launch for a whole list ----------

@split
def _norm_tiles_kernel(a, lengths, like, mode, p, lanes, parts, share, shares):
    ntiles = lengths.size
    for t in range(share * ntiles // shares, (share + 1) * ntiles // shares):
        parts[t] = _block(carray(_as_pointer(a[t], like), lengths[t]), mode, p, lanes)


@jit
def _merge_tiles(parts, first, mode):
    """norm_sum's result from the tasks' (tiles') partials: each array's merged in order from
    0, then the arrays in order (norm_sum and norm_sum_at: the same bits for any split)."""
    total = 0.0
    for k in range(first.size - 1):
        s = 0.0
        for t in range(first[k], first[k + 1]):
            s = _merge(s, parts[t], mode)
        total = _merge(total, s, mode)
    return total


def norm_sum_at(lists, p):
    """norm_sum on AddressLists of one list."""
    mode = _mode(p)
    parts = np.empty(lists.lengths.size)
    launch(_norm_tiles_kernel, _plan(lists.total), lists.addrs[0], lists.lengths, lists.like,
           mode, float(p), LANES[lists.dtype.itemsize], parts)
    return float(_merge_tiles(parts, lists.first, mode))


@split
def _scale_tiles_kernel(a, lengths, like, s, share, shares):
    ntiles = lengths.size
    for t in range(share * ntiles // shares, (share + 1) * ntiles // shares):
        _scale_task(carray(_as_pointer(a[t], like), lengths[t]), s)


def scale_at(lists, s):
    """scale on AddressLists of one list (``s`` of their dtype)."""
    launch(_scale_tiles_kernel, _plan(lists.total), lists.addrs[0], lists.lengths, lists.like,
           lists.dtype.type(s))
