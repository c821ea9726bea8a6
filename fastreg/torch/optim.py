"""``torch.optim.Optimizer`` subclasses running fastreg's fused update kernels: SGD, Adam, AdamW.

Each step makes one pass per parameter (read p, its gradient and its state once, write p and the
state once) with the kernels of ``fastreg.optim`` (``sgd_step``, ``adam_step``), on the
parameter's own memory: a NumPy view for CPU tensors, the tensor itself for CUDA ones. The rules
are torch's, step for step (per-parameter step counts, as ``torch.optim``), plus fastreg's:

- ``decay_mask`` (a per-group hyper-parameter): which parameters get weight decay (and the L1
  step). ``None`` (default) exempts 1-D parameters (biases, norm weights); ``True`` / ``False``
  applies to the whole group; a callable ``f(param) -> bool`` or a sequence of bools (one per
  parameter of the group) chooses per parameter. It is stored resolved, as a list of bools, so
  ``state_dict`` stays picklable.
- ``l1``: after each update, the proximal step ``p <- soft(p, lr * l1)`` on the masked
  parameters (fused into the SGD kernel; a second pass with fastreg's soft-threshold kernel for
  Adam and AdamW), so weights reach exact zeros.
- ``check_finite``: every gradient is checked for NaN/inf before anything changes.
- ``max_grad_norm`` (an optimizer argument, for all groups): the gradients are clipped by their
  global 2-norm first, with ``torch.nn.utils.clip_grad_norm_``'s coefficient, the scaling fused
  into the update kernels (``p.grad`` is left unchanged; the norm is ``last_grad_norm``).

torch's own group options: ``maximize`` (all three; the gradient's sign is folded into the
kernels' gradient factor, so it costs nothing) and Adam's ``decoupled_weight_decay`` (AdamW's
rule; AdamW's groups carry ``True``) are implemented. ``foreach`` and ``fused`` are accepted and
stored (so state_dicts round-trip) but change nothing: fastreg always runs its own fused
per-parameter kernel, the same arithmetic either way. ``differentiable=True`` and
``capturable=True`` are refused (fastreg's updates run outside autograd and read the step count
on the host, which CUDA-graph capture forbids), on construction, ``add_param_group`` and
``load_state_dict`` alike, before anything changes. ``lr`` (and ``weight_decay``) may be a
one-element tensor, as in torch (an LR scheduler then updates it in place); its value is read at
each step.

State is kept in torch tensors with torch's names (``step`` as a float32 CPU scalar tensor,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``), laid out like their
parameter, so ``state_dict()`` / ``load_state_dict()`` round-trip, and load into (and from) the
corresponding ``torch.optim`` optimizer; the fastreg group keys are kept when a torch state_dict
lacks them, and a ``step`` stored as a plain number (older torch checkpoints) is converted to
torch's tensor, as torch does. Sparse or complex parameters are refused with their name.

float16 and bfloat16 parameters (bfloat16 on the CPU only) are updated as ``fastreg.optim``
does: float32 math on the widened parameter and float32 state (``exp_avg`` etc. are float32
tensors), the result rounded to nearest even into the parameter; a float32 parameter may have a
16-bit gradient and a 16-bit one a float32 gradient. (torch keeps such state in the parameter's
dtype; a torch state_dict loads, its 16-bit moments widened exactly.)
"""
import math

import numpy as np
import torch

from .. import _arrays, _dispatch, _half, _threads
from .. import clip as _clip
from .._dispatch import Job
from ..optim import _check_beta
from . import _bridge

__all__ = ["SGD", "Adam", "AdamW"]

_HALF = (torch.float16, torch.bfloat16)
_HOST_PROBE = torch.empty(0)   # a CPU tensor: which backend a group's CPU parameters run on
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _state_dtype(p):
    """The dtype of p's optimizer state: float32 for 16-bit parameters (float32 math)."""
    return torch.float32 if p.dtype in _HALF else p.dtype


def _mixed(a, b):
    """a is 16-bit and b float32 (a gradient/parameter pair fastreg takes)."""
    return a in _HALF and b == torch.float32


def _decay_terms(lr, wd, decoupled):
    """The kernels' (wd, decay) for weight decay ``wd``: torch's coupled L2 term ``g + wd * p``,
    or the decoupled ``p * (1 - lr * wd)``."""
    return (0.0, 1.0 - lr * wd) if decoupled else (wd, 1.0)


def _bias_terms(lr, betas, step):
    """Adam's step size ``lr / (1 - beta1**step)`` and ``sqrt(1 - beta2**step)``."""
    return lr / (1.0 - betas[0] ** step), math.sqrt(1.0 - betas[1] ** step)


