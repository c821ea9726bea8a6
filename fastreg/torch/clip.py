"""Gradient clipping on a torch model's parameters: ``clip_grad_norm_`` (the signature and the
result of ``torch.nn.utils.clip_grad_norm_``) and ``adaptive_clip_grad_`` (timm's
``adaptive_clip_grad``), running fastreg's list kernels on the gradients.

Both take the parameters (a tensor, a list, or a one-pass iterable such as
``model.parameters()``) and skip those without a gradient, as torch does. The arguments are
checked first, whatever the gradients are (fastreg's rules: ``max_norm >= 0``, ``norm_type > 0``
or inf; torch also takes a 0-"norm", fastreg does not). Float32/float64 gradients that all live
on the CPU are then clipped in place by ``fastreg.clip_grad_norm`` /
``fastreg.adaptive_clip_grad`` through NumPy views of their memory (a list that names one
gradient twice is refused there, as fastreg never updates one array twice in a call); anything
else (CUDA, float16/bfloat16, sparse or mixed-device gradients) goes through torch's own
``clip_grad_norm_`` (timm's rule in torch operations for ``adaptive_clip_grad_``). Inside
``torch.compile`` both run eagerly (``torch.compiler.disable``: one graph break), as
``frt.optim``'s steps do.

fastreg accumulates the norm in float64 (torch: in the gradients' dtype), so the total norm can
differ from torch's in its last float32 bits, and a gradient by one float32 rounding of the
clip coefficient. Where torch's float32 sums overflow (a float32 gradient's 2-norm above about
1.8e19), ``clip_grad_norm_`` returns inf and zeroes the gradients (or raises with
``error_if_nonfinite``) as torch does (``fastreg.clip``'s module doc).
"""
import numpy as np
import torch

from .. import _arrays, _dispatch
from .. import clip as _clip
from . import _bridge

__all__ = ["clip_grad_norm_", "adaptive_clip_grad_"]

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _with_grads(parameters):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def _host_views(tensors):
    """NumPy views of dense float32/float64 CPU tensors (sharing their memory), or None when
    any tensor is something else (CUDA, 16-bit, sparse): torch's ``numpy()`` refuses those
    but float16, which the dtype test catches."""
    try:
        views = [t.detach().numpy() for t in tensors]
    except (TypeError, RuntimeError):
        return None
    for v in views:
        if v.dtype not in _KERNEL_DTYPES:
            return None
    return views


@torch.compiler.disable   # eager inside a compiled step: Dynamo cannot trace the C backend
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None, *, backend="auto"):
    """Clip the gradients of ``parameters`` by their global norm, in place; returns the total
    norm (before clipping) as a 0-d tensor: ``torch.nn.utils.clip_grad_norm_``.

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Parameters whose ``.grad`` is clipped (those without one are skipped).
    max_norm : float or one-element Tensor
        The largest total norm allowed (>= 0).
    norm_type : float or one-element Tensor
        Order of the norm (> 0 or inf).
    error_if_nonfinite : bool
        Raise a RuntimeError (changing nothing) when the total norm is NaN or infinite.
    foreach : bool or None
        Accepted for torch's signature; it only chooses torch's implementation, which fastreg's
        kernels replace (it is passed on where torch's own function runs).
    backend : {"auto", "numpy", "cpu", "c"}
        fastreg backend for CPU float32/float64 gradients.

    Returns
    -------
    Tensor
        The total norm, a 0-d tensor: float64 when any gradient is float64, float32 for the
        other CPU float32 gradients (0 without gradients); torch's own result (dtype and
        device) where torch's function runs.
    """
    max_norm = _clip._check_max_norm(_bridge.number(max_norm, "max_norm"))
    norm_type = _clip.check_norm_type(_bridge.number(norm_type, "norm_type"))
    error_if_nonfinite = _arrays.check_bool(error_if_nonfinite, "error_if_nonfinite")
    params = _with_grads(parameters)
    grads = [p.grad for p in params]
    if not grads:
        return torch.tensor(0.0)
    views = _host_views(grads)
    if views is None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite,
                                              foreach)
    total = _clip.clip_grad_norm(views, max_norm, norm_type, error_if_nonfinite,
                                 backend=backend)
    _dispatch.bump_versions(torch, grads)     # written through NumPy views, as torch's mul_
    wide = any(v.dtype == np.float64 for v in views)
    return torch.tensor(total, dtype=torch.float64 if wide else torch.float32)


@torch.compiler.disable   # as clip_grad_norm_
def adaptive_clip_grad_(parameters, clip_factor=0.01, eps=1e-3, norm_type=2.0, *,
                        backend="auto"):
    """Adaptive gradient clipping (NFNets), in place: timm's ``adaptive_clip_grad``; each
    gradient is scaled so that its unit-wise norm is at most ``clip_factor`` times that of its
    parameter (at least ``eps``). See ``fastreg.adaptive_clip_grad`` for the rule.

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Parameters whose ``.grad`` is clipped (those without one are skipped).
    clip_factor, eps : float or one-element Tensor
        The ratio limit and the smallest parameter norm (>= 0).
    norm_type : float or one-element Tensor
        Order of the unit-wise norms (> 0 or inf).
    backend : {"auto", "numpy", "cpu", "c"}
        fastreg backend for CPU float32/float64 tensors.
    """
    clip_factor = _arrays.check_nonneg(_bridge.number(clip_factor, "clip_factor"), "clip_factor")
    eps = _arrays.check_nonneg(_bridge.number(eps, "eps"), "eps")
    norm_type = _clip.check_norm_type(_bridge.number(norm_type, "norm_type"))
    params = _with_grads(parameters)
    if not params:
        return
    grads = [p.grad for p in params]
    pv, gv = _host_views(params), _host_views(grads)
    if pv is not None and gv is not None:
        _clip.adaptive_clip_grad(pv, gv, clip_factor, eps, norm_type, backend=backend)
        _dispatch.bump_versions(torch, grads)
        return
    with torch.no_grad():   # timm's rule, in torch operations
        for p, g in zip(params, grads):
            dims = tuple(range(1, p.ndim)) if p.ndim > 1 else None
            pn = torch.linalg.vector_norm(p, norm_type, dim=dims, keepdim=True).clamp_(min=eps)
            gn = torch.linalg.vector_norm(g, norm_type, dim=dims, keepdim=True)
            limit = pn * clip_factor
            clipped = g * (limit / gn.clamp(min=1e-6))
            g.copy_(torch.where(gn < limit, g, clipped))
