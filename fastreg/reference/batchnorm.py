"""Batch normalization in plain NumPy: the oracle for every backend.

Layout. The public wrapper views any input as ``(A, C, B)``: ``C`` channels on the channel axis,
``A`` = the product of the axes before it, ``B`` = the product of the axes after it. NCHW with
axis=1 is (N, C, H*W); NHWC with axis=-1 is (N*H*W, C, 1); (N, C) is (N, C, 1). Every statistic
is per channel, over the A * B elements ``x[:, c, :]``.

Element-wise ops (``bn_apply``, ``bn_backward_apply``) work in the array's dtype with per-channel
coefficients already cast to it; reductions (``bn_stats``, ``bn_backward_reduce``) accumulate in
float64. Backends must match these definitions within the tolerances stated in
tests/test_batchnorm.py (they may sum in another order, use shifted sums, or fuse a multiply and
an add), not bit for bit.

Per-channel ops (``bn_forward_coeffs``, ``bn_running_update``, ``bn_backward_coeffs``) turn
statistics into coefficients on C elements. The host backends use these NumPy versions (O(C)
work); the CUDA backend has its own so that the coefficients never leave the device.

Fused ops (``bn_forward_train``, ``bn_backward``) are defined here as the composition of the
pieces; a backend may fuse them (statistics and normalization of one channel while its data is
still in cache) as long as the result matches within tolerance.

16-bit input (float16, bfloat16). The public wrappers (fastreg/batchnorm.py) define it for every
backend: x (and residual, grad_y, y) converted exactly to float32, these float32 definitions with
float32 weight, bias and running statistics, and the x-shaped outputs (y, grad_x, grad_residual)
rounded to nearest even (fastreg.reference.half.round_half); the per-channel results (running
statistics, grad_weight, grad_bias) stay float32.

Empty batch (A * B == 0): the wrappers call none of these ops in training; y and grad_x are empty,
the running statistics are left alone and the parameter gradients are zero (as torch).

Non-finite input (as torch.nn.functional.batch_norm). A channel whose elements are all finite is
unaffected by the other channels. In a channel with a non-finite element, the statistics are
those of plain float64 sums (which do not depend on the order of summation once an inf or NaN
is among the terms):

* mean: +inf if the channel holds +inf and neither -inf nor NaN; -inf likewise; NaN if it holds
  a NaN or both infinities;
* M2 (so the biased variance, the unbiased one in the running update, and invstd): NaN;
* hence every output element of the channel is NaN in training (also after the ReLU), the
  running mean becomes (1 - momentum) * running + momentum * mean (+-inf or NaN) and the running
  variance NaN; in inference the element-wise formula simply propagates (inf * scale + shift);
* backward of a training step: s_dy = sum g is a plain float64 sum (finite when grad_y is) and
  grad_bias = s_dy; s_dyx, grad_weight and grad_x of the channel are NaN (the center, the mean,
  is not finite and x - mean is NaN at the channel's non-finite elements).

A backend that shifts or compensates its sums must give these values: a shift that is not
finite is replaced (by 0), and compensation terms must not turn an infinite sum into NaN. No
warning is raised for these values (torch raises none).
"""
import numpy as np


def _relu(y):
    """max(y, 0) with NaN propagated and +0.0 for y <= 0 (np.maximum semantics except -0.0)."""
    return np.where(y > 0, y, np.where(np.isnan(y), y, y.dtype.type(0)))


def _relu_mask(g, y):
    """The gradient through a ReLU whose output was ``y``: g where y > 0, else +0.0."""
    return np.where(y > 0, g, g.dtype.type(0))


def bn_stats(x, mean, m2):
    """Per-channel mean and M2 = sum (x - mean)**2 of x (A, C, B), in float64 (two passes).

    mean, m2: float64 (C,) outputs. A * B >= 1. Backends may use any stable method (shifted sums,
    Welford, pairwise); E[x**2] - E[x]**2 in the input's precision is not stable and not allowed.
    """
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf in a channel with an inf: NaN, as defined
        mu = x64.mean(axis=(0, 2))
        d = x64 - mu[None, :, None]
        m2[...] = np.einsum("acb,acb->c", d, d)
    mean[...] = mu


def bn_apply(x, center, scale, shift, residual, relu, out):
    """out = act((x - center) * scale + shift [+ residual]), per channel, in x's dtype.

    x, out, residual (A, C, B) of one dtype (residual may be None; out may be x); center, scale,
    shift (C,) in x's dtype; relu a bool. Training passes center = batch mean, scale = w * invstd,
    shift = b; inference passes center = 0 (the subtract is exact) and the folded shift
    b - mean * w * invstd, so that each element costs one multiply and one add.
    """
    c = (slice(None), None)
    with np.errstate(invalid="ignore"):  # a non-finite center (see the module docstring)
        y = (x - center[c]) * scale[c] + shift[c]
    if residual is not None:
        y = y + residual
    if relu:
        y = _relu(y)
    out[...] = y


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx):
    """Per-channel sums for the backward pass, accumulated in float64.

    g = gy, or gy where y > 0 (else 0) when the forward ended in a ReLU and ``y`` is its output
    (else y is None). s_dy = sum g, s_dyx = sum g * (x - center), with ``center`` the float64
    mean used in the forward pass. gy, x, y (A, C, B); center, s_dy, s_dyx float64 (C,).
    """
    g = gy if y is None else _relu_mask(gy, y)
    g64 = g.astype(np.float64)
    s_dy[...] = g64.sum(axis=(0, 2))
    with np.errstate(invalid="ignore"):  # a non-finite center (see the module docstring)
        d = x.astype(np.float64) - center[None, :, None]
        s_dyx[...] = np.einsum("acb,acb->c", g64, d)


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres):
    """gx = g * a - (x - center) * b - d per channel, in x's dtype (training), or gx = g * a when
    b is None (inference: the statistics were constants). g as in ``bn_backward_reduce``.

    gres (the gradient of the residual input, which is g) is written when not None. center, a, b,
    d (C,) in x's dtype; gy, x, y, gx, gres (A, C, B). gx may be gy.
    """
    g = gy if y is None else _relu_mask(gy, y)
    c = (slice(None), None)
    if gres is not None:
        gres[...] = g
    if b is None:
        gx[...] = g * a[c]
    else:
        with np.errstate(invalid="ignore"):  # a non-finite center (see the module docstring)
            gx[...] = g * a[c] - (x - center[c]) * b[c] - d[c]


def bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center, scale,
                      shift):
    """Coefficients of ``bn_apply`` from per-channel statistics.

    var = m2 / count (training: the batch's M2 and element count, the biased variance; inference:
    the running variance and count 1). invstd = 1 / sqrt(var + eps) and saved_mean = mean, in
    float64. scale = w * invstd; with ``fold`` (inference) center = 0 and shift = b - mean * scale,
    else center = mean and shift = b; all three computed in float64 and cast to center's dtype.
    weight, bias (C,) or None (w = 1, b = 0); mean, m2 of any float dtype.
    """
    mean64 = np.asarray(mean, dtype=np.float64)
    inv = 1.0 / np.sqrt(np.asarray(m2, dtype=np.float64) / count + eps)
    w = 1.0 if weight is None else weight.astype(np.float64)
    b = 0.0 if bias is None else bias.astype(np.float64)
    sc = w * inv
    saved_mean[...] = mean64
    invstd[...] = inv
    scale[...] = sc
    if fold:
        center[...] = 0
        shift[...] = b - mean64 * sc
    else:
        center[...] = mean64
        shift[...] = b


def bn_running_update(mean, m2, count, running_mean, running_var, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch, PyTorch's rule, with the
    unbiased batch variance m2 / (count - 1) (count >= 2). Computed in float64, stored in the
    running arrays' dtype. Either running array may be None."""
    with np.errstate(invalid="ignore", over="ignore"):   # NaN / inf propagate quietly, as
        if running_mean is not None:                      # on the kernels
            rm = running_mean.astype(np.float64)
            running_mean[...] = (1.0 - momentum) * rm + momentum * mean
        if running_var is not None:
            rv = running_var.astype(np.float64)
            running_var[...] = (1.0 - momentum) * rv + momentum * (m2 / (count - 1))


def bn_backward_coeffs(s_dy, s_dyx, mean, invstd, weight, count, training, center, a, b, d,
                       grad_weight, grad_bias):
    """Coefficients of ``bn_backward_apply`` and the parameter gradients, from the sums of
    ``bn_backward_reduce``; float64 math, results cast to the output arrays' dtypes.

    grad_weight = s_dyx * invstd, grad_bias = s_dy; a = w * invstd; center = mean (cast). Training
    (the batch statistics depend on x): b = a * invstd**2 * s_dyx / count, d = a * s_dy / count;
    otherwise b and d are None and left alone.
    """
    w = 1.0 if weight is None else weight.astype(np.float64)
    a64 = w * invstd
    grad_weight[...] = s_dyx * invstd
    grad_bias[...] = s_dy
    center[...] = mean
    a[...] = a64
    if training:
        b[...] = a64 * invstd * invstd * s_dyx / count
        d[...] = a64 * s_dy / count


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd):
    """Training forward: batch statistics, then normalization with them.

    mean, m2, invstd: float64 (C,) outputs (``bn_stats``; invstd = 1 / sqrt(m2 / n + eps), the
    biased variance, n = A * B >= 2); out = act((x - mean) * (w * invstd) + b [+ residual]) with
    the coefficients of ``bn_forward_coeffs`` (fold=False). weight, bias (C,) in x's dtype (the
    wrapper passes ones / zeros when the caller gave none); eps a Python float.
    """
    bn_stats(x, mean, m2)
    n = x.shape[0] * x.shape[2]
    center, scale, shift = (np.empty(x.shape[1], x.dtype) for _ in range(3))
    bn_forward_coeffs(mean, m2, n, weight, bias, eps, False, mean, invstd, center, scale, shift)
    bn_apply(x, center, scale, shift, residual, relu, out)


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias):
    """The whole backward pass: ``bn_backward_reduce``, ``bn_backward_coeffs``, then
    ``bn_backward_apply`` (gx, and gres = g when gres is not None).

    mean, invstd float64 (C,) from the forward pass (the running statistics' in inference);
    weight (C,) in x's dtype (ones when the caller gave none); grad_weight, grad_bias (C,) in x's
    dtype; ``training`` whether the forward used batch statistics (their gradient terms are
    included).
    """
    C = x.shape[1]
    n = x.shape[0] * x.shape[2]
    s_dy, s_dyx = np.empty(C), np.empty(C)
    bn_backward_reduce(gy, x, y, mean, s_dy, s_dyx)
    center, a, b, d = (np.empty(C, x.dtype) for _ in range(4))
    bn_backward_coeffs(s_dy, s_dyx, mean, invstd, weight, n, training, center, a, b, d,
                       grad_weight, grad_bias)
    bn_backward_apply(gy, x, y, center, a, b if training else None, d if training else None, gx,
                      gres)
