"""Batch-norm kernels of backend "c" (csrc/batchnorm.c).

Same names and signatures as fastreg.reference.batchnorm: the big arrays are C-contiguous
(A, C, B) views, per-channel arrays (C,), statistics and sums float64 (see fastreg._registry).
Results match the reference within the tolerances of tests/test_batchnorm.py: the sums are
accumulated in float64 in another (fixed) order, the element-wise parts do the reference's
operations in its order. The per-channel ops (O(C) work) ``bn_forward_coeffs`` and
``bn_running_update`` are C copies of the reference's, bit for bit (a call then makes no NumPy
call); ``bn_backward_coeffs`` is the reference's NumPy function.

Each call sets the calling thread's thread count from ``fastreg._threads.plan(x.size,
"batchnorm")`` (small inputs run serially, without entering OpenMP). Arrays are passed without
copying; outputs must be writable (the public wrappers check). An array that is not aligned for
its dtype (possible with views of raw buffers) is refused by the kernel before any work, and the
call is made again through aligned copies, written back into the outputs.

16-bit x (float16, bfloat16; ``bn_half`` says these kernels take them): ``bn_stats``,
``bn_apply``, ``bn_forward_train``, ``bn_forward_train_running``, ``bn_backward_reduce``,
``bn_backward_apply`` and ``bn_backward`` also take x (and grad_y, y, residual, out, grad_x,
grad_residual) of a 16-bit dtype, with float32 per-channel arrays (weight, bias, coefficients,
running statistics, grad_weight, grad_bias): the C kernels widen each element when they read it
and round each result when they write it, with the float32 kernels' arithmetic and order of
sums in between, so they give the bits of the float32 op on the widened arrays, rounded
(fastreg._half's conversion passes), in one pass over the data.
"""
import numpy as np

from .. import _arrays, _threads
from ..reference import batchnorm as _ref
from ..reference.batchnorm import bn_backward_coeffs
from . import SPINNING, _check, _plan, ffi, lib

__all__ = ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs",
           "bn_forward_train_running", "bn_forward_infer", "bn_half"]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
# storage dtype -> suffix of the C functions (16-bit: the big arrays; per-channel ones float32)
_SUF = {_F32: "f32", _F64: "f64"}
for _dt, _s in ((_arrays.FLOAT16, "f16"), (_arrays.BFLOAT16, "bf16")):
    if _dt is not None:
        _SUF[np.dtype(_dt)] = _s
_HALF = frozenset(dt for dt in _SUF if dt.itemsize == 2)
bn_half = lib is not None  # the big-array ops take 16-bit x (fastreg.batchnorm asks)
_BIG_OPS = ("bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
            "bn_backward", "bn_forward_train_running")
if lib is not None:
    _NULL = ffi.NULL
    _buf = ffi.from_buffer
    _set_threads = lib.fr_set_threads
    _ARRAY = {_F32: ffi.typeof("float[]"), _F64: ffi.typeof("double[]")}
    _DOUBLES = _ARRAY[_F64]
    _UINT16 = ffi.typeof("uint16_t[]")
    _UNALIGNED = lib.FR_ERR_UNSUPPORTED
    # kernel name -> {dtype: function} (the big-array ops also for the 16-bit dtypes)
    _FN = {name: {dt: getattr(lib, f"fr_{name}_{suf}") for dt, suf in _SUF.items()
                  if dt.itemsize > 2 or name in _BIG_OPS}
           for name in _BIG_OPS + ("bn_forward_coeffs", "bn_running_update", "bn_forward_infer")}


def _p(a):
    """Pointer to an array in its own dtype (NULL for None); a 16-bit array as its bits."""
    if a is None:
        return _NULL
    if a.dtype in _HALF:
        return ffi.from_buffer(_UINT16, a.view(np.uint16))
    return ffi.from_buffer(_ARRAY[a.dtype], a)


def _d(a):
    """Pointer to a float64 array."""
    return ffi.from_buffer(_DOUBLES, a)


def _aligned(*arrays):
    for a in arrays:
        if a is not None and not a.flags.aligned:
            return False
    return True


