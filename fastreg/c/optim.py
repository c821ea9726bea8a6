"""Optimizer steps of backend "c" (csrc/optim.c).

Same names, signatures and results (bit for bit) as fastreg.reference.optim: one fused pass
over the arrays, in place on ``p`` and the state arrays.  ``buf`` / ``vmax`` may be None (no
momentum / no AMSGrad); float scalars are of the arrays' dtype, bools Python bools.
"""
from . import _check, _plan
from .penalty import _CTYPE, _aligned, _kernel, _ptr, _scalar, _write_back

# An optimizer step does several times the arithmetic of a penalty gradient per element: its
# work counts double against the "elementwise" grain (measured, see fastreg._threads.GRAIN).
OPTIM_WEIGHT = 2


def sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1):
    """SGD with coupled / decoupled weight decay, (Nesterov) momentum and an L1 prox; the
    gradient scaled by gscale first (gradient clipping)."""
    n = p.size
    if n == 0:
        return
    fn, name = _kernel(p.dtype, "sgd_step")
    _plan(OPTIM_WEIGHT * n, "elementwise")
    ctype, dt = _CTYPE[p.dtype], p.dtype
    pa, ba = _aligned(p), _aligned(buf)
    _check(fn(_ptr(ctype, pa, True), _ptr(ctype, _aligned(g)), _ptr(ctype, ba, True),
              _scalar(dt, lr), _scalar(dt, wd), _scalar(dt, decay), _scalar(dt, momentum),
              _scalar(dt, damp1), int(bool(nesterov)), int(bool(first)), _scalar(dt, l1t),
              _scalar(dt, gscale), n), name)
    _write_back(p, pa)
    if buf is not None:
        _write_back(buf, ba)


def adam_step(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
              gscale=1):
    """Adam (coupled wd) / AdamW (decoupled decay), with AMSGrad when vmax is not None; the
    gradient scaled by gscale first (gradient clipping)."""
    n = p.size
    if n == 0:
        return
    fn, name = _kernel(p.dtype, "adam_step")
    _plan(OPTIM_WEIGHT * n, "elementwise")
    ctype, dt = _CTYPE[p.dtype], p.dtype
    pa, ma, va, xa = _aligned(p), _aligned(m), _aligned(v), _aligned(vmax)
    _check(fn(_ptr(ctype, pa, True), _ptr(ctype, _aligned(g)), _ptr(ctype, ma, True),
              _ptr(ctype, va, True), _ptr(ctype, xa, True), _scalar(dt, wd),
              _scalar(dt, decay), _scalar(dt, omb1), _scalar(dt, beta2), _scalar(dt, omb2),
              _scalar(dt, eps), _scalar(dt, step_size), _scalar(dt, bc2_sqrt),
              _scalar(dt, gscale), n), name)
    for original, used in ((p, pa), (m, ma), (v, va), (vmax, xa)):
        if original is not None:
            _write_back(original, used)
