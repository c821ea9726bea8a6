"""Argument checks and array plumbing shared by the public wrappers.

Everything here runs before any kernel: a bad argument raises with its name and what was expected,
and no input is modified. Device arrays (``__cuda_array_interface__``) are described from their
interface dict, so checking them never imports Numba or needs a driver.

Cost: these checks run on every call, also on 64x128 arrays where a kernel takes a few
microseconds, so each starts with an exact-type test for the common case (``type(v) is float``,
``type(a) is np.ndarray``) that decides without the ``numbers`` ABCs (about 0.3 us per
``isinstance`` against an ABC); anything else takes the general path, with the same rules and
messages.
"""
import math
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ndarray = np.ndarray   # a module global: one lookup where np.ndarray takes two
_U64 = 1 << 64

# 16-bit floats. float16 is NumPy's; bfloat16 is ml_dtypes' (optional: `pip install
# "fastreg-kernels[bf16]"`), so BFLOAT16 is None without it and no host array can be bfloat16.
# Kernels see a 16-bit array as its uint16 bits (``half_bits``) and a kind flag (``half_kind``):
# they convert to float32, compute in float32 and round to nearest even (see fastreg.reference's
# ``to_float32`` / ``round_half``), so the results are bit-exact across backends.
FLOAT16 = np.dtype(np.float16)
HALF_F16, HALF_BF16 = 0, 1  # the kind flag kernels take
_BF16 = []  # [bfloat16's dtype] once known

# ml_dtypes is imported only when bfloat16 is asked for by name (``BFLOAT16``, ``half_dtype``):
# importing it costs over a second of CPU in every process. No array can be bfloat16 before
# ml_dtypes is imported (it registers the dtype), so the checks below only look whether it is.


def _bfloat16(load=False):
    """bfloat16's dtype; None while ml_dtypes is not imported (``load=True`` imports it) or
    not installed."""
    if not _BF16:
        m = sys.modules.get("ml_dtypes")
        if m is None and load:
            try:
                import ml_dtypes as m
            except ImportError:  # pragma: no cover - depends on the environment
                return None
        if m is None:
            return None
        _BF16.append(np.dtype(m.bfloat16))
    return _BF16[0]


def __getattr__(name):
    """BFLOAT16 (None without ml_dtypes), HALF_DTYPES and FLOAT_OR_HALF_DTYPES, on first use."""
    if name == "BFLOAT16":
        return _bfloat16(load=True)
    if name == "HALF_DTYPES":
        bf = _bfloat16(load=True)
        return (FLOAT16,) if bf is None else (FLOAT16, bf)
    if name == "FLOAT_OR_HALF_DTYPES":
        return FLOAT_DTYPES + __getattr__("HALF_DTYPES")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_half(dtype):
    """True for float16 and bfloat16 (ml_dtypes). The itemsize test first: comparing a dtype
    with the bfloat16 dtype costs about 0.3 us, too much for every float32 call."""
    return dtype.itemsize == 2 and (dtype == FLOAT16 or dtype == _bfloat16())


def half_kind(dtype):
    """The kernels' 16-bit kind flag: HALF_F16 (0) for float16, HALF_BF16 (1) for bfloat16."""
    if dtype == FLOAT16:
        return HALF_F16
    bf = _bfloat16()
    if bf is not None and dtype == bf:
        return HALF_BF16
    raise TypeError(f"not a 16-bit float dtype: {dtype}")


def half_dtype(kind):
    """The dtype of a kind flag (bfloat16 needs ml_dtypes)."""
    if kind == HALF_F16:
        return FLOAT16
    bf = _bfloat16(load=True)
    if bf is None:
        raise ImportError('bfloat16 needs ml_dtypes: pip install "fastreg-kernels[bf16]"')
    return bf


def half_bits(a):
    """The uint16 view of a 16-bit array (host ndarray or device array), zero-copy."""
    return a.view(np.uint16)


def float_dtypes_text(half):
    return "float32, float64, float16 or bfloat16" if half else "float32 or float64"


