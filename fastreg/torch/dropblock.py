"""DropBlock for PyTorch: ``DropBlock2d`` (timm's module, counter-based) and its autograd Function.

The module owns a 64-bit ``seed`` and ``offset`` like fastreg's dropout modules: a training call
on a ``(N, C, H, W)`` batch uses stream words ``offset .. offset + N C H W - 1`` and advances
``offset`` by ``N C H W``; backward regenerates the mask from them (nothing is stored). A
channels-last tensor is processed in its own layout (layout "NHWC" on the permuted view), which
gives the same mask: seed position (n, c, h, w) uses the same word in either layout.
"""
import torch

import fastreg
from .. import _arrays
from . import _bridge
from .modules import _CounterDropout

__all__ = ["DropBlockFunction", "DropBlock2d", "drop_block"]


class DropBlockFunction(torch.autograd.Function):
    """``DropBlockFunction.apply(x, p, block_size, seed, offset, gamma_scale, backend)``:
    ``fastreg.drop_block`` forward, ``fastreg.drop_block_backward`` backward (mask regenerated)."""

    @staticmethod
    def forward(ctx, x, p, block_size, seed, offset, gamma_scale, backend):
        ctx.args = (p, block_size, seed, offset, gamma_scale, backend)
        return _apply(x, *ctx.args, backward=False)

    @staticmethod
    def backward(ctx, grad_y):
        return (_apply(grad_y, *ctx.args, backward=True), None, None, None, None, None, None)


def _apply(x, p, block_size, seed, offset, gamma_scale, backend, backward):
    perm = _bridge.channels_last_perm(x)
    out = _bridge.empty_like(x, perm)
    xv = _bridge.device_array(_bridge.permuted(x, perm))
    ov = _bridge.array(_bridge.permuted(out, perm))
    be = _bridge.backend_for("drop_block_mask", backend, x)
    fn = fastreg.drop_block_backward if backward else fastreg.drop_block
    fn(xv, p, block_size, seed=seed, offset=offset, layout="NCHW" if perm is None else "NHWC",
       gamma_scale=gamma_scale, out=ov, backend=be)
    return out


def _check_input(x, name):
    _bridge.check_float(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")


def drop_block(x, p=0.1, block_size=7, *, seed, offset=0, training=True, gamma_scale=1.0,
               backend="auto"):
    """DropBlock of an (N, C, H, W) tensor, differentiable, mask regenerated in backward.

    Parameters
    ----------
    x : torch.Tensor, float32 or float64, 4-D, CPU or CUDA
        Channels-last tensors are processed in their own layout (no copy).
    p, block_size, seed, offset, training, gamma_scale, backend
        As in ``fastreg.drop_block`` (layout "NCHW" on the logical shape).

    Returns
    -------
    torch.Tensor
        A new tensor in x's memory format (x itself when not training).
    """
    _check_input(x, "x")
    p = _arrays.check_probability(p)
    seed = _arrays.check_uint64(seed, "seed")
    offset = _arrays.check_uint64(offset, "offset")
    training = _arrays.check_bool(training, "training")
    gamma_scale = _arrays.check_nonneg(gamma_scale, "gamma_scale")
    if not training:
        return x
    return DropBlockFunction.apply(x, p, block_size, seed, offset, gamma_scale, backend)


class DropBlock2d(_CounterDropout):
    """DropBlock (Ghiasi et al. 2018) as timm's ``DropBlock2d`` with ``fast=True``, counter-based.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1] (timm's ``drop_prob``).
    block_size : int
        Block side (>= 1), clipped to the feature map.
    gamma_scale : float
        Factor on the seed rate (timm's ``gamma_scale``).
    seed : int, optional
        Key of the stream in [0, 2**64); default: drawn from torch's default generator.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    inplace : bool
        Accepted for timm compatibility; the output is always a new tensor.

    Notes
    -----
    Training call k on an (N, C, H, W) batch equals ``fastreg.drop_block(x, p, block_size,
    seed=seed, offset=offset, gamma_scale=gamma_scale)`` and advances ``offset`` by
    ``N C H W`` (also when p = 0, where the output is x itself). In eval mode it returns x, as
    timm's module does. ``seed`` and ``offset`` live in ``state_dict`` (``_extra_state``).
    timm's ``with_noise`` and ``batchwise`` options are not provided.
    """

    def __init__(self, p=0.1, block_size=7, gamma_scale=1.0, seed=None, *, backend="auto",
                 inplace=False):
        super().__init__(p, "inverted", seed, backend=backend, inplace=inplace)
        block_size = _arrays.check_int(block_size, "block_size")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.gamma_scale = _arrays.check_nonneg(gamma_scale, "gamma_scale")

    def extra_repr(self):
        return (f"p={self.p}, block_size={self.block_size}, gamma_scale={self.gamma_scale}, "
                f"seed={self.seed}, offset={self.offset}")

    def forward(self, x):
        """DropBlock of x in training (advancing the counter), x itself in eval.

        Parameters
        ----------
        x : torch.Tensor, float32 or float64, (N, C, H, W), CPU or CUDA

        Returns
        -------
        torch.Tensor
        """
        _check_input(x, "DropBlock2d input")
        if not self.training:
            return x
        draws = x.numel()
        offset = self.offset
        _arrays.check_counter_range(offset, draws)
        if self.p == 0:
            self.offset = offset + draws
            return x
        y = DropBlockFunction.apply(x, self.p, self.block_size, self.seed, offset,
                                    self.gamma_scale, self.backend)
        self.offset = offset + draws  # after the call: a refused input leaves the counter
        return y
