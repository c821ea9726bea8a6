"""fastreg's torch-facing kernels as PyTorch custom operators (``torch.ops.fastreg.*``).

An opaque kernel (Numba, cffi, Numba CUDA) cannot be traced by dynamo; registered through
``torch.library.custom_op`` with a fake (shape) function and an autograd formula, it becomes one
node of the graph, so ``torch.compile(model, fullgraph=True)`` and ``torch.export`` work on
converted models and run exactly the kernels that eager mode runs (the same bits).

The operators are functional, as ``register_autograd`` requires: the dropout stream position
comes in as a tensor (``offset``, one int64 element: a Python int attribute would be baked into
the compiled graph and recompile it at every step) and is advanced by the caller; batch norm
returns the updated running statistics, which the caller copies into its buffers. 64-bit seeds
and offsets in [0, 2**64) travel as int64 two's complement (``to_int64``), since operator
schemas have no unsigned integers.

Operators
---------
fastreg::dropout(x, offset, seed, p, training, mode, kind, backward, backend) -> (y, position)
    kind "element" (``fastreg.dropout``), "channel" (``channel_dropout``, channel axis 1),
    "path" (``drop_path``); backward=True runs the ``*_backward`` kernel (the same mask).
    ``position`` is a copy of ``offset``, the one saved for backward (see ``_dropout_setup``).
fastreg::drop_block(x, offset, seed, p, block_size, gamma_scale, backward, backend)
        -> (y, position)
fastreg::batch_norm(x, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                    training, momentum, eps, relu, update, backend)
        -> (y, mean, invstd, new_running_mean, new_running_var, new_num_batches_tracked)
fastreg::batch_norm_backward(grad_y, x, weight, y, mean, invstd, training, relu, residual,
                             backend) -> (grad_x, grad_weight, grad_bias, grad_residual)

Absent optional results are empty (0-element) tensors.
"""
from typing import Optional

import torch
from torch import Tensor

import fastreg
from . import _bridge

__all__ = ["dropout", "drop_block", "batch_norm", "batch_norm_backward", "to_int64",
           "to_uint64"]

_U64 = 1 << 64


def to_int64(v):
    """An integer in [0, 2**64) as the int64 with the same bits (two's complement)."""
    return v - _U64 if v >= 1 << 63 else v


def to_uint64(v):
    """The inverse of ``to_int64``."""
    return v & (_U64 - 1)


def _nothing(like):
    return like.new_empty((0,))


# --- dropout, channel dropout, drop path ------------------------------------------------------------

def dropout_out(x):
    """The output tensor of a dropout op, in x's memory format (``torch.empty_like``: a
    channels-last input gives a channels-last output, as torch's dropout does). The same rule in
    the kernel and in the fake function."""
    return torch.empty_like(x)


def dropout_run(x, seed, offset, p, training, mode, kind, backward, backend):
    """The eager computation (the autograd Function of functions.py and the custom op both run
    this): seed and offset are Python ints in [0, 2**64)."""
    if _bridge.host_float(x):
        # the common case: a C-contiguous host tensor and its NumPy view, no layout handling
        # (channel axis 1)
        out = torch.empty_like(x)
        kw = dict(seed=seed, offset=offset, training=training, mode=mode, out=out.numpy())
        if kind == "element":
            fn = fastreg.dropout_backward if backward else fastreg.dropout
            kw["backend"] = _bridge.backend_for("dropout", backend, x)
        else:
            if kind == "channel":
                fn = fastreg.channel_dropout_backward if backward else fastreg.channel_dropout
                kw["axis"] = 1
            else:
                fn = fastreg.drop_path_backward if backward else fastreg.drop_path
            kw["backend"] = _bridge.backend_for("group_dropout", backend, x)
        fn(_bridge.host_array(x), p, **kw)
        return out
    out = dropout_out(x)
    # channels-last channel dropout runs on the permuted (N, ..., C) view with axis=-1: the same
    # mask (channel (n, c) uses word offset + n * C + c in either layout), no layout copy
    perm = _bridge.channels_last_perm(x) if kind == "channel" else None
    target = out
    if perm is None and x.device.type == "cuda" and not out.is_contiguous():
        # fastreg's CUDA kernels write C-contiguous arrays (host kernels take strided out=)
        target = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    xv = _bridge.device_array(_bridge.permuted(x, perm))
    ov = _bridge.array(_bridge.permuted(target, perm))
    op = "dropout" if kind == "element" else "group_dropout"
    be = _bridge.backend_for(op, backend, x)
    kw = dict(seed=seed, offset=offset, training=training, mode=mode, out=ov, backend=be)
    if kind == "element":
        fn = fastreg.dropout_backward if backward else fastreg.dropout
    elif kind == "channel":
        fn = fastreg.channel_dropout_backward if backward else fastreg.channel_dropout
        kw["axis"] = 1 if perm is None else -1
    else:
        fn = fastreg.drop_path_backward if backward else fastreg.drop_path
    fn(xv, p, **kw)
    if target is not out:
        out.copy_(target)
    return out


