"""autograd Functions backed by fastreg kernels, and their functional forms.

Every Function runs fastreg on the tensors' memory (CPU: NumPy views; CUDA: the tensors
themselves through ``__cuda_array_interface__``) and writes into a tensor allocated by torch.
Dropout saves nothing for backward: the mask is regenerated from ``(seed, offset)``, as in
``fastreg.dropout_backward``. Batch norm saves x, the weight, the output when it ends in a ReLU,
and the per-channel float64 mean and inverse standard deviation.
"""
import torch

from .. import _arrays
from ..dropout import MODES
from . import _bridge, ops

__all__ = ["DropoutFunction", "BatchNormFunction", "MaskGrad", "dropout", "channel_dropout",
           "drop_path", "batch_norm"]


class DropoutFunction(torch.autograd.Function):
    """``DropoutFunction.apply(x, p, seed, offset, training, mode, kind, backend)``: the eager
    path of the dropout family (``ops.dropout`` is the same computation as a custom operator,
    used under ``torch.compile`` / ``torch.export``; a direct Function costs less per call).

    kind "element" is ``fastreg.dropout``, "channel" ``fastreg.channel_dropout`` (channel axis 1;
    a channels-last tensor is processed in its own layout, with axis=-1 on the permuted view,
    which draws the same mask since channel (n, c) uses word ``offset + n * C + c`` in either
    layout), "path" ``fastreg.drop_path``. Element-wise masks follow the logical (C-order)
    element index, so they equal ``fastreg.dropout(x.numpy(), ...)`` for any layout; the output
    has x's layout (channels-last stays channels-last, as in torch).
    """

    @staticmethod
    def forward(ctx, x, p, seed, offset, training, mode, kind, backend):
        ctx.args = (p, training, mode, kind, backend)
        ctx.seed, ctx.offset = seed, offset
        return ops.dropout_run(x, seed, offset, p, training, mode, kind, False, backend)

    @staticmethod
    def backward(ctx, grad_y):
        p, training, mode, kind, backend = ctx.args
        if torch.is_grad_enabled():  # create_graph: the gradient is itself differentiable
            return (MaskGrad.apply(grad_y, lambda t, bw: ops.dropout_run(
                t, ctx.seed, ctx.offset, p, training, mode, kind, bw, backend), True),
                None, None, None, None, None, None, None)
        gx = ops.dropout_run(grad_y, ctx.seed, ctx.offset, p, training, mode, kind, True, backend)
        return gx, None, None, None, None, None, None, None


class MaskGrad(torch.autograd.Function):
    """``MaskGrad.apply(g, run, backward)``: ``run(g, backward)``, the backward kernel of a
    dropout-like op, as a function autograd can differentiate (``create_graph=True``: gradient
    penalties, double backward). Such an op multiplies by a fixed diagonal (mask and scale), so
    the gradient of its gradient applies the same diagonal again (``run(gg, not backward)``, as
    ``ops``' custom operators do), and the op's gradient does not depend on x."""

    @staticmethod
    def forward(ctx, g, run, backward):
        ctx.run, ctx.direction = run, backward
        return run(g, backward)

    @staticmethod
    def backward(ctx, gg):
        if torch.is_grad_enabled():
            return MaskGrad.apply(gg, ctx.run, not ctx.direction), None, None
        return ctx.run(gg, not ctx.direction), None, None


