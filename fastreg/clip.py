"""Gradient clipping: by the global norm of a list of gradients (PyTorch's
``clip_grad_norm_``) and adaptive, unit-wise clipping (AGC, Brock et al. 2021, as timm's
``adaptive_clip_grad``).

Norms. ``norm_type`` is a real ``p > 0`` or ``inf`` (also the string ``"inf"``). The p-norm of a
list of arrays is the norm of all their elements as one vector: ``(sum |x|**p) ** (1 / p)``
(``sqrt`` of the sum of squares for p = 2; ``max |x|`` for inf), accumulated in float64 over
the elements converted to float64 (backends differ only by summation order).

Clip coefficient, as torch computes it (``torch.nn.utils.clip_grads_with_norm_``): in the
dtype ``r`` of torch's total norm (float32 when every gradient is float32, else float64)::

    coef = r(1) / (r(total) + r(1e-6)) * r(max_norm)      (torch's reciprocal, then multiply)
    coef = min(coef, 1)                                    (NaN stays NaN)
    g = g * coef                                           (coef rounded to g's dtype)

so clipped gradients equal torch's bit for bit whenever fastreg's total, rounded to ``r``, is
torch's total: always for the inf norm (a max is exact), and for p-norms whenever torch's
float32 arithmetic (a float32 norm per array, then the norm of those norms) happens to round to
the same value; otherwise ``coef`` differs from torch's by about one float32 rounding (torch's
total is the less accurate one). With a coefficient of exactly 1 the gradients are left as
they are (``g * 1`` is ``g``).

Overflow, as torch. torch sums ``|g|**p`` of a float32 gradient in float32, so its norm is inf
once that sum passes float32's largest value (3.4e38: a 2-norm above about 1.8e19), and for
float32 gradients it sums the p-th powers of their norms in float32 again. ``clip_grad_norm``
follows it there (its total is inf: the gradients are scaled by 0, or ``error_if_nonfinite``
raises), although fastreg's float64 sum is finite; ``grad_norm`` and the optimizers'
``max_grad_norm`` keep the float64 value.
"""
import math
import numbers

import numpy as np

from . import _arrays, _dispatch, _multi
from ._dispatch import flat

__all__ = ["grad_norm", "clip_grad_norm", "clip_grads_with_norm", "adaptive_clip_grad",
           "NonFiniteNormError"]


class NonFiniteNormError(FloatingPointError, RuntimeError):
    """The total norm is NaN or infinite and ``error_if_nonfinite=True`` (a RuntimeError, as
    torch raises, and a FloatingPointError, as fastreg's optimizers do)."""


def check_norm_type(norm_type):
    """``norm_type`` as a Python float: > 0, or inf (``"inf"`` accepted as torch does)."""
    if isinstance(norm_type, str):
        if norm_type.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        raise ValueError(f"norm_type must be a number > 0 or 'inf', got {norm_type!r}")
    v = _arrays._scalar(norm_type)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"norm_type must be a real number > 0 or 'inf', got "
                        f"{type(norm_type).__name__}")
    v = _arrays.real_to_float(v, "norm_type", "a number > 0 or 'inf'")
    if not v > 0:   # NaN too
        raise ValueError(f"norm_type must be > 0 (or inf), got {v}")
    return v


def _check_max_norm(max_norm, name="max_norm"):
    v = _arrays._scalar(max_norm)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {type(max_norm).__name__}")
    v = _arrays.real_to_float(v, name, "a number >= 0 (inf allowed)")
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0 (inf allowed: no clipping), got {v}")
    return v


def root(s, p):
    """The norm from ``sum |x|**p`` (or from ``max |x|`` for p = inf), float64."""
    if p == 2.0:
        return math.sqrt(s) if s == s and s >= 0 else s
    if p == 1.0 or p == math.inf:
        return s
    try:
        return s ** (1.0 / p)
    except OverflowError:   # a small p: the norm is beyond the float range (torch: inf)
        return math.inf


def _combine(a, b, p):
    """Partial results of two lists: a sum, or for p = inf a NaN-propagating max."""
    if p != math.inf:
        return a + b
    if a != a or b != b:
        return math.nan
    return max(a, b)


def _group_sums(job, views, groups, p):
    """``{dtype: sum |x|**p}`` (max |x| for p = inf) of the arrays ``views`` (kernel-ready,
    grouped by dtype), for the groups with elements, in ``groups``' order."""
    sums = {}
    for dtype, idx in groups.items():
        arrays = [views[i] for i in idx if views[i].size]
        if arrays:
            sums[dtype] = job.op("norm_sum")(arrays, p)
    return sums