@torch.library.custom_op("fastreg::dropout", mutates_args=())
def dropout(x: Tensor, offset: Tensor, seed: int, p: float, training: bool, mode: str,
            kind: str, backward: bool, backend: str) -> tuple[Tensor, Tensor]:
    y = dropout_run(x, to_uint64(seed), to_uint64(int(offset)), p, training, mode, kind,
                    backward, backend)
    return y, offset.clone()


@dropout.register_fake
def _(x, offset, seed, p, training, mode, kind, backward, backend):
    return dropout_out(x), torch.empty_like(offset)


def _dropout_setup(ctx, inputs, output):
    x, offset, *ctx.args = inputs
    # the position this call used, as an output of the op: saving the input instead lets the
    # compiler recompute it in the backward graph from the counter buffer, which the caller has
    # advanced by then (a different mask: seen with inductor's partitioner, torch 2.13)
    ctx.save_for_backward(output[1])


def _dropout_backward(ctx, grad_y, _):
    (offset,) = ctx.saved_tensors
    seed, p, training, mode, kind, backward, backend = ctx.args
    # the mask is symmetric: the gradient of either direction applies it again
    gx, _ = dropout(grad_y, offset, seed, p, training, mode, kind, not backward, backend)
    return gx, None, None, None, None, None, None, None, None


dropout.register_autograd(_dropout_backward, setup_context=_dropout_setup)


# --- drop block -----------------------------------------------------------------------------------

def drop_block_run(x, seed, offset, p, block_size, gamma_scale, backward, backend):
    """The eager computation of DropBlock (seed and offset as Python ints in [0, 2**64))."""
    perm = _bridge.channels_last_perm(x)
    out = _bridge.empty_like(x, perm)
    xv = _bridge.device_array(_bridge.permuted(x, perm))
    ov = _bridge.array(_bridge.permuted(out, perm))
    be = _bridge.backend_for("drop_block_mask", backend, x)
    fn = fastreg.drop_block_backward if backward else fastreg.drop_block
    fn(xv, p, block_size, seed=seed, offset=offset, layout="NCHW" if perm is None else "NHWC",
       gamma_scale=gamma_scale, out=ov, backend=be)
    return out


@torch.library.custom_op("fastreg::drop_block", mutates_args=())
def drop_block(x: Tensor, offset: Tensor, seed: int, p: float, block_size: int,
               gamma_scale: float, backward: bool, backend: str) -> tuple[Tensor, Tensor]:
    y = drop_block_run(x, to_uint64(seed), to_uint64(int(offset)), p, block_size, gamma_scale,
                       backward, backend)
    return y, offset.clone()


@drop_block.register_fake
def _(x, offset, seed, p, block_size, gamma_scale, backward, backend):
    return _bridge.empty_like(x, _bridge.channels_last_perm(x)), torch.empty_like(offset)


def _drop_block_setup(ctx, inputs, output):
    x, offset, *ctx.args = inputs
    ctx.save_for_backward(output[1])  # see _dropout_setup


def _drop_block_backward(ctx, grad_y, _):
    (offset,) = ctx.saved_tensors
    seed, p, block_size, gamma_scale, backward, backend = ctx.args
    gx, _ = drop_block(grad_y, offset, seed, p, block_size, gamma_scale, not backward, backend)
    return gx, None, None, None, None, None, None, None


