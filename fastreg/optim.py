"""Fused multi-tensor optimizers with weight decay done right: SGD, Adam, AdamW.

Each ``step(grads)`` makes one pass over every parameter: it reads the parameter, its gradient
and its state once and writes the parameter and its state once, on the backend of the
parameters (cpu, c or numpy for host arrays; cuda for device arrays). The update rules are
PyTorch's (``torch.optim.SGD``, ``Adam``, ``AdamW``), step for step, in each parameter's dtype.

Weight decay, two ways (Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019):

- coupled (``SGD(decoupled=False)``, ``Adam``): ``wd * p`` is added to the gradient, which is
  L2 regularization with ``lam = wd / 2`` (see fastreg.l2_penalty);
- decoupled (``SGD(decoupled=True)``, ``AdamW``): ``p <- p * (1 - lr * wd)`` before the update.

``decay_mask`` says which parameters are decayed: by default every parameter with more than
one dimension, so biases and batch-norm weights (1-D) are exempt, the common practice that
PyTorch leaves to hand-built parameter groups. ``SGD(l1=...)`` follows each update with the L1
proximal step ``soft(p, lr * l1)`` on the same masked parameters, so weights reach exact zeros.

``max_grad_norm`` clips the gradients by their global 2-norm first, as
``torch.nn.utils.clip_grad_norm_`` does before ``optimizer.step()`` (fastreg.clip_grad_norm has
the coefficient), with the scaling fused into the step: one read pass over the gradients for
the norm, then the update multiplies each gradient element by the coefficient as it reads it
(no separate scaling pass, and the caller's gradients are left unchanged).
"""
import math
import numbers
from functools import partial

import numpy as np

from . import _arrays, _half, _registry
from . import clip as _clip
from ._dispatch import Job, flat
from ._scalars import typed

__all__ = ["SGD", "Adam", "AdamW"]

_F32 = np.dtype(np.float32)


def _check_beta(b, name):
    if type(b) is float and 0.0 <= b < 1.0:
        return b
    if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {type(b).__name__}")
    b = _arrays.real_to_float(b, name, "in [0, 1)")
    if not 0.0 <= b < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {b}")
    return b