def _norm_from(sums, p):
    """The p-norm (float64) from the groups' partial results (``_group_sums``')."""
    s = 0.0
    for v in sums.values():
        s = _combine(s, v, p)
    return root(s, p)


def total_norm_of(job, views, groups, p):
    """The p-norm (float64) of the arrays ``views`` (kernel-ready, grouped by dtype)."""
    return _norm_from(_group_sums(job, views, groups, p), p)


def _coef_dtype(dtypes):
    """The dtype the clip coefficient is computed in: float32 when every dtype is float32."""
    return np.float32 if dtypes and all(np.dtype(d) == np.float32 for d in dtypes) else np.float64


def clip_coef(total, max_norm, dtypes):
    """torch's clip coefficient (module doc) as a float64 holding a value of the result dtype
    (float32 when every dtype is float32), or 1.0 when no gradient needs scaling."""
    r = _coef_dtype(dtypes)
    with np.errstate(all="ignore"):
        coef = r(1) / (r(total) + r(1e-6)) * r(max_norm)
    coef = float(coef)
    return 1.0 if coef > 1.0 else coef


def _sums_of(job, batch, p):
    """``_group_sums`` of what _prepare returns (a Batch or a _Planned), in the order of first
    appearance."""
    if isinstance(batch, _Planned):
        return _multi.run(job, batch.plan, "norm_sum", (batch.grads,), lambda dt: p)
    return _group_sums(job, batch.views, batch.groups, p)


def _norm_of(job, batch, p):
    """total_norm_of for what _prepare returns (a Batch or a _Planned)."""
    return _norm_from(_sums_of(job, batch, p), p)


_F32 = np.dtype(np.float32)
# the smallest double that rounds to inf in float32 (the largest finite value plus half an ulp:
# round to nearest even goes up from there)
_F32_INF = 2.0 ** 128 - 2.0 ** 103


def _torch_overflows(job, batch, sums, p, r):
    """Whether torch's norm of these gradients is inf by float32 overflow where fastreg's
    float64 total, rounded to ``r`` (the coefficient's dtype), is not. torch takes the norm of
    each gradient in its dtype, summing ``|g|**p`` of a float32 one in float32 (a single
    element is its own norm), then the norm of those norms in float32 when every gradient is
    float32 (in float64 otherwise). ``sums``: ``_sums_of``'s. The inf norm's max is exact."""
    s32 = sums.get(_F32)
    if p == math.inf or s32 is None or not (s32 >= _F32_INF or root(s32, p) >= _F32_INF):
        return False   # no float32 sum or norm of torch's can pass float32's range
    if isinstance(batch, _Planned):
        grads = batch.grads
        f32 = [flat(g) for g in grads if g.dtype == _F32 and g.size]
    else:
        grads = batch.views
        f32 = [grads[i] for i in batch.groups[_F32] if grads[i].size]
    if r == np.float32 and len(grads) >= 2 and s32 >= _F32_INF:
        return True    # the norm of the norms sums their p-th powers in float32
    for g in f32:
        si = job.op("norm_sum")([g], p)
        if (g.size >= 2 and si >= _F32_INF) or root(si, p) >= _F32_INF:
            return True
    return False


class _Planned:
    """A checked host list (fastreg/_multi.py's plan) dressed as the Batch that _prepare
    returns otherwise: its dtypes, and the kernels run through _multi.run."""
    __slots__ = ("plan", "grads", "groups")

    def __init__(self, plan, grads):
        self.plan, self.grads, self.groups = plan, grads, plan.dtypes


def _prepare(grads, backend):
    """(grads as a list, job, batch): batch a Batch, or a _Planned for a host list that a plan
    covers; job None for an empty list."""
    grads = _multi.as_list(grads, "grads")
    plan, job = _multi.host_plan(grads, None, backend)
    if plan is not None:
        return grads, job, _Planned(plan, grads)
    checked, device, _ = _multi.check_targets(grads, "grads")
    if not checked:
        return grads, None, None
    job = _dispatch.job(_dispatch.resolve(backend, *(grads if device else checked)),
                        not device)
    return grads, job, _multi.Batch(job, grads if device else checked, in_place=True)


