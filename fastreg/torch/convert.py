"""Swap torch's (and timm's) dropout and batch-norm modules in an existing model for fastreg's."""
from torch import nn

from .. import _arrays
from . import modules as M
from .dropblock import DropBlock2d
from .sync_batchnorm import SyncBatchNorm, SyncBatchNormReLU

__all__ = ["convert"]

_DROPOUTS = [(nn.Dropout, M.Dropout), (nn.Dropout1d, M.Dropout1d),
             (nn.Dropout2d, M.Dropout2d), (nn.Dropout3d, M.Dropout3d)]
_BATCHNORMS = [(nn.BatchNorm1d, M.BatchNorm1d), (nn.BatchNorm2d, M.BatchNorm2d),
               (nn.BatchNorm3d, M.BatchNorm3d), (nn.SyncBatchNorm, SyncBatchNorm)]
# a batch norm directly followed by an nn.ReLU in an nn.Sequential -> the fused module
_FUSED = {M.BatchNorm2d: M.BatchNormReLU2d, SyncBatchNorm: SyncBatchNormReLU}

# timm's modules, recognised by class name and attributes (timm is never imported)
_TIMM_DROP_PATH = ("drop_prob", "scale_by_keep")
_TIMM_DROP_BLOCK = ("drop_prob", "block_size", "gamma_scale", "with_noise", "inplace",
                    "batchwise", "fast")


def _is_timm(module, name, attrs):
    return type(module).__name__ == name and all(hasattr(module, a) for a in attrs)


def _timm_drop_path(old, path, seed, backend):
    """fastreg's DropPath for timm's ``DropPath(drop_prob, scale_by_keep)``."""
    if not old.scale_by_keep and old.drop_prob > 0:
        raise ValueError(f"{path}: timm DropPath with scale_by_keep=False (kept samples not "
                         "rescaled in training, none in eval) has no fastreg equivalent; set "
                         "scale_by_keep=True or keep torch for this model; nothing was "
                         "converted")
    return M.DropPath(float(old.drop_prob), seed=seed, backend=backend)


def _timm_drop_block(old, path, seed, backend):
    """fastreg's DropBlock2d for timm's ``DropBlock2d`` (the ``fast=True`` form)."""
    if old.with_noise:
        raise ValueError(f"{path}: timm DropBlock2d with with_noise=True (dropped blocks "
                         "filled with Gaussian noise) is not provided by fastreg; nothing was "
                         "converted")
    if not old.fast:
        raise ValueError(f"{path}: timm DropBlock2d with fast=False (block seeds only where "
                         "a whole block fits, batchwise option) draws other masks than "
                         "fastreg's DropBlock2d, which is timm's fast=True form; nothing was "
                         "converted")
    # with fast=True timm ignores batchwise; inplace only changes where its output is written
    return DropBlock2d(float(old.drop_prob), int(old.block_size), float(old.gamma_scale),
                       seed=seed, backend=backend, inplace=bool(old.inplace))


def _seed_for(seed, k):
    """Dropout module k's seed: distinct keys from one base seed (k-th odd multiple of the
    golden-ratio constant added, mod 2**64), or a fresh draw."""
    if seed is None:
        return M.new_seed()
    return (seed + (2 * k + 1) * 0x9E3779B97F4A7C15) % (1 << 64)


def _batch_norm(old, cls, backend):
    """A ``cls`` with old's hyper-parameters, and its parameters' and buffers' values, device,
    dtype and requires_grad."""
    extra = {}
    if issubclass(cls, (SyncBatchNorm, SyncBatchNormReLU)):
        extra["process_group"] = getattr(old, "process_group", None)
    # the running statistics exist where old has them: a module built with them and given
    # track_running_stats=False afterwards (batch statistics in training, its buffers in eval)
    # keeps them, as torch's convert_sync_batchnorm keeps them
    buffers = old.running_mean is not None and old.running_var is not None
    new = cls(old.num_features, eps=old.eps, momentum=old.momentum, affine=old.affine,
              track_running_stats=buffers,
              bias=not old.affine or old.bias is not None, backend=backend, **extra)
    ref = old.weight if old.weight is not None else old.running_mean
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(old.state_dict())
    new.track_running_stats = old.track_running_stats
    for name in ("weight", "bias"):
        p = getattr(old, name)
        if p is not None:
            getattr(new, name).requires_grad_(p.requires_grad)
    new.train(old.training)
    return new