def _value(v):
    """A hyper-parameter's number: a one-element tensor's value (tensor lr), else v itself."""
    return _bridge.number(v, "a tensor hyper-parameter")


def _flat(t):
    """A 1-D view of a dense tensor in memory order (C-contiguous or any dense permutation,
    e.g. a channels-last conv weight), or None when t is not dense."""
    if t.is_contiguous():
        return t.view(-1)
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for s, n in dims:
        if s != expected:
            return None
        expected *= n
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


class _FastregOptimizer(torch.optim.Optimizer):
    """Parameter groups, decay masks, checks and the per-parameter loop; subclasses define
    ``_STATE`` and ``_update(group, p, g, state, decayed, job)``."""

    _STATE = ()
    # torch's group options: {key: torch's default}; see _check_options for what is accepted
    _TORCH_OPTIONS = {"maximize": False, "foreach": None, "differentiable": False,
                      "fused": None}

    def __init__(self, params, defaults):
        super().__init__(params, defaults)

    @staticmethod
    def _check_options(group, gi):
        """Refuse the torch options fastreg does not implement (before anything changes)."""
        where = f"param_groups[{gi}]"
        for key in ("maximize", "decoupled_weight_decay"):
            if key in group and not isinstance(group[key], (bool, np.bool_)):
                raise TypeError(f"{where}['{key}'] must be a bool, got "
                                f"{type(group[key]).__name__}")
        for key in ("foreach", "fused"):
            if group.get(key) not in (None, False, True):
                raise TypeError(f"{where}['{key}'] must be None or a bool, got "
                                f"{group[key]!r}")
        if group.get("differentiable", False):
            raise ValueError(f"{where}: differentiable=True is not supported: fastreg's "
                             "updates are in-place kernels outside autograd (use torch.optim "
                             "to differentiate through the step)")
        if group.get("capturable", False):
            raise ValueError(f"{where}: capturable=True is not supported: fastreg reads the "
                             "step count on the host, which CUDA-graph capture forbids (use "
                             "capturable=False, or torch.optim inside a captured graph)")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in self._TORCH_OPTIONS.items():
                group.setdefault(key, default)
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    # an older checkpoint's plain-number step: torch's float32 CPU scalar
                    st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    def add_param_group(self, param_group):
        """Add a group of parameters (with its own hyper-parameters) to the optimizer.

        Parameters
        ----------
        param_group : dict
            ``{"params": [...], ...}``; missing hyper-parameters take the defaults.

        Returns
        -------
        None

        Raises
        ------
        TypeError
            A parameter that is not a dense float32/float64 tensor.
        ValueError
            A bad hyper-parameter, or a decay_mask of the wrong length.
        """
        gi = len(self.param_groups)
        if isinstance(param_group, dict):
            self._check_options({**self.defaults, **param_group}, gi)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for j, p in enumerate(group["params"]):
                _bridge.check_float(p, f"param_groups[{gi}]['params'][{j}]", half=True)
                if p.is_complex():  # pragma: no cover - excluded by the dtype check
                    raise TypeError("complex parameters are not supported")
            group["decay_mask"] = self._resolve_mask(group["decay_mask"], group["params"], gi)
            self._check_group(group, gi)
        except BaseException:
            # a refused group is not kept (as torch's own refusals): the optimizer stays as
            # it was, and its next step does not meet the bad group again
            if self.param_groups and self.param_groups[-1] is group:
                self.param_groups.pop()
            raise

    @staticmethod
    def _resolve_mask(mask, params, gi):
        if mask is None:
            return [p.dim() > 1 for p in params]
        if isinstance(mask, bool):
            return [mask] * len(params)
        if callable(mask):
            return [bool(mask(p)) for p in params]
        mask = [bool(m) for m in mask]
        if len(mask) != len(params):
            raise ValueError(f"param_groups[{gi}]: decay_mask has {len(mask)} entries for "
                             f"{len(params)} parameters")
        return mask

    def _check_group(self, group, gi):
        self._check_options(group, gi)
        for key in ("lr", "weight_decay", "l1"):
            v = _arrays.check_nonneg(_value(group[key]), f"param_groups[{gi}]['{key}']")
            if not isinstance(group[key], torch.Tensor):  # a tensor stays (schedulers fill it)
                group[key] = v

    def load_state_dict(self, state_dict):
        """Load a state_dict of this optimizer or of the matching ``torch.optim`` one.

        Parameters
        ----------
        state_dict : dict
            As returned by ``state_dict()``; group keys it lacks (a torch state_dict has no
            decay_mask, l1, check_finite, backend, decoupled) keep their current values. A
            plain-number ``step`` is converted to torch's tensor.

        Returns
        -------
        None

        Raises
        ------
        TypeError, ValueError
            A group option fastreg does not implement (``differentiable=True``,
            ``capturable=True``), checked before anything is loaded.
        """
        for gi, group in enumerate(state_dict.get("param_groups", [])):
            self._check_options(group, gi)
        previous = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        # torch casts every floating state tensor to its parameter's dtype; fastreg keeps a
        # 16-bit parameter's moments in float32, so a saved float32 moment is put back as
        # saved (rounded to 16 bits, a resumed run would leave the uninterrupted one)
        saved = state_dict.get("state", {})
        ids = [i for g in state_dict.get("param_groups", []) for i in g["params"]]
        wide = {}
        for i, p in zip(ids, (p for g in self.param_groups for p in g["params"])):
            if p.dtype in _HALF and i in saved:
                wide[p] = {k: v for k, v in saved[i].items() if k != "step"
                           and torch.is_tensor(v) and v.dtype == torch.float32}
        super().load_state_dict(state_dict)
        for p, values in wide.items():
            for k, v in values.items():
                self.state[p][k] = v.to(device=p.device, copy=True)
        for gi, (group, old) in enumerate(zip(self.param_groups, previous)):
            for k, v in old.items():
                group.setdefault(k, v)
            group["decay_mask"] = self._resolve_mask(group["decay_mask"], group["params"], gi)

    def _grads(self):
        """``(batches, work)``: the parameters with a gradient, checked; raises before anything
        is changed. ``batches``: ``(group, dtype, [(index in the group, param, grad), ...])``
        that the C backend updates in one call each (``_multi_item``); ``work``: (group, index
        in the group, param, grad, name) for the others, updated one by one."""
        batches, work = [], []
        limit = self._multi_limit()
        # a parameter listed twice (torch warns) is updated twice, in list order: only the
        # per-parameter path keeps that order, so such parameters are not batched
        seen, twice = set(), set()
        for group in self.param_groups:
            for p in group["params"]:
                (twice if id(p) in seen else seen).add(id(p))
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, gi)
            lists = {} if limit and self._multi_group(group) else None
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if (lists is not None and id(p) not in twice
                        and self._multi_item(group, j, p, g, limit)):
                    lists.setdefault(p.dtype, []).append((j, p, g))
                    continue
                name = f"param_groups[{gi}]['params'][{j}]"
                if self._plain(p, g):   # every check below would pass
                    work.append((group, j, p, g, name))
                    continue
                if g.is_sparse:
                    raise TypeError(f"{name}.grad is sparse: fastreg optimizers take dense "
                                    "gradients")
                _bridge.check_float(p, name, half=True)
                _bridge.check_same_device(g, f"{name}.grad", p, name)
                if _mixed(g.dtype, p.dtype) or _mixed(p.dtype, g.dtype):
                    _bridge.check_float(g, f"{name}.grad", half=True)
                else:
                    _bridge.check_same_dtype(g, f"{name}.grad", p, name)
                if g.shape != p.shape:
                    raise ValueError(f"{name}.grad has shape {tuple(g.shape)}, the parameter "
                                     f"{tuple(p.shape)}")
                if p.numel() and not p.is_contiguous() and _flat(p) is None:
                    raise ValueError(f"{name} is not dense in memory (a view with gaps): "
                                     "fastreg updates parameters in place, one pass over "
                                     "their memory (no parameter was changed)")
                state = self.state.get(p, {})  # .get: no empty entry for a refused step
                for key in self._STATE:
                    s = state.get(key)
                    if s is not None:
                        _bridge.check_same_device(s, f"state of {name}: {key}", p, name)
                        if not (p.dtype in _HALF and s.dtype == torch.float32):
                            # (a 16-bit parameter's state from a torch state_dict is widened)
                            _bridge.check_same_dtype(s, f"state of {name}: {key}", p, name)
                work.append((group, j, p, g, name))
            if lists:
                batches += [(group, dt, items) for dt, items in lists.items()]
        return batches, work

    # Parameters updated together, in one C call per group and dtype (csrc/optim.c
    # fr_*_multi_*), instead of one Python round (about 25 us) each: float32/float64 CPU
    # tensors, C-contiguous with C-contiguous gradients and state, small enough that their
    # step runs serially anyway (fastreg._threads.plan gives 1 thread below two grains), on
    # the C backend. Each parameter's step is the single-parameter kernel's, check_finite reads
    # its gradient first and max_grad_norm's norm sums it in parameter order: the same bits.
    def _multi_limit(self):
        """Element count below which a parameter may join a batch."""
        from ..c.optim import OPTIM_WEIGHT
        g = min(_threads.GRAIN["elementwise"], _threads.SPIN_GRAIN["elementwise"])
        return 2 * g // OPTIM_WEIGHT

    def _multi_group(self, group):
        """Whether group's CPU parameters run on the C backend, batched."""
        if not group["params"]:
            return False
        try:
            name = _bridge.backend_for(self._OP, group["backend"], _HOST_PROBE)
        except Exception:   # the per-parameter path raises it, with the parameter's name
            return False
        return name == "c" or (name != "auto" and _dispatch.resolve_host(name) == "c")

    def _multi_item(self, group, j, p, g, limit):
        """Whether parameter j of group (gradient g) may join a batch; see _multi_limit."""
        # _plain's case, with every array C-contiguous and aligned (read by address)
        if not (0 < p.numel() < limit and self._plain(p, g) and g.is_contiguous()
                and not g.is_neg()):   # a lazily negated view: its memory is -g
            return False
        size = p.element_size()
        if (p.data_ptr() | g.data_ptr()) % size:
            return False
        state = self.state.get(p)
        if state:
            for key in self._STATE:
                s = state.get(key)
                if s is not None and not (s.shape == p.shape and s.is_contiguous()
                                          and s.data_ptr() % size == 0):
                    return False
        return self._multi_takes(group, j)

    def _multi_takes(self, group, j):
        return True

    def _plain(self, p, g):
        """The common case, tested first (1 us where the checks take 5): p a contiguous
        float32/float64 CPU tensor, g a dense tensor like it, p's state tensors alike."""
        dt = p.dtype
        if not (_bridge.host_float(p) and g.dtype is dt and g.is_cpu
                and g.layout is torch.strided and g.shape == p.shape):
            return False
        state = self.state.get(p)
        if state:
            for key in self._STATE:
                s = state.get(key)
                if s is not None and not (s.dtype is dt and s.is_cpu):
                    return False
        return True

    def _kernel_grads(self, work):
        """Each gradient as the kernels take it: a flat view laid out like its parameter, or for
        a 16-bit one its uint16 bits when the step is fused (``_fused``) else a float32 copy
        (float32 math), with its Job and 16-bit kind (None: not read as 16-bit); then the
        check_finite test (before any parameter changes)."""
        ready = []
        for group, j, p, g, name in work:
            if not p.numel():
                ready.append((None, None, None))
                continue
            job = self._job(group, p)
            if g.is_neg():   # a lazily negated view (torch._neg_view): its memory is -g
                g = g.resolve_neg()
            gv = _view(job, self._laid_out(g, p))
            gkind = None
            if g.dtype in _HALF and self._fused(group, j, job, grads=True) is not None:
                gkind = _arrays.half_kind(gv.dtype)
                gv = _half.bits(job, gv)
            elif g.dtype in _HALF:
                gv = _half.widen(job, gv, _arrays.half_kind(gv.dtype))
            ready.append((job, gv, gkind))
            if group["check_finite"] and not job.op("all_finite")(gv):
                raise FloatingPointError(f"{name}.grad holds NaN or inf: no parameter was "
                                         "changed (check_finite=True)")
        return ready

    def _fused(self, group, j, job, grads=False):
        """The backend's fused 16-bit step (fastreg._half.fused: 16-bit arrays read and written
        once, float32 math in registers) for parameter j of group, or None (conversion passes).
        ``grads``: whether the 16-bit gradients may stay 16-bit (not with check_finite or
        max_grad_norm, which read float32 copies)."""
        op = _half.fused(job, "sgd_step_half" if isinstance(self, SGD) else "adam_step_half")
        if op is None or (not isinstance(self, SGD) and group["l1"] > 0
                          and group["decay_mask"][j]):   # Adam's L1: a float32 second pass
            return None
        if grads and (group["check_finite"] or getattr(self, "max_grad_norm", None) is not None):
            return None
        return op

    def _job(self, group, p):
        backend = _bridge.backend_for(self._OP, group["backend"], p)
        return Job(backend, host_input=p.device.type == "cpu")

    @staticmethod
    def _kernel_view(job, t):
        return _bridge.array(t) if t.device.type == "cpu" else job.mod.as_device(t.detach())

    def _laid_out(self, t, p):
        """``t`` with p's strides (a same-device copy when it has other ones, e.g. a state
        loaded from another layout)."""
        if t.stride() == p.stride():
            return t
        s = torch.empty_like(p, dtype=t.dtype)
        s.copy_(t)
        return s

    def _batched_views(self, batches):
        """((group index, index in the group), Job, flat view of the gradient) of every batched
        parameter (``_grads``), for the checks and norms that read every gradient."""
        index = {id(group): gi for gi, group in enumerate(self.param_groups)}
        views = []
        for group, _, items in batches:
            job = self._job(group, items[0][1])
            views += [((index[id(group)], j), job, _view(job, g)) for j, _, g in items]
        return views

    def _check_finite_batched(self, batches, views):
        """check_finite for the batched gradients (``views``: ``_batched_views(batches)``),
        before any parameter changes."""
        checked = {id(group) for group, _, _ in batches if group["check_finite"]}
        for ((gi, j), job, gv), group in zip(views, (b[0] for b in batches
                                                     for _ in b[2])):
            if id(group) in checked and not job.op("all_finite")(gv):
                raise FloatingPointError(f"param_groups[{gi}]['params'][{j}].grad holds NaN "
                                         "or inf: no parameter was changed (check_finite=True)")

    def _clip_factor(self, work, ready, views=()):
        """This step's gradient factor: torch's clip coefficient from the float64 2-norm of
        every gradient (``work``'s and the batched ones, ``views``, summed in parameter order
        whichever path a parameter takes; kept in ``last_grad_norm``), 1.0 without
        max_grad_norm."""
        if getattr(self, "max_grad_norm", None) is None:
            return 1.0
        max_norm = _clip._check_max_norm(self.max_grad_norm, "max_grad_norm")
        index = {id(group): gi for gi, group in enumerate(self.param_groups)}
        grads = [((index[id(group)], j), job, gv)
                 for (group, j, *_), (job, gv, _) in zip(work, ready) if gv is not None]
        if views:
            grads = sorted(grads + views, key=lambda e: e[0])
        s, dtypes = 0.0, []
        for _, job, gv in grads:
            dtypes.append(gv.dtype)
            s += job.op("norm_sum")([gv], 2.0)
        self.last_grad_norm = math.sqrt(s) if s == s else s
        return _clip.clip_coef(self.last_grad_norm, max_norm, dtypes)

    @torch.compiler.disable   # run eagerly inside a compiled training step (one graph break,
    @torch.no_grad()          # no tracing into the kernels' Python and its recompiles)
    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (as in torch.optim).

        Returns
        -------
        loss or None
            What the closure returned.

        Raises
        ------
        TypeError, ValueError
            A gradient of the wrong dtype, shape or device; a sparse gradient; a parameter
            that is not dense in memory; a state tensor on another device than its parameter;
            a bad hyper-parameter (all checked before any parameter changes).
        FloatingPointError
            ``check_finite`` and a gradient holds NaN or inf (nothing was changed).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches, work = self._grads()
        # the batched gradients' views, where a check or the clip norm reads them
        views = (self._batched_views(batches) if batches and (
            getattr(self, "max_grad_norm", None) is not None
            or any(group["check_finite"] for group, _, _ in batches)) else [])
        self._check_finite_batched(batches, views)
        ready = self._kernel_grads(work)
        self._gscale = self._clip_factor(work, ready, views)
        for group, dtype, items in batches:
            self._multi_update(group, dtype, items)
            torch.autograd.graph.increment_version([p for _, p, _ in items])
        for (group, j, p, g, name), (job, gv, gkind) in zip(work, ready):
            if gv is None:
                continue
            state = self.state[p]
            for key in self._STATE:
                s = state.get(key)
                if s is not None:
                    if p.dtype in _HALF and s.dtype != torch.float32:
                        s = s.float()  # a 16-bit moment from a torch state_dict, widened
                    state[key] = self._laid_out(s, p)
            pv = _view(job, p)
            fused = self._fused(group, j, job) if p.dtype in _HALF or gkind is not None \
                else None
            if fused is not None:  # one pass, 16-bit arrays converted in registers
                kind = _arrays.half_kind(pv.dtype) if p.dtype in _HALF else None
                if kind is not None:
                    pv = _half.bits(job, pv)
                self._update(group, p, pv, gv, state, group["decay_mask"][j], job,
                             (fused, kind, gkind))
            elif p.dtype in _HALF:  # float32 math on the widened parameter, rounded back
                kind = _arrays.half_kind(pv.dtype)
                p32 = _half.widen(job, pv, kind)
                self._update(group, p, p32, gv, state, group["decay_mask"][j], job)
                _half.store(job, p32, kind, pv)
            else:
                self._update(group, p, pv, gv, state, group["decay_mask"][j], job)
            # the kernels wrote through a view torch does not see: count it as torch's in-place
            # update does, so that a backward through a graph that saved p before this step
            # raises ("modified by an inplace operation") instead of using the new values
            torch.autograd.graph.increment_version(p)
        return loss

    def _gradient_factor(self, group):
        """The kernels' gradient factor: the clipping coefficient, negated for maximize (torch
        negates the gradient first; multiplying by -1 is exact)."""
        return -self._gscale if group["maximize"] else self._gscale


