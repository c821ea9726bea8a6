"""Lists of arrays for the multi-tensor ops (fastreg.ema, fastreg.clip): checks and grouping.

A multi-tensor op takes a list of arrays (a single array counts as a list of one), checks every
one before any work (naming it, ``grads[3]``), and hands the kernels, per dtype, lists of 1-D
contiguous views. A non-contiguous host array updated in place goes through a contiguous copy
that ``Batch.write_back`` copies back; device arrays must be C-contiguous (fastreg never copies
between devices behind your back).
"""
import bisect
import itertools

import numpy as np
from numpy.lib.array_utils import byte_bounds

from . import _arrays
from ._dispatch import flat


def as_list(arrays, name):
    """``arrays`` as a list: a sequence or iterable of arrays, or one array."""
    if isinstance(arrays, np.ndarray) or _arrays.is_device(arrays):
        return [arrays]
    if isinstance(arrays, (str, bytes, dict)) or not hasattr(arrays, "__iter__"):
        raise TypeError(f"{name} must be a list of arrays (or one array), got "
                        f"{type(arrays).__name__}")
    return list(arrays)


def _span(a):
    """(first byte, one past the last byte) of a host view or a device array's info."""
    if isinstance(a, np.ndarray):
        if a.flags.c_contiguous:   # the common case, without byte_bounds' Python code
            lo = a.__array_interface__["data"][0]
            return lo, lo + a.nbytes
        return byte_bounds(a)
    return a.ptr, a.ptr + a.size * a.dtype.itemsize