class DeviceArrayInfo:
    """Shape, dtype and contiguity of an object exposing ``__cuda_array_interface__`` (or of a
    Numba CUDA-simulator array, which stands for device memory in tests)."""

    def __init__(self, obj):
        if not hasattr(obj, "__cuda_array_interface__"):  # simulator: wraps a NumPy array
            host = obj._ary
            self.obj, self.shape, self.dtype, self.size = obj, host.shape, host.dtype, host.size
            self.c_contiguous = host.flags.c_contiguous
            self.ptr = host.__array_interface__["data"][0]
            self.readonly = not host.flags.writeable
            return
        iface = obj.__cuda_array_interface__
        self.obj = obj
        self.shape = tuple(int(s) for s in iface["shape"])
        self.dtype = np.dtype(iface["typestr"])
        self.size = math.prod(self.shape)
        strides = iface.get("strides")
        self.c_contiguous = strides is None or tuple(strides) == _c_strides(self.shape, self.dtype)
        self.ptr = iface["data"][0]
        self.readonly = bool(iface["data"][1])


def _c_strides(shape, dtype):
    strides, step = [], dtype.itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return tuple(reversed(strides))


def is_device(a):
    """True for CUDA arrays: ``__cuda_array_interface__`` (Numba, CuPy, torch) or a Numba
    CUDA-simulator array (``__cuda_ndarray__``)."""
    if type(a) is np.ndarray:
        return False
    return not isinstance(a, np.ndarray) and (hasattr(a, "__cuda_array_interface__")
                                              or getattr(a, "__cuda_ndarray__", False) is True)


def as_host(a, name):
    """View ``a`` as a NumPy array without copying where NumPy can (buffer protocol,
    ``__array_interface__``, DLPack); Python sequences are converted. ndarray subclasses
    (np.matrix, ...) are viewed as plain ndarrays; masked arrays are refused (the kernels would
    silently ignore the mask)."""
    if type(a) is np.ndarray:
        return a
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name}: masked arrays are not supported; pass a.filled(...) or "
                        "a.data explicitly")
    if isinstance(a, np.ndarray):
        return a if type(a) is np.ndarray else a.view(np.ndarray)
    if hasattr(a, "__dlpack__") and not hasattr(a, "__array_interface__"):
        if getattr(a, "is_neg", None) is not None and (a.is_neg() or a.is_conj()):
            # a lazily negated (or conjugated) torch view: DLPack would export its memory,
            # which holds the values with the other sign
            a = a.resolve_neg().resolve_conj()
        try:
            return np.from_dlpack(a)
        except (TypeError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{name}: cannot view this {type(a).__name__} through DLPack: {exc}")
    try:
        return np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}: {exc}")


def describe(a, name):
    """The array (host: an ndarray view; device: a DeviceArrayInfo) for checking."""
    if type(a) is np.ndarray:
        return a
    return DeviceArrayInfo(a) if is_device(a) else as_host(a, name)


def check_shape(shape):
    if isinstance(shape, (numbers.Integral, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, got {type(shape).__name__}")
    for s in shape:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"shape must hold non-negative integers, got {shape}")
    return tuple(int(s) for s in shape)

def check_float(arr, name, half=False):
    """TypeError unless ``arr.dtype`` is float32 or float64 (native byte order), or, with
    ``half=True`` (ops with 16-bit kernels), also float16 or bfloat16 (ml_dtypes); ValueError
    for a device array (``DeviceArrayInfo``) that is not C-contiguous."""
    dt = arr.dtype
    if dt in FLOAT_DTYPES or (half and is_half(dt)):
        if type(arr) is DeviceArrayInfo and not arr.c_contiguous:
            # here, named and before any work, rather than where a kernel takes it
            raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported; pass a "
                             "C-contiguous array (fastreg makes no device copies behind your "
                             "back)")
        return
    if dt.kind == "f" and dt.itemsize in (2, 4, 8) and not dt.isnative:
        raise TypeError(f"{name} must be {float_dtypes_text(half)} in native byte order, got "
                        f"{dt.str}: convert with {name}.astype({name}.dtype.newbyteorder('='))")
    if not half and (is_half(dt) or _looks_bfloat16(dt)):
        raise TypeError(f"{name} must be float32 or float64, got dtype {dt}: this op has no "
                        "16-bit kernels (16-bit floats are supported by dropout and its "
                        "variants, batch norm, the penalties and the optimizers); convert with "
                        f"{name}.astype(np.float32)")
    if half and _bfloat16() is None and _looks_bfloat16(dt):
        raise TypeError(f"{name} is bfloat16: install ml_dtypes for bfloat16 support "
                        '(pip install "fastreg-kernels[bf16]")')
    raise TypeError(f"{name} must be {float_dtypes_text(half)}, got dtype {dt}")