class _Optimizer:
    """Parameters, their backend, the decay mask, gradient checks and state (de)serialization.
    Subclasses define ``_STATE`` (names of per-parameter state arrays) and ``_update``."""

    _STATE = ()

    def __init__(self, params, lr, weight_decay, decay_mask, check_finite, backend):
        if isinstance(params, np.ndarray) or _arrays.is_device(params):
            raise TypeError("params must be a sequence of arrays (e.g. a list), not a single "
                            "array")
        try:
            params = list(params)
        except TypeError:
            raise TypeError("params must be a sequence of arrays (e.g. a list), got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError("params is empty: the optimizer has nothing to update")
        device = _arrays.is_device(params[0])
        self.params = []
        for i, p in enumerate(params):
            name = f"params[{i}]"
            if _arrays.is_device(p) != device:
                raise ValueError(f"{name}: parameters must all be host arrays or all CUDA arrays")
            arr, _ = _arrays.check_in_place(p, name, half=True)
            if not device and not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous: it is updated in place")
            self.params.append(arr)
        _check_disjoint([_arrays.describe(p, "p") for p in self.params])
        # per parameter: its 16-bit kind (float32 math, fastreg/_half.py), or None
        self._kinds = [_arrays.half_kind(p.dtype) if _arrays.is_half(p.dtype) else None
                      for p in self.params]
        self._device = device
        self._job = Job(_registry.resolve(backend, *self.params), host_input=not device)
        self.backend = self._job.backend
        # the backend's fused 16-bit steps (16-bit arrays read and written once, float32 math
        # in registers; fastreg._half.fused), or None: conversion passes around the step
        self._fused = {name: _half.fused(self._job, f"{name}_half")
                       for name in ("sgd_step", "adam_step")}
        self.lr = lr
        self.weight_decay = weight_decay
        self._check_hyper()
        self.decay_mask = self._mask(decay_mask)
        self.check_finite = bool(check_finite)
        self.step_count = 0
        self.last_grad_norm = None   # the 2-norm of the last step's gradients (max_grad_norm)
        self.state = {name: [None] * len(self.params) for name in self._STATE}

    def _mask(self, decay_mask):
        shapes = [_arrays.describe(p, "p").shape for p in self.params]
        if decay_mask is None:
            return [len(s) > 1 for s in shapes]
        if isinstance(decay_mask, (bool, np.bool_)):   # every parameter, or none
            return [bool(decay_mask)] * len(self.params)
        if callable(decay_mask):
            return [bool(decay_mask(p)) for p in self.params]
        if isinstance(decay_mask, (str, bytes)) or not hasattr(decay_mask, "__iter__"):
            raise TypeError(f"decay_mask must be None, a bool, a callable or a sequence of "
                            f"bools, got {type(decay_mask).__name__}")
        mask = [bool(m) for m in decay_mask]
        if len(mask) != len(self.params):
            raise ValueError(f"decay_mask has {len(mask)} entries for {len(self.params)} "
                             "parameters")
        return mask

    def _check_grads(self, grads):
        """The kernel-ready gradients (flat, contiguous) and, per gradient, its 16-bit kind
        where it stays 16-bit (its uint16 bits, for a fused step) or None: 16-bit gradients are
        widened to float32 unless the backend has fused steps and neither check_finite nor
        max_grad_norm reads them (those read float32)."""
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"step() got {len(grads)} gradients for {len(self.params)} "
                             "parameters")
        ready, kinds = [], [None] * len(grads)
        host = not self._device
        keep16 = (self._fused["sgd_step"] is not None and not self.check_finite
                  and self.max_grad_norm is None)
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if host and type(g) is np.ndarray and g.dtype == p.dtype \
                    and self._kinds[i] is None:  # self.params holds plain host ndarrays
                if g.shape != p.shape:
                    self._mismatch(i, g, p)
                ready.append(flat(np.ascontiguousarray(g)))
                continue
            name = f"grads[{i}]"
            if _arrays.is_device(g) != self._device:
                raise ValueError(f"{name} must be on the same device as params[{i}]")
            ga = _arrays.describe(g, name)
            self._mismatch(i, ga, _arrays.describe(p, "p"))
            _arrays.check_float(ga, name, half=True)   # also: a device array must be contiguous
            gin = g if self._device else ga
            if _arrays.is_half(ga.dtype) and keep16:  # read by the fused step
                kinds[i] = _arrays.half_kind(ga.dtype)
                ready.append(flat(_half.bits(self._job, gin)))
            elif _arrays.is_half(ga.dtype):  # float32 math: the exact float32 values
                ready.append(flat(_half.widen(self._job, gin, _arrays.half_kind(ga.dtype))))
            else:
                ready.append(flat(self._job.contig(gin)))
        if self.check_finite:
            finite = self._job.op("all_finite")
            for i, g in enumerate(ready):
                if g.size and not finite(g):
                    raise FloatingPointError(f"grads[{i}] holds NaN or inf: no parameter was "
                                             "changed (check_finite=True)")
        return ready, kinds

    @staticmethod
    def _mismatch(i, ga, pa):
        """ValueError if gradient i's shape differs from its parameter's, or its dtype does
        (except a 16-bit gradient of a float32 parameter, or a float32 gradient of a 16-bit
        one: mixed precision, float32 math)."""
        if tuple(ga.shape) != tuple(pa.shape):
            raise ValueError(f"grads[{i}] has shape {tuple(ga.shape)}, params[{i}] has "
                             f"{tuple(pa.shape)}")
        gd, pd = np.dtype(ga.dtype), np.dtype(pa.dtype)
        if gd != pd and not (_mixed(gd, pd) or _mixed(pd, gd)):
            _arrays.check_float(ga, f"grads[{i}]", half=True)
            raise ValueError(f"grads[{i}] has dtype {ga.dtype}, params[{i}] has {pa.dtype} "
                             "(a gradient has its parameter's dtype, or one of them is float32 "
                             "and the other 16-bit)")

    @staticmethod
    def _state_dtype(p):
        """Per-parameter state (moments, momentum) is float32 for 16-bit parameters."""
        return np.dtype(np.float32) if _arrays.is_half(p.dtype) else np.dtype(p.dtype)

    def _zeros_like(self, p):
        return flat(self._job.zeros(tuple(_arrays.describe(p, "p").shape),
                                    self._state_dtype(p)))

    def step(self, grads):
        """Update every parameter in place from its gradient.

        Parameters
        ----------
        grads : sequence of arrays
            One gradient per parameter: same shape, dtype and device. Not modified.

        Returns
        -------
        None

        Raises
        ------
        ValueError
            Wrong number of gradients, shape, dtype or device; a hyper-parameter (``lr``, ...)
            set to a bad value since construction.
        FloatingPointError
            ``check_finite=True`` and a gradient holds NaN or inf; raised before any parameter
            or state changes.
        """
        self._check_hyper()
        ready, gkinds = self._check_grads(grads)
        self._gscale = self._clip_factor(ready)
        self.step_count += 1
        fused = self._fused["sgd_step"] is not None
        for i, (p, g, gkind) in enumerate(zip(self.params, ready, gkinds)):
            if not g.size:
                continue
            kind = self._kinds[i]
            if kind is None and gkind is None:
                self._update(i, flat(p), g)
            elif fused:  # one pass: 16-bit arrays converted in registers, float32 math
                pb = flat(_half.bits(self._job, p)) if kind is not None else flat(p)
                self._update(i, pb, g, (kind, gkind))
            else:  # float32 math on the widened parameter, rounded back
                p32 = _half.widen(self._job, p, kind)
                self._update(i, flat(p32), g)
                _half.store(self._job, p32, kind, p)

    def _check_hyper(self):
        """Validate (and normalize) the hyper-parameters; step() calls it before any change, so
        a value set between steps (``opt.lr = ...``) is checked too."""
        self.lr = _arrays.check_nonneg(self.lr, "lr")
        self.weight_decay = _arrays.check_nonneg(self.weight_decay, "weight_decay")
        if self.max_grad_norm is not None:
            self.max_grad_norm = _clip._check_max_norm(self.max_grad_norm, "max_grad_norm")

    def _clip_factor(self, ready):
        """This step's gradient factor: torch's clip coefficient from the float64 2-norm of all
        the gradients (kept in ``last_grad_norm``), or 1.0 without ``max_grad_norm``."""
        if self.max_grad_norm is None:
            return 1.0
        groups = {}
        for i, g in enumerate(ready):
            groups.setdefault(np.dtype(g.dtype), []).append(i)
        self.last_grad_norm = _clip.total_norm_of(self._job, ready, groups, 2.0)
        return _clip.clip_coef(self.last_grad_norm, self.max_grad_norm, groups)

    def state_dict(self):
        """The optimizer's state as plain NumPy arrays, ready for ``np.savez``.

        Parameters
        ----------
        None

        Returns
        -------
        dict
            ``"step"`` (a 0-d int64 array) and ``"<state>.<i>"`` for each per-parameter state
            array that exists (e.g. ``"exp_avg.0"``), copied to the host.
        """
        out = {"step": np.array(self.step_count, np.int64)}
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                if a is not None:
                    shape = tuple(_arrays.describe(self.params[i], "p").shape)
                    host = a.copy_to_host() if hasattr(a, "copy_to_host") else a.copy()
                    out[f"{name}.{i}"] = host.reshape(shape)
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (e.g. from an ``.npz``), checked before use.

        Parameters
        ----------
        state : mapping of str to array

        Returns
        -------
        None

        Raises
        ------
        ValueError
            Unknown keys, or arrays of the wrong shape or dtype for their parameter.
        """
        if not hasattr(state, "items"):
            raise ValueError(f"state must be a mapping of names to arrays, got "
                             f"{type(state).__name__}")
        state = dict(state.items())
        if "step" not in state:
            raise ValueError("state has no 'step'")
        step = _arrays._scalar(state["step"])
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) \
                or step < 0:
            raise ValueError(f"state['step'] must be an integer >= 0, got {state['step']!r}")
        new = {name: [None] * len(self.params) for name in self._STATE}
        for key, value in state.items():
            if key == "step":
                continue
            name, _, idx = key.rpartition(".") if isinstance(key, str) else ("", "", "")
            if name not in new or not idx.isdigit() or int(idx) >= len(self.params):
                raise ValueError(f"state has an unknown entry {key!r}")
            i = int(idx)
            p = _arrays.describe(self.params[i], "p")
            arr = np.asarray(value)
            sd = self._state_dtype(p)
            if arr.shape != tuple(p.shape) or arr.dtype != sd:
                raise ValueError(f"state[{key!r}] has shape {arr.shape} and dtype {arr.dtype}, "
                                 f"expected {tuple(p.shape)} and {sd}")
            arr = np.ascontiguousarray(arr).reshape(-1).copy()
            new[name][i] = self._job.mod.to_device(arr) if self._job.device else arr
        self._check_state(new)
        self.step_count = int(step)
        self.state = new

    def _check_state(self, state):
        """Per-parameter state must be complete: no half-restored moments."""


def _mixed(a, b):
    """a is 16-bit and b float32."""
    return _arrays.is_half(a) and b == np.float32


def _check_disjoint(infos):
    """Parameters must not share memory: each would be updated twice per step."""
    spans = []
    for i, a in enumerate(infos):
        if a.size:
            ptr = a.ptr if hasattr(a, "ptr") else a.__array_interface__["data"][0]
            spans.append((ptr, ptr + a.size * a.dtype.itemsize, i))
    spans.sort()
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"params[{min(i, j)}] and params[{max(i, j)}] share memory: each "
                             "parameter must be its own array")


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, coupled or decoupled weight decay and an L1
    proximal step; ``decoupled=False`` matches ``torch.optim.SGD`` step for step.

    Parameters
    ----------
    params : sequence of arrays, float32, float64, float16 or bfloat16
        Updated in place by ``step``: C-contiguous, writable NumPy arrays, or CUDA arrays.
        16-bit parameters are updated in float32 math (float32 state) and rounded to nearest
        even; a 16-bit parameter may have a float32 gradient and a float32 one a 16-bit
        gradient.
    lr : float
        Learning rate (>= 0). May be changed between steps (``opt.lr = ...``).
    momentum, dampening : float
        Momentum factor and its dampening (>= 0), as in torch.
    nesterov : bool
        Nesterov momentum (needs momentum > 0 and dampening == 0).
    weight_decay : float
        Decay strength (>= 0) for the parameters selected by ``decay_mask``.
    decoupled : bool
        False: coupled L2 (``g + wd * p``, torch's SGD). True: ``p <- p * (1 - lr * wd)``.
    l1 : float
        After each update, ``p <- soft(p, lr * l1)`` on the masked parameters (exact zeros).
    decay_mask : None, bool, sequence of bool, or callable(array) -> bool
        Which parameters get weight decay and the L1 step; None exempts 1-D parameters, True
        decays every parameter (as torch), False none.
    check_finite : bool
        Check every gradient for NaN/inf before touching anything (one extra read of the grads).
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    max_grad_norm : float, optional
        Clip the gradients by their global 2-norm first (``torch.nn.utils.clip_grad_norm_``'s
        coefficient, fused into the update; the norm is kept in ``last_grad_norm``). May be
        changed between steps; None: no clipping.

    Returns
    -------
    SGD
        Call ``step(grads)`` once per batch.

    Raises
    ------
    ValueError
        A hyper-parameter negative or NaN, nesterov without momentum or with dampening,
        parameters not writable or not contiguous, decay_mask of the wrong length.
    TypeError
        Parameters that are not float32, float64, float16 or bfloat16 arrays.
    """

    _STATE = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, decoupled=False, l1=0.0, decay_mask=None, check_finite=False,
                 backend="auto", max_grad_norm=None):
        self.max_grad_norm = max_grad_norm
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.decoupled = bool(decoupled)
        self.l1 = l1
        super().__init__(params, lr, weight_decay, decay_mask, check_finite, backend)

    def _check_hyper(self):
        super()._check_hyper()
        self.momentum = _arrays.check_nonneg(self.momentum, "momentum")
        self.dampening = _arrays.check_nonneg(self.dampening, "dampening")
        self.l1 = _arrays.check_nonneg(self.l1, "l1")
        self.nesterov = bool(self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0")

    def _update(self, i, p, g, kinds=None):
        """One step of parameter i: p, g flat; kinds None (p and g of one dtype) or the
        (parameter, gradient) 16-bit kinds of the fused step (None: float32)."""
        # the kernels' scalars, cached (fastreg/_scalars.py): float32 math for 16-bit steps
        t = partial(typed, p.dtype if kinds is None else _F32)
        decayed = self.decay_mask[i]
        wd = self.weight_decay if decayed else 0.0
        buf = None
        first = False
        if self.momentum != 0:
            buf = self.state["momentum_buffer"][i]
            if buf is None:
                buf = self.state["momentum_buffer"][i] = self._zeros_like(self.params[i])
                first = True
        args = (buf, t(self.lr), t(0.0 if self.decoupled else wd),
                t(1.0 - self.lr * wd if self.decoupled else 1.0), t(self.momentum),
                t(1.0 - self.dampening), self.nesterov, first,
                t(self.lr * self.l1 if decayed else 0.0), t(self._gscale))
        if kinds is None:
            self._job.op("sgd_step")(p, g, *args)
        else:
            self._fused["sgd_step"](p, kinds[0], g, kinds[1], *args)


class Adam(_Optimizer):
    """Adam with coupled L2 weight decay (``g + wd * p``), matching ``torch.optim.Adam``.

    Parameters
    ----------
    params : sequence of arrays, float32, float64, float16 or bfloat16
        Updated in place by ``step``: C-contiguous, writable NumPy arrays, or CUDA arrays.
        16-bit parameters are updated in float32 math (float32 state) and rounded to nearest
        even; a 16-bit parameter may have a float32 gradient and a float32 one a 16-bit
        gradient.
    lr : float
        Learning rate (>= 0); may be changed between steps.
    betas : (float, float)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float
        Added to the denominator (>= 0).
    weight_decay : float
        Coupled L2 strength (>= 0) on the parameters selected by ``decay_mask``.
    amsgrad : bool
        Use the running maximum of the second moment (Reddi, Kale & Kumar, ICLR 2018).
    decay_mask, check_finite, backend, max_grad_norm
        As in ``SGD``.

    Returns
    -------
    Adam

    Raises
    ------
    ValueError
        lr, eps or weight_decay negative or NaN; a beta outside [0, 1); bad parameters.

    Notes
    -----
    Kingma & Ba, "Adam: a method for stochastic optimization", ICLR 2015.
    """

    _STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _DECOUPLED = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decay_mask=None, check_finite=False, backend="auto",
                 max_grad_norm=None):
        self.max_grad_norm = max_grad_norm
        self.betas, self.eps, self.amsgrad = betas, eps, bool(amsgrad)
        super().__init__(params, lr, weight_decay, decay_mask, check_finite, backend)

    def _check_hyper(self):
        super()._check_hyper()
        betas = tuple(self.betas)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_check_beta(betas[0], "betas[0]"), _check_beta(betas[1], "betas[1]"))
        self.eps = _arrays.check_nonneg(self.eps, "eps")

    def _check_state(self, state):
        for i in range(len(self.params)):
            m, v = state["exp_avg"][i], state["exp_avg_sq"][i]
            if (m is None) != (v is None):
                raise ValueError(f"state for params[{i}] has only one of exp_avg.{i} and "
                                 f"exp_avg_sq.{i}")
            if self.amsgrad and m is not None and state["max_exp_avg_sq"][i] is None:
                raise ValueError(f"amsgrad=True but the state has no max_exp_avg_sq.{i}")

    def _update(self, i, p, g, kinds=None):
        """As SGD._update."""
        t = partial(typed, p.dtype if kinds is None else _F32)
        wd = self.weight_decay if self.decay_mask[i] else 0.0
        state = self.state
        if state["exp_avg"][i] is None:
            state["exp_avg"][i] = self._zeros_like(self.params[i])
            state["exp_avg_sq"][i] = self._zeros_like(self.params[i])
        if self.amsgrad and state["max_exp_avg_sq"][i] is None:
            state["max_exp_avg_sq"][i] = self._zeros_like(self.params[i])
        beta1, beta2 = self.betas
        step = self.step_count
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        args = (state["exp_avg"][i], state["exp_avg_sq"][i],
                state["max_exp_avg_sq"][i] if self.amsgrad else None,
                t(0.0 if self._DECOUPLED else wd),
                t(1.0 - self.lr * wd if self._DECOUPLED else 1.0), t(1.0 - beta1), t(beta2),
                t(1.0 - beta2), t(self.eps), t(self.lr / bc1), t(bc2_sqrt), t(self._gscale))
        if kinds is None:
            self._job.op("adam_step")(p, g, *args)
        else:
            self._fused["adam_step"](p, kinds[0], g, kinds[1], *args)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p <- p * (1 - lr * wd)``), matching
    ``torch.optim.AdamW``; default ``weight_decay=1e-2`` as in torch.

    Parameters
    ----------
    params, lr, betas, eps, amsgrad, decay_mask, check_finite, backend, max_grad_norm
        As in ``Adam``.
    weight_decay : float
        Decoupled decay strength (>= 0) on the parameters selected by ``decay_mask``.

    Returns
    -------
    AdamW

    Raises
    ------
    ValueError
        As in ``Adam``.

    Notes
    -----
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
    """

    _DECOUPLED = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, decay_mask=None, check_finite=False, backend="auto",
                 max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decay_mask,
                         check_finite, backend, max_grad_norm)
