"""autograd Functions backed by fastreg kernels, and their functional forms.

Every Function runs fastreg on the tensors' memory (CPU: NumPy views; CUDA: the tensors
themselves through ``__cuda_array_interface__``) and writes into a tensor allocated by torch.
Dropout saves nothing for backward: the mask is regenerated from ``(seed, offset)``, as in
``fastreg.dropout_backward``. Batch norm saves x, the weight, the output when it ends in a ReLU,
and the per-channel float64 mean and inverse standard deviation.
"""
import torch

import fastreg
from .. import _arrays
from ..dropout import MODES
from . import _bridge

__all__ = ["DropoutFunction", "BatchNormFunction", "dropout", "channel_dropout", "drop_path",
           "batch_norm"]

class DropoutFunction(torch.autograd.Function):
    """``DropoutFunction.apply(x, p, seed, offset, training, mode, kind, backend)``.

    kind "element" is ``fastreg.dropout``, "channel" ``fastreg.channel_dropout`` (channel axis 1;
    a channels-last tensor is processed in its own layout, with axis=-1 on the permuted view,
    which draws the same mask since channel (n, c) uses word ``offset + n * C + c`` in either
    layout), "path" ``fastreg.drop_path``. Element-wise masks follow the logical (C-order)
    element index, so they equal ``fastreg.dropout(x.numpy(), ...)`` for any layout.
    """

    @staticmethod
    def forward(ctx, x, p, seed, offset, training, mode, kind, backend):
        ctx.args = (p, seed, offset, training, mode, kind, backend)
        return _dropout_apply(x, "x", *ctx.args)

    @staticmethod
    def backward(ctx, grad_y):
        return (_dropout_apply(grad_y, "grad_y", *ctx.args, backward=True),
                None, None, None, None, None, None, None)


def _dropout_apply(x, name, p, seed, offset, training, mode, kind, backend, backward=False):
    perm = _bridge.channels_last_perm(x) if kind == "channel" else None
    out = _bridge.empty_like(x, perm)
    xv = _bridge.device_array(_bridge.permuted(x, perm))
    ov = _bridge.array(_bridge.permuted(out, perm))
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
    return out


def _functional(x, p, seed, offset, training, mode, kind, backend):
    _bridge.check_float(x, "x")
    p = _arrays.check_probability(p)
    seed = _arrays.check_uint64(seed, "seed")
    offset = _arrays.check_uint64(offset, "offset")
    _arrays.check_choice(mode, "mode", MODES)
    if kind == "channel" and x.dim() < 2:
        raise ValueError(f"channel dropout needs (N, C, ...) input, got shape {tuple(x.shape)}")
    if kind == "path" and x.dim() < 1:
        raise ValueError("drop_path needs a sample axis (ndim >= 1), got a 0-d tensor")
    return DropoutFunction.apply(x, p, seed, offset, bool(training), mode, kind, backend)


def dropout(x, p=0.5, *, seed, offset=0, training=True, mode="inverted", backend="auto"):
    """Element-wise dropout of a tensor, differentiable, mask regenerated in backward.

    Parameters
    ----------
    x : torch.Tensor, float32 or float64, CPU or CUDA
    p, seed, offset, training, mode, backend
        As in ``fastreg.dropout`` (the draws are those of ``fastreg.dropout`` on the same data).

    Returns
    -------
    torch.Tensor
        A new tensor on x's device; its gradient applies the same mask.
    """
    return _functional(x, p, seed, offset, training, mode, "element", backend)


def channel_dropout(x, p=0.5, *, seed, offset=0, training=True, mode="inverted",
                    backend="auto"):
    """Channel dropout (``Dropout1d/2d/3d``) of an (N, C, ...) tensor, channel axis 1.

    Parameters
    ----------
    x : torch.Tensor, float32 or float64, ndim >= 2
        Channels-last tensors are processed in place of their layout (no layout copy).
    p, seed, offset, training, mode, backend
        As in ``fastreg.channel_dropout`` with ``axis=1``.

    Returns
    -------
    torch.Tensor
        A new tensor in x's memory format.
    """
    return _functional(x, p, seed, offset, training, mode, "channel", backend)


