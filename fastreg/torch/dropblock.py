"""DropBlock for PyTorch: ``DropBlock2d`` (timm's module, counter-based) and its autograd Function.

The module owns a 64-bit ``seed`` and ``offset`` like fastreg's dropout modules (stored as
theirs are, see ``modules._CounterDropout``): a training call on a ``(N, C, H, W)`` batch uses
stream words ``offset .. offset + N C H W - 1`` and advances ``offset`` by ``N C H W``; backward regenerates the mask from them (nothing is stored). A
channels-last tensor is processed in its own layout (layout "NHWC" on the permuted view), which
gives the same mask: seed position (n, c, h, w) uses the same word in either layout.
"""
import torch

from .. import _arrays
from .. import dropblock as _fr_dropblock
from . import _bridge, ops
from .functions import MaskGrad
from .modules import _CounterDropout, _check_in_place_allowed

__all__ = ["DropBlockFunction", "DropBlock2d", "drop_block"]


class DropBlockFunction(torch.autograd.Function):
    """``DropBlockFunction.apply(x, p, block_size, seed, offset, gamma_scale, backend)``:
    ``fastreg.drop_block`` forward, ``fastreg.drop_block_backward`` backward (mask regenerated).
    The eager path; ``ops.drop_block`` is the same computation as a custom operator, used while
    dynamo or export traces."""

    @staticmethod
    def forward(ctx, x, p, block_size, seed, offset, gamma_scale, backend):
        ctx.args = (seed, offset, p, block_size, gamma_scale)
        ctx.backend = backend
        return ops.drop_block_run(x, seed, offset, p, block_size, gamma_scale, False, backend)

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():  # create_graph: see functions.MaskGrad
            args, backend = ctx.args, ctx.backend
            gx = MaskGrad.apply(grad_y, lambda t, bw: ops.drop_block_run(t, *args, bw, backend),
                                True)
        else:
            gx = ops.drop_block_run(grad_y, *ctx.args, True, ctx.backend)
        return gx, None, None, None, None, None, None


def _check_input(x, name):
    _bridge.check_float(x, name, half=True)
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
    if torch.compiler.is_compiling():
        return ops.drop_block(x, torch.tensor(ops.to_int64(offset), dtype=torch.int64),
                              ops.to_int64(seed), p, block_size, gamma_scale, False, backend)[0]
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
        As in timm: the result is written into the input, which is returned.

    Notes
    -----
    Training call k on an (N, C, H, W) batch equals ``fastreg.drop_block(x, p, block_size,
    seed=seed, offset=offset, gamma_scale=gamma_scale)`` and advances ``offset`` by
    ``N C H W`` (also when p = 0, where the output is x itself). In eval mode it returns x, as
    timm's module does. ``seed`` and ``offset`` travel in the state_dict's metadata, as for ``Dropout``.
    timm's ``with_noise`` and ``batchwise`` options are not provided.
    """

    def __init__(self, p=0.1, block_size=7, gamma_scale=1.0, seed=None, *, backend="auto",
                 inplace=False):
        super().__init__(p, inplace, seed=seed, backend=backend)
        block_size = _arrays.check_int(block_size, "block_size")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.gamma_scale = _arrays.check_nonneg(gamma_scale, "gamma_scale")

    def extra_repr(self):
        return (f"p={self.p}, block_size={self.block_size}, gamma_scale={self.gamma_scale}, "
                f"seed={self.seed}, offset={self.offset}" + (", inplace=True" if self.inplace
                                                             else ""))

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
        if self.inplace and torch.is_grad_enabled():
            _check_in_place_allowed(x)   # before the counter moves (torch would refuse)
        # a block_size that does not fit the map, refused before the counter or torch's
        # generator (the activation-checkpointing word) moves
        if x.numel():
            _fr_dropblock._gamma(self.p, self.block_size, x.shape[2], x.shape[3],
                                 self.gamma_scale)
        y = self._advance(x, x.numel(), self._drop)
        if self.inplace and y is not x:
            x.copy_(y)
            return x
        return y

    def _drop(self, x, offset):
        if torch.compiler.is_compiling():
            return ops.drop_block(x, offset, ops.to_int64(self.seed), self.p, self.block_size,
                                  self.gamma_scale, False, self.backend)[0]
        return DropBlockFunction.apply(x, self.p, self.block_size, self.seed, offset,
                                       self.gamma_scale, self.backend)