def _scale(job, batch, coef):
    """g = g * coef in each gradient's dtype (skipped for a coefficient of exactly 1)."""
    if coef == 1.0:
        return
    if isinstance(batch, _Planned):
        _multi.run(job, batch.plan, "scale", (batch.grads,), lambda dt: dt.type(coef))
        return
    for dtype, idx in batch.groups.items():
        arrays = [batch.views[i] for i in idx if batch.views[i].size]
        if arrays:
            job.op("scale")(arrays, dtype.type(coef))
    batch.write_back()


def grad_norm(grads, norm_type=2.0, *, backend="auto"):
    """The norm of a list of arrays taken as one vector (torch's ``get_total_norm``).

    Parameters
    ----------
    grads : array or list of arrays, float32 or float64
        Host or CUDA arrays (not modified); dtypes may differ.
    norm_type : float or "inf"
        p > 0, or inf.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        ``(sum |x|**p) ** (1 / p)`` over every element (``max |x|`` for inf), accumulated in
        float64; 0.0 for an empty list; NaN if an element is NaN, inf if one is infinite.

    Raises
    ------
    TypeError, ValueError
        A bad norm_type, a non-float array, host and device arrays mixed.
    """
    if type(grads) is not np.ndarray:
        grads = _multi.listed(grads)
        if (r := _dispatch.torch_call(grad_norm, locals())) is not _dispatch.NOT_TORCH:
            return r
    p = check_norm_type(norm_type)
    arrays = _multi.as_list(grads, "grads")
    plan, job = _multi.host_plan(None, arrays, backend)   # checked now, or by a previous call
    if plan is not None:
        return _norm_of(job, _Planned(plan, arrays), p)
    infos, device = [], None
    for i, a in enumerate(arrays):
        info = _arrays.describe(a, f"grads[{i}]")
        _arrays.check_float(info, f"grads[{i}]")
        dev = _arrays.is_device(a)
        if device is not None and dev != device:
            raise ValueError("grads mixes CUDA device arrays and host arrays")
        device = dev
        infos.append(a if dev else info)
    if not infos:
        return 0.0
    job = _dispatch.job(_dispatch.resolve(backend, *infos), not device)
    batch = _multi.Batch(job, infos, in_place=False)
    return total_norm_of(job, batch.views, batch.groups, p)