def _looks_bfloat16(dt):
    return getattr(dt, "name", "") == "bfloat16" or str(dt) == "bfloat16"


def _scalar(v):
    """A 0-d array stands for its scalar, as in NumPy and JAX."""
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


def real_to_float(v, name, expected):
    """float(v) of a real number ``v`` (already type-checked); a ValueError naming ``name`` and
    what was ``expected`` for one too large for a float (an int such as 10**400), where float()
    raises OverflowError."""
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{name} must be {expected}, got an integer too large for a float "
                         f"({str(v)[:20]}...)") from None


def check_probability(p, name="p"):
    """p as a Python float in [0, 1]; ValueError for NaN or out of range, TypeError for non-numbers."""
    if type(p) is float and 0.0 <= p <= 1.0:
        return p
    p = _scalar(p)
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(p).__name__}")
    p = real_to_float(p, name, "in [0, 1]")
    if not 0.0 <= p <= 1.0:  # also false for NaN
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def check_uint64(v, name):
    """v as a Python int in [0, 2**64); integers only (bool and floats refused)."""
    if type(v) is int and 0 <= v < _U64:  # bool is not exactly int
        return v
    v = _scalar(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {type(v).__name__} {v!r}")
    v = int(v)
    if not 0 <= v < _U64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {v}")
    return v


def check_counter_range(offset, count, name="offset"):
    """The stream positions offset .. offset + count - 1 must fit in 64 bits (never wrap)."""
    if offset + count > _U64:
        raise ValueError(
            f"{name} + number of draws ({offset} + {count}) exceeds 2**64: the counter would wrap"
        )


def check_int(v, name):
    """v as a Python int: an int or NumPy integer, not a bool (TypeError otherwise)."""
    if type(v) is int:
        return v
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def check_bool(v, name):
    """v as a Python bool: only ``True``/``False`` or a NumPy bool, as torch's functional API
    (``training=1`` or ``2`` is a TypeError there too, not a truth value)."""
    if v is True or v is False:
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"{name} must be a bool (True or False), got {type(v).__name__} {v!r}")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_out(out, name, shape, dtype, inputs, device):
    """Check ``out`` against the result's shape and dtype, its device, its writability and its
    overlap with the inputs (only exactly-in-place aliasing is allowed). Returns the array."""
    if out is None:
        return None
    if not device and type(out) is np.ndarray:
        return _check_host_out(out, name, shape, dtype, inputs)
    if device != is_device(out):
        where = "a CUDA device array" if device else "a host (NumPy) array"
        raise ValueError(f"{name} must be {where} like the input")
    if not device and not isinstance(out, np.ndarray) and (
            isinstance(out, (list, tuple, numbers.Number, str, bytes))):
        raise TypeError(f"{name} must be an array that can be written in place, "
                        f"got {type(out).__name__}")
    arr = describe(out, name)
    if not device and not isinstance(out, np.ndarray) and arr.base is None:
        # NumPy had to copy it (an array owning fresh memory): writes would be lost
        raise TypeError(f"{name}: a {type(out).__name__} that NumPy cannot view without a copy "
                        "cannot be written in place")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    if arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if device:
        if arr.readonly:
            raise ValueError(f"{name} is read-only")
        if not arr.c_contiguous:
            raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported, pass a "
                             "C-contiguous one")
        for x in inputs:
            xi = describe(x, "input")
            same = xi.ptr == arr.ptr and xi.shape == arr.shape and xi.c_contiguous
            if not same and _extents_overlap(xi, arr):
                raise ValueError(f"{name} overlaps an input without being exactly the same array")
        return out
    checked = _check_host_out(arr, name, shape, dtype, inputs)
    version = getattr(out, "_version", None)
    if version is not None and type(version) is int and "torch" in type(out).__module__:
        # a torch tensor written through its NumPy view by a NumPy-path call: count the write
        # as torch counts its in-place ops (checked: nothing is refused after this point), so
        # a graph that saved it raises at backward instead of using the new values
        import torch
        torch.autograd.graph.increment_version(out)
    return checked


