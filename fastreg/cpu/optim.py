"""One SGD / Adam(W) step on one parameter array on the CPU with Numba (definitions in
fastreg/reference/optim.py).

Each step is one fused pass, a split kernel over tasks of TASK elements (share ``share`` of
``shares`` of them, see fastreg/cpu/_jit.py) and a task function over slice views (as in
fastreg/cpu/penalty.py): every element of p, g and the state is read once and written once.
Arithmetic stays in the array's dtype, in the reference's order, without fastmath (no FMA
contraction), so the result agrees with the reference bit for bit.

The gradient-clipping factor ``gscale`` multiplies the gradient first (skipped when 1, so an
unclipped step is the plain one). ``buf`` / ``vmax`` of None compile to their own
specialization (Numba prunes ``is None`` branches on an argument's type). The other flags
(gscale != 1, wd != 0, decay != 1, first, nesterov, l1t != 0) are loop-invariant tests inside
the loop: LLVM unswitches or if-converts them, and the loop
vectorizes; measured within noise (5%) of loops with every flag a compile-time constant, on
in-cache sizes where the arithmetic would show.
"""
import numpy as np

from .. import _threads
from .._scalars import typed
from ._jit import inline, jit, launch, split
from .penalty import TASK, _soft

# An optimizer step does several times the arithmetic of a penalty gradient per element: its
# work counts double against the "elementwise" grain (measured, see fastreg._threads.GRAIN).
OPTIM_WEIGHT = 2


@inline
def _part(a, lo, hi):
    """a[lo:hi], or None for an absent (None) state array (the branch is pruned on a's type)."""
    if a is None:
        return None
    return a[lo:hi]


@jit
def _sgd_task(ps, gs, bs, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale):
    """One task's slice; bs is None without momentum."""
    zero = ps.dtype.type(0)
    use_gs = gscale != 1
    use_wd = wd != 0
    use_decay = decay != 1
    use_l1 = l1t != 0
    ml1t = -l1t
    for i in range(ps.size):
        x = ps[i]
        d = gs[i] * gscale if use_gs else gs[i]
        d = d + wd * x if use_wd else d
        if bs is not None:
            b = d if first else momentum * bs[i] + damp1 * d
            bs[i] = b
            d = d + momentum * b if nesterov else b
        if use_decay:
            x = x * decay
        x = x - lr * d
        # the reference's soft_threshold(p, l1t, 1, p): soft(x) * 1 is soft(x)
        ps[i] = _soft(x, l1t, ml1t, zero) if use_l1 else x


@split
def _sgd_kernel(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale, share,
                shares):
    n = p.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        hi = min(lo + TASK, n)
        _sgd_task(p[lo:hi], g[lo:hi], _part(buf, lo, hi), lr, wd, decay, momentum, damp1,
                  nesterov, first, l1t, gscale)


@jit
def _adam_task(ps, gs, ms, vs, vms, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
               gscale):
    """One task's slice; vms (the slice of vmax) is None without AMSGrad."""
    use_gs = gscale != 1
    use_wd = wd != 0
    use_decay = decay != 1
    # torch's lerp: m + w (g - m) for a weight w < 0.5, else g - (g - m)(1 - w), 1 - w in the
    # dtype (float32(1) - a float32 is float32; with a float64 it is float64)
    second_form = omb1 >= 0.5
    c1 = np.float32(1) - omb1
    for i in range(ps.size):
        x = ps[i]
        gi = gs[i] * gscale if use_gs else gs[i]
        gi = gi + wd * x if use_wd else gi
        if use_decay:
            x = x * decay
        mi = ms[i]
        mi = gi - (gi - mi) * c1 if second_form else mi + omb1 * (gi - mi)
        ms[i] = mi
        vi = beta2 * vs[i] + (omb2 * gi) * gi
        vs[i] = vi
        second = vi  # the second moment in the denominator: v, or AMSGrad's running maximum
        if vms is not None:
            # np.maximum(vmax, v): the old maximum if larger or NaN, else v (NaN included)
            top = vms[i]
            second = top if (top > vi or top != top) else vi
            vms[i] = second
        denom = np.sqrt(second) / bc2_sqrt + eps
        ps[i] = x - step_size * (mi / denom)


@split
def _adam_kernel(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
                 gscale, share, shares):
    n = p.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        hi = min(lo + TASK, n)
        _adam_task(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], _part(vmax, lo, hi), wd, decay, omb1,
                   beta2, omb2, eps, step_size, bc2_sqrt, gscale)


def sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1):
    nt = _threads.plan(OPTIM_WEIGHT * p.size, "elementwise")
    launch(_sgd_kernel, nt, p, g, buf, lr, wd, decay, momentum, damp1, bool(nesterov),
           bool(first), l1t, typed(p.dtype, gscale))


def adam_step(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
              gscale=1):
    nt = _threads.plan(OPTIM_WEIGHT * p.size, "elementwise")
    launch(_adam_kernel, nt, p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size,
           bc2_sqrt, typed(p.dtype, gscale))
