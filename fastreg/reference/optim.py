"""One optimizer step on one parameter array, in plain NumPy: the oracle for every backend.

The update rules are PyTorch's (torch.optim.SGD / Adam / AdamW, single-tensor form) written with
scalars already cast to the parameter's dtype by the caller, in this exact order of operations.
Every array is 1-D and contiguous; ``p`` and the state arrays are updated in place.
"""
import numpy as np

from .penalty import soft_threshold


def sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1):
    """SGD with coupled (``wd``) or decoupled (``decay``) weight decay, momentum and an L1 prox.

    g = g * gscale                           (gradient clipping's factor; skipped when 1)
    d = g + wd * p                           (coupled L2; skipped when wd == 0)
    buf = d if first else momentum * buf + damp1 * d      (buf is None when momentum == 0)
    d = d + momentum * buf if nesterov else buf           (with momentum)
    p = p * decay                            (decoupled decay; skipped when decay == 1)
    p = p - lr * d
    p = soft(p, l1t)                         (proximal L1; skipped when l1t == 0)
    """
    if gscale != 1:
        g = g * gscale
    d = g + wd * p if wd != 0 else g.copy()
    if buf is not None:
        if first:
            buf[...] = d
        else:
            buf[...] = momentum * buf + damp1 * d
        d = d + momentum * buf if nesterov else buf.copy()
    if decay != 1:
        p[...] = p * decay
    p[...] = p - lr * d
    if l1t != 0:
        soft_threshold(p, l1t, p.dtype.type(1), p)


def adam_step(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
              gscale=1):
    """Adam (coupled ``wd``) / AdamW (decoupled ``decay``), with AMSGrad when vmax is not None.

    g = g * gscale                           (gradient clipping's factor; skipped when 1)
    g = g + wd * p                           (Adam's L2; skipped when wd == 0)
    p = p * decay                            (AdamW; skipped when decay == 1)
    m = m + omb1 * (g - m)                   (omb1 = 1 - beta1 < 0.5; torch's lerp, which
    m = g - (g - m) * (1 - omb1)              for a weight >= 0.5 takes the second form, 1 - omb1
                                              rounded to the dtype: beta1 = 0 gives m = g)
    v = beta2 * v + (omb2 * g) * g           (omb2 = 1 - beta2; torch's addcmul order: a
                                             g * g that overflows alone does not, as in torch)
    vmax = max(vmax, v)                      (AMSGrad, NaN-propagating like np.maximum:
                                              vmax if (vmax > v or vmax is NaN) else v;
                                              then vmax replaces v below)
    denom = sqrt(v) / bc2_sqrt + eps         (bc2_sqrt = sqrt(1 - beta2**t))
    p = p - step_size * (m / denom)          (step_size = lr / (1 - beta1**t))
    """
    if gscale != 1:
        g = g * gscale
    if wd != 0:
        g = g + wd * p
    if decay != 1:
        p[...] = p * decay
    d = g - m
    if omb1 < 0.5:
        m[...] = m + omb1 * d
    else:
        m[...] = g - d * (m.dtype.type(1) - omb1)
    v[...] = beta2 * v + (omb2 * g) * g
    if vmax is not None:
        np.maximum(vmax, v, out=vmax)
        second = vmax
    else:
        second = v
    denom = np.sqrt(second) / bc2_sqrt + eps
    p[...] = p - step_size * (m / denom)
