"""Exponential moving average (EMA) of weights: a fused update over a list of arrays, the decay
schedule of timm's ``ModelEmaV3``, and ``EMA``, which keeps the averaged copies.

The update (one pass over each pair of arrays, in place on ``ema``)::

    ema = decay * ema + (1 - decay) * p

is computed as PyTorch's ``torch._foreach_lerp_(ema, p, weight=1 - decay)`` computes it (timm's
``ModelEmaV3`` calls exactly that): ``w = 1 - decay`` rounded to the arrays' dtype, then
``fma(w, p - ema, ema)`` when ``|w| < 0.5``, else ``fma(w - 1, p - ema, p)``, with one rounding
per fused multiply-add (fastreg/reference/ema.py has the exact definition). Every backend gives
the same bits, and they equal torch's on CPUs where torch runs its AVX2 / AVX-512 kernels (and on
CUDA).

The decay schedule (``ema_decay``) is timm's ``ModelEmaV3.get_decay``: with ``step`` the number
of optimizer updates so far (1 at the first), ``s = max(0, step - update_after_step - 1)``; the
decay is 0 while ``s == 0`` (the first update copies the weights), else ``decay``, or with
``use_warmup`` the warm-up ``1 - (1 + s / warmup_gamma) ** -warmup_power`` clamped to
``[min_decay, decay]``.
"""
import numbers

import numpy as np

from . import _arrays, _dispatch, _multi

__all__ = ["ema_update", "ema_decay", "EMA"]


def _check_decay(decay, name="decay"):
    if type(decay) is float and 0.0 <= decay <= 1.0:
        return decay
    return _arrays.check_probability(decay, name)


def ema_decay(step, decay=0.9999, *, min_decay=0.0, update_after_step=0, use_warmup=False,
              warmup_gamma=1.0, warmup_power=2 / 3):
    """The EMA decay to use at optimizer update ``step``: timm ``ModelEmaV3.get_decay``.

    Parameters
    ----------
    step : int or None
        Optimizer updates so far, counting the current one (1 at the first update). None: the
        constant ``decay``.
    decay : float
        The target decay, in [0, 1].
    min_decay : float
        Lower bound of the warm-up decay, in [0, 1].
    update_after_step : int
        Updates (>= 0) that only copy the weights (decay 0) before averaging starts.
    use_warmup : bool
        Ramp the decay up as ``1 - (1 + s / warmup_gamma) ** -warmup_power``.
    warmup_gamma, warmup_power : float
        The ramp's scale and power (> 0); timm's defaults 1 and 2/3 reach 0.999 after about
        31.6k updates, power 3/4 after 10k.

    Returns
    -------
    float
        The decay, in [0, 1].

    Raises
    ------
    ValueError, TypeError
        A negative or non-integer step or update_after_step, a decay outside [0, 1], a
        warmup_gamma or warmup_power that is not > 0.
    """
    decay = _check_decay(decay)
    min_decay = _check_decay(min_decay, "min_decay")
    update_after_step = _check_steps(update_after_step, "update_after_step")
    if use_warmup:
        for v, n in ((warmup_gamma, "warmup_gamma"), (warmup_power, "warmup_power")):
            if _arrays.check_nonneg(v, n) == 0:
                raise ValueError(f"{n} must be > 0, got {v}")
    if step is None:
        return decay
    step = _check_steps(step, "step")
    s = max(0, step - update_after_step - 1)
    if s <= 0:
        return 0.0
    if use_warmup:
        try:
            d = 1 - (1 + s / warmup_gamma) ** -warmup_power
        except OverflowError:   # s beyond the float range: the ramp has reached 1
            d = 1.0
        return max(min(d, decay), min_decay)
    return decay