def _convert(module, seed, backend, fuse_relu, counter, memo, shared, prefix=""):
    """Convert ``module``'s children in place. ``memo``: id of a module seen -> what it became
    (a module used twice, tied, stays one module); ``shared``: ids of modules used more than
    once (a batch norm among them is never fused with a ReLU, which would untie it)."""
    for name, child in list(module._modules.items()):   # with repeats, unlike named_children
        if child is None:
            continue
        if id(child) in memo:
            setattr(module, name, memo[id(child)])
            continue
        path = prefix + name
        new = None
        if type(child) in dict(_DROPOUTS):
            cls = dict(_DROPOUTS)[type(child)]
            new = cls(child.p, bool(child.inplace), seed=_seed_for(seed, counter[0]),
                      backend=backend)
            counter[0] += 1
        elif _is_timm(child, "DropPath", _TIMM_DROP_PATH):
            new = _timm_drop_path(child, path, _seed_for(seed, counter[0]), backend)
            counter[0] += 1
        elif _is_timm(child, "DropBlock2d", _TIMM_DROP_BLOCK):
            new = _timm_drop_block(child, path, _seed_for(seed, counter[0]), backend)
            counter[0] += 1
        elif type(child) in dict(_BATCHNORMS):
            new = _batch_norm(child, dict(_BATCHNORMS)[type(child)], backend)
        else:
            memo[id(child)] = child
            _convert(child, seed, backend, fuse_relu, counter, memo, shared, path + ".")
        if new is not None:
            new.train(child.training)
            _copy_hooks(child, new)
            memo[id(child)] = new
            if id(child) in shared:
                shared.add(id(new))
            setattr(module, name, new)
    # only where nn.Sequential's own forward chains the modules (a subclass's forward may use
    # the batch norm's output before the ReLU)
    if fuse_relu and isinstance(module, nn.Sequential) and \
            type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            bn, relu = module._modules[a], module._modules[b]
            # (a shared ReLU may go: it has no state, its other uses keep it; one with hooks
            # stays, as the batch norm before it: the hooks see the unfused values)
            if (type(bn) in _FUSED and type(relu) is nn.ReLU and id(bn) not in shared
                    and not _hooked(relu) and not _hooked(bn)):
                module._modules[a] = _batch_norm(bn, _FUSED[type(bn)], bn.backend)
                module._modules[b] = nn.Identity()


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")


def _copy_hooks(old, new):
    """The module hooks of ``old`` on its replacement ``new`` (called with ``new``); handles
    made before the conversion do not remove them there."""
    for name in _HOOK_DICTS:
        hooks = getattr(old, name, None)
        if hooks:
            getattr(new, name).update(hooks)
    if getattr(old, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = old._is_full_backward_hook


def _hooked(module):
    """Whether ``module`` has hooks of its own (any of ``_HOOK_DICTS``)."""
    return any(getattr(module, name, None) for name in _HOOK_DICTS)


def _uses(module, counts):
    """How many times each module is reached from ``module`` (repeats included), by id."""
    for child in module._modules.values():
        if child is None:
            continue
        counts[id(child)] = counts.get(id(child), 0) + 1
        if counts[id(child)] == 1:
            _uses(child, counts)
    return counts


def convert(model, *, seed=None, backend="auto", fuse_relu=True, inplace=False):
    """Replace ``nn.Dropout``, ``nn.Dropout1d/2d/3d``, ``nn.BatchNorm1d/2d/3d``,
    ``nn.SyncBatchNorm`` and timm's ``DropPath`` / ``DropBlock2d`` in a model by the fastreg
    modules, copying parameters, buffers and training mode.

    Parameters
    ----------
    model : torch.nn.Module
        Converted recursively; modules that are exactly these torch classes are replaced
        (subclasses, which may override ``forward``, are left alone). timm's modules are
        recognised without importing timm, by class name and attributes: ``DropPath``
        (``drop_prob``, ``scale_by_keep``) becomes ``DropPath``; ``DropBlock2d`` (``drop_prob``,
        ``block_size``, ``gamma_scale``, ``with_noise``, ``inplace``, ``batchwise``, ``fast``)
        becomes fastreg's ``DropBlock2d``. ``nn.SyncBatchNorm`` becomes ``SyncBatchNorm`` (same
        process group). A bare module is converted too (the result is then the new module).
    seed : int, optional
        Base seed: dropout module k (in ``named_modules`` order; DropPath and DropBlock2d
        included) gets a distinct seed derived from it, so a converted model is reproducible.
        Default: each seed drawn from torch's default generator.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
        Passed to every new module.
    fuse_relu : bool
        In an ``nn.Sequential``, a ``BatchNorm2d`` (``SyncBatchNorm``) directly followed by an
        ``nn.ReLU`` becomes one ``BatchNormReLU2d`` (``SyncBatchNormReLU``) and an
        ``nn.Identity`` (the state_dict keys stay the same); not in a subclass of
        ``nn.Sequential`` with a ``forward`` of its own, nor where either module has hooks.
    inplace : bool
        Convert ``model`` itself (default: a deep copy, the original untouched).

    Returns
    -------
    torch.nn.Module
        The converted model (``model`` itself when ``inplace``).

    Raises
    ------
    TypeError
        model is not an nn.Module.
    ValueError
        seed not an integer in [0, 2**64); a timm module with an option fastreg does not
        provide (DropPath ``scale_by_keep=False``; DropBlock2d ``with_noise=True`` or
        ``fast=False``), named by its path (the model is left unconverted).
    """
    import copy

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if seed is not None:
        seed = _arrays.check_uint64(seed, "seed")
    for path, m in model.named_modules():   # refuse before anything is converted
        if _is_timm(m, "DropPath", _TIMM_DROP_PATH):
            _timm_drop_path(m, path, 0, backend)
        elif _is_timm(m, "DropBlock2d", _TIMM_DROP_BLOCK):
            _timm_drop_block(m, path, 0, backend)
    if not inplace:
        model = copy.deepcopy(model)
    holder = nn.Sequential(model)  # so that a bare Dropout / BatchNorm is replaced as a child
    shared = {k for k, n in _uses(holder, {}).items() if n > 1}
    _convert(holder, seed, backend, fuse_relu, [0], {}, shared)
    return holder[0]
