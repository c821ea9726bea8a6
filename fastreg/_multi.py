"""Lists of arrays for the multi-tensor ops (fastreg.ema, fastreg.clip): checks and grouping.

A multi-tensor op takes a list of arrays (a single array counts as a list of one), checks every
one before any work (naming it, ``grads[3]``), and hands the kernels, per dtype, lists of 1-D
contiguous views. A non-contiguous host array updated in place goes through a contiguous copy
that ``Batch.write_back`` copies back; device arrays must be C-contiguous (fastreg never copies
between devices behind your back).

Plans (``plan``, ``run``): a training loop passes the same arrays at every step, and checking a list
costs about 17 us per array in Python (addresses, spans, overlaps, views, C pointer lists), which
for a model's ~160 arrays is more than the kernels' own time. So for host lists whose arrays are all
plain, C-contiguous, aligned float32/float64 ndarrays that pass every check, the outcome (dtype
groups, element counts, data addresses, and the C and cpu backends' address lists, on which one
launch covers the whole list) is kept in a small cache (``_CACHE_SIZE`` plans, least recently used
dropped), keyed by the lists' lengths and the ids of their ends. A later call reuses a plan only
after checking, for every array, that it is the same object (a weak reference to it is alive and is
it) with the same shape, dtype and flags (``flags.num``: contiguity, alignment, writability) as when
it was checked. What the checks found depends on nothing else: an array's memory cannot move while
the object lives, because NumPy moves it only in ``ndarray.resize``, which it refuses for an array
that has a weak reference (so, while a plan holds one, ``a.resize(...)`` in place raises;
``np.resize`` or a new array works). Not covered, as they leave NumPy's own views dangling too:
``ndarray.__setstate__`` called on a live array (pickle's internal hook), ``base.resize(...,
refcheck=False)`` on the owner of a remembered view, and ``resize_`` / ``set_`` on a torch tensor
whose NumPy view was remembered. Lists that do not qualify (device arrays, non-contiguous or
unaligned views, subclasses, anything that fails a check) take the checks above at every call, which
also raise the errors. A plan holds no strong reference to an array (no leak).
"""
import bisect
import itertools
import operator
import os
import threading
import weakref

import numpy as np
from numpy.lib.array_utils import byte_bounds

from . import _arrays, _dispatch
from ._dispatch import flat


def listed(arrays):
    """An iterable of arrays that is not a list or a tuple (a generator such as
    ``model.parameters()``, ``map``, a dict's values, a ``torch.nn.ParameterList``) as a list,
    so that the torch check of the public op sees its tensors and the op can walk it more than
    once; anything else (a list, a tuple, one array or tensor: they have a ``shape``, a string)
    as it is."""
    if (type(arrays) in (list, tuple) or hasattr(arrays, "shape")
            or not hasattr(arrays, "__iter__") or isinstance(arrays, (str, bytes, dict))):
        return arrays
    return list(arrays)


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


def _ffi():
    if not _FFI:
        import cffi
        _FFI.append(cffi.FFI())
    return _FFI[0]


def _address(a):
    """The data address of a C-contiguous host ndarray."""
    ffi = _ffi()
    return int(ffi.cast("uintptr_t", ffi.from_buffer(a)))


def _addresses(arrays):
    """The data addresses of C-contiguous host ndarrays, as ints: their buffer views written
    into one C array of pointers and read back as integers (a third of the cost of _address
    per array)."""
    ffi = _ffi()
    bufs = [ffi.from_buffer(a) for a in arrays]
    ptrs = ffi.new("char *[]", bufs)   # owns the memory that the cast below points to
    return ffi.unpack(ffi.cast("uintptr_t *", ptrs), len(bufs))


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


# ---- plans: checked host lists, reused while their arrays are unchanged -------------------------

_CACHE_SIZE = 16
_plans = {}                 # key -> Plan, least recently used first
_plans_lock = threading.Lock()


def _after_fork_in_child():
    """A child forked while another thread held the lock gets a free one (and no plans)."""
    global _plans_lock
    _plans_lock = threading.Lock()
    _plans.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# what a plan's checks depend on, besides the array's identity and (pinned) memory
_META = operator.attrgetter("shape", "dtype", "flags.num")
_deref = weakref.ref.__call__
_SIZE = operator.attrgetter("size")
_C_CONTIGUOUS, _ALIGNED, _WRITEABLE = 0x1, 0x100, 0x400   # NPY_ARRAY_* bits of flags.num
assert np.ones(1).flags.num & (_C_CONTIGUOUS | _ALIGNED | _WRITEABLE) == 0x501


class Plan:
    """What the checks found for host lists of arrays (see the module doc).

    ``groups``: ``{dtype: [index, ...]}`` of the non-empty arrays, in list order (indices into
    the targets, equal to the sources' where both are given); ``dtypes``: the distinct dtypes
    of the targets (or of the one list), empty arrays included (clip's coefficient dtype);
    ``sizes`` and ``addrs``: element counts and data addresses, per index of the concatenated
    lists (targets, then sources).
    """
    __slots__ = ("refs", "meta", "nt", "groups", "dtypes", "sizes", "addrs", "_bound")

    def bound(self, mod, dtype):
        """``mod.address_lists`` for one dtype group, built once: the backend's pointer or tile
        tables (addresses only, no reference to an array)."""
        key = (mod.__name__, dtype)
        b = self._bound.get(key)
        if b is None:
            idx = self.groups[dtype]
            cols = [[self.addrs[i] for i in idx]]
            if len(self.addrs) > self.nt > 0:   # targets and sources: a second list
                cols.append([self.addrs[self.nt + i] for i in idx])
            b = self._bound[key] = mod.address_lists(dtype, cols, [self.sizes[i] for i in idx])
        return b