def _functional(x, p, seed, offset, training, mode, kind, backend):
    _bridge.check_float(x, "x", half=True)
    p = _arrays.check_probability(p)
    seed = _arrays.check_uint64(seed, "seed")
    offset = _arrays.check_uint64(offset, "offset")
    training = _arrays.check_bool(training, "training")
    _arrays.check_choice(mode, "mode", MODES)
    if kind == "channel" and x.dim() < 2:
        raise ValueError(f"channel dropout needs (N, C, ...) input, got shape {tuple(x.shape)}")
    if kind == "path" and x.dim() < 1:
        raise ValueError("drop_path needs a sample axis (ndim >= 1), got a 0-d tensor")
    if torch.compiler.is_compiling():
        return ops.dropout(x, torch.tensor(ops.to_int64(offset), dtype=torch.int64),
                           ops.to_int64(seed), p, training, mode, kind, False, backend)[0]
    if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record: 20 us less
        return ops.dropout_run(x, seed, offset, p, training, mode, kind, False, backend)
    return DropoutFunction.apply(x, p, seed, offset, training, mode, kind, backend)


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
    num_batches_tracked, training, momentum, eps, relu, backend, host=None)``:
    ``fastreg.batch_norm`` and ``fastreg.batch_norm_backward`` on channel axis 1, or on the
    permuted view (axis=-1) of a channels-last tensor. Running statistics and the batch counter
    are updated in place. The eager path (``ops.batch_norm`` is the same computation as a
    custom operator). ``host``: NumPy views of the per-channel tensors (``ops.bn_forward_run``),
    which a module keeps between calls."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                training, momentum, eps, relu, backend, host=None):
        y, saved = ops.bn_forward_run(x, weight, bias, residual, running_mean, running_var,
                                      num_batches_tracked, training, momentum, eps, relu,
                                      backend, host)
        ctx.saved, ctx.backend, ctx.eps = saved, backend, eps
        ctx.weight_host = None if host is None else host[0]
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient autograd can differentiate
            gx, gw, gb, gres = bn_backward_graph(grad_y, x, weight, y, ctx.saved, ctx.eps)
        else:
            gx, gw, gb, gres = ops.bn_backward_run(grad_y, x, weight, y, ctx.saved, ctx.backend,
                                                   ctx.weight_host)
        return (gx, gw, gb if ctx.has_bias else None, gres) + (None,) * 9


def bn_backward_graph(grad_y, x, weight, y, saved, eps):
    """Batch norm's backward (channel axis 1) in torch operations, for ``create_graph=True``
    (gradient penalties, double backward, Hessian-vector products): the same formulas as
    ``fastreg.reference.batchnorm``, written so that autograd differentiates them. In training
    the statistics are recomputed from x, since their dependence on x is part of the second
    derivative; in inference they are the running ones, constants. 16-bit x is computed in
    float32, as the kernels do. Returns ``(grad_x, grad_weight or None, grad_bias,
    grad_residual or None)``."""
    if saved.global_count is not None:
        raise NotImplementedError("double backward through a synchronized batch norm")
    half = x.dtype in (torch.float16, torch.bfloat16)
    xf = x.float() if half else x
    gy = grad_y.to(xf.dtype)
    if y is not None:  # fused ReLU: no gradient where the output was clamped
        gy = gy * (y > 0)
    C = x.shape[1]
    dims = [0] + list(range(2, x.dim()))
    shape = [1, C] + [1] * (x.dim() - 2)
    if saved.training:
        mean = xf.mean(dims, keepdim=True)
        invstd = torch.rsqrt((xf - mean).square().mean(dims, keepdim=True) + eps)
    else:
        mean = _bridge.to_tensor(saved.mean, x).to(xf.dtype).reshape(shape)
        invstd = _bridge.to_tensor(saved.invstd, x).to(xf.dtype).reshape(shape)
    xhat = (xf - mean) * invstd
    gb = gy.sum(dims)
    gw = (gy * xhat).sum(dims)
    scale = invstd if weight is None else weight.to(xf.dtype).reshape(shape) * invstd
    if saved.training:
        n = x.numel() // C if C else 0
        gx = scale * (gy - (gb.reshape(shape) + xhat * gw.reshape(shape)) / n)
    else:
        gx = scale * gy
    pdtype = x.dtype if weight is None else weight.dtype
    return (gx.to(x.dtype), None if weight is None else gw.to(pdtype), gb.to(pdtype),
            gy.to(x.dtype) if saved.residual else None)