def clip_grads_with_norm(grads, max_norm, total_norm, *, backend="auto"):
    """Scale gradients in place by torch's clip coefficient for a given total norm.

    Parameters
    ----------
    grads : array or list of arrays, float32 or float64
        Updated in place (writable host arrays, a non-contiguous one through a copy written
        back; or C-contiguous CUDA arrays), no two sharing memory.
    max_norm : float
        >= 0 (inf: nothing is scaled, unless total_norm is inf or NaN: torch's arithmetic
        then gives a NaN coefficient).
    total_norm : float
        The norm to clip by (e.g. from ``grad_norm``); NaN or inf scale every gradient by NaN
        or 0, as in torch.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        The coefficient applied (1.0 when nothing was scaled).

    Raises
    ------
    TypeError, ValueError
        A bad max_norm or total_norm, a non-float or read-only gradient, shared memory.
    """
    if type(grads) is not np.ndarray:
        grads = _multi.listed(grads)
        if (r := _dispatch.torch_call(clip_grads_with_norm, locals())) is not _dispatch.NOT_TORCH:
            return r
    max_norm = _check_max_norm(max_norm)
    total = _arrays._scalar(total_norm)
    if isinstance(total, (bool, np.bool_)) or not isinstance(total, numbers.Real):
        raise TypeError(f"total_norm must be a real number, got {type(total_norm).__name__}")
    grads, job, batch = _prepare(grads, backend)
    if job is None:
        return 1.0
    coef = clip_coef(float(total), max_norm, batch.groups)
    _scale(job, batch, coef)
    return coef


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite=False, *,
                   backend="auto"):
    """Clip a list of gradients by their global norm, in place: ``torch.nn.utils.clip_grad_norm_``.

    Parameters
    ----------
    grads : array or list of arrays, float32 or float64
        Updated in place (see ``clip_grads_with_norm``); dtypes may differ.
    max_norm : float
        Largest allowed total norm (>= 0; inf: only measure, for a finite norm).
    norm_type : float or "inf"
        p > 0 or inf (default 2).
    error_if_nonfinite : bool
        Raise when the total norm is NaN or infinite, before any gradient changes; else scale
        as torch does (by NaN, or by 0 for an infinite norm).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        The total norm of the gradients before clipping (float64 accumulation; see
        ``grad_norm``), or inf where torch's float32 arithmetic overflows (module doc), as
        torch returns it; the gradients are then scaled by 0, as torch scales them.

    Raises
    ------
    NonFiniteNormError
        error_if_nonfinite and a NaN or infinite total norm (a RuntimeError and a
        FloatingPointError).
    TypeError, ValueError
        A bad max_norm or norm_type; a gradient that is not a writable float32/float64 array;
        gradients sharing memory; host and device arrays mixed. Raised before any change.

    Notes
    -----
    The total norm is one read pass over the gradients, the scaling a second, skipped when
    the coefficient is 1 (total <= max_norm). ``fastreg.optim``'s ``max_grad_norm=`` fuses
    the scaling into the optimizer step instead. The coefficient is torch's (module doc).
    Repeated calls with the same host arrays reuse the checks' outcome, as ``ema_update``
    does (see its Notes; ``a.resize`` in place is refused while fastreg remembers the
    list).
    """
    if type(grads) is not np.ndarray:
        grads = _multi.listed(grads)
        if (r := _dispatch.torch_call(clip_grad_norm, locals())) is not _dispatch.NOT_TORCH:
            return r
    max_norm = _check_max_norm(max_norm)
    p = check_norm_type(norm_type)
    error_if_nonfinite = _arrays.check_bool(error_if_nonfinite, "error_if_nonfinite")
    grads, job, batch = _prepare(grads, backend)
    if job is None:
        return 0.0
    sums = _sums_of(job, batch, p)
    total = _norm_from(sums, p)
    # torch's norm is inf where its float32 arithmetic overflows: a float64 total beyond the
    # coefficient's dtype (float32 for float32 gradients), or a float32 sum of |g|**p beyond
    # float32's range (_torch_overflows); the gradients are then zeroed, as torch zeroes them
    r = _coef_dtype(batch.groups)
    with np.errstate(over="ignore"):
        beyond = math.isfinite(total) and not np.isfinite(r(total))
    if not beyond and math.isfinite(total) and _torch_overflows(job, batch, sums, p, r):
        beyond, r = True, np.float32
    if error_if_nonfinite and (beyond or not math.isfinite(total)):
        why = f" (beyond {np.dtype(r).name}'s range in torch's arithmetic)" if beyond else ""
        raise NonFiniteNormError(
            f"the total norm of order {p} of the gradients is {total}{why}, so they cannot "
            "be clipped (no gradient was changed); pass error_if_nonfinite=False to scale them "
            "by the non-finite norm anyway, as torch does")
    if beyond:
        total = math.inf
    _scale(job, batch, clip_coef(total, max_norm, batch.groups))
    return total


