"""``ModelEma``: an exponential moving average of a torch model's parameters and buffers, on
fastreg's fused EMA kernel; the interface and the results of timm's ``ModelEmaV3``.

timm's ``ModelEmaV3.apply_update_`` calls ``torch._foreach_lerp_(ema, model, 1 - decay)`` on the
floating-point entries of the state dict and copies the others; ``fastreg.ema_update`` computes
that lerp with the same single-rounding fma per element (fastreg/reference/ema.py), so the
averages are the same bits as timm's on CPUs where torch runs its AVX2 / AVX-512 kernels. CPU
tensors are updated in place through NumPy views, CUDA tensors through the CUDA backend;
float16 / bfloat16 entries, which fastreg's kernels do not take, go through torch's own
``lerp_``.
"""
import copy
import functools
import weakref

import torch

from .. import _dispatch
from .. import ema as _ema
from . import _bridge

__all__ = ["ModelEma"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


class ModelEma(torch.nn.Module):
    """A copy of ``model`` whose parameters and buffers are moving averages (timm
    ``ModelEmaV3``).

    Parameters
    ----------
    model : torch.nn.Module
        Copied (``copy.deepcopy``) and put in eval mode; call ``update(model, step)`` after each
        optimizer step.
    decay : float
        The target decay, in [0, 1].
    min_decay, update_after_step, use_warmup, warmup_gamma, warmup_power
        timm's decay schedule (``fastreg.ema_decay``): decay 0 (a copy) until update
        ``update_after_step + 1``, then ``decay`` or the warm-up
        ``1 - (1 + s / warmup_gamma) ** -warmup_power`` clamped to ``[min_decay, decay]``.
    device : torch.device or str, optional
        Keep the average on this device (e.g. "cpu" for a GPU model).
    exclude_buffers : bool
        Average the parameters only and copy the buffers.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        fastreg backend for float32/float64 tensors.

    Raises
    ------
    TypeError
        model is not a torch.nn.Module.
    ValueError
        A bad decay setting (see ``fastreg.ema_decay``).

    Notes
    -----
    ``state_dict()`` is the wrapped module's, prefixed ``module.`` (as timm's), so it loads
    into (and from) a timm ``ModelEmaV3`` of the same model.
    """

    def __init__(self, model, decay=0.9999, min_decay=0.0, update_after_step=0,
                 use_warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, device=None,
                 exclude_buffers=False, backend="auto"):
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.decay, self.min_decay = decay, min_decay
        self.update_after_step, self.use_warmup = update_after_step, use_warmup
        self.warmup_gamma, self.warmup_power = warmup_gamma, warmup_power
        self.get_decay(None)   # checks the settings
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.device = device
        if device is not None:
            self.module.to(device=device)
        self.exclude_buffers = bool(exclude_buffers)
        self.backend = backend
        self._views = {}   # id(tensor) -> (weak ref, memory facts, NumPy view): see _host_views

    def _host_views(self, tensors, views, fresh=()):
        """NumPy views of CPU tensors, the same ndarray objects from one update to the next while
        a tensor keeps its memory, shape, strides and dtype, so that ``fastreg.ema_update``
        reuses its checks of the lists (fastreg/_multi.py plans) instead of redoing them for
        every tensor at every step.

        ``views``: the new cache, holding only what this update used: a view keeps its tensor's
        storage alive, so no stale entry may linger (and while one lives, no other storage can
        take its address, so an equal data pointer means the same memory); an entry is also
        dropped when its tensor dies (``del model`` frees the model's memory). ``fresh``: ids of
        tensors made for this update only (copies from another device), never kept."""
        out = []
        for t in tensors:
            if id(t) in fresh:
                out.append(t.detach().numpy())
                continue
            facts = (t.data_ptr(), t.shape, t.stride(), t.dtype)
            hit = self._views.get(id(t))
            if hit is None or hit[0]() is not t or hit[1] != facts:
                drop = functools.partial(_drop_view, weakref.ref(self), id(t))
                hit = (weakref.ref(t, drop), facts, t.detach().numpy())
            views[id(t)] = hit
            out.append(hit[2])
        return out

    def __getstate__(self):
        """Pickling and ``copy.deepcopy`` leave the views behind (weak references do not
        pickle, and a copy's views would read the original model)."""
        state = self.__dict__.copy()
        state["_views"] = {}
        return state

    def get_decay(self, step=None):
        """The decay at optimizer update ``step`` (None: the constant ``decay``).

        Parameters
        ----------
        step : int, one-element integer tensor, or None

        Returns
        -------
        float
        """
        if step is not None:
            step = _bridge.number(step, "step")   # a one-element tensor (an int64 step count)
        return _ema.ema_decay(step, self.decay, min_decay=self.min_decay,
                              update_after_step=self.update_after_step,
                              use_warmup=self.use_warmup, warmup_gamma=self.warmup_gamma,
                              warmup_power=self.warmup_power)

    def _entries(self, module):
        """[(name, tensor, average?)] of ``module`` in timm's order: the state dict's entries, or
        the parameters (averaged) then the buffers (copied) with exclude_buffers. A tied tensor
        is listed under each of its names (see _pairs)."""
        if self.exclude_buffers:
            return ([(k, t, True) for k, t in module.named_parameters(remove_duplicate=False)]
                    + [(k, t, False) for k, t in module.named_buffers(remove_duplicate=False)])
        # keep_vars: the parameter and buffer objects themselves, the same at every update
        return [(k, t, t.is_floating_point())
                for k, t in module.state_dict(keep_vars=True).items()]

    def _pairs(self, model):
        """[(ema tensor, model tensor, average?)] in timm's order, each EMA tensor once.

        Entries are matched by name, up to the names that wrappers add (see _plain_names), so a
        model compiled with ``torch.compile`` or wrapped in DDP, as timm's train loop passes it,
        updates the average of the bare model. A tensor tied under several names (an embedding
        shared with the output layer) is averaged once, as in torch's ``AveragedModel`` (timm's
        ModelEmaV3 lerps every state_dict entry, so a tensor tied under two names twice a
        step): listed twice, it would be one array updated twice, which
        ``fastreg.ema_update`` refuses. The model must tie the same entries as the EMA's
        copy."""
        what = "parameters and buffers" if self.exclude_buffers else "state_dict entries"
        ours, theirs = self._entries(self.module), self._entries(model)
        names = [k for k, _, _ in ours]
        model_names = [k for k, _, _ in theirs]
        if names != model_names:
            names, model_names = _plain_names(names), _plain_names(model_names)
        if names != model_names:
            i = next((i for i, (a, b) in enumerate(zip(names, model_names)) if a != b),
                     min(len(names), len(model_names)))
            if i < min(len(names), len(model_names)):
                first = f"entry {i} is {theirs[i][0]!r} in the model, {ours[i][0]!r} in the copy"
            else:
                extra = theirs[i][0] if len(theirs) > i else ours[i][0]
                first = (f"the model has {len(theirs)} entries, the copy {len(ours)} (first "
                         f"extra: {extra!r})")
            raise ValueError(f"model's {what} differ from the EMA's copy (another "
                             f"architecture?): {first}")
        pairs = []
        by_ema, by_model = {}, {}   # id(tensor) -> (its first name, its partner)
        for (k, e, average), (km, m, _) in zip(ours, theirs):
            if e.shape != m.shape or e.dtype != m.dtype:
                raise ValueError(f"model's {km!r} has shape {tuple(m.shape)} and dtype "
                                 f"{m.dtype}, the EMA's copy {tuple(e.shape)} and {e.dtype}")
            tied, tied_m = by_ema.get(id(e)), by_model.get(id(m))
            if tied is None and tied_m is None:
                by_ema[id(e)], by_model[id(m)] = (k, m), (km, e)
                pairs.append((e, m, average))
            elif tied is None or tied[1] is not m:
                # the two sides tie different entries: pairing either way would leave one
                # side's tensors following another's
                side, other, a, b = (("EMA's copy", "model", tied[0], k) if tied is not None
                                     else ("model", "EMA's copy", tied_m[0], km))
                raise ValueError(f"the {side} ties {a!r} and {b!r} to one tensor, the {other} "
                                 f"does not (another architecture?)")
        return pairs

    @torch.compiler.disable   # run eagerly inside a compiled training step (one graph break;
    @torch.no_grad()          # Dynamo cannot trace the views and the C backend behind them)
    def update(self, model, step=None):
        """Average ``model``'s parameters and buffers into this copy (in place).

        Parameters
        ----------
        model : torch.nn.Module
            The trained model, of the architecture given at construction; also as wrapped by
            ``torch.compile`` or DDP / DataParallel (its entries prefixed ``_orig_mod.`` or
            ``module.``).
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
            A model of another architecture: other entries, shapes, dtypes or tied tensors
            (nothing is changed then).
        """
        decay = self.get_decay(step)
        groups = {}   # device -> ([ema], [model]) for fastreg's kernel
        rest = []
        moved = set()   # ids of copies from another device (see _host_views)
        for e, m, average in self._pairs(model):
            if m.device != e.device:
                m = m.to(device=e.device)
                moved.add(id(m))
            if not average:
                rest.append((e, m, False))
            elif e.dtype in _KERNEL_DTYPES and e.numel():
                g = groups.setdefault(e.device, ([], []))
                g[0].append(e)
                g[1].append(m)
            else:
                rest.append((e, m, True))
        views = {}
        for device, (emas, models) in groups.items():
            if device.type == "cpu":
                emas = self._host_views(emas, views)
                models = self._host_views(models, views, moved)
            else:   # CUDA tensors go as they are, detached (a parameter that requires grad
                # hides its __cuda_array_interface__)
                emas = [t.detach() for t in emas]
                models = [t.detach() for t in models]
            _ema.ema_update(emas, models, decay, backend=self.backend)
            _dispatch.bump_versions(torch, groups[device][0])   # written through views
        self._views = views
        for e, m, average in rest:
            if average:
                e.lerp_(m, 1.0 - decay)
            else:
                e.copy_(m)
        return decay

    @torch.no_grad()
    def set(self, model):
        """Make this copy's parameters and buffers equal to ``model``'s.

        Parameters
        ----------
        model : torch.nn.Module

        Returns
        -------
        None
        """
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            e.copy_(m.to(device=e.device))

    def forward(self, *args, **kwargs):
        """Run the averaged model.

        Parameters
        ----------
        *args, **kwargs
            The wrapped module's inputs.

        Returns
        -------
        object
            Its output.
        """
        return self.module(*args, **kwargs)


def _plain_names(names):
    """State dict names without the modules that wrappers insert: every ``_orig_mod`` (the
    model inside ``torch.compile``'s OptimizedModule, the whole model or a submodule) and a
    leading ``module`` shared by all names (DDP, DataParallel), repeatedly (a wrapped wrapper).
    Both sides of a comparison go through this, so a model whose own entries all start with
    ``module.`` still matches itself."""
    parts = [[s for s in n.split(".") if s != "_orig_mod"] for n in names]
    while parts and all(len(p) > 1 and p[0] == "module" for p in parts):
        parts = [p[1:] for p in parts]
    return [".".join(p) for p in parts]


def _drop_view(ema_ref, key, _dead):
    """A model tensor died: its view (which holds the tensor's storage) goes too."""
    ema = ema_ref()
    if ema is not None:
        ema._views.pop(key, None)
