"""L1, L2 and elastic-net penalties: values, gradients and proximal steps.

Definitions (the scalar added to the loss; ``lam``, ``l1``, ``l2`` >= 0):

    L1          = lam * sum |w|
    L2          = lam * sum w**2           (gradient 2 * lam * w)
    elastic net = l1 * sum |w| + l2 * sum w**2

PyTorch's ``weight_decay=wd`` (SGD, Adam) adds ``wd * w`` to the gradient: it is L2 with
``lam = wd / 2``. A gradient step on the L1 term never yields exact zeros; the proximal steps
(soft-thresholding and its group form) do, which is what makes L1 produce sparse weights.
"""
import math

import numpy as np

from . import _arrays, _dispatch, _half
from ._dispatch import flat
from ._scalars import typed
from .reference import penalty as _reference


def _as_list(w, name):
    if isinstance(w, (list, tuple)):
        return list(w), [f"{name}[{i}]" for i in range(len(w))]
    return [w], [name]


def _backend_for(arrays, backend):
    device = [_arrays.is_device(a) for a in arrays]
    if any(device) and not all(device):
        raise ValueError("w mixes CUDA device arrays and host arrays")
    return _dispatch.resolve(backend, *arrays), bool(device and device[0])


def _sums(w, backend):
    arrays, names = _as_list(w, "w")
    checked = []
    for a, name in zip(arrays, names):
        arr = _arrays.describe(a, name)
        _arrays.check_float(arr, name, half=True)
        checked.append(a if _arrays.is_device(a) else arr)
    backend, device = _backend_for(checked, backend)
    job = _dispatch.job(backend, not device)
    total_abs = total_sq = 0.0
    for a in checked:
        if math.prod(a.shape):
            dtype = np.dtype(_arrays.describe(a, "w").dtype)
            if _arrays.is_half(dtype):  # exact float32 values, summed as float32 is
                c = _half.widen(job, a, _arrays.half_kind(dtype))
            else:
                c = job.contig(a)
            s_abs, s_sq = job.op("penalty_sums")(flat(c))
            total_abs += s_abs
            total_sq += s_sq
    return total_abs, total_sq


def l1_penalty(w, lam, *, backend="auto"):
    """The L1 penalty ``lam * sum |w|``, accumulated in float64.

    Parameters
    ----------
    w : array or list of arrays, float32, float64, float16 or bfloat16
        The weights (host or CUDA arrays; a list sums over all of them).
    lam : float
        Strength, finite and >= 0.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        The penalty. The sum is taken in float64; backends differ only by summation order
        (relative difference below 1e-12 for sizes up to 2**24).

    Raises
    ------
    TypeError
        w not float32, float64, float16 or bfloat16.
    ValueError
        lam negative, NaN or infinite.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(l1_penalty, locals())) is not _dispatch.NOT_TORCH:
            return r
    lam = _arrays.check_nonneg(lam, "lam")
    s = _sums(w, backend)[0]
    return lam * s if lam else 0.0   # as elastic_net_penalty: 0 * an overflowed sum is 0


def l2_penalty(w, lam, *, backend="auto"):
    """The L2 penalty ``lam * sum w**2``, accumulated in float64.

    PyTorch's ``weight_decay=wd`` corresponds to ``lam = wd / 2``.

    Parameters
    ----------
    w : array or list of arrays, float32, float64, float16 or bfloat16
    lam : float
        Strength, finite and >= 0.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        The penalty (float64 sum; see ``l1_penalty`` for the tolerance between backends).

    Raises
    ------
    TypeError, ValueError
        As in ``l1_penalty``.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(l2_penalty, locals())) is not _dispatch.NOT_TORCH:
            return r
    lam = _arrays.check_nonneg(lam, "lam")
    s = _sums(w, backend)[1]
    return lam * s if lam else 0.0   # as elastic_net_penalty: 0 * an overflowed sum is 0