def _through_copies(fn, args, outputs):
    """fn(*args) with aligned copies of the arguments that are unaligned arrays; the outputs
    (indices into args) among them are copied back afterwards. The same array given twice (out
    is x) gets the same copy."""
    copies = {}
    new = list(args)
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and not a.flags.aligned:
            new[i] = copies.setdefault(id(a), a.copy())
    fn(*new)
    for i in outputs:
        if new[i] is not args[i]:
            args[i][...] = new[i]


def _call(name, dtype, fn, args, outputs, status):
    """Checks a kernel's status: an array not aligned for its dtype (the kernels refuse it, with
    FR_ERR_UNSUPPORTED, before any work) makes the call again through aligned copies."""
    if status == 0:
        return
    if status == _UNALIGNED and not _aligned(*(a for a in args if isinstance(a, np.ndarray))):
        return _through_copies(fn, args, outputs)
    _check(status, f"fr_{name}_{_SUF[dtype]}")


def bn_stats(x, mean, m2):
    """Per-channel mean and M2 = sum (x - mean)**2 of x (A, C, B), float64 (C,) outputs."""
    if x.size == 0:
        return
    _plan(x.size, "batchnorm")
    st = _FN["bn_stats"][x.dtype](_p(x), _d(mean), _d(m2), *x.shape)
    if st:
        _call("bn_stats", x.dtype, bn_stats, (x, mean, m2), (1, 2), st)


def bn_apply(x, center, scale, shift, residual, relu, out):
    """out = act((x - center) * scale + shift [+ residual]) per channel, in x's dtype."""
    if x.size == 0:
        return
    _plan(x.size, "batchnorm")
    st = _FN["bn_apply"][x.dtype](_p(x), _p(center), _p(scale), _p(shift), _p(residual),
                                  int(bool(relu)), _p(out), *x.shape)
    if st:
        _call("bn_apply", x.dtype, bn_apply, (x, center, scale, shift, residual, relu, out),
              (6,), st)


def _threads_for(size):
    """_plan(size, "batchnorm"), with the small call (serial, no setting read) inline."""
    if size < 2 * _threads.grain("batchnorm", SPINNING):
        _set_threads(1)
    else:
        _plan(size, "batchnorm")


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd):
    """Batch statistics, then out = act((x - mean) * (w * invstd) + b [+ residual]); fused per
    channel where the data allows (read once from memory, written once)."""
    size = x.size
    if size == 0:
        return
    _threads_for(size)
    dt = x.dtype
    A, C, B = x.shape
    if dt in _HALF:
        st = _FN["bn_forward_train"][dt](
            _p(x), _p(weight), _p(bias), eps, _p(residual), 1 if relu else 0, _p(out),
            _buf(_DOUBLES, mean), _buf(_DOUBLES, m2), _buf(_DOUBLES, invstd), A, C, B)
    else:
        T = _ARRAY[dt]
        st = _FN["bn_forward_train"][dt](
            _buf(T, x), _buf(T, weight), _buf(T, bias), eps, _NULL if residual is None else
            _buf(T, residual), 1 if relu else 0, _buf(T, out), _buf(_DOUBLES, mean),
            _buf(_DOUBLES, m2), _buf(_DOUBLES, invstd), A, C, B)
    if st:
        _call("bn_forward_train", x.dtype, bn_forward_train,
              (x, weight, bias, eps, residual, relu, out, mean, m2, invstd), (6, 7, 8, 9), st)