def _view(job, t):
    # the common case first: a contiguous float32/float64 CPU tensor, a flat NumPy view in
    # about 1 us (the general path takes 2.8, four times per parameter and step)
    if _bridge.host_float(t):
        return _bridge.host_array(t).reshape(-1)
    return _FastregOptimizer._kernel_view(job, _flat(t))


def _new_step(state):
    """Increment the per-parameter step (a float32 CPU scalar tensor, as torch keeps it)."""
    s = state.get("step")
    if s is None:
        s = state["step"] = torch.tensor(0.0, dtype=torch.float32)
    elif not torch.is_tensor(s):  # a plain number (set by hand): torch's tensor
        s = state["step"] = torch.tensor(float(s), dtype=torch.float32)
    if s.is_cpu and s.dtype == torch.float32 and s.dim() == 0 and not s.requires_grad:
        v = s.numpy()   # torch's layout: counted through its NumPy view (2 us less than += 1)
        v += 1
        return int(v)
    s += 1
    return int(s.item())


class SGD(_FastregOptimizer):
    """Stochastic gradient descent (``torch.optim.SGD``) on fastreg's fused kernel, with optional
    decoupled weight decay, a decay mask and an L1 proximal step.

    Parameters
    ----------
    params : iterable of tensors or dicts (parameter groups)
    lr : float
        Learning rate (>= 0).
    momentum, dampening, weight_decay, nesterov
        As in torch (``weight_decay`` applies to the parameters ``decay_mask`` selects).
    decoupled : bool
        False: coupled L2 (``g + wd * p``, torch's SGD); True: ``p <- p * (1 - lr * wd)``.
    l1 : float
        L1 proximal step ``soft(p, lr * l1)`` after each update, on the masked parameters.
    decay_mask : None, bool, callable or sequence of bool
        See the module docstring; per group.
    check_finite : bool
        Refuse (FloatingPointError) a step whose gradients hold NaN or inf, before any change.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    max_grad_norm : float, optional
        Clip all gradients by their global 2-norm first (``torch.nn.utils.clip_grad_norm_``'s
        coefficient), fused into the update; ``p.grad`` is not modified. None: no clipping.
    maximize : bool
        Ascend the objective (torch's option: the gradient's sign flipped).
    foreach, fused : None or bool
        Accepted for torch compatibility; no effect (fastreg's kernel is always one fused
        pass per parameter).
    differentiable : bool
        Must be False (see the module docstring).

    Returns
    -------
    SGD
        A ``torch.optim.Optimizer``: ``zero_grad``, ``step``, ``state_dict``, parameter groups,
        LR schedulers work as usual.

    Raises
    ------
    TypeError
        A parameter that is not a dense float32/float64 tensor.
    ValueError
        Negative or NaN hyper-parameters; nesterov without momentum or with dampening;
        ``differentiable=True``.
    """

    _STATE = ("momentum_buffer",)
    _OP = "sgd_step"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, decoupled=False, l1=0.0, decay_mask=None,
                 check_finite=False, backend="auto", max_grad_norm=None, maximize=False,
                 foreach=None, differentiable=False, fused=None):
        self.max_grad_norm = (None if max_grad_norm is None
                              else _clip._check_max_norm(max_grad_norm, "max_grad_norm"))
        self.last_grad_norm = None
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, decoupled=decoupled,
                        l1=l1, decay_mask=decay_mask, check_finite=check_finite,
                        backend=backend, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _check_group(self, group, gi):
        super()._check_group(group, gi)
        for key in ("momentum", "dampening"):
            group[key] = _arrays.check_nonneg(group[key], f"param_groups[{gi}]['{key}']")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"param_groups[{gi}]: nesterov=True needs momentum > 0 and "
                             "dampening == 0")

    def _update(self, group, p, pv, gv, state, decayed, job, fused=None):
        """One step of p (kernel views pv, gv); fused: (the fused 16-bit step, the parameter's
        and the gradient's 16-bit kinds, None for float32), or None (pv, gv of one dtype)."""
        t = pv.dtype.type if fused is None else np.float32
        lr, momentum = _value(group["lr"]), group["momentum"]
        wd = _value(group["weight_decay"]) if decayed else 0.0
        decoupled = group["decoupled"]
        buf, first = None, False
        if momentum != 0:
            b, first = self._momentum_buffer(p, state)
            buf = _view(job, b)
        wd, decay = _decay_terms(lr, wd, decoupled)
        args = (buf, t(lr), t(wd), t(decay), t(momentum), t(1.0 - group["dampening"]),
                bool(group["nesterov"]), first, t(lr * group["l1"] if decayed else 0.0),
                t(self._gradient_factor(group)))
        if fused is None:
            job.op("sgd_step")(pv, gv, *args)
        else:
            fused[0](pv, fused[1], gv, fused[2], *args)

    @staticmethod
    def _momentum_buffer(p, state):
        """(p's momentum buffer, whether it is new: the first step copies the gradient)."""
        b = state.get("momentum_buffer")
        if b is None:
            b = state["momentum_buffer"] = torch.zeros_like(p, dtype=_state_dtype(p))
            return b, True
        return b, False

    def _multi_update(self, group, dtype, items):
        """``_update`` of a batch of parameters of one dtype (``_grads``), in one C call with
        the same scalars."""
        from ..c import optim as c_optim
        lr, momentum = _value(group["lr"]), group["momentum"]
        wd_all, decoupled, l1 = _value(group["weight_decay"]), group["decoupled"], group["l1"]
        mask, addr, scalars, sizes = group["decay_mask"], [], [], []
        for j, p, g in items:
            state = self.state[p]
            decayed = mask[j]
            wd = wd_all if decayed else 0.0
            buf, first = 0, False
            if momentum != 0:
                b, first = self._momentum_buffer(p, state)
                buf = b.data_ptr()
            addr += (p.data_ptr(), g.data_ptr(), buf)
            scalars += (*_decay_terms(lr, wd, decoupled), lr * l1 if decayed else 0.0,
                        float(first))
            sizes.append(p.numel())
        c_optim.sgd_multi(np.array(addr, np.uintp), np.array(sizes, np.int64),
                          np.array(scalars, _NUMPY[dtype]), lr, momentum,
                          1.0 - group["dampening"], group["nesterov"],
                          self._gradient_factor(group))


