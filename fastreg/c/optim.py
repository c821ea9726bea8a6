"""Optimizer steps of backend "c" (csrc/optim.c).

Same names, signatures and results (bit for bit) as fastreg.reference.optim: one fused pass
over the arrays, in place on ``p`` and the state arrays.  ``buf`` / ``vmax`` may be None (no
momentum / no AMSGrad); float scalars are of the arrays' dtype, bools Python bools.

``sgd_step_half`` / ``adam_step_half``: the same steps with a 16-bit parameter and / or gradient
(float32 math and float32 state), each 16-bit array read, and the parameter written, once
(fastreg._half.fused).
"""
import numpy as np

from . import _check, _plan, ffi, lib
from .penalty import (_CTYPE, _SUFFIX, _aligned, _ptr, _scalar, _short_path,
                      _write_back)

_F32 = np.dtype(np.float32)
_KIND_F32 = 2   # csrc/half.h FR_HALF_F32: the float32 operand of a mixed-precision step

# An optimizer step does several times the arithmetic of a penalty gradient per element: its
# work counts double against the "elementwise" grain (measured, see fastreg._threads.GRAIN).
OPTIM_WEIGHT = 2


if lib is not None:
    _buf = ffi.from_buffer
    _SGD, _ADAM = _short_path("sgd_step"), _short_path("adam_step")


def sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1):
    """SGD with coupled / decoupled weight decay, (Nesterov) momentum and an L1 prox; the
    gradient scaled by gscale first (gradient clipping).

    Aligned arrays (the common case) go straight to C with the scalars as given: cffi converts
    a scalar of the dtype (or a Python float: the same rounding) exactly, as ``_scalar`` would,
    without its Python calls (fastreg/c/penalty.py penalty_grad)."""
    n = p.size
    if n == 0:
        return
    fn, name, t = _SGD[p.dtype]
    _plan(OPTIM_WEIGHT * n, "elementwise")
    if p.flags.aligned and g.flags.aligned and (buf is None or buf.flags.aligned):
        status = fn(_buf(t, p, True), _buf(t, g), ffi.NULL if buf is None else _buf(t, buf, True),
                    lr, wd, decay, momentum, damp1, 1 if nesterov else 0, 1 if first else 0, l1t,
                    gscale, n)
        if status:
            _check(status, name)
        return
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
    fn, name, t = _ADAM[p.dtype]
    _plan(OPTIM_WEIGHT * n, "elementwise")
    if (p.flags.aligned and g.flags.aligned and m.flags.aligned and v.flags.aligned
            and (vmax is None or vmax.flags.aligned)):   # the short path, as sgd_step's
        status = fn(_buf(t, p, True), _buf(t, g), _buf(t, m, True), _buf(t, v, True),
                    ffi.NULL if vmax is None else _buf(t, vmax, True), wd, decay, omb1, beta2,
                    omb2, eps, step_size, bc2_sqrt, gscale, n)
        if status:
            _check(status, name)
        return
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


def _operand(a, kind, writable=False):
    """(C pointer, C kind) of a step operand: uint16 bits of 16-bit kind ``kind`` (0 float16,
    1 bfloat16), or a float32 array when ``kind`` is None."""
    if kind is None:
        return _ptr("float", a, writable), _KIND_F32
    return _ptr("uint16_t", a, writable), kind


def sgd_step_half(p, pkind, g, gkind, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t,
                  gscale=1):
    """``sgd_step`` with p and / or g 16-bit (uint16 bits of kind pkind / gkind; None: a float32
    array; not both None, never two 16-bit kinds), float32 buf and scalars: the float32 step on
    the widened values, p rounded to nearest even; bit for bit the conversion passes around
    ``sgd_step``, in one pass."""
    n = p.size
    if n == 0:
        return
    _plan(OPTIM_WEIGHT * n, "elementwise")
    pa, ba = _aligned(p), _aligned(buf)
    pp, pk = _operand(pa, pkind, True)
    gp, gk = _operand(_aligned(g), gkind)
    f = _F32
    _check(lib.fr_sgd_step_half(pp, pk, gp, gk, _ptr("float", ba, True), _scalar(f, lr),
                                _scalar(f, wd), _scalar(f, decay), _scalar(f, momentum),
                                _scalar(f, damp1), int(bool(nesterov)), int(bool(first)),
                                _scalar(f, l1t), _scalar(f, gscale), n), "fr_sgd_step_half")
    _write_back(p, pa)
    if buf is not None:
        _write_back(buf, ba)


def adam_step_half(p, pkind, g, gkind, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size,
                   bc2_sqrt, gscale=1):
    """``adam_step`` with p and / or g 16-bit, as ``sgd_step_half`` (float32 m, v, vmax)."""
    n = p.size
    if n == 0:
        return
    _plan(OPTIM_WEIGHT * n, "elementwise")
    pa, ma, va, xa = _aligned(p), _aligned(m), _aligned(v), _aligned(vmax)
    pp, pk = _operand(pa, pkind, True)
    gp, gk = _operand(_aligned(g), gkind)
    f = _F32
    _check(lib.fr_adam_step_half(pp, pk, gp, gk, _ptr("float", ma, True), _ptr("float", va, True),
                                 _ptr("float", xa, True), _scalar(f, wd), _scalar(f, decay),
                                 _scalar(f, omb1), _scalar(f, beta2), _scalar(f, omb2),
                                 _scalar(f, eps), _scalar(f, step_size), _scalar(f, bc2_sqrt),
                                 _scalar(f, gscale), n), "fr_adam_step_half")
    for original, used in ((p, pa), (m, ma), (v, va), (vmax, xa)):
        if original is not None:
            _write_back(original, used)


# Lists of parameters in one call (fastreg.torch.optim, csrc/optim.c fr_*_multi_*): addresses,
# element counts and per-parameter scalars as NumPy arrays, the group's scalars as Python
# floats (cffi rounds a Python float to float exactly as NumPy does).
_MULTI = {}


def _multi_kernel(dtype, name):
    k = _MULTI.get((dtype, name))
    if k is None:
        full = f"fr_{name}_{_SUFFIX[dtype]}"
        k = _MULTI[dtype, name] = (getattr(lib, full), full, ffi.typeof(_CTYPE[dtype] + "[]"))
    return k


def _multi_run(name, addr, n, s, group_args):
    """``fr_<name>_<dtype>(addr, n, s, count, *group_args)`` for ``count = n.size`` parameters
    that each run serially (the caller planned them so): ``addr`` uintp (count, cols), ``n``
    int64 (count,), ``s`` (count, 4) of the parameters' dtype; all C-contiguous."""
    count = n.size
    if count == 0:
        return
    fn, full, t = _multi_kernel(s.dtype, name)
    lib.fr_set_pool_threads(1, 1)
    _check(fn(ffi.from_buffer("uintptr_t[]", addr), ffi.from_buffer("int64_t[]", n),
              ffi.from_buffer(t, s), count, *group_args), full)


def sgd_multi(addr, n, s, lr, momentum, damp1, nesterov, gscale):
    """SGD steps of many parameters of one dtype (see csrc/fastreg.h fr_sgd_multi_*): the bits
    of one ``sgd_step`` per parameter."""
    _multi_run("sgd_multi", addr, n, s, (lr, momentum, damp1, int(bool(nesterov)), gscale))


def adam_multi(addr, n, s, omb1, beta2, omb2, eps, gscale):
    """Adam steps of many parameters of one dtype (see csrc/fastreg.h fr_adam_multi_*): the bits
    of one ``adam_step`` per parameter."""
    _multi_run("adam_multi", addr, n, s, (omb1, beta2, omb2, eps, gscale))
