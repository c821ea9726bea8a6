"""Softmax cross-entropy: loss and gradient with respect to the logits in one pass.

``cross_entropy`` follows ``torch.nn.functional.cross_entropy`` (class-index or probability
targets, ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``) and returns the
gradient too, computed in the same pass over the logits as the loss (softmax, loss and dlogits
together). The definitions are in fastreg/reference/loss.py.
"""
import math

import numpy as np

from . import _arrays, _dispatch

REDUCTIONS = ("mean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100

_coef_cache = {}   # (C, label_smoothing) -> (tw, cw) without class weights (read-only arrays)


def _coefficients(c, label_smoothing, w):
    """(tw, cw): the float64 class coefficients of the target and smoothing terms (see
    fastreg/reference/loss.py); cw is None without smoothing."""
    if w is None:
        key = (c, label_smoothing)
        coef = _coef_cache.get(key)
        if coef is None:
            if len(_coef_cache) > 64:
                _coef_cache.clear()
            coef = _coefficients(c, label_smoothing, np.ones(c))
            for a in coef:
                if a is not None:
                    a.flags.writeable = False
            _coef_cache[key] = coef
        return coef
    tw = (1.0 - label_smoothing) * w
    cw = (label_smoothing / c) * w if label_smoothing > 0 else None
    return tw, cw


def _host_copy(a, arr, device):
    """A host ndarray of ``a`` (a device array is copied to the host)."""
    if not device:
        return arr
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    from numba import cuda  # a foreign CUDA array (CuPy, torch): through Numba's view
    return cuda.as_cuda_array(a).copy_to_host()


def _check_weight(weight, c):
    """weight as a float64 host array (C,), finite and >= 0, or None."""
    if weight is None:
        return None
    device = _arrays.is_device(weight)
    arr = _arrays.describe(weight, "weight")
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"weight must hold real numbers, got dtype {arr.dtype}")
    if tuple(arr.shape) != (c,):
        raise ValueError(f"weight must have shape ({c},) (one weight per class), got "
                         f"{tuple(arr.shape)}")
    w = np.array(_host_copy(weight, arr, device), dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        bad = int(np.nonzero(~(np.isfinite(w) & (w >= 0)))[0][0])
        raise ValueError(f"weight must be finite and >= 0, got weight[{bad}] = {w[bad]}")
    return w


def _check_hard_target(t, c, ignore_index):
    """(class indices as an int64 host array, whether any equals ignore_index); ValueError
    naming the first one out of range."""
    t = np.asarray(t)
    t64 = t.astype(np.int64) if t.dtype != np.int64 or not t.flags.c_contiguous else t
    if t.dtype.kind == "u" and t.size and t.max() > np.iinfo(np.int64).max:
        raise ValueError("target holds class indices beyond int64")
    ignored = False
    if t64.size:
        lo, hi = t64.min(), t64.max()
        ignored = bool(lo <= ignore_index <= hi) and bool((t64 == ignore_index).any())
        if lo < 0 or hi >= c:
            bad_mask = ((t64 < 0) | (t64 >= c)) & (t64 != ignore_index)
            if bad_mask.any():
                i = np.unravel_index(int(np.argmax(bad_mask)), t64.shape)
                where = f"target[{', '.join(map(str, i))}]" if t64.ndim else "target"
                raise ValueError(f"{where} = {int(t64[i])} is not a class index in [0, {c}) "
                                 f"nor ignore_index ({ignore_index}); "
                                 f"{int(bad_mask.sum())} target(s) out of range")
    return np.ascontiguousarray(t64), ignored


def _rows(a, nd):
    """(N, C, d1, ...) -> (N * d1 * ..., C) as a contiguous host copy (class axis last)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).reshape(-1, a.shape[1]) if nd > 2 else a


def cross_entropy(logits, target, *, weight=None, ignore_index=DEFAULT_IGNORE_INDEX,
                  reduction="mean", label_smoothing=0.0, grad=True, out=None, backend="auto"):
    """Softmax cross-entropy of logits against class indices or class probabilities, with its
    gradient with respect to the logits computed in the same pass.

    Parameters
    ----------
    logits : array_like, float32 or float64
        ``(N, C)``; also ``(C,)`` (one sample) and ``(N, C, d1, d2, ...)`` (class axis 1, as in
        torch; host arrays only, computed through a copy with the class axis last). Host arrays
        may be non-contiguous (copied); CUDA arrays must be C-contiguous and ``(N, C)`` or
        ``(C,)``.
    target : array_like
        Class indices, any integer dtype (int32, int64, ...), shape ``(N,)`` (``(N, d1, ...)``,
        or ``()`` for ``(C,)`` logits), each in ``[0, C)`` or equal to ``ignore_index``; or
        class probabilities (soft targets, e.g. from mixup / cutmix), float32 or float64, the
        shape of ``logits`` (converted to the logits' dtype). Soft targets are used as given
        (they need not sum to 1; they are not checked for NaN).
    weight : array_like (C,), optional
        Class weights, finite and >= 0 (torch's ``weight``).
    ignore_index : int
        Class-index targets equal to it contribute nothing (zero loss, zero gradient) and do not
        count in the mean. Soft targets have no index to ignore: a negative value is accepted
        and does nothing, a non-negative one is an error (as in torch).
    reduction : {"mean", "sum", "none"}
        "mean" as in torch: class-index targets divide the sum by the total weight of the
        non-ignored targets (their count without ``weight``), also with label smoothing;
        soft targets divide by the number of samples (N times d1 * ...). "none" gives one
        loss per sample.
    label_smoothing : float
        In [0, 1]: the target becomes ``(1 - label_smoothing) * target + label_smoothing / C``
        (Szegedy et al. 2016; torch's definition, with class weights applied to both terms).
    grad : bool
        Also compute the gradient of the loss with respect to ``logits`` (default). False
        computes the loss alone (one pass fewer, nothing written).
    out : array, optional
        Where to write the gradient (needs ``grad=True``): shape and dtype of ``logits``, same
        device. ``out=logits`` overwrites the logits with their gradient (no new memory).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        "auto": "cuda" for device arrays, else FASTREG_BACKEND or the fastest available host
        backend (c, then cpu, then numpy).

    Returns
    -------
    loss : float or array
        A Python float for "mean" and "sum" (float64 accumulation); for "none" an array of
        shape ``(N, d1, ...)`` (``()`` for ``(C,)`` logits) in the logits' dtype, on their
        device. The mean of zero samples (or of zero total weight) is NaN, as in torch.
    grad : array
        Returned only with ``grad=True`` (then ``(loss, grad)``): d loss / d logits, shape and
        dtype of ``logits`` (``out`` when given). For "none" it is the gradient of the sum of
        the per-sample losses (each sample's own gradient). Rows of ignored targets are zero.

    Raises
    ------
    TypeError
        logits not float32/float64; target neither integers nor floats (bools refused);
        weight not real numbers; label_smoothing not a real number; grad not a bool.
    ValueError
        A target of the wrong shape; a class index outside ``[0, C)`` that is not
        ``ignore_index`` (naming the first one); ignore_index >= 0 with soft targets;
        label_smoothing outside [0, 1] or NaN; a bad reduction; weight of the wrong shape,
        negative or not finite; logits with no class axis or zero classes; out given with
        ``grad=False``, or of the wrong shape, dtype or device, read-only or overlapping an
        input (other than exactly ``logits``); device logits that are not 2-D or 1-D.

    Notes
    -----
    Per sample, with ``p = softmax(logits)`` and the smoothed, weighted target coefficients
    ``a_c`` (see fastreg/reference/loss.py), ``loss = -sum_c a_c log p_c`` and
    ``grad_c = scale * (p_c * sum_k a_k - a_c)``, ``scale`` being 1 / the mean's denominator
    (or 1). The kernels shift by the row maximum, compute ``exp`` in the logits' dtype and
    accumulate the sums in float64, in one read of the logits and one write of the gradient.
    Logits are not scanned for NaN or inf (that would be another pass): a NaN logit gives its
    sample a NaN loss and gradient, +inf too (inf - inf), as in torch.
    Matches ``torch.nn.functional.cross_entropy`` (both target kinds) and timm's
    ``SoftTargetCrossEntropy`` (soft targets, "mean"); float32 results agree with the float64
    reference to a few float32 ulps (tests/test_loss.py holds the tolerances).
    """
    if type(logits) is not np.ndarray:
        if (r := _dispatch.torch_call(cross_entropy, locals())) is not _dispatch.NOT_TORCH:
            return r
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          grad, out, backend, None)


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, grad, out,
                   backend, divide_by):
    """cross_entropy; ``divide_by`` (a positive int, "mean" only) replaces the mean's
    denominator (the Trainer's data-parallel global batch)."""
    # --- checks, before any work ------------------------------------------------------------
    arr = _arrays.describe(logits, "logits")
    _arrays.check_float(arr, "logits")
    device = arr is not logits and _arrays.is_device(logits)
    shape, dtype = tuple(arr.shape), arr.dtype
    if len(shape) == 0:
        raise ValueError("logits must have a class axis: shape (C,), (N, C) or (N, C, d1, ...), "
                         "got a scalar")
    c = shape[0] if len(shape) == 1 else shape[1]
    if c == 0:
        raise ValueError(f"logits must have at least one class, got shape {shape}")
    if device and len(shape) > 2:
        raise ValueError(f"CUDA logits must be (N, C) or (C,), got shape {shape}; move the "
                         "class axis last and reshape to (N * d1 * ..., C)")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    label_smoothing = _arrays.check_probability(label_smoothing, "label_smoothing")
    ignore_index = _arrays.check_int(ignore_index, "ignore_index")
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64 (as the targets), got {ignore_index}")
    grad = _arrays.check_bool(grad, "grad")
    if out is not None and not grad:
        raise ValueError("out= receives the gradient: it needs grad=True")
    t_device = _arrays.is_device(target)
    tarr = _arrays.describe(target, "target")
    kind = tarr.dtype.kind
    if kind in "iu":
        soft = False
        want = shape[:1] + shape[2:] if len(shape) > 1 else ()
    elif kind == "f":
        soft = True
        want = shape
        _arrays.check_float(tarr, "target")
        if ignore_index >= 0:   # torch: a negative one is accepted (and has nothing to ignore)
            raise ValueError(f"ignore_index ({ignore_index}) is not supported with soft "
                             f"(probability) targets, as in torch; leave it negative (the "
                             f"default, -100)")
    else:
        raise TypeError(f"target must hold class indices (integers) or class probabilities "
                        f"(float32/float64), got dtype {tarr.dtype}")
    if tuple(tarr.shape) != want:
        what = "class probabilities, the shape of logits" if soft else "class indices"
        raise ValueError(f"target must have shape {want} ({what}) for logits of shape "
                         f"{shape}, got {tuple(tarr.shape)}")
    w = _check_weight(weight, c)
    t_host, ignored = None, False
    if not soft:
        t_host, ignored = _check_hard_target(_host_copy(target, tarr, t_device), c, ignore_index)
    backend = _dispatch.resolve(backend, logits, target, out)
    out_arr = None
    if grad:
        inputs = [logits if device else arr]
        if soft:
            inputs.append(target if t_device else tarr)
        out_arr = _arrays.check_out(out, "out", shape, dtype, inputs, device)
    if t_device != device and soft:
        raise ValueError("logits and target must both be CUDA device arrays or both host arrays")

    # --- coefficients (O(C), float64) and the reduction's scale -----------------------------
    nd = len(shape)
    r = math.prod(shape) // c
    tw, cw = _coefficients(c, label_smoothing, w)
    if reduction == "mean":
        if divide_by is not None:
            denom = float(divide_by)
        elif soft or (w is None and not ignored):
            denom = float(r)
        else:
            keep = t_host != ignore_index if ignored else slice(None)
            denom = float(np.count_nonzero(keep)) if w is None else float(w[t_host[keep]].sum())
        scale = 1.0 / denom if denom else math.inf
    else:
        denom, scale = None, 1.0

    # --- the kernel ---------------------------------------------------------------------------
    job = _dispatch.job(backend, not device)
    x = logits if device else arr
    if device:
        x = job.contig(x)
        x2 = x.reshape(1, c) if nd == 1 else x
    else:
        x2 = _rows(x, nd) if nd > 2 else np.ascontiguousarray(x).reshape(r, c)
    if soft:
        tsrc = target if t_device else tarr
        if not t_device:
            tsrc = np.asarray(tsrc, dtype=dtype)
            t2 = _rows(tsrc, nd) if nd > 2 else np.ascontiguousarray(tsrc).reshape(r, c)
            t2 = job.contig(t2)
        else:
            if np.dtype(tarr.dtype) != dtype:
                raise ValueError(f"target (a CUDA array) must have the logits' dtype {dtype}, "
                                 f"got {tarr.dtype}")
            t2 = job.contig(tsrc).reshape(r, c)
    else:
        t2 = job.contig(t_host.reshape(r))
    direct = nd <= 2
    g = None
    if grad:
        if direct:
            g = job.target(out_arr, shape, dtype)
            g2 = g.reshape(r, c)
        else:
            g2 = np.empty((r, c), dtype)
    rows = job.empty((r,), np.float64)
    if r:
        if soft:
            job.op("ce_soft")(x2, t2, tw, cw, scale, rows, g2 if grad else None)
        else:
            job.op("ce_hard")(x2, t2, tw, cw, ignore_index, scale, rows, g2 if grad else None)
    rows_h = job.mod.copy_to_host(rows) if job.device else rows

    # --- results ------------------------------------------------------------------------------
    if reduction == "none":
        lshape = shape[:1] + shape[2:] if nd > 1 else ()
        with np.errstate(over="ignore"):   # a float32 loss beyond float32's range: inf
            loss = rows_h.astype(dtype).reshape(lshape)
        if device:
            loss = _dispatch.like_caller(job.mod.to_device(loss), logits)
    else:
        total = float(rows_h.sum())
        loss = total if reduction == "sum" else (total / denom if denom else math.nan)
    if not grad:
        return loss
    if direct:
        result = job.finish(g, out_arr)
        return loss, (result if out is None else out)
    back = np.moveaxis(g2.reshape((shape[0],) + shape[2:] + (c,)), -1, 1)
    if out_arr is None:
        return loss, np.ascontiguousarray(back)
    out_arr[...] = back
    return loss, out