class Adam(_FastregOptimizer):
    """Adam (``torch.optim.Adam``, coupled L2 weight decay) on fastreg's fused kernel.

    Parameters
    ----------
    params : iterable of tensors or dicts (parameter groups)
    lr : float
    betas : (float, float)
        Each in [0, 1).
    eps : float
    weight_decay : float
        Coupled L2 (``g + wd * p``) on the parameters ``decay_mask`` selects.
    amsgrad : bool
    l1, decay_mask, check_finite, backend, max_grad_norm, maximize, foreach, fused,
    differentiable
        As in ``SGD`` (the L1 step is a second pass, fastreg's soft-threshold kernel).
    capturable : bool
        Must be False (see the module docstring).
    decoupled_weight_decay : bool
        True: AdamW's decoupled decay ``p <- p * (1 - lr * wd)`` instead of the L2 term (as in
        torch).

    Returns
    -------
    Adam

    Raises
    ------
    TypeError, ValueError
        As in ``SGD``; a beta outside [0, 1).
    """

    _STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _OP = "adam_step"
    _DECOUPLED = False
    _TORCH_OPTIONS = dict(_FastregOptimizer._TORCH_OPTIONS, capturable=False,
                          decoupled_weight_decay=False)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, l1=0.0, decay_mask=None, check_finite=False,
                 backend="auto", max_grad_norm=None, foreach=None, maximize=False,
                 capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=None):
        self.max_grad_norm = (None if max_grad_norm is None
                              else _clip._check_max_norm(max_grad_norm, "max_grad_norm"))
        self.last_grad_norm = None
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._DECOUPLED
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, l1=l1, decay_mask=decay_mask,
                        check_finite=check_finite, backend=backend, maximize=maximize,
                        foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group, gi):
        super()._check_group(group, gi)
        betas = tuple(_value(b) for b in group["betas"])
        if len(betas) != 2:
            raise ValueError(f"param_groups[{gi}]: betas must be a pair, got {betas!r}")
        group["betas"] = (_check_beta(betas[0], "betas[0]"), _check_beta(betas[1], "betas[1]"))
        group["eps"] = _arrays.check_nonneg(group["eps"], f"param_groups[{gi}]['eps']")

    def _update(self, group, p, pv, gv, state, decayed, job, fused=None):
        """As SGD._update (no fused step with an L1 term: it is a second, float32 pass)."""
        t = pv.dtype.type if fused is None else np.float32
        self._moments(group, p, state)
        step = _new_step(state)
        lr, (beta1, beta2) = _value(group["lr"]), group["betas"]
        wd = _value(group["weight_decay"]) if decayed else 0.0
        decoupled = group["decoupled_weight_decay"]
        step_size, bc2_sqrt = _bias_terms(lr, (beta1, beta2), step)
        wd, decay = _decay_terms(lr, wd, decoupled)
        args = (_view(job, state["exp_avg"]), _view(job, state["exp_avg_sq"]),
                _view(job, state["max_exp_avg_sq"]) if group["amsgrad"] else None,
                t(wd), t(decay), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(group["eps"]),
                t(step_size), t(bc2_sqrt), t(self._gradient_factor(group)))
        if fused is None:
            job.op("adam_step")(pv, gv, *args)
        else:
            fused[0](pv, fused[1], gv, fused[2], *args)
        if decayed and group["l1"] > 0:
            job.op("soft_threshold")(pv, t(lr * group["l1"]), t(1.0), pv)

    @staticmethod
    def _moments(group, p, state):
        """Create p's moment tensors (and AMSGrad's maximum) where the state lacks them."""
        sdtype = _state_dtype(p)
        if state.get("exp_avg") is None:
            state["exp_avg"] = torch.zeros_like(p, dtype=sdtype)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=sdtype)
        if group["amsgrad"] and state.get("max_exp_avg_sq") is None:
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=sdtype)

    def _multi_takes(self, group, j):
        return not (group["l1"] > 0 and group["decay_mask"][j])   # L1: a second pass

    def _multi_update(self, group, dtype, items):
        """``_update`` of a batch of parameters of one dtype (``_grads``), in one C call with
        the same scalars."""
        from ..c import optim as c_optim
        lr, (beta1, beta2) = _value(group["lr"]), group["betas"]
        wd_all, decoupled = _value(group["weight_decay"]), group["decoupled_weight_decay"]
        ams, mask, addr, scalars, sizes = group["amsgrad"], group["decay_mask"], [], [], []
        for j, p, g in items:
            state = self.state[p]
            self._moments(group, p, state)
            step = _new_step(state)
            wd = wd_all if mask[j] else 0.0
            addr += (p.data_ptr(), g.data_ptr(), state["exp_avg"].data_ptr(),
                     state["exp_avg_sq"].data_ptr(),
                     state["max_exp_avg_sq"].data_ptr() if ams else 0)
            scalars += (*_decay_terms(lr, wd, decoupled), *_bias_terms(lr, (beta1, beta2), step))
            sizes.append(p.numel())
        c_optim.adam_multi(np.array(addr, np.uintp), np.array(sizes, np.int64),
                           np.array(scalars, _NUMPY[dtype]), 1.0 - beta1, beta2, 1.0 - beta2,
                           group["eps"], self._gradient_factor(group))


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``, decoupled weight decay ``p <- p * (1 - lr * wd)``) on
    fastreg's fused kernel; default ``weight_decay=1e-2`` as in torch.

    Parameters
    ----------
    params, lr, betas, eps, amsgrad, l1, decay_mask, check_finite, backend, max_grad_norm
    maximize, foreach, capturable, differentiable, fused
        As in ``Adam``.
    weight_decay : float
        Decoupled decay on the parameters ``decay_mask`` selects (default: those with more than
        one dimension; pass ``decay_mask=True`` to decay every parameter, as torch does).

    Returns
    -------
    AdamW

    Raises
    ------
    TypeError, ValueError
        As in ``Adam``.
    """

    _DECOUPLED = True

    def __setstate__(self, state):
        # torch.optim.AdamW's rule: its groups decay decoupled whatever a state says (an older
        # checkpoint without the key, or an Adam state loaded into AdamW)
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, l1=0.0, decay_mask=None, check_finite=False,
                 backend="auto", max_grad_norm=None, maximize=False, foreach=None,
                 capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1=l1,
                         decay_mask=decay_mask, check_finite=check_finite, backend=backend,
                         max_grad_norm=max_grad_norm, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