drop_block.register_autograd(_drop_block_backward, setup_context=_drop_block_setup)


# --- batch norm -----------------------------------------------------------------------------------

def bn_forward_run(x, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                   training, momentum, eps, relu, backend, host=None):
    """``fastreg.batch_norm`` on channel axis 1, or on the permuted view (axis=-1) of a
    channels-last tensor; running statistics and the batch counter updated in place.
    Returns ``(y, saved)``. ``host``: optional NumPy views of (weight, bias, running_mean,
    running_var, num_batches_tracked), as ``_bridge.host_array`` gives them (a module's cache)."""
    if _bridge.host_float(x) and (residual is None or _bridge.host_float(residual)):
        # the common case: C-contiguous host tensors viewed through NumPy once each, channel
        # axis 1 (fastreg.batch_norm takes its host fast path, or checks on the general one)
        be = _bridge.backend_for("bn_forward_train" if training else "bn_apply", backend, x)
        y = torch.empty_like(x)
        a = _bridge.host_array
        if host is None:
            host = (a(weight), a(bias), a(running_mean), a(running_var), a(num_batches_tracked))
        _, saved = fastreg.batch_norm(
            a(x), host[2], host[3], host[0], host[1], training=training, momentum=momentum,
            eps=eps, axis=1, activation="relu" if relu else None, residual=a(residual),
            num_batches_tracked=host[4], out=y.numpy(), backend=be)
        return y, saved
    perm = _bridge.channels_last_perm(x)
    be = _bridge.backend_for("bn_forward_train" if training else "bn_apply", backend, x)
    y = _bridge.empty_like(x, perm)
    a = _bridge.array
    res = None
    if residual is not None:
        res = _bridge.device_array(_bridge.permuted(residual, perm))
    _, saved = fastreg.batch_norm(
        _bridge.device_array(_bridge.permuted(x, perm)), a(running_mean), a(running_var),
        a(weight), a(bias), training=training, momentum=momentum, eps=eps,
        axis=1 if perm is None else -1, activation="relu" if relu else None, residual=res,
        num_batches_tracked=a(num_batches_tracked), out=a(_bridge.permuted(y, perm)),
        backend=be)
    return y, saved


def bn_backward_run(grad_y, x, weight, y, saved, backend, weight_host=None):
    """``fastreg.batch_norm_backward`` in the layout of the forward pass: ``(grad_x,
    grad_weight or None, grad_bias or None, grad_residual or None)``. ``weight_host``: the
    weight's NumPy view when the caller has it (see ``bn_forward_run``)."""
    if (_bridge.host_float(x) and _bridge.host_float(grad_y) and grad_y.dtype == x.dtype
            and (y is None or _bridge.host_float(y))):
        # the common case, as in bn_forward_run
        be = _bridge.backend_for("bn_backward", backend, x)
        gx = torch.empty_like(x)
        a = _bridge.host_array
        w = a(weight) if weight_host is None else weight_host
        grads = fastreg.batch_norm_backward(a(grad_y), a(x), saved, w, y=a(y), out=gx.numpy(),
                                            backend=be)
        gb = torch.from_numpy(grads[2])
        return (gx, torch.from_numpy(grads[1]) if weight is not None else None, gb,
                torch.from_numpy(grads[3]) if saved.residual else None)
    perm = _bridge.channels_last_perm(x)
    be = _bridge.backend_for("bn_backward", backend, x)
    gx = _bridge.empty_like(x, perm)
    view = _bridge.permuted
    grads = fastreg.batch_norm_backward(
        _bridge.device_array(view(grad_y, perm)), _bridge.device_array(view(x, perm)),
        saved, _bridge.array(weight),
        y=None if y is None else _bridge.device_array(view(y, perm)),
        out=_bridge.array(view(gx, perm)), backend=be)
    gw = _bridge.to_tensor(grads[1], x) if weight is not None else None
    gb = _bridge.to_tensor(grads[2], x)
    gres = None
    if saved.residual:
        gres = _bridge.to_tensor(grads[3], x)
        if perm is not None:  # the gradient came back in the permuted (N, ..., C) order
            inverse = [perm.index(i) for i in range(len(perm))]
            gres = gres.permute(*inverse)
    return gx, gw, gb, gres