def _check_steps(v, name):
    v = _arrays._scalar(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    return int(v)


def _run(job, ema_views, p_views, groups, decay):
    """The kernel over each dtype group; w = 1 - decay (a Python float, as timm passes it)
    rounded to each group's dtype."""
    w = 1.0 - decay
    for dtype, idx in groups.items():
        emas = [ema_views[i] for i in idx if ema_views[i].size]
        if emas:
            ps = [p_views[i] for i in idx if ema_views[i].size]
            job.op("ema_update")(emas, ps, dtype.type(w))


def ema_update(ema, params, decay, *, backend="auto"):
    """``ema = decay * ema + (1 - decay) * params``, in place on each array of ``ema``.

    Parameters
    ----------
    ema : array or list of arrays, float32 or float64
        The averages, updated in place: writable NumPy arrays (a non-contiguous one goes
        through a contiguous copy) or C-contiguous CUDA arrays, no two sharing memory; dtypes
        may differ between arrays.
    params : array or list of arrays
        The current weights, one per ``ema`` array, of its shape, dtype and device. Not
        modified.
    decay : float
        In [0, 1]: 0 copies ``params``, 1 keeps ``ema``, for finite values. Computed as
        torch's ``lerp_`` (``ema + w * (params - ema)``, w = 1 - decay, fused), so an inf on
        either side makes NaN at those endpoints too (0 * inf), as in torch.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    list
        ``ema`` as a list (the same arrays).

    Raises
    ------
    TypeError
        An array that is not float32/float64 (or, for ema, not an array).
    ValueError
        decay outside [0, 1] or NaN; lists of different lengths; a shape, dtype or device
        mismatch; read-only or memory-sharing ema arrays; a params array overlapping an ema
        array (other than itself). Raised before any array changes.

    Notes
    -----
    Computed as ``torch._foreach_lerp_(ema, params, 1 - decay)`` (see the module doc): the
    same bits as PyTorch (timm's ``ModelEmaV3``) on CPUs with its AVX2 / AVX-512 kernels.

    Called again with the same host arrays (C-contiguous, as a model's are), the call reuses
    what the checks found the first time, after checking that every array is unchanged
    (fastreg/_multi.py): on a 2-core VM, about 1.2 us per pair of arrays where the full
    checks take 14 (``torch._foreach_lerp_``: about 1 us per pair of 16-element arrays),
    and the C and cpu backends then make one launch for the list. While fastreg
    remembers a list (the 16 most recent), NumPy refuses ``a.resize(...)`` in place on its
    arrays (``np.resize`` and new arrays are unaffected).
    """
    if type(ema) is not np.ndarray:
        ema = _multi.listed(ema)
        params = _multi.listed(params)
        if (r := _dispatch.torch_call(ema_update, locals())) is not _dispatch.NOT_TORCH:
            return r
    decay = _check_decay(decay)
    targets = _multi.as_list(ema, "ema")
    sources = _multi.as_list(params, "params")
    plan, job = _multi.host_plan(targets, sources, backend)   # checked now or earlier
    if plan is not None:
        w = 1.0 - decay
        _multi.run(job, plan, "ema_update", (targets, sources), lambda dt: dt.type(w))
        return targets
    checked, device, spans = _multi.check_targets(targets, "ema")
    srcs = _multi.check_sources(sources, checked, "params", "ema", device, spans)
    if not checked:
        return targets
    job = _dispatch.job(_dispatch.resolve(backend, *(targets if device else checked)),
                        not device)
    batch = _multi.Batch(job, targets if device else checked, in_place=True)
    pviews = _multi.Batch(job, srcs, in_place=False).views
    _run(job, batch.views, pviews, batch.groups, decay)
    batch.write_back()
    return targets


class EMA:
    """An exponential moving average of a list of arrays (weights), kept as copies.

    The averages start as copies of ``params``; ``update(params, step)`` moves them toward
    ``params`` with the decay ``ema_decay(step, ...)`` (timm ``ModelEmaV3``). Non-float arrays
    (e.g. integer counters) are copied, not averaged; float16/bfloat16 arrays are refused
    (TypeError: average float32 copies).

    Parameters
    ----------
    params : list of arrays
        The weights to average (host or CUDA arrays; any shapes; float32, float64 or other
        dtypes).
    decay, min_decay, update_after_step, use_warmup, warmup_gamma, warmup_power
        As in ``ema_decay``.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Raises
    ------
    ValueError, TypeError
        As in ``ema_decay``; an empty list.

    Notes
    -----
    Attributes: ``arrays`` (the averages, one per param), ``num_updates`` (calls of
    ``update``), ``backend``.
    """

    def __init__(self, params, decay=0.9999, *, min_decay=0.0, update_after_step=0,
                 use_warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, backend="auto"):
        params = _multi.as_list(params, "params")
        if not params:
            raise ValueError("params is empty: nothing to average")
        self.decay, self.min_decay = decay, min_decay
        self.update_after_step, self.use_warmup = update_after_step, use_warmup
        self.warmup_gamma, self.warmup_power = warmup_gamma, warmup_power
        self.decay_at(None)   # checks the settings
        device = [_arrays.is_device(p) for p in params]
        if any(device) and not all(device):
            raise ValueError("params mixes CUDA device arrays and host arrays")
        self._device = bool(device[0])
        infos = [_arrays.describe(p, f"params[{i}]") for i, p in enumerate(params)]
        for i, a in enumerate(infos):
            # averages in 16 bits lose the small updates (decay 0.9999 moves less than a
            # bfloat16 ulp), and copying them as counters would be silently wrong
            if _arrays.is_half(a.dtype) or _arrays._looks_bfloat16(np.dtype(a.dtype)):
                raise TypeError(f"params[{i}] is {np.dtype(a.dtype)}: keep the EMA of 16-bit "
                                "weights in float32 (average float32 copies of them), as "
                                "ema_update asks")
        self._job = _dispatch.job(_dispatch.resolve(
            backend, *(params if self._device else infos)), not self._device)
        self.backend = self._job.backend
        self._float = [np.dtype(a.dtype) in _arrays.FLOAT_DTYPES for a in infos]
        self.arrays = [self._copy(p, a) for p, a in zip(params, infos)]
        self._spans = _multi.spans_of(self.arrays)   # the averages' own memory
        self.num_updates = 0

    def _copy(self, p, info):
        if not self._device:
            return np.array(info, order="C", copy=True)
        d = self._job.mod.empty(tuple(info.shape), info.dtype)
        d.copy_to_device(self._job.contig(p))
        return d

    def decay_at(self, step):
        """The decay ``update`` uses at optimizer update ``step`` (see ``ema_decay``).

        Parameters
        ----------
        step : int or None

        Returns
        -------
        float
        """
        return ema_decay(step, self.decay, min_decay=self.min_decay,
                         update_after_step=self.update_after_step, use_warmup=self.use_warmup,
                         warmup_gamma=self.warmup_gamma, warmup_power=self.warmup_power)

    def _check(self, params):
        params = _multi.as_list(params, "params")
        return _multi.check_sources(params, self.arrays, "params", "EMA arrays",
                                    self._device, self._spans)

    def update(self, params, step=None):
        """Average ``params`` into the EMA (in place on ``self.arrays``).

        Parameters
        ----------
        params : list of arrays
            The current weights, of the shapes, dtypes and device given at construction.
        step : int or None
            Optimizer updates so far (1 at the first; timm's ``num_updates``); None: the
            constant ``decay``.

        Returns
        -------
        float
            The decay used.

        Raises
        ------
        ValueError
            A shape, dtype, device or length mismatch (nothing is changed then).
        """
        job = self._job
        if not job.device and all(self._float):
            params = _multi.as_list(params, "params")
            plan = _multi.plan(self.arrays, params)   # see ema_update
            if plan is not None:
                decay = self.decay_at(step)
                w = 1.0 - decay
                _multi.run(job, plan, "ema_update", (self.arrays, params), lambda dt: dt.type(w))
                self.num_updates += 1
                return decay
        srcs = self._check(params)
        decay = self.decay_at(step)
        floats = [i for i, f in enumerate(self._float) if f]
        batch = _multi.Batch(job, [self.arrays[i] for i in floats], in_place=True)
        pviews = _multi.Batch(job, [srcs[i] for i in floats], in_place=False).views
        _run(job, batch.views, pviews, batch.groups, decay)
        batch.write_back()
        for i, f in enumerate(self._float):
            if not f:
                self._assign(self.arrays[i], srcs[i])
        self.num_updates += 1
        return decay

    def _assign(self, dst, src):
        if self._device:
            dst.copy_to_device(self._job.contig(src))
        else:
            dst[...] = src

    def set(self, params):
        """Make the averages exact copies of ``params``.

        Parameters
        ----------
        params : list of arrays

        Returns
        -------
        None
        """
        srcs = self._check(params)
        for dst, src in zip(self.arrays, srcs):
            self._assign(dst, src)

    def copy_to(self, params):
        """Write the averages into ``params`` (in place), e.g. to evaluate with them.

        Parameters
        ----------
        params : list of arrays
            Writable arrays of the shapes, dtypes and device given at construction.

        Returns
        -------
        None
        """
        params = _multi.as_list(params, "params")
        for i, p in enumerate(params):
            if not self._device and not (isinstance(p, np.ndarray) and p.flags.writeable):
                raise ValueError(f"params[{i}] must be a writable NumPy array")
        self._check(params)
        for p, a in zip(params, self.arrays):
            if self._device:
                self._job.mod.as_device(p).copy_to_device(a)
            else:
                p[...] = a

    def state_dict(self):
        """The averages as host NumPy arrays, and the update count.

        Returns
        -------
        dict
            ``"num_updates"`` (0-d int64) and ``"<i>"`` for array i.
        """
        out = {"num_updates": np.array(self.num_updates, np.int64)}
        for i, a in enumerate(self.arrays):
            out[str(i)] = a.copy_to_host() if self._device else a.copy()
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (checked whole before any change).

        Parameters
        ----------
        state : mapping of str to array

        Returns
        -------
        None

        Raises
        ------
        ValueError
            A missing, unexpected or mismatched entry.
        """
        state = dict(state.items())
        expected = {"num_updates"} | {str(i) for i in range(len(self.arrays))}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"EMA state: missing entries {missing}, unexpected {extra}")
        n = _arrays._scalar(np.asarray(state["num_updates"]))
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"EMA state: num_updates must be an int >= 0, got {n!r}")
        for i, a in enumerate(self.arrays):
            v = np.asarray(state[str(i)])
            if v.shape != tuple(a.shape) or v.dtype != a.dtype:
                raise ValueError(f"EMA state entry '{i}' has shape {v.shape} and dtype "
                                 f"{v.dtype}, expected {tuple(a.shape)} and {a.dtype}")
        for i, a in enumerate(self.arrays):
            v = np.ascontiguousarray(state[str(i)])
            if self._device:
                a.copy_to_device(v)
            else:
                a[...] = v
        self.num_updates = int(n)

