"""Penalty kernels of backend "c" (csrc/penalty.c).

Same names, signatures and results as fastreg.reference.penalty: bit for bit, except the
reductions (penalty_sums, group_lasso's norms), which accumulate in double in another order.
Inputs are already validated and contiguous (see fastreg._registry); ``out`` may be ``w``.
Arrays are passed to C without copying, except one that is not aligned for its dtype (possible
with views of raw buffers), which goes through an aligned copy (written back if the kernel
writes it).
"""
import numpy as np

from . import _check, _plan, ffi, lib

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_F32 = np.dtype(np.float32)
# A 16-bit element's weight in the elementwise grain (fastreg._threads.GRAIN): its two conversions
# about double the work. Measured, fr_penalty_grad_half on float16, the 2-vCPU VM, 1 thread / 2
# threads with the pool asleep (us): 262144 72.5 / 82.8, 524288 186 / 129, 1e6 324 / 222.
HALF_WEIGHT = 2


_kernels = {}   # (dtype, op name) -> (C function, its name)


def _kernel(dtype, name):
    k = _kernels.get((dtype, name))
    if k is None:
        full = f"fr_{name}_{_SUFFIX[dtype]}"
        k = _kernels[dtype, name] = (getattr(lib, full), full)
    return k


_ARRAY_TYPES = {}   # C element type name -> cffi's type "<name>[]"


def _array_type(ctype):
    """cffi's type ``"<ctype>[]"``, made once per name (``ffi.from_buffer`` takes it in place of
    the string: 0.4 us a call against 0.9)."""
    t = _ARRAY_TYPES.get(ctype)
    if t is None:
        t = _ARRAY_TYPES[ctype] = ffi.typeof(ctype + "[]")
    return t


def _short_path(name):
    """dtype -> (C function, its name, cffi array type) of kernel ``name``: one lookup on the
    short path of a wrapper that passes aligned arrays straight to C (penalty_grad here, the
    optimizer steps in fastreg/c/optim.py)."""
    return {dt: _kernel(dt, name) + (_array_type(c),) for dt, c in _CTYPE.items()}


if lib is not None:
    _buf = ffi.from_buffer
    _GRAD = _short_path("penalty_grad")


def _scalar(dtype, x):
    """x as a Python float holding a value of ``dtype`` (cffi then passes it unchanged)."""
    if type(x) is dtype.type:   # as the wrappers pass them: 0.2 us, where dtype.type(x) takes 3
        return float(x)
    return float(dtype.type(x))


def _aligned(a):
    """``a`` itself, or an aligned copy of it (None stays None)."""
    return a if a is None or a.flags.aligned else a.copy()


def _ptr(ctype, a, writable=False):
    """A pointer to a contiguous array's memory (NULL for None), through cffi's buffer check
    (writable: refused for a read-only buffer; passed by position, cheaper than the keyword)."""
    if a is None:
        return ffi.NULL
    return ffi.from_buffer(_array_type(ctype), a, writable)


def _write_back(original, used):
    if used is not original:
        original[...] = used


def penalty_sums(w):
    """(sum |w|, sum w**2) of a 1-D float array, accumulated in float64."""
    n = w.size
    if n == 0:
        return 0.0, 0.0
    fn, name = _kernel(w.dtype, "penalty_sums")
    sums = ffi.new("double[2]")
    _plan(n, "elementwise")
    _check(fn(_ptr(_CTYPE[w.dtype], _aligned(w)), n, sums, sums + 1), name)
    return float(sums[0]), float(sums[1])