def _units(shape):
    """AGC's units: (U, K) for an array of ``shape`` (the whole array for ndim <= 1, else one
    unit per index of the first axis: a conv or linear layer's output channel)."""
    size = math.prod(shape)
    if len(shape) <= 1:
        return 1, size
    return shape[0], (size // shape[0] if shape[0] else 0)


def adaptive_clip_grad(params, grads, clip_factor=0.01, eps=1e-3, norm_type=2.0, *,
                       backend="auto"):
    """Adaptive gradient clipping (AGC), unit-wise, in place on ``grads``: timm's
    ``adaptive_clip_grad``.

    For each unit (a row ``w[i]`` of an array with ndim >= 2, the whole array otherwise),
    in the array's dtype, from norms accumulated in float64 and rounded to it::

        max_norm = max(||w_unit||, eps) * clip_factor
        g_unit   = g_unit                                     if ||g_unit|| < max_norm
                   g_unit * (max_norm / max(||g_unit||, 1e-6))  otherwise

    Parameters
    ----------
    params : array or list of arrays, float32 or float64
        The weights (not modified, unless a gradient is the same array: see grads).
    grads : array or list of arrays
        One per parameter, of its shape, dtype and device; updated in place. ``grads[i]`` may
        be ``params[i]`` itself (both norms are read before any scaling, and that array is
        then scaled), as in ``ema_update``; any other overlap is refused.
    clip_factor : float
        Largest allowed ratio of gradient norm to weight norm (> 0).
    eps : float
        Floor of the weight norm (>= 0), so that zero-initialized units can still move.
    norm_type : float or "inf"
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    None

    Raises
    ------
    TypeError, ValueError
        Bad numbers, lists of different lengths, mismatched shapes, dtypes or devices,
        read-only or memory-sharing gradients, a parameter overlapping a gradient (other than
        the same array at the same index). Raised before any change.

    Notes
    -----
    Brock, De, Smith & Simonyan, "High-performance large-scale image recognition without
    normalization", ICML 2021. NaN norms propagate (``max`` keeps NaN, as ``torch.clamp``).
    """
    if type(params) is not np.ndarray:
        params = _multi.listed(params)
        grads = _multi.listed(grads)
        if (r := _dispatch.torch_call(adaptive_clip_grad, locals())) is not _dispatch.NOT_TORCH:
            return r
    clip_factor = _arrays.check_nonneg(clip_factor, "clip_factor")
    eps = _arrays.check_nonneg(eps, "eps")
    p = check_norm_type(norm_type)
    grads = _multi.as_list(grads, "grads")
    batch = None
    plan, job = (_multi.host_plan(grads, params, backend) if type(params) is list
                 else (None, None))
    if plan is not None:   # host lists checked now, or as a previous call found
        gviews, pviews = [flat(g) for g in grads], [flat(w) for w in params]
        shapes = [m[0] for m in plan.meta[:len(grads)]]
    else:
        checked, device, spans = _multi.check_targets(grads, "grads")
        srcs = _multi.check_sources(_multi.as_list(params, "params"), checked, "params",
                                    "grads", device, spans)
        if not checked:
            return None
        job = _dispatch.job(_dispatch.resolve(backend, *(grads if device else checked)),
                            not device)
        batch = _multi.Batch(job, grads if device else checked, in_place=True)
        gviews, pviews = batch.views, _multi.Batch(job, srcs, in_place=False).views
        shapes = [tuple(_arrays.describe(c, "g").shape) for c in checked]
    _agc(job, gviews, pviews, shapes, p, clip_factor, eps)
    if batch is not None:
        batch.write_back()
    return None


def _agc(job, gviews, pviews, shapes, p, clip_factor, eps):
    """AGC on kernel-ready views: the unit norms of every array first (into one float64 buffer
    per dtype), then the coefficients of all units of a dtype at once (elementwise: the same
    values as array by array), then the scaling of the arrays that need it."""
    items, units = [], {}   # (g (U, K), w (U, K), dtype, first unit, U); dtype -> units
    for g, w, shape in zip(gviews, pviews, shapes):
        U, K = _units(shape)
        if U == 0:
            continue
        dt = np.dtype(g.dtype)
        off = units.get(dt, 0)
        units[dt] = off + U
        items.append((g.reshape(U, K), w.reshape(U, K), dt, off, U))
    sums = {dt: np.empty((2, n), np.float64) for dt, n in units.items()}
    row_norm_sums = job.op("row_norm_sums")
    for g2, w2, dt, off, U in items:
        row_norm_sums(w2, p, sums[dt][0, off:off + U])
        row_norm_sums(g2, p, sums[dt][1, off:off + U])
    coefs = {dt: agc_coefficients(s[0], s[1], p, dt.type, clip_factor, eps)
             for dt, s in sums.items()}
    scale_rows = job.op("scale_rows")
    for g2, _, dt, off, U in items:
        coef = coefs[dt][off:off + U]
        if not (coef == 1).all():
            scale_rows(g2, coef)


def agc_coefficients(w_sums, g_sums, p, dt, clip_factor, eps):
    """Per-unit AGC factors in dtype ``dt`` from the float64 sums of ``row_norm_sums``: timm's
    arithmetic (clamp, multiply, divide, compare) in the array's dtype."""
    with np.errstate(all="ignore"):
        wn = _roots(w_sums, p).astype(dt)
        gn = _roots(g_sums, p).astype(dt)
        max_norm = np.where(wn < dt(eps), dt(eps), wn) * dt(clip_factor)   # clamp(min=eps)
        ratio = max_norm / np.where(gn < dt(1e-6), dt(1e-6), gn)           # NaN kept
        return np.where(gn < max_norm, dt(1), ratio).astype(dt)


def _roots(s, p):
    if p == 2.0:
        with np.errstate(invalid="ignore"):
            return np.sqrt(s)
    if p == 1.0 or p == math.inf:
        return s
    return s ** (1.0 / p)