def drop_path(x, p=0.5, *, seed, offset=0, training=True, mode="inverted", backend="auto"):
    """Drop path (stochastic depth): whole samples (axis 0) kept or zeroed.

    Parameters
    ----------
    x : torch.Tensor, float32 or float64, ndim >= 1
    p, seed, offset, training, mode, backend
        As in ``fastreg.drop_path``.

    Returns
    -------
    torch.Tensor
    """
    return _functional(x, p, seed, offset, training, mode, "path", backend)


class BatchNormFunction(torch.autograd.Function):
    """``BatchNormFunction.apply(x, weight, bias, residual, running_mean, running_var,
    num_batches_tracked, training, momentum, eps, relu, backend)``: ``fastreg.batch_norm`` and
    ``fastreg.batch_norm_backward`` on channel axis 1, or on the permuted view (axis=-1) of a
    channels-last tensor. Running statistics and the batch counter are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                training, momentum, eps, relu, backend):
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
        ctx.saved, ctx.perm, ctx.backend = saved, perm, backend
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        perm = ctx.perm
        be = _bridge.backend_for("bn_backward", ctx.backend, x)
        gx = _bridge.empty_like(x, perm)
        view = _bridge.permuted
        grads = fastreg.batch_norm_backward(
            _bridge.device_array(view(grad_y, perm)), _bridge.device_array(view(x, perm)),
            ctx.saved, _bridge.array(weight),
            y=None if y is None else _bridge.device_array(view(y, perm)),
            out=_bridge.array(view(gx, perm)), backend=be)
        gw = _bridge.to_tensor(grads[1], x) if ctx.has_weight else None
        gb = _bridge.to_tensor(grads[2], x) if ctx.has_bias else None
        gres = None
        if ctx.saved.residual:
            gres = _bridge.to_tensor(grads[3], x)
            if perm is not None:  # the gradient came back in the permuted (N, ..., C) order
                inverse = [perm.index(i) for i in range(len(perm))]
                gres = gres.permute(*inverse)
        return gx, gw, gb, gres, None, None, None, None, None, None, None, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, training,
               momentum=0.1, eps=1e-5, relu=False, residual=None, num_batches_tracked=None,
               backend="auto"):
    """Batch normalization of an (N, C, ...) tensor, differentiable in x, weight, bias and the
    residual; the optional residual add and ReLU are fused in the same pass.

    Parameters
    ----------
    x : torch.Tensor, float32 or float64, ndim >= 2
        Channel axis 1; channels-last 4-D/5-D tensors are processed in their own layout.
    running_mean, running_var, weight, bias : tensors (C,) of x's dtype and device, optional
        Running statistics are updated in place in training (PyTorch's rule).
    training : bool
    momentum : float or None
        None: cumulative average (needs ``num_batches_tracked``).
    eps : float
    relu : bool
        ``y = relu(bn(x) [+ residual])``.
    residual : tensor like x, optional
    num_batches_tracked : int64 tensor with one element, optional
        Incremented in place in training.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    torch.Tensor
        y, a new tensor in x's memory format.

    Raises
    ------
    TypeError
        A tensor not float32/float64 (half precision included) or of another dtype than x.
    ValueError
        A tensor on another device than x; the checks of ``fastreg.batch_norm``.
    """
    _bridge.check_float(x, "x")
    for t, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                    (running_var, "running_var"), (residual, "residual"),
                    (num_batches_tracked, "num_batches_tracked")):
        _bridge.check_same_device(t, name, x, "x")
        if t is not None and name != "num_batches_tracked":
            _bridge.check_same_dtype(t, name, x, "x")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    return BatchNormFunction.apply(x, weight, bias, residual, running_mean, running_var,
                                   num_batches_tracked, bool(training), momentum, eps,
                                   bool(relu), backend)