def batch_norm_call(x, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                    training, momentum, eps, relu, backend, host=None):
    """Batch norm with arguments already checked: the custom operator while dynamo or export
    traces (the updated running statistics it returns are copied into the buffers), the direct
    autograd Function in eager mode (which updates them in place). ``host``: see
    ``ops.bn_forward_run`` (eager only)."""
    if x.dtype in _HALF and any(t is not None and t.dtype == x.dtype
                                for t in (weight, bias, running_mean, running_var)):
        return _half_tensors_call(x, weight, bias, residual, running_mean, running_var,
                                  num_batches_tracked, training, momentum, eps, relu, backend)
    if torch.compiler.is_compiling():
        update = training and running_mean is not None
        y, _, _, rm, rv, nbt = ops.batch_norm(x, weight, bias, residual, running_mean,
                                              running_var, num_batches_tracked, training,
                                              momentum, eps, relu, update, backend)
        if update:  # detached: the op's outputs are in the graph, the buffers must not be
            running_mean.copy_(rm.detach())
            running_var.copy_(rv.detach())
            if num_batches_tracked is not None:
                num_batches_tracked.copy_(nbt)
        return y
    return BatchNormFunction.apply(x, weight, bias, residual, running_mean, running_var,
                                   num_batches_tracked, training, momentum, eps, relu, backend,
                                   host)


def _half_tensors_call(x, weight, bias, residual, running_mean, running_var,
                       num_batches_tracked, training, momentum, eps, relu, backend):
    """batch_norm_call for a 16-bit x whose parameters or running statistics are 16-bit too (a
    model made 16-bit with ``.bfloat16()``, as torch's BatchNorm runs it): the kernels take them
    widened to float32 (exact; the weight and bias through a differentiable cast, so their
    gradients come back in their dtype), and updated running statistics are rounded back into
    the 16-bit buffers once (round to nearest even), as torch's CPU kernel stores them."""
    def wide(t):
        return t.float() if t is not None and t.dtype in _HALF else t

    rm, rv = wide(running_mean), wide(running_var)
    y = batch_norm_call(x, wide(weight), wide(bias), residual, rm, rv, num_batches_tracked,
                        training, momentum, eps, relu, backend)
    if training and running_mean is not None:   # updated (batch_norm_call's rule): store
        with torch.no_grad():
            for t, w in ((running_mean, rm), (running_var, rv)):
                if t is not None and w is not t:
                    t.copy_(w)
    return y


_HALF = (torch.float16, torch.bfloat16)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
               "residual")


def check_bn_tensors(x, tensors, owner="", x_name="x"):
    """Device and dtype of batch norm's tensors (weight, bias, running_mean, running_var,
    num_batches_tracked, residual; None where absent) against x: the same device, and x's
    dtype, except that a 16-bit x may come with float32 parameters and statistics (as
    torch.autocast keeps a module's tensors). ``owner``: a prefix for the names ("BatchNorm2d.")."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    for t, what in zip(tensors, _BN_TENSORS):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{owner + what} must be a torch.Tensor or None, got "
                            f"{type(t).__name__}")
        _bridge.check_same_device(t, owner + what, x, x_name)
        if t is None or what == "num_batches_tracked":
            continue
        if not (half and what != "residual" and t.dtype == torch.float32):
            _bridge.check_same_dtype(t, owner + what, x, x_name)


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
        x not float16/bfloat16/float32/float64; another tensor of another dtype than x (a 16-bit
        x takes float32 weight, bias and running statistics, as under torch.autocast, or
        tensors of its own dtype); training or relu not a bool.
    ValueError
        A tensor on another device than x; the checks of ``fastreg.batch_norm``.
    """
    _bridge.check_float(x, "x", half=True)
    check_bn_tensors(x, (weight, bias, running_mean, running_var, num_batches_tracked, residual))
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    training = _arrays.check_bool(training, "training")
    relu = _arrays.check_bool(relu, "relu")
    return batch_norm_call(x, weight, bias, residual, running_mean, running_var,
                           num_batches_tracked, training, momentum, eps, relu, backend)