def bn_forward_train_running(x, weight, bias, eps, residual, relu, out, mean, m2, invstd,
                             running_mean, running_var, momentum):
    """``bn_forward_train`` then ``bn_running_update(mean, m2, A * B, running_mean,
    running_var, momentum)`` in one C call, with the two ops' bits: the common training call
    crosses into C once. Not a registry op (only this backend has it): fastreg.batch_norm's
    host fast path uses it when the backend module defines it. running_* of x's dtype (float32
    for 16-bit x)."""
    size = x.size
    if size == 0:
        return
    _threads_for(size)
    dt = x.dtype
    A, C, B = x.shape
    if dt in _HALF:
        st = _FN["bn_forward_train_running"][dt](
            _p(x), _p(weight), _p(bias), eps, _p(residual), 1 if relu else 0, _p(out),
            _buf(_DOUBLES, mean), _buf(_DOUBLES, m2), _buf(_DOUBLES, invstd), _p(running_mean),
            _p(running_var), momentum, A, C, B)
    else:
        T = _ARRAY[dt]
        st = _FN["bn_forward_train_running"][dt](
            _buf(T, x), _buf(T, weight), _buf(T, bias), eps, _NULL if residual is None else
            _buf(T, residual), 1 if relu else 0, _buf(T, out), _buf(_DOUBLES, mean),
            _buf(_DOUBLES, m2), _buf(_DOUBLES, invstd), _buf(T, running_mean),
            _buf(T, running_var), momentum, A, C, B)
    if st:
        _call("bn_forward_train_running", dt, bn_forward_train_running,
              (x, weight, bias, eps, residual, relu, out, mean, m2, invstd, running_mean,
               running_var, momentum), (6, 7, 8, 9, 10, 11), st)


def bn_forward_infer(x, running_mean, running_var, weight, bias, eps, residual, relu, out,
                     saved_mean, invstd):
    """``bn_forward_coeffs(running_mean, running_var, 1, weight, bias, eps, True, saved_mean,
    invstd, ...)`` then ``bn_apply`` with those coefficients, in one C call, with the two ops'
    bits: the common inference call crosses into C once. Not a registry op (as
    ``bn_forward_train_running``). float32 / float64 only; weight, bias may be None; saved_mean
    and invstd (C,) float64 outputs."""
    dt = x.dtype
    A, C, B = x.shape
    _threads_for(x.size)
    T = _ARRAY[dt]
    st = _FN["bn_forward_infer"][dt](
        _buf(T, x), _buf(T, running_mean), _buf(T, running_var),
        _NULL if weight is None else _buf(T, weight), _NULL if bias is None else _buf(T, bias),
        eps, _NULL if residual is None else _buf(T, residual), 1 if relu else 0, _buf(T, out),
        _buf(_DOUBLES, saved_mean), _buf(_DOUBLES, invstd), A, C, B)
    if st:
        _call("bn_forward_infer", dt, bn_forward_infer,
              (x, running_mean, running_var, weight, bias, eps, residual, relu, out, saved_mean,
               invstd), (8, 9, 10), st)


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx):
    """s_dy = sum g, s_dyx = sum g * (x - center) per channel (float64); g = gy masked by y > 0
    when y (the ReLU output) is given."""
    if x.size == 0:
        s_dy[...] = 0
        s_dyx[...] = 0
        return
    _plan(x.size, "batchnorm")
    st = _FN["bn_backward_reduce"][x.dtype](_p(gy), _p(x), _p(y), _d(center), _d(s_dy),
                                            _d(s_dyx), *x.shape)
    if st:
        _call("bn_backward_reduce", x.dtype, bn_backward_reduce,
              (gy, x, y, center, s_dy, s_dyx), (4, 5), st)


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres):
    """gx = g * a - (x - center) * b - d (training), or g * a (b and d None); gres = g when
    given. gx may be gy."""
    if gy.size == 0:
        return
    if b is None:
        d = None
    _plan(gy.size, "batchnorm")
    st = _FN["bn_backward_apply"][gy.dtype](_p(gy), _p(x), _p(y), _p(center), _p(a), _p(b),
                                            _p(d), _p(gx), _p(gres), *gy.shape)
    if st:
        _call("bn_backward_apply", gy.dtype, bn_backward_apply,
              (gy, x, y, center, a, b, d, gx, gres), (7, 8), st)


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias):
    """The whole backward pass (reduce, coefficients, apply), fused per channel where the data
    allows; grad_weight, grad_bias (C,) in x's dtype (float32 for 16-bit x)."""
    size = x.size
    if size == 0:
        return
    _threads_for(size)
    dt = x.dtype
    A, C, B = x.shape
    if dt in _HALF:
        st = _FN["bn_backward"][dt](
            _p(gy), _p(x), _p(y), _buf(_DOUBLES, mean), _buf(_DOUBLES, invstd), _p(weight),
            1 if training else 0, _p(gx), _p(gres), _p(grad_weight), _p(grad_bias), A, C, B)
    else:
        T = _ARRAY[dt]
        st = _FN["bn_backward"][dt](
            _buf(T, gy), _buf(T, x), _NULL if y is None else _buf(T, y), _buf(_DOUBLES, mean),
            _buf(_DOUBLES, invstd), _buf(T, weight), 1 if training else 0, _buf(T, gx),
            _NULL if gres is None else _buf(T, gres), _buf(T, grad_weight),
            _buf(T, grad_bias), A, C, B)
    if st:
        _call("bn_backward", x.dtype, bn_backward,
              (gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias),
              (7, 8, 9, 10), st)


def bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center, scale,
                      shift):
    """Coefficients of ``bn_apply`` from per-channel statistics (the reference's formulas, in C;
    see fastreg.reference.batchnorm.bn_forward_coeffs)."""
    dt = center.dtype
    stats64 = mean.dtype == _F64 and m2.dtype == _F64
    if (not (stats64 or (mean.dtype == dt and m2.dtype == dt)) or scale.dtype != dt
            or shift.dtype != dt or (weight is not None and weight.dtype != dt)
            or (bias is not None and bias.dtype != dt) or saved_mean.dtype != _F64
            or invstd.dtype != _F64):
        return _ref.bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean,
                                      invstd, center, scale, shift)
    stats = _d if stats64 else _p
    args = (mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center, scale, shift)
    st = _FN["bn_forward_coeffs"][dt](stats(mean), stats(m2), int(stats64), float(count),
                                      _p(weight), _p(bias), float(eps), int(bool(fold)),
                                      _d(saved_mean), _d(invstd), _p(center), _p(scale),
                                      _p(shift), center.shape[0])
    if st:
        _call("bn_forward_coeffs", dt, bn_forward_coeffs, args, (7, 8, 9, 10, 11), st)


def bn_running_update(mean, m2, count, running_mean, running_var, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch, PyTorch's rule (the
    reference's formulas, in C; see fastreg.reference.batchnorm.bn_running_update)."""
    r = running_mean if running_mean is not None else running_var
    if r is None:
        return
    dt = r.dtype
    if (mean.dtype is not _F64 or m2.dtype is not _F64
            or (running_var is not None and running_var.dtype != dt)):
        return _ref.bn_running_update(mean, m2, count, running_mean, running_var, momentum)
    T = _ARRAY[dt]
    st = _FN["bn_running_update"][dt](
        _buf(_DOUBLES, mean), _buf(_DOUBLES, m2), int(count), float(momentum),
        _NULL if running_mean is None else _buf(T, running_mean),
        _NULL if running_var is None else _buf(T, running_var), r.shape[0])
    if st:
        _call("bn_running_update", r.dtype, bn_running_update,
              (mean, m2, count, running_mean, running_var, momentum), (3, 4), st)


def plan_info(shape, dtype, nred=1):
    """The work split the kernels choose for an (A, C, B) array of ``dtype`` whose reduction
    reads ``nred`` arrays (1 statistics, 2 backward, 3 backward through a ReLU): a dict with
    ``layout`` ("rows" or "channels"), ``fused`` (a channel's reduction input fits in a core's
    cache: whole channels per thread), ``chunks`` (per channel, or row chunks),
    ``rows_per_chunk``, ``pieces`` (per row) and ``column_blocks``. For tests: which strategy a
    shape reaches."""
    info = ffi.new("int64_t[6]")
    A, C, B = shape
    _check(lib.fr_bn_plan_info(A, C, B, np.dtype(dtype).itemsize, nred, info), "fr_bn_plan_info")
    return dict(layout="rows" if info[0] else "channels", fused=bool(info[1]), chunks=info[2],
                rows_per_chunk=info[3], pieces=info[4], column_blocks=info[5])


_STRATEGIES = ("auto", "whole", "shared", "two-pass")


def set_channel_strategy(name):
    """How the channel layout runs forward training and backward: "auto" (the default), "whole"
    (whole channels per thread), "shared" (the threads share each channel) or "two-pass" (a
    reduction pass, then an apply pass). Every one gives the same bits; for tests and
    measurements. Process-wide; returns the previous setting."""
    if name not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {name!r}")
    return _STRATEGIES[lib.fr_bn_set_channel_strategy(_STRATEGIES.index(name))]