def plain_out(out, like, inputs):
    """Whether a fast host path may write into ``out`` as it is: a plain writable C-contiguous
    ndarray of ``like``'s dtype and shape that is ``like`` itself (in place) or shares no bounds
    with any of ``inputs`` (None entries skipped). Only the accepting form of what check_out
    checks: anything else goes to the general path, which raises where it must."""
    if not (type(out) is _ndarray and out.dtype is like.dtype and out.shape == like.shape
            and out.flags.c_contiguous and out.flags.writeable):
        return False
    if out is like:
        return True
    for a in inputs:
        if a is not None and np.may_share_memory(out, a):
            return False
    return True


def _check_host_out(arr, name, shape, dtype, inputs):
    """check_out for a host ndarray."""
    if arr.shape != shape and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype is not dtype and arr.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    flags = arr.flags
    if not flags.writeable:
        raise ValueError(f"{name} is read-only")
    owns = flags.owndata
    for x in inputs:
        # exactly in place is fine; otherwise any shared byte is an overlap. Two arrays that
        # each allocated their own memory (OWNDATA, 0.1 us each) cannot share any; otherwise
        # may_share_memory (bounds only, 0.6 us) rules most pairs out before _same_view (~7 us:
        # it builds two __array_interface__ dicts) and the exact (slower) shares_memory.
        if x is arr or (owns and type(x) is _ndarray and x.flags.owndata):
            continue
        if (np.may_share_memory(x, arr) and not _same_view(x, arr)
                and np.shares_memory(x, arr)):
            raise ValueError(f"{name} overlaps an input without being exactly in place "
                             "(same memory, shape and strides)")
    return arr


def _extents_overlap(a, b):
    """Whether the byte ranges spanned by two (contiguous) device arrays intersect."""
    if a.size == 0 or b.size == 0:
        return False
    a_end = a.ptr + a.size * a.dtype.itemsize
    b_end = b.ptr + b.size * b.dtype.itemsize
    return a.ptr < b_end and b.ptr < a_end


def _same_view(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def check_nonneg(v, name):
    """v as a Python float, finite and >= 0 (ValueError names the argument; TypeError for
    non-numbers)."""
    if type(v) is float and 0.0 <= v < math.inf:
        return v
    v = _scalar(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = real_to_float(v, name, "a finite number >= 0")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def check_in_place(a, name, half=False):
    """A float32/float64 (with ``half=True`` also float16/bfloat16) array that an op updates in
    place: (array, on_device).

    Host: an ndarray (not a list, which could not be updated), writable; a non-contiguous one
    is processed through a contiguous copy and written back. Device: writable, C-contiguous."""
    device = is_device(a)
    if not device and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy or CUDA array (it is updated in place), "
                        f"got {type(a).__name__}")
    arr = describe(a, name)
    check_float(arr, name, half)
    if device:
        if arr.readonly:
            raise ValueError(f"{name} is read-only")
        if not arr.c_contiguous:
            raise ValueError(f"{name}: non-contiguous CUDA arrays are not supported")
        return a, True
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only: it is updated in place")
    return arr, False
