"""One optimizer step on the GPU (Numba CUDA), bit for bit as fastreg.reference.optim.

One element per thread of a grid-stride loop: each thread reads its elements of ``p``, ``g`` and
the state arrays, applies the reference's update in the reference's order of operations (in the
parameters' dtype, float32 kept float32), and writes ``p`` and the state back in place. Which
optional terms run (coupled weight decay, momentum, Nesterov, decoupled decay, the L1 prox,
AMSGrad) is decided on the host, exactly as the reference decides it, and passed as bit flags.

Every multiply that feeds an add or subtract (the decoupled decay ``p * decay`` too) goes through
``mul_rn_device`` so that the GPU compiler cannot fuse it into an FMA (see fastreg.cuda.penalty);
NaN payloads may differ on hardware (canonical NaN), as explained there.
"""
import numba
import numpy as np
from numba import cuda

from .penalty import mul_rn_device, soft_device, sqrt_device
from .philox import dev_in, dev_out, finish, launch_1d

# sgd_step flags
_WD, _BUF, _FIRST, _NESTEROV, _DECAY, _L1 = 1, 2, 4, 8, 16, 32
# adam_step flags (_WD and _DECAY as above)
_AMSGRAD = 64
# both: the gradient is multiplied by gscale first (gradient clipping)
_GSCALE = 128


@cuda.jit(cache=True)
def _sgd_kernel(p, g, buf, lr, wd, decay, momentum, damp1, l1t, gscale, flags):
    # buf is only touched with _BUF set (without momentum the caller passes p in its place).
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    one = p.dtype.type(1)
    zero = p.dtype.type(0)
    for i in range(start, p.size, stride):
        pi = p[i]
        d = g[i]
        if flags & _GSCALE:
            d = mul_rn_device(d, gscale)  # feeds the add below
        if flags & _WD:
            d = d + mul_rn_device(wd, pi)
        if flags & _BUF:
            if flags & _FIRST:
                b = d
            else:
                b = mul_rn_device(momentum, buf[i]) + mul_rn_device(damp1, d)
            buf[i] = b
            if flags & _NESTEROV:
                d = d + mul_rn_device(momentum, b)
            else:
                d = b
        if flags & _DECAY:
            pi = mul_rn_device(pi, decay)  # feeds the subtract below
        pi = pi - mul_rn_device(lr, d)
        if flags & _L1:
            pi = soft_device(pi, l1t, zero) * one  # the reference's soft_threshold with s = 1
        p[i] = pi


@cuda.jit(cache=True)
def _adam_kernel(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
                 gscale, flags):
    # vmax is only touched with _AMSGRAD set (without it the caller passes v in its place).
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.size, stride):
        pi = p[i]
        gi = g[i]
        if flags & _GSCALE:
            gi = mul_rn_device(gi, gscale)  # feeds the adds below
        if flags & _WD:
            gi = gi + mul_rn_device(wd, pi)
        if flags & _DECAY:
            pi = mul_rn_device(pi, decay)  # feeds the subtract below
        mi = m[i]
        if omb1 >= 0.5:   # torch's lerp for a weight >= 0.5 (see fastreg/reference/optim.py)
            mi = gi - mul_rn_device(gi - mi, numba.float32(1) - omb1)
        else:
            mi = mi + mul_rn_device(omb1, gi - mi)
        vi = mul_rn_device(beta2, v[i]) + mul_rn_device(mul_rn_device(omb2, gi), gi)
        m[i] = mi
        v[i] = vi
        second = vi
        if flags & _AMSGRAD:
            vm = vmax[i]
            if not (vm > vi or vm != vm):  # np.maximum(vmax, v): NaN-propagating, v on ties
                vm = vi
            vmax[i] = vm
            second = vm
        denom = sqrt_device(second) / bc2_sqrt + eps
        p[i] = pi - mul_rn_device(step_size, mi / denom)


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def _decay_flags(wd, decay, gscale=1):
    """_WD for coupled weight decay (wd != 0), _DECAY for the decoupled factor (decay != 1),
    _GSCALE for a gradient-clipping factor (gscale != 1)."""
    return ((_WD if wd != 0 else 0) | (_DECAY if decay != 1 else 0)
            | (_GSCALE if gscale != 1 else 0))


def _scalars(p, *values):
    """The kernel's scalar arguments, each cast to p's dtype (float32 stays float32)."""
    dt = np.dtype(p.dtype)
    return tuple(dt.type(x) for x in values)


def _finish_all(*pairs):
    """Copy each in-place (array, device array) pair back to a host array; a None (absent)
    state array is skipped."""
    for a, a_d in pairs:
        if a is not None:
            finish(a, a_d)


def sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1):
    """One SGD step in place on ``p`` (and ``buf``), as fastreg.reference.sgd_step.

    Parameters
    ----------
    p, g : device or host arrays (n,), the same float dtype
    buf : device or host array (n,) or None
        Momentum buffer; None when momentum == 0.
    lr, wd, decay, momentum, damp1, l1t : scalars of p's dtype
        Learning rate, coupled weight decay (skipped when 0), decoupled decay factor (skipped
        when 1), momentum, 1 - dampening, proximal L1 threshold (skipped when 0).
    nesterov, first : bool
        Nesterov momentum; first step (buf = d).
    gscale : scalar of p's dtype
        The gradient is multiplied by it first (gradient clipping; skipped when 1).

    Returns
    -------
    None
    """
    flags = _decay_flags(wd, decay, gscale)
    if buf is not None:
        flags |= _BUF
        if first:
            flags |= _FIRST
        if nesterov:
            flags |= _NESTEROV
    if l1t != 0:
        flags |= _L1
    p_d = dev_out(p, copy_in=True)
    g_d = dev_in(g)
    buf_d = dev_out(buf, copy_in=not first) if buf is not None else p_d
    if p_d.size == 0:
        return
    launch_1d(_sgd_kernel, p_d.size, p_d, g_d, buf_d,
              *_scalars(p, lr, wd, decay, momentum, damp1, l1t, gscale), np.int32(flags))
    _finish_all((p, p_d), (buf, buf_d))


def adam_step(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
              gscale=1):
    """One Adam / AdamW (/ AMSGrad) step in place on ``p``, ``m``, ``v`` (and ``vmax``), as
    fastreg.reference.adam_step.

    Parameters
    ----------
    p, g, m, v : device or host arrays (n,), the same float dtype
    vmax : device or host array (n,) or None
        AMSGrad's running maximum of v; None without AMSGrad.
    wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt : scalars of p's dtype
        Coupled weight decay (skipped when 0), decoupled decay factor (skipped when 1),
        1 - beta1, beta2, 1 - beta2, eps, lr / (1 - beta1**t), sqrt(1 - beta2**t).
    gscale : scalar of p's dtype
        The gradient is multiplied by it first (gradient clipping; skipped when 1).

    Returns
    -------
    None
    """
    flags = _decay_flags(wd, decay, gscale)
    if vmax is not None:
        flags |= _AMSGRAD
    p_d = dev_out(p, copy_in=True)
    g_d = dev_in(g)
    m_d = dev_out(m, copy_in=True)
    v_d = dev_out(v, copy_in=True)
    vmax_d = dev_out(vmax, copy_in=True) if vmax is not None else v_d
    if p_d.size == 0:
        return
    launch_1d(_adam_kernel, p_d.size, p_d, g_d, m_d, v_d, vmax_d,
              *_scalars(p, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt, gscale),
              np.int32(flags))
    _finish_all((p, p_d), (m, m_d), (v, v_d), (vmax, vmax_d))