def penalty_grad(w, l1, c2, out, accumulate):
    """out = g or out + g, g = l1 * sgn(w) + c2 * w with the reference's branches (out may be w).

    Aligned arrays (the common case) go straight to C, with l1 and c2 as given: cffi converts a
    scalar of the dtype (or a Python float: the same rounding) exactly, as ``_scalar`` would,
    without its Python call (every call costs here: a 1e5 kernel takes ~12 us)."""
    n = w.size
    if n == 0:
        return
    fn, name, t = _GRAD[w.dtype]
    _plan(n, "elementwise")
    if w.flags.aligned and out.flags.aligned:
        status = fn(_buf(t, w), l1, c2, _buf(t, out, True), 1 if accumulate else 0, n)
        if status:
            _check(status, name)
        return
    ctype, dt = _CTYPE[w.dtype], w.dtype
    o = _aligned(out)
    wa = o if w is out else _aligned(w)
    _check(fn(_ptr(ctype, wa), _scalar(dt, l1), _scalar(dt, c2), _ptr(ctype, o, True),
              int(bool(accumulate)), n), name)
    _write_back(out, o)


def soft_threshold(w, t, s, out):
    """out = s * soft(w, t) (exact zeros where |w| <= t, NaN kept); out may be w."""
    n = w.size
    if n == 0:
        return
    fn, name = _kernel(w.dtype, "soft_threshold")
    _plan(n, "elementwise")
    ctype, dt = _CTYPE[w.dtype], w.dtype
    o = _aligned(out)
    wa = o if w is out else _aligned(w)
    _check(fn(_ptr(ctype, wa), _scalar(dt, t), _scalar(dt, s), _ptr(ctype, o, True), n), name)
    _write_back(out, o)


def _half_run(name, w, kind, a, b, out, *tail):
    """``fr_<name>(w, kind, a, b, out, *tail, n)`` on 16-bit w and out (uint16 bits, 1-D; out may
    be w), a and b rounded to float32."""
    n = w.size
    if n == 0:
        return
    _plan(HALF_WEIGHT * n, "elementwise")
    o = _aligned(out)
    wa = o if w is out else _aligned(w)
    _check(getattr(lib, "fr_" + name)(_ptr("uint16_t", wa), kind, _scalar(_F32, a),
                                      _scalar(_F32, b), _ptr("uint16_t", o, True), *tail, n),
           "fr_" + name)
    _write_back(out, o)


def penalty_grad_half(w, kind, l1, c2, out, accumulate):
    """``penalty_grad`` on 16-bit w and out (uint16 bits of kind 0 float16 / 1 bfloat16, 1-D; out
    may be w), float32 l1 and c2, in one pass (csrc/penalty.c fr_penalty_grad_half): bit for
    bit the conversion passes of fastreg._half around the float32 kernel."""
    _half_run("penalty_grad_half", w, kind, l1, c2, out, 1 if accumulate else 0)


def soft_threshold_half(w, kind, t, s, out):
    """``soft_threshold`` on 16-bit w and out (as ``penalty_grad_half``), float32 t and s."""
    _half_run("soft_threshold_half", w, kind, t, s, out)


def group_lasso(w, t, out):
    """w, out (A, L, B): group w[a, :, b] scaled by max(0, 1 - t / ||group||_2); out may be w."""
    if w.size == 0:
        return
    A, L, B = w.shape
    fn, name = _kernel(w.dtype, "group_lasso")
    ctype = _CTYPE[w.dtype]
    o = _aligned(out)
    wa = o if w is out else _aligned(w)
    _plan(w.size, "elementwise")
    # t stays a float64 for both dtypes (the kernel contract: float64 math)
    _check(fn(_ptr(ctype, wa), float(t), _ptr(ctype, o, True), A, L, B), name)
    _write_back(out, o)


def all_finite(a):
    """True when no element of the 1-D array is NaN or inf."""
    if a.size == 0:
        return True
    if a.dtype not in _CTYPE:  # integers, float16...: not a kernel of this backend
        return bool(np.isfinite(a).all())
    fn, name = _kernel(a.dtype, "all_finite")
    result = ffi.new("int *")
    _plan(a.size, "elementwise")
    _check(fn(_ptr(_CTYPE[a.dtype], _aligned(a)), a.size, result), name)
    return bool(result[0])
