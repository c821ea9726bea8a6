"""Batch-norm kernels of backend "c" (csrc/batchnorm.c).

Same names and signatures as fastreg.reference.batchnorm: the big arrays are C-contiguous
(A, C, B) views, per-channel arrays (C,), statistics and sums float64 (see fastreg._registry).
Results match the reference within the tolerances of tests/test_batchnorm.py: the sums are
accumulated in float64 in another (fixed) order, the element-wise parts do the reference's
operations in its order. The per-channel ops (O(C) work) are the reference's NumPy functions.
Arrays are passed without copying, except one that is not aligned for its dtype (possible with
views of raw buffers), which goes through an aligned copy (written back if the kernel writes it).
"""
import numpy as np

from ..reference.batchnorm import bn_backward_coeffs, bn_forward_coeffs, bn_running_update
from . import _check, ffi, lib

__all__ = ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs"]

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _kernel(dtype, name):
    full = f"fr_{name}_{_SUFFIX[dtype]}"
    return getattr(lib, full), full


class _Args:
    """Pointers to the arrays of one call. An array that is not aligned for its dtype goes
    through an aligned copy, written back by ``finish`` if the kernel writes it; the same array
    given twice (out is x) gets the same pointer."""

    def __init__(self):
        self._used = {}       # id(array) -> (array, what the kernel sees)
        self._written = []    # ids of the outputs

    def _ptr(self, a, ctype, writable):
        if a is None:
            return ffi.NULL
        if id(a) not in self._used:
            self._used[id(a)] = (a, a if a.flags.aligned else a.copy())
        if writable:
            self._written.append(id(a))
        used = self._used[id(a)][1]
        return ffi.from_buffer((ctype or _CTYPE[used.dtype]) + "[]", used,
                               require_writable=writable)

    def inp(self, a, ctype=None):
        return self._ptr(a, ctype, False)

    def out(self, a, ctype=None):
        return self._ptr(a, ctype, True)

    def finish(self):
        for key in self._written:
            original, used = self._used[key]
            if used is not original:
                original[...] = used


def _shape(x):
    A, C, B = x.shape
    return A, C, B


def bn_stats(x, mean, m2):
    """Per-channel mean and M2 = sum (x - mean)**2 of x (A, C, B), float64 (C,) outputs."""
    if x.size == 0:
        return
    fn, name = _kernel(x.dtype, "bn_stats")
    p = _Args()
    _check(fn(p.inp(x), p.out(mean, "double"), p.out(m2, "double"), *_shape(x)), name)
    p.finish()


def bn_apply(x, center, scale, shift, residual, relu, out):
    """out = act((x - center) * scale + shift [+ residual]) per channel, in x's dtype."""
    if x.size == 0:
        return
    fn, name = _kernel(x.dtype, "bn_apply")
    p = _Args()
    _check(fn(p.inp(x), p.inp(center), p.inp(scale), p.inp(shift), p.inp(residual),
              int(bool(relu)), p.out(out), *_shape(x)), name)
    p.finish()


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd):
    """Batch statistics, then out = act((x - mean) * (w * invstd) + b [+ residual]); fused per
    channel where the data allows (read once from memory, written once)."""
    if x.size == 0:
        return
    fn, name = _kernel(x.dtype, "bn_forward_train")
    p = _Args()
    _check(fn(p.inp(x), p.inp(weight), p.inp(bias), float(eps), p.inp(residual),
              int(bool(relu)), p.out(out), p.out(mean, "double"), p.out(m2, "double"),
              p.out(invstd, "double"), *_shape(x)), name)
    p.finish()


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx):
    """s_dy = sum g, s_dyx = sum g * (x - center) per channel (float64); g = gy masked by y > 0
    when y (the ReLU output) is given."""
    if x.size == 0:
        s_dy[...] = 0
        s_dyx[...] = 0
        return
    fn, name = _kernel(x.dtype, "bn_backward_reduce")
    p = _Args()
    _check(fn(p.inp(gy), p.inp(x), p.inp(y), p.inp(center, "double"), p.out(s_dy, "double"),
              p.out(s_dyx, "double"), *_shape(x)), name)
    p.finish()


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres):
    """gx = g * a - (x - center) * b - d (training), or g * a (b and d None); gres = g when
    given. gx may be gy."""
    if gy.size == 0:
        return
    fn, name = _kernel(gy.dtype, "bn_backward_apply")
    p = _Args()
    training = b is not None
    _check(fn(p.inp(gy), p.inp(x), p.inp(y), p.inp(center), p.inp(a),
              p.inp(b if training else None), p.inp(d if training else None), p.out(gx),
              p.out(gres), *_shape(gy)), name)
    p.finish()


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias):
    """The whole backward pass (reduce, coefficients, apply), fused per channel where the data
    allows; grad_weight, grad_bias (C,) in x's dtype."""
    if x.size == 0:
        return
    fn, name = _kernel(x.dtype, "bn_backward")
    p = _Args()
    _check(fn(p.inp(gy), p.inp(x), p.inp(y), p.inp(mean, "double"), p.inp(invstd, "double"),
              p.inp(weight), int(bool(training)), p.out(gx), p.out(gres), p.out(grad_weight),
              p.out(grad_bias), *_shape(x)), name)
    p.finish()