def _bn_fake_stats(x):
    return x.new_empty((x.shape[1],), dtype=torch.float64)


@torch.library.custom_op("fastreg::batch_norm", mutates_args=())
def batch_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               residual: Optional[Tensor], running_mean: Optional[Tensor],
               running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
               training: bool, momentum: Optional[float], eps: float, relu: bool, update: bool,
               backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # functional: the running statistics (updated when ``update``) are returned as new tensors
    if update:
        running_mean, running_var = running_mean.clone(), running_var.clone()
        if num_batches_tracked is not None:
            num_batches_tracked = num_batches_tracked.clone()
    y, saved = bn_forward_run(x, weight, bias, residual, running_mean, running_var,
                              num_batches_tracked, training, momentum, eps, relu, backend)
    mean, invstd = _bridge.to_tensor(saved.mean, x), _bridge.to_tensor(saved.invstd, x)
    if not update:
        running_mean = running_var = num_batches_tracked = None
    return (y, mean, invstd, *(_nothing(x) if t is None else t
                               for t in (running_mean, running_var, num_batches_tracked)))


@batch_norm.register_fake
def _(x, weight, bias, residual, running_mean, running_var, num_batches_tracked, training,
      momentum, eps, relu, update, backend):
    y = _bridge.empty_like(x, _bridge.channels_last_perm(x))
    new = [_nothing(x) for _ in range(3)]
    if update:
        new[0], new[1] = torch.empty_like(running_mean), torch.empty_like(running_var)
        if num_batches_tracked is not None:
            new[2] = torch.empty_like(num_batches_tracked)
    return (y, _bn_fake_stats(x), _bn_fake_stats(x), *new)


def _bn_setup(ctx, inputs, output):
    x, weight, bias, residual = inputs[:4]
    training, relu, backend = inputs[7], inputs[10], inputs[12]
    y, mean, invstd = output[:3]
    ctx.flags = (training, relu, residual is not None, backend, bias is not None)
    ctx.save_for_backward(x, weight, y if relu else None, mean, invstd)


def _bn_backward(ctx, grad_y, *unused):
    x, weight, y, mean, invstd = ctx.saved_tensors
    training, relu, has_residual, backend, has_bias = ctx.flags
    gx, gw, gb, gres = batch_norm_backward(grad_y, x, weight, y, mean, invstd, training, relu,
                                           has_residual, backend)
    return (gx, None if weight is None else gw, gb if has_bias else None,
            gres if has_residual else None) + (None,) * 9


batch_norm.register_autograd(_bn_backward, setup_context=_bn_setup)


def bn_saved(x, mean, invstd, training, relu, residual):
    """The ``fastreg.BatchNormSaved`` of a forward pass, from its tensors and flags."""
    perm = _bridge.channels_last_perm(x)
    C = x.shape[1]
    return fastreg.BatchNormSaved(_bridge.array(mean), _bridge.array(invstd), training,
                                  1 if perm is None else x.dim() - 1, x.dim(),
                                  "relu" if relu else None, residual,
                                  x.numel() // C if C else 0)


@torch.library.custom_op("fastreg::batch_norm_backward", mutates_args=())
def batch_norm_backward(grad_y: Tensor, x: Tensor, weight: Optional[Tensor], y: Optional[Tensor],
                        mean: Tensor, invstd: Tensor, training: bool, relu: bool, residual: bool,
                        backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    saved = bn_saved(x, mean, invstd, training, relu, residual)
    gx, gw, gb, gres = bn_backward_run(grad_y, x, weight, y, saved, backend)
    return gx, *(_nothing(x) if t is None else t for t in (gw, gb, gres))


@batch_norm_backward.register_fake
def _(grad_y, x, weight, y, mean, invstd, training, relu, residual, backend):
    C = x.shape[1]
    like = x if weight is None else weight  # parameter gradients have the parameters' dtype
    gw = like.new_empty((C,)) if weight is not None else _nothing(x)
    gb = like.new_empty((C,))
    gres = _bridge.empty_like(x, _bridge.channels_last_perm(x)) if residual else _nothing(x)
    return _bridge.empty_like(x, _bridge.channels_last_perm(x)), gw, gb, gres