def _overlap(a, b):
    """Whether two arrays (host views or device infos) share a byte."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b) and np.shares_memory(a, b)
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _host_span(a):
    """_span of a host ndarray, its address taken through cffi's buffer view: for long lists
    the addresses are the costly part of these checks (``__array_interface__`` builds a dict,
    3.3 us per array here; the buffer view 1.6 us)."""
    if a.flags.c_contiguous and a.size:
        lo = _address(a)
        return lo, lo + a.nbytes
    return byte_bounds(a)


_FFI = []


def _address(a):
    """The data address of a C-contiguous host ndarray."""
    if not _FFI:
        import cffi
        _FFI.append(cffi.FFI())
    ffi = _FFI[0]
    return int(ffi.cast("uintptr_t", ffi.from_buffer(a)))


def spans_of(arrays):
    """check_targets' spans of arrays known to be valid and disjoint (e.g. one's own copies)."""
    spans = []
    for i, a in enumerate(arrays):
        info = a if isinstance(a, np.ndarray) else _arrays.describe(a, "array")
        if info.size:
            spans.append((*_span(info), i))
    return sorted(spans)


def check_targets(arrays, name):
    """Arrays updated in place: float32/float64, writable, all on the host or all on the device,
    no two sharing memory. Returns (list of host views or device arrays, on_device, their
    spans: a sorted list of (first byte, end, index) for check_sources)."""
    out, infos, spans, device = [], [], [], None
    for i, a in enumerate(arrays):
        if type(a) is np.ndarray and a.dtype in _arrays.FLOAT_DTYPES:   # fast path
            if a.flags.writeable:
                dev = False
                if device is None:
                    device = False
                if device is False:
                    out.append(a)
                    infos.append(a)
                    if a.size:
                        spans.append((*_host_span(a), i))
                    continue
        arr, dev = _arrays.check_in_place(a, f"{name}[{i}]")   # the checks, with messages
        if device is None:
            device = dev
        elif dev != device:
            raise ValueError(f"{name} mixes CUDA device arrays and host arrays ({name}[{i}] "
                             f"is {'a device' if dev else 'a host'} array, {name}[0] is not)")
        out.append(arr)
        info = arr if not dev else _arrays.describe(arr, f"{name}[{i}]")
        infos.append(info)
        if info.size:
            spans.append((*_span(info), i))
    spans.sort()
    for k in range(len(spans)):
        # neighbours in address order, and any later span that starts before this one ends
        lo, hi, i = spans[k]
        m = k + 1
        while m < len(spans) and spans[m][0] < hi:
            j = spans[m][2]
            m += 1
            if _overlap(infos[i], infos[j]):
                raise ValueError(f"{name}[{min(i, j)}] and {name}[{max(i, j)}] share memory: "
                                 "each array is updated in place once, so each must be its "
                                 "own array")
    return out, bool(device), spans


def check_sources(arrays, targets, name, target_name, device, spans):
    """Read-only inputs paired with ``targets`` (same length, shapes, dtypes, device); none may
    overlap a target, except exactly the same array at the same index. ``spans``: the targets'
    (from check_targets). Returns their descriptions (host views, or the device arrays)."""
    if len(arrays) != len(targets):
        raise ValueError(f"{name} has {len(arrays)} arrays, {target_name} has {len(targets)}")
    out, sspans = [], []
    for i, (a, t) in enumerate(zip(arrays, targets)):
        if not device and type(a) is np.ndarray and type(t) is np.ndarray \
                and a.shape == t.shape and a.dtype == t.dtype:   # fast path
            out.append(a)
            if a.size:
                sspans.append(_host_span(a))
            else:
                sspans.append(None)
            continue
        n = f"{name}[{i}]"
        if _arrays.is_device(a) != device:
            raise ValueError(f"{n} must be on the same device as {target_name}[{i}]")
        info = _arrays.describe(a, n)
        tinfo = t if not device else _arrays.describe(t, target_name)
        if tuple(info.shape) != tuple(tinfo.shape):
            raise ValueError(f"{n} has shape {tuple(info.shape)}, {target_name}[{i}] has "
                             f"{tuple(tinfo.shape)}")
        if info.dtype != tinfo.dtype:
            raise ValueError(f"{n} has dtype {info.dtype}, {target_name}[{i}] has "
                             f"{tinfo.dtype}")
        if device and not info.c_contiguous:
            raise ValueError(f"{n}: non-contiguous CUDA arrays are not supported")
        out.append(a if device else info)
        sspans.append(_span(info) if info.size else None)
    # a source overlapping a target (other than itself at the same index) would be read while
    # that target is being written
    starts = [t[0] for t in spans]
    ends = list(itertools.accumulate((t[1] for t in spans), max))
    for j, span in enumerate(sspans):
        if span is None:
            continue
        lo, hi = span
        # targets starting before s ends, walked back while some earlier one may reach lo
        k = bisect.bisect_left(starts, hi) - 1
        while k >= 0 and ends[k] > lo:
            t_lo, t_hi, i = spans[k]
            k -= 1
            if t_hi <= lo:
                continue
            s = out[j] if not device else _arrays.describe(out[j], name)
            t = targets[i] if not device else _arrays.describe(targets[i], target_name)
            if not _overlap(s, t):
                continue
            if not (i == j and _same(s, t)):
                raise ValueError(f"{name}[{j}] overlaps {target_name}[{i}]: an input may not "
                                 "share memory with an array updated in place")
    return out


def _same(a, b):
    if isinstance(a, np.ndarray):
        return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                and a.shape == b.shape and a.strides == b.strides)
    return a.ptr == b.ptr and tuple(a.shape) == tuple(b.shape)


class Batch:
    """Kernel-ready 1-D contiguous views of a list of arrays, grouped by dtype.

    ``groups``: ``{dtype: [index, ...]}`` in list order; ``views[i]`` the 1-D view of array i;
    ``write_back()`` copies the results of non-contiguous host arrays back (a no-op otherwise).
    """

    def __init__(self, job, arrays, in_place):
        self.views, self.groups, self._copies = [], {}, []
        self._job = job
        for i, a in enumerate(arrays):
            c = job.contig(a)   # host: a itself when contiguous; device: a view, or a copy
            if in_place and c is not a and (not job.device or isinstance(a, np.ndarray)):
                self._copies.append((a, c))
            self.views.append(flat(c))
            self.groups.setdefault(np.dtype(c.dtype), []).append(i)

    def write_back(self):
        """Copy the results held in copies (of non-contiguous host arrays, or of host arrays
        sent to the device) back into the caller's arrays."""
        for a, c in self._copies:
            a[...] = self._job.mod.copy_to_host(c) if self._job.device else c