def plan(targets, sources):
    """The Plan of host lists that pass every check, or None (the caller then takes the general
    path: check_targets / check_sources / Batch, which raise the errors).

    ``targets``: arrays updated in place (writable, no two sharing memory), or None;
    ``sources``: arrays read, paired with ``targets`` (same length, shapes, dtypes, none
    overlapping a target except the same array at the same index), or read alone when
    ``targets`` is None. Only plain, C-contiguous, aligned float32/float64 ndarrays qualify.
    """
    nt = -1 if targets is None else len(targets)
    ns = -1 if sources is None else len(sources)
    if nt >= 0 and ns >= 0 and nt != ns:
        return None
    arrays = (targets or []) + (sources or [])
    if not arrays:
        return None
    # the key names the list by its ends (cheap); the plan's weak references then tell
    # whether every array is the same object (a list of other arrays rebuilds the plan)
    key = (nt, ns, id(arrays[0]), id(arrays[-1]))
    with _plans_lock:
        p = _plans.pop(key, None)
    if p is not None and all(map(operator.is_, map(_deref, p.refs), arrays)) \
            and list(map(_META, arrays)) == p.meta:
        with _plans_lock:
            _plans[key] = p   # now the most recently used
        return p
    p = _build(targets, sources, arrays, nt)
    if p is not None:
        with _plans_lock:
            _plans[key] = p
            while len(_plans) > _CACHE_SIZE:
                del _plans[next(iter(_plans))]
    return p


def host_plan(targets, sources, backend):
    """``(plan, job)`` when ``plan(targets, sources)`` covers the lists and ``backend`` resolves
    to a host backend for them (the list ops' fast path), else ``(None, None)``: the caller
    then takes the general checks."""
    p = plan(targets, sources)
    if p is None:
        return None, None
    job = _dispatch.job(_dispatch.resolve(backend, (targets or sources)[0]), True)
    return (None, None) if job.device else (p, job)


def forget():
    """Drop every cached plan (their weak references with them)."""
    with _plans_lock:
        _plans.clear()


def _build(targets, sources, arrays, nt):
    """plan's checks, on a miss; None where one fails or an array does not qualify."""
    if any(type(a) is not np.ndarray for a in arrays):
        return None
    meta = list(map(_META, arrays))
    need = _C_CONTIGUOUS | _ALIGNED
    for k, (shape, dtype, flags) in enumerate(meta):
        want = need | _WRITEABLE if k < nt else need
        if dtype not in _arrays.FLOAT_DTYPES or flags & want != want:
            return None
    if targets is not None and sources is not None:
        for (shape, dtype, _), (s_shape, s_dtype, _) in zip(meta, meta[nt:]):
            if shape != s_shape or dtype != s_dtype:
                return None
    sizes = list(map(_SIZE, arrays))
    addrs = _addresses(arrays)   # (an empty array's is never used)
    if targets is not None and not _disjoint(arrays, meta, sizes, addrs, max(nt, 0)):
        return None
    p = Plan()
    p.refs = list(map(weakref.ref, arrays))
    p.meta, p.nt, p.sizes, p.addrs, p._bound = meta, max(nt, 0), sizes, addrs, {}
    n_first = nt if targets is not None else len(arrays)   # the targets, or the read list
    p.dtypes = list(dict.fromkeys(m[1] for m in meta[:n_first]))
    p.groups = {}
    for i in range(n_first):
        if sizes[i]:
            p.groups.setdefault(meta[i][1], []).append(i)
    return p


def _disjoint(arrays, meta, sizes, addrs, nt):
    """No two targets share a byte, and no source overlaps a target other than the same
    memory at its own index (C-contiguous arrays: a byte range overlap is a shared byte)."""
    spans = sorted((addrs[i], addrs[i] + sizes[i] * meta[i][1].itemsize, i)
                   for i in range(nt) if sizes[i])
    for (_, hi, _), (lo, _, _) in zip(spans, spans[1:]):
        if lo < hi:
            return False
    starts = [s[0] for s in spans]
    for j in range(nt, len(arrays)):
        if not sizes[j]:
            continue
        lo = addrs[j]
        hi = lo + sizes[j] * meta[j][1].itemsize
        k = bisect.bisect_left(starts, hi) - 1   # the last target starting before hi
        if k >= 0 and spans[k][1] > lo:
            t_lo, t_hi, i = spans[k]
            if not (i == j - nt and t_lo == lo and t_hi == hi):
                return False
    return True


def run(job, p, name, lists, scalar):
    """List op ``name`` of ``job``'s (host) backend over each dtype group of plan ``p``.

    ``lists``: the lists ``p`` was made for (targets and sources, or the one list);
    ``scalar(dtype)``: the op's last argument for a group. Where the backend has
    ``<name>_at`` (C, cpu) it runs on the plan's address lists, else ``name`` gets 1-D
    views.
    Returns ``{dtype: result}``.
    """
    at = getattr(job.mod, name + "_at", None)
    out = {}
    for dtype, idx in p.groups.items():
        if at is not None:
            out[dtype] = at(p.bound(job.mod, dtype), scalar(dtype))
        else:
            views = [[flat(lst[i]) for i in idx] for lst in lists]
            out[dtype] = job.op(name)(*views, scalar(dtype))
    return out
