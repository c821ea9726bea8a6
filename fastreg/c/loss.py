"""Softmax cross-entropy of backend "c" (csrc/loss.c).

Same names, signatures and results as fastreg.reference.loss within the float tolerances of
tests/test_loss.py, and bit for bit the Numba backend (fastreg/cpu/loss.py: the same order of
operations). Inputs are already validated and contiguous (see fastreg._registry); ``grad`` may
be ``x``. An array not aligned for its dtype (possible with views of raw buffers) goes through an
aligned copy.
"""
import numpy as np

from . import _check, _plan, ffi, lib

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
#: work per element relative to an elementwise op (the exponential), for the thread grain; the
#: same weight as the Numba backend's (fastreg.cpu.loss.WEIGHT)
WEIGHT = 4


def _aligned(a):
    return a if a is None or a.flags.aligned else a.copy()


def _ptr(ctype, a, writable=False):
    if a is None:
        return ffi.NULL
    return ffi.from_buffer(ctype + "[]", a, require_writable=writable)


def _run(name, x, target, tw, cw, extra, scale, loss, grad):
    r, c = x.shape
    if r == 0:
        return
    ct = _CTYPE[x.dtype]
    full = f"fr_{name}_{_SUFFIX[x.dtype]}"
    g = _aligned(grad)
    xa = g if grad is not None and x is grad else _aligned(x)
    ta = _aligned(target)
    tptr = _ptr("int64_t" if target.dtype == np.int64 else ct, ta)
    _plan(r * c * WEIGHT, "elementwise")
    args = [_ptr(ct, xa), tptr, _ptr("double", tw), _ptr("double", cw), *extra, float(scale),
            _ptr("double", loss, True), _ptr(ct, g, True), r, c]
    _check(getattr(lib, full)(*args), full)
    if g is not grad:
        grad[...] = g


def ce_hard(x, target, tw, cw, ignore_index, scale, loss, grad):
    """Per-row losses (and the gradient) for class-index targets (int64)."""
    _run("ce_hard", x, target, tw, cw, (int(ignore_index),), scale, loss, grad)


def ce_soft(x, target, tw, cw, scale, loss, grad):
    """Per-row losses (and the gradient) for probability targets of x's dtype."""
    _run("ce_soft", x, target, tw, np.zeros_like(tw) if cw is None else cw, (), scale, loss,
         grad)