def elastic_net_penalty(w, l1, l2, *, backend="auto"):
    """The elastic-net penalty ``l1 * sum |w| + l2 * sum w**2`` (one pass over w).

    Parameters
    ----------
    w : array or list of arrays, float32, float64, float16 or bfloat16
    l1, l2 : float
        Strengths, finite and >= 0.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    float
        The penalty (float64 sums).

    Raises
    ------
    TypeError, ValueError
        As in ``l1_penalty``, naming l1 or l2.

    Notes
    -----
    Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS B, 2005.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(elastic_net_penalty, locals())) is not _dispatch.NOT_TORCH:
            return r
    l1 = _arrays.check_nonneg(l1, "l1")
    l2 = _arrays.check_nonneg(l2, "l2")
    s_abs, s_sq = _sums(w, backend)
    # a zero strength drops its term (as the gradients do): 0 * an overflowed sum is not NaN
    return (l1 * s_abs if l1 else 0.0) + (l2 * s_sq if l2 else 0.0)


# The smallest positive double that rounds to inf in each dtype (round to nearest even:
# float32's largest finite value plus half an ulp, 2**128 - 2**103); a strength at or above it
# would overflow when the kernel converts it to the array's dtype.
_OVERFLOW = {np.dtype(np.float32): 2.0 ** 128 - 2.0 ** 103, np.dtype(np.float64): math.inf}


def _grad(w, l1, c2, out, accumulate, backend):
    if type(w) is np.ndarray and (out is None or type(out) is np.ndarray):
        dtype = w.dtype
        limit = _OVERFLOW.get(dtype)
        fused = None
        if limit is None and type(backend) is str and _arrays.is_half(dtype):
            # 16-bit host arrays on a backend with the fused kernel (c) take the short path too
            fused = _half.fused_host(_dispatch.resolve_host(backend), "penalty_grad_half")
            limit = None if fused is None else _OVERFLOW[np.dtype(np.float32)]
        if limit is not None and type(backend) is str:
            # float32/float64 host arrays: the short path, with the same checks and the same
            # kernel call as below, without the questions about devices and 16-bit types
            if accumulate and out is None:
                raise ValueError(_NO_OUT_TO_ACCUMULATE)
            backend = _dispatch.resolve_host(backend)
            if backend != "cuda":
                if out is not None:
                    _arrays._check_host_out(out, "out", w.shape, dtype, (w,))
                if not (l1 < limit and c2 < limit):  # see the check below
                    raise ValueError(f"the penalty strength ({l1}, {c2 / 2}) overflows {dtype}")
                if out is None:
                    res = np.empty(w.shape, dtype)
                elif out.flags.c_contiguous:
                    res = out
                else:  # the kernel writes a contiguous copy (read first to accumulate)
                    res = out.copy() if accumulate else np.empty(w.shape, dtype)
                if w.size:
                    wc, rc = np.ascontiguousarray(w), res
                    if w.ndim != 1:   # flat(), inline: a Python call costs ~0.4 us here
                        wc, rc = wc.ravel(), res.ravel()
                    if fused is None:
                        if backend != "c":  # the C wrapper takes the floats: cffi rounds them
                            l1, c2 = typed(dtype, l1), typed(dtype, c2)  # as dtype does (0.5 us)
                        _dispatch.host_op(backend, "penalty_grad")(
                            wc, l1, c2, rc, bool(accumulate))
                    else:   # as _grad_half's fused call
                        fused(wc.view(np.uint16), _arrays.half_kind(dtype), np.float32(l1),
                              np.float32(c2), rc.view(np.uint16), bool(accumulate))
                if res is not out and out is not None:
                    out[...] = res
                return res if out is None else out
    accumulate = bool(accumulate)
    arr = _arrays.describe(w, "w")
    _arrays.check_float(arr, "w", half=True)
    device = arr is not w and _arrays.is_device(w)
    if accumulate and out is None:
        raise ValueError(_NO_OUT_TO_ACCUMULATE)
    backend = _dispatch.resolve(backend, w, out)
    x = w if device else arr
    out_arr = _arrays.check_out(out, "out", arr.shape, arr.dtype, (x,), device)
    job = _dispatch.job(backend, not device)
    dtype = arr.dtype
    limit = _OVERFLOW.get(dtype, _OVERFLOW[np.dtype(np.float32)])  # 16-bit: float32 math
    if not (l1 < limit and c2 < limit):  # l1, c2 are finite or +inf (c2 = 2 * lam), never NaN
        raise ValueError(f"the penalty strength ({l1}, {c2 / 2}) overflows {dtype}")
    if dtype.itemsize == 2:  # float16/bfloat16 (checked above)
        return _grad_half(job, x, l1, c2, out, out_arr, accumulate, dtype)
    wc = job.contig(x)
    res = job.target(out_arr, arr.shape, dtype)
    if accumulate and res is not out_arr:  # non-contiguous out: accumulate into a contiguous copy
        res[...] = out_arr
    if arr.size:
        job.op("penalty_grad")(flat(wc), dtype.type(l1), dtype.type(c2), flat(res), accumulate)
    result = job.finish(res, out_arr)
    return result if out is None else out


_NO_OUT_TO_ACCUMULATE = "accumulate=True adds into out=: pass the gradient to add into as out"


def _grad_half(job, x, l1, c2, out, out_arr, accumulate, dtype):
    """The 16-bit gradient: float32 math on the widened w (and out when accumulating), rounded
    to nearest even (fastreg/_half.py)."""
    kind = _arrays.half_kind(dtype)
    fused = _half.fused(job, "penalty_grad_half")
    if fused is not None:   # one pass over the 16-bit arrays, the same bits
        xb = _half.bits(job, x)
        ob = _half.out_bits(job, out_arr)
        res = job.target(ob, tuple(x.shape), np.uint16)   # x.shape: 0-d stays 0-d
        if accumulate and res is not ob:   # non-contiguous out: accumulate into a contiguous copy
            res[...] = ob
        if xb.size:
            fused(flat(xb), kind, np.float32(l1), np.float32(c2), flat(res), accumulate)
        r = job.finish(res, ob)
        return out if out is not None else _half.as_dtype(r, dtype)
    w32 = _half.widen(job, x, kind)
    g32 = _half.widen(job, out_arr, kind) if accumulate else job.empty(w32.shape, np.float32)
    if w32.size:
        job.op("penalty_grad")(flat(w32), np.float32(l1), np.float32(c2), flat(g32), accumulate)
    ob = _half.out_bits(job, out_arr)
    res = job.target(ob, tuple(x.shape), np.uint16)   # x.shape: 0-d stays 0-d
    _half.narrow(job, g32, kind, res)
    r = job.finish(res, ob)
    return out if out is not None else _half.as_dtype(r, dtype)


_GRAD_DOC = """
    Parameters
    ----------
    w : array_like, float32, float64, float16 or bfloat16
        The weights (host or CUDA array).
    {strengths}
    out : array, optional
        Where to write the gradient (same shape and dtype as w, same device); may be w itself.
    accumulate : bool
        Add the gradient into ``out`` (an existing gradient, updated in place, in one pass)
        instead of overwriting it. Needs ``out``.
    backend : {{"auto", "numpy", "cpu", "c", "cuda"}}

    Returns
    -------
    array
        The gradient (``out`` when given). Every backend gives the same bits (one multiply per
        term in w's dtype, no fused multiply-add{cuda}).

    Raises
    ------
    TypeError
        w not float32, float64, float16 or bfloat16.
    ValueError
        A strength negative, NaN or infinite; accumulate without out; out of the wrong shape,
        dtype or device, read-only or partially overlapping w.
"""


def l1_grad(w, lam, *, out=None, accumulate=False, backend="auto"):
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(l1_grad, locals())) is not _dispatch.NOT_TORCH:
            return r
    lam = _arrays.check_nonneg(lam, "lam")
    return _grad(w, lam, 0.0, out, accumulate, backend)


def l2_grad(w, lam, *, out=None, accumulate=False, backend="auto"):
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(l2_grad, locals())) is not _dispatch.NOT_TORCH:
            return r
    lam = _arrays.check_nonneg(lam, "lam")
    return _grad(w, 0.0, 2.0 * lam, out, accumulate, backend)


def elastic_net_grad(w, l1, l2, *, out=None, accumulate=False, backend="auto"):
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(elastic_net_grad, locals())) is not _dispatch.NOT_TORCH:
            return r
    l1 = _arrays.check_nonneg(l1, "l1")
    l2 = _arrays.check_nonneg(l2, "l2")
    return _grad(w, l1, 2.0 * l2, out, accumulate, backend)


_CUDA_NOTE = "; a real GPU may fuse w * c + g in accumulate mode, 1 ulp"
l1_grad.__doc__ = ("Gradient of the L1 penalty: ``lam * sign(w)``, with sign(0) = +0 (also for "
                   "-0.0, as np.sign; NaN propagated).\n" + _GRAD_DOC.format(
                       strengths="lam : float\n        Strength, finite and >= 0.",
                       cuda=_CUDA_NOTE))
l2_grad.__doc__ = ("Gradient of the L2 penalty ``lam * sum w**2``: ``2 * lam * w`` (PyTorch's "
                   "weight_decay=wd is lam = wd / 2).\n" + _GRAD_DOC.format(
                       strengths="lam : float\n        Strength, finite and >= 0.",
                       cuda=_CUDA_NOTE))
elastic_net_grad.__doc__ = ("Gradient of the elastic-net penalty: ``l1 * sign(w) + 2 * l2 * w``."
                            "\n" + _GRAD_DOC.format(
                                strengths="l1, l2 : float\n        Strengths, finite and >= 0.",
                                cuda=_CUDA_NOTE))


def _in_place(w, x, device, backend, run, fused=None):
    """Run ``run(job, src, dst)`` on kernel-ready views of the in-place operand ``w`` (already
    checked: ``x`` is its host view, ``device`` where it lives) and write the result back;
    returns ``w``. A non-contiguous host array goes through a contiguous copy. ``fused``:
    ``(name, args)`` of the fused 16-bit kernel, run as ``fn(src_bits, kind, *args, dst_bits)``
    for a 16-bit w where the backend has it (fastreg._half.fused), else ``run`` runs between
    conversion passes."""
    job = _dispatch.job(_dispatch.resolve(backend, w), not device)
    target = w if device else x
    if x.dtype.itemsize == 2:  # float16/bfloat16: float32 math on the widened w, rounded back
        kind = _arrays.half_kind(x.dtype)
        fn = _half.fused(job, fused[0]) if fused is not None else None
        if fn is not None:     # one pass, the same bits
            _half.elementwise_fused(job, target, target, x.dtype,
                                    lambda xb, res: fn(xb, kind, *fused[1], res))
            return w
        w32 = _half.widen(job, target, kind)
        if w32.size:
            run(job, w32, w32)
        tb = _half.out_bits(job, target)
        dst = job.target(tb, x.shape, np.uint16)
        _half.narrow(job, w32, kind, dst)
        job.finish(dst, tb)
        return w
    dst = job.target(target, x.shape, x.dtype)
    if math.prod(x.shape):
        run(job, job.contig(x), dst)
    job.finish(dst, target)
    return w


def _soft(w, t, s, backend, t2=0.0):
    x, device = _arrays.check_in_place(w, "w", half=True)
    dtype = _arrays.describe(x, "w").dtype if device else x.dtype   # (a torch CUDA tensor's
    cast = np.float32 if _arrays.is_half(dtype) else np.dtype(dtype).type   # is torch's)
    if not t < _OVERFLOW[np.dtype(cast)]:   # as the gradients: not rounded to inf silently
        raise ValueError(f"the threshold ({t}) overflows {np.dtype(cast)}")
    if s < np.finfo(cast).tiny:   # prox_elastic_net's 1 / (1 + 2 t2) for a huge t2
        return _soft_tiny_scale(w, x, device, cast(t), t2, backend)
    return _in_place(w, x, device, backend, lambda job, src, dst: job.op("soft_threshold")(
        flat(src), cast(t), cast(s), flat(dst)), fused=("soft_threshold_half", (cast(t), cast(s))))


def _soft_tiny_scale(w, x, device, t, t2, backend):
    """``soft(w, t) / (1 + 2 t2)`` where the scale ``1 / (1 + 2 t2)`` is below the smallest
    normal number of the math's dtype (t2 above about 4e37 for float32): as a factor it would be
    subnormal or 0, losing the quotient's digits and turning inf * 0 into NaN. The soft step as
    the kernels compute it (in the math's dtype ``type(t)``), then the division in float64,
    halved first (1 + 2 t2 is 2 t2 there, and may overflow), rounded once more to w's dtype.
    Rare: NumPy on the host (a device array makes a round trip)."""
    job = _dispatch.job(_dispatch.resolve(backend, w), not device)
    host = job.mod.copy_to_host(w) if device else x
    v = host.astype(type(t))
    _reference.soft_threshold(v, t, type(t)(1), v)   # times 1: exact
    host[...] = ((v.astype(np.float64) / 2.0) / t2).astype(host.dtype)
    if device:
        job.mod.as_device(w).copy_to_device(host)
    return w


def prox_l1(w, threshold, *, backend="auto"):
    """Proximal step of the L1 penalty (soft-thresholding), in place: exact zeros.

    ``w <- sign(w) * max(|w| - threshold, 0)``: weights with ``|w| <= threshold`` become exactly
    0.0, the others shrink toward 0 by ``threshold``; NaN stays NaN. After a gradient step with
    learning rate ``lr`` on the smooth loss, ``prox_l1(w, lr * lam)`` is the proximal-gradient
    (ISTA) step for ``lam * sum |w|``.

    Parameters
    ----------
    w : ndarray or CUDA array, float32, float64, float16 or bfloat16
        Updated in place (a non-contiguous host array is processed through a contiguous copy and
        written back).
    threshold : float
        Finite and >= 0.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    array
        ``w`` itself.

    Raises
    ------
    TypeError
        w not a float32/float64 array (a list cannot be updated in place).
    ValueError
        threshold negative, NaN or infinite; w read-only.

    Notes
    -----
    Donoho, "De-noising by soft-thresholding", IEEE Trans. Inf. Theory, 1995; Beck & Teboulle,
    "A fast iterative shrinkage-thresholding algorithm", SIAM J. Imaging Sci., 2009.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(prox_l1, locals())) is not _dispatch.NOT_TORCH:
            return r
    t = _arrays.check_nonneg(threshold, "threshold")
    return _soft(w, t, 1.0, backend)


def prox_elastic_net(w, l1_threshold, l2_threshold, *, backend="auto"):
    """Proximal step of ``t1 * |w| + t2 * w**2``, in place: ``soft(w, t1) / (1 + 2 t2)``.

    Parameters
    ----------
    w : ndarray or CUDA array, float32, float64, float16 or bfloat16
        Updated in place.
    l1_threshold, l2_threshold : float
        ``t1 = lr * l1`` and ``t2 = lr * l2`` for a step of size lr; finite and >= 0.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    array
        ``w`` itself; entries with ``|w| <= t1`` are exactly 0.

    Raises
    ------
    TypeError, ValueError
        As in ``prox_l1``.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(prox_elastic_net, locals())) is not _dispatch.NOT_TORCH:
            return r
    t1 = _arrays.check_nonneg(l1_threshold, "l1_threshold")
    t2 = _arrays.check_nonneg(l2_threshold, "l2_threshold")
    return _soft(w, t1, 1.0 / (1.0 + 2.0 * t2), backend, t2)


def prox_group_lasso(w, threshold, axis, *, backend="auto"):
    """Proximal step of the group lasso, in place: whole groups become exact zeros.

    Each group ``g`` (the 1-D slices of w along ``axis``: rows of a 2-D matrix for ``axis=1``,
    columns for ``axis=0``) becomes ``g * max(0, 1 - threshold / ||g||_2)``. The norm and the
    factor are computed in float64 and the factor is applied with one multiply in w's dtype;
    backends may differ by the rounding of the norm (a few ulp), never on which groups vanish
    except at a tie ``||g|| == threshold`` to within that rounding. A group whose norm is NaN
    (a NaN in it) takes the factor 0, at any threshold: its NaN entries stay NaN (NaN * 0) and
    its other entries become 0, on every backend.

    Parameters
    ----------
    w : ndarray or CUDA array, float32, float64, float16 or bfloat16, ndim >= 1
        Updated in place.
    threshold : float
        ``lr * lam`` for a step of size lr; finite and >= 0.
    axis : int
        The axis along which each group runs (its norm is taken over this axis).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    array
        ``w`` itself.

    Raises
    ------
    TypeError, ValueError
        As in ``prox_l1``; ValueError also for an axis out of range.

    Notes
    -----
    Yuan & Lin, "Model selection and estimation in regression with grouped variables", JRSS B,
    2006.
    """
    if type(w) is not np.ndarray:
        if (r := _dispatch.torch_call(prox_group_lasso, locals())) is not _dispatch.NOT_TORCH:
            return r
    t = _arrays.check_nonneg(threshold, "threshold")
    x, device = _arrays.check_in_place(w, "w", half=True)
    shape = tuple(x.shape)
    axis = _arrays.check_int(axis, "axis")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for w with {len(shape)} dimensions")
    ax = axis % len(shape)
    dims = (math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:]))
    return _in_place(w, x, device, backend, lambda job, src, dst: job.op("group_lasso")(
        src.reshape(dims), t, dst.reshape(dims)))  # t stays float64
