"""Softmax cross-entropy with its gradient: the definitions every backend is tested against.

Rows ``r`` of logits ``x`` (R, C); the public wrapper (fastreg/loss.py) has already validated
everything and folded the options into two float64 class vectors, ``w`` the class weights
(ones without ``weight=``) and ``eps`` the label smoothing:

    tw = (1 - eps) * w          weight of the target term
    cw = (eps / C) * w          weight of the uniform (smoothing) term; None when eps == 0

Each row's loss is a weighted sum of negative log-probabilities,

    logp[r, c] = x[r, c] - max_c x[r] - log(sum_c exp(x[r, c] - max_c x[r]))
    loss[r]    = -sum_c a[r, c] * logp[r, c]

with the per-class coefficients ``a``:

    hard (class-index) targets:  a[r, c] = tw[y_r] * (c == y_r) + cw[c]   (0 for the whole row
                                 when y_r == ignore_index)
    soft (probability) targets:  a[r, c] = tw[c] * t[r, c] + cw[c]

which is exactly torch.nn.functional.cross_entropy's per-element loss (aten's
cross_entropy_loss_label_smoothing and cross_entropy_loss_prob_target: the weighted NLL times
``1 - eps`` plus ``eps / C`` times the weighted sum of ``-logp``). The gradient of
``scale * sum_r loss[r]`` with respect to the logits is

    grad[r, c] = k[r] * exp(d[r, c]) - scale * a[r, c],   k[r] = scale * A[r] / s[r]

with ``A[r] = sum_c a[r, c]``, ``d`` the shifted logits and ``s[r] = sum_c exp(d[r, c])``, that
is ``scale * (softmax(x[r])[c] * A[r] - a[r, c])`` with the scale distributed, as the kernels
compute it (zero rows for ignored targets); ``scale`` is what the reduction divides by (1 / the
mean's denominator, or 1), chosen by the wrapper. The distributed form matters when the mean's
denominator is 0 (every kept target has class weight 0): ``scale`` is then inf and every kept
row's gradient is NaN, as the loss is and as torch's gradient is (the undistributed product
would give +-inf where label smoothing makes ``a`` nonzero). Without smoothing (``cw`` None)
the smoothing term is absent, not multiplied by zero, so a ``-inf`` logit of a non-target class
gives a finite loss, as in torch.

Kernel contract (fastreg._registry): x (R, C) float32/float64 C-contiguous; hard target int64
(R,) in [0, C) or equal to ignore_index; soft target (R, C) of x's dtype; tw, cw float64 (C,);
``loss`` float64 (R,) receives the per-row losses (unscaled); ``grad`` (R, C) of x's dtype, or
None for the loss alone; ``grad`` may be ``x`` (the gradient overwrites the logits).

The reference works in float64 throughout (NumPy's exp and log) and rounds the gradient once to
x's dtype. The kernels compute exp in x's dtype and accumulate in float64: see fastreg/cpu/loss.py
for the order of operations shared by the cpu and c backends and the measured error.
"""
import numpy as np


def _softmax_parts(x):
    """(d, e, s): shifted logits, their exponentials and the row sums, all float64. The shift
    x - max is rounded to the logits' dtype, as the kernels (and torch) compute it: float32
    logits 3e38 apart overflow to -inf there, and the loss is inf."""
    # inf - inf: NaN, as the kernels (and torch) give
    with np.errstate(invalid="ignore", over="ignore"):
        d = (x - x.max(axis=1, keepdims=True)).astype(np.float64)
    e = np.exp(d)
    s = e.sum(axis=1)
    return d, e, s


def _grad(e, s, a, keep, scale, grad):
    """grad = k * e - scale * a with k = scale * A / s (see the module docstring), rows without
    ``keep`` exactly zero."""
    if grad is None:
        return
    with np.errstate(invalid="ignore", over="ignore"):
        k = scale * a.sum(axis=1, keepdims=True) / s[:, None]
        g = k * e - scale * a
    g[~keep] = 0.0
    grad[...] = g.astype(grad.dtype)


def ce_hard(x, target, tw, cw, ignore_index, scale, loss, grad):
    """Per-row losses (and the gradient) for class-index targets; see the module docstring."""
    r, c = x.shape
    if r == 0:
        return
    d, e, s = _softmax_parts(x)
    keep = target != ignore_index
    y = np.where(keep, target, 0)
    rows_ = np.arange(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = d - np.log(s)[:, None]
        rows = -tw[y] * logp[rows_, y]          # torch: (1 - eps) * weighted NLL
        if cw is not None:                       # + eps / C * weighted sum of -logp
            rows = rows - (cw[None, :] * logp).sum(axis=1)
    loss[...] = np.where(keep, rows, 0.0)
    a = np.zeros((r, c))
    a[rows_, y] = tw[y]
    if cw is not None:
        a += cw[None, :]
    _grad(e, s, a, keep, scale, grad)


def ce_soft(x, target, tw, cw, scale, loss, grad):
    """Per-row losses (and the gradient) for probability targets; see the module docstring."""
    r, c = x.shape
    if r == 0:
        return
    d, e, s = _softmax_parts(x)
    a = tw[None, :] * target.astype(np.float64)
    if cw is not None:
        a = a + cw[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = d - np.log(s)[:, None]
        loss[...] = -(a * logp).sum(axis=1)
    _grad(e, s, a, np.ones(r, bool), scale, grad)
