"""nn.Modules backed by fastreg kernels: counter-based dropout and batch norm.

Dropout modules own a 64-bit ``seed`` and a 64-bit ``offset`` (the position in the Philox
stream). Every training call uses words ``offset .. offset + draws - 1`` and advances ``offset``
by ``draws`` (elements for ``Dropout``, (sample, channel) pairs for ``Dropout1d/2d/3d``, samples
for ``DropPath``), so no draw repeats, backward regenerates the mask from ``(seed, offset)`` and
nothing is stored. Both live in the module's ``state_dict`` (as ``<name>._extra_state``, plain
Python ints, so they never move to the GPU and reading them never synchronizes), so a resumed
run continues the same random stream. A torch state_dict without them loads too (the module
keeps its own seed and counter).

Batch-norm modules subclass ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` / ``BatchNorm3d``: same
constructor, parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
``num_batches_tracked``), so state_dicts load either way and ``isinstance`` checks still hold;
only ``forward`` runs fastreg. ``BatchNormReLU2d`` has the same parameters and buffers but is
deliberately *not* an ``nn.BatchNorm2d`` (nor a ``_BatchNorm``): tools that find batch-norm
layers by ``isinstance`` and replace them (``nn.SyncBatchNorm.convert_sync_batchnorm``,
``torch.utils.mkldnn.to_mkldnn``, timm's ``freeze_batch_norm_2d``) would drop its ReLU; they
leave it alone instead. ``frt.SyncBatchNorm.convert_sync_batchnorm`` converts it (ReLU kept).
"""
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .. import _arrays
from ..dropout import MODES
from . import _bridge
from .functions import BatchNormFunction, DropoutFunction

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath", "BatchNorm1d",
           "BatchNorm2d", "BatchNorm3d", "BatchNormReLU2d"]

_U64 = 1 << 64

# torch.nn.functional.dropout2d's warning for 3-D input (torch 2.x), word for word
_DROPOUT2D_3D_WARNING = (
    "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
    "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel "
    "dim. This behavior will change in a future release to interpret the input as one without "
    "a batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout "
    "behavior, please switch to using dropout1d instead.")


def new_seed():
    """A 64-bit seed from torch's default generator (so ``torch.manual_seed`` makes module
    seeds reproducible)."""
    hi, lo = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    return (hi << 32) | lo


class _CounterDropout(nn.Module):
    """Shared by the dropout modules: hyper-parameters, the (seed, offset) state, train/eval."""

    _KIND = "element"
    _NDIM = None      # Dropout1d/2d/3d: the batched input rank (unbatched inputs have one less)
    _UNBATCHED = True  # False: an (_NDIM - 1)-D input is batched all the same (Dropout2d)

    def __init__(self, p=0.5, mode="inverted", seed=None, *, backend="auto", inplace=False):
        super().__init__()
        self.p = _arrays.check_probability(p)
        self.mode = _arrays.check_choice(mode, "mode", MODES)
        self.seed = new_seed() if seed is None else _arrays.check_uint64(seed, "seed")
        self.offset = 0
        self.backend = backend
        self.inplace = inplace  # accepted for torch compatibility; outputs are new tensors

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode!r}, seed={self.seed}, offset={self.offset}"

    def _draws(self, x):
        if self._KIND == "element":
            return x.numel()
        if self._KIND == "channel":
            return x.shape[0] * x.shape[1]
        return x.shape[0]

    def forward(self, x):
        """Dropout of x in training (advancing the counter), the mode's scaling in eval.

        Parameters
        ----------
        x : torch.Tensor, float32 or float64, CPU or CUDA

        Returns
        -------
        torch.Tensor
        """
        _bridge.check_float(x, f"{type(self).__name__} input")
        unbatched = self._NDIM is not None and x.dim() == self._NDIM - 1
        if self._NDIM is not None and x.dim() not in (self._NDIM, self._NDIM - 1):
            raise ValueError(f"{type(self).__name__} expects {self._NDIM}-D (batched) or "
                             f"{self._NDIM - 1}-D (unbatched) input, got shape {tuple(x.shape)}")
        if unbatched and not self._UNBATCHED:
            # torch.nn.Dropout2d reads 3-D input as (N, C, L) and warns: do the same, so that
            # convert() keeps the behaviour (including in eval mode, where torch warns too)
            warnings.warn(_DROPOUT2D_3D_WARNING, UserWarning, stacklevel=2)
            unbatched = False
        if self._KIND == "path" and x.dim() < 1:
            raise ValueError("DropPath needs a sample axis (ndim >= 1), got a 0-d tensor")
        if not self.training:
            if self.mode == "inverted" or self.p == 0:
                return x
            return x * (1.0 - self.p)
        if unbatched:
            x = x.unsqueeze(0)
        draws = self._draws(x)
        offset = self.offset
        _arrays.check_counter_range(offset, draws)
        self.offset = offset + draws
        if self.p == 0:  # identity (scale 1): the counter advances all the same
            y = x
        else:
            y = DropoutFunction.apply(x, self.p, self.seed, offset, True, self.mode, self._KIND,
                                      self.backend)
        return y.squeeze(0) if unbatched else y

    def get_extra_state(self):
        """The random stream's state: ``{"seed": int, "offset": int}``.

        Parameters
        ----------
        None

        Returns
        -------
        dict
        """
        return {"seed": self.seed, "offset": self.offset}

    def set_extra_state(self, state):
        """Restore ``get_extra_state``'s dict (seed and offset, integers in [0, 2**64)).

        Parameters
        ----------
        state : dict

        Returns
        -------
        None
        """
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            raise ValueError(f"{type(self).__name__}: extra state must be a dict with 'seed' "
                             f"and 'offset', got {state!r}")
        self.seed = _arrays.check_uint64(state["seed"], "seed")
        self.offset = _arrays.check_uint64(state["offset"], "offset")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "_extra_state"
        if key in missing_keys:  # a torch nn.Dropout's state_dict: keep our own stream
            missing_keys.remove(key)


class Dropout(_CounterDropout):
    """Element-wise dropout (``torch.nn.Dropout``) with a counter-based Philox mask.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1].
    mode : {"inverted", "classic"}
        As in ``fastreg.dropout``; "inverted" is torch's convention.
    seed : int, optional
        Key of the stream in [0, 2**64); default: drawn from torch's default generator.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    inplace : bool
        Accepted for ``nn.Dropout`` compatibility; the output is always a new tensor.

    Returns
    -------
    Dropout
        Call it on a tensor; in training, call k uses stream words ``offset .. offset + numel``
        and the result equals ``fastreg.dropout(x, p, seed=seed, offset=offset)``.
    """


class Dropout1d(_CounterDropout):
    """Channel dropout of (N, C, L) input (``torch.nn.Dropout1d``); (C, L) is one sample.

    Parameters
    ----------
    p, mode, seed, backend, inplace
        As in ``Dropout``. Call k uses words ``offset .. offset + N * C``.

    Returns
    -------
    Dropout1d
    """

    _KIND, _NDIM = "channel", 3


class Dropout2d(_CounterDropout):
    """Channel dropout of (N, C, H, W) input (``torch.nn.Dropout2d``), channels-last included.

    Parameters
    ----------
    p, mode, seed, backend, inplace
        As in ``Dropout``. Call k uses words ``offset .. offset + N * C``, channel (n, c) word
        ``offset + n * C + c``, in either memory format.

    Returns
    -------
    Dropout2d

    Notes
    -----
    3-D input is read as torch reads it: batched ``(N, C, L)``, one draw per (n, c) (1-D
    channel dropout, as ``Dropout1d``), not as an unbatched ``(C, H, W)`` sample; torch warns
    about it (its meaning may change in a future torch) and so does this module, with torch's
    message. Use ``Dropout1d`` for (N, C, L) input, or add the batch axis to a (C, H, W) one.
    """

    _KIND, _NDIM, _UNBATCHED = "channel", 4, False


class Dropout3d(_CounterDropout):
    """Channel dropout of (N, C, D, H, W) input (``torch.nn.Dropout3d``).

    Parameters
    ----------
    p, mode, seed, backend, inplace
        As in ``Dropout2d``.

    Returns
    -------
    Dropout3d
    """

    _KIND, _NDIM = "channel", 5


class DropPath(_CounterDropout):
    """Drop path / stochastic depth: each sample of the batch kept or zeroed as a whole.

    Parameters
    ----------
    p, mode, seed, backend
        As in ``Dropout``. Call k uses words ``offset .. offset + N``.

    Returns
    -------
    DropPath
        Typically applied to a residual branch: ``x + drop_path(block(x))``.
    """

    _KIND = "path"


class _FastregBatchNorm:
    """The fastreg forward shared by the batch-norm modules (mixed into torch's classes)."""

    _RELU = False

    def _fastreg_forward(self, x, residual=None):
        self._check_args(x, residual)
        # torch's rules (nn.modules.batchnorm._BatchNorm.forward): batch statistics in training
        # or without running statistics; the running ones are updated when tracked in training.
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        pass_running = not self.training or self.track_running_stats
        rm = self.running_mean if pass_running else None
        rv = self.running_var if pass_running else None
        if x.numel() == 0:
            return self._empty_forward(x, residual, rm, rv, use_batch)
        nbt = None
        if self.training and self.track_running_stats and rm is not None:
            nbt = self.num_batches_tracked
        momentum = self.momentum
        if momentum is None and nbt is None:
            momentum = 0.0  # nothing is updated: the value does not matter
        return BatchNormFunction.apply(x, self.weight, self.bias, residual, rm, rv, nbt,
                                       use_batch, momentum, self.eps, self._RELU,
                                       getattr(self, "backend", "auto"))

    def _check_args(self, x, residual):
        """The input's and the module's tensors: dtype, rank, device and shape."""
        name = type(self).__name__
        _bridge.check_float(x, f"{name} input")
        self._check_input_dim(x)
        # 16-bit input may come with float32 parameters and statistics (torch.autocast keeps
        # the module's tensors float32); otherwise everything is x's dtype
        half = x.dtype in (torch.float16, torch.bfloat16)
        for t, what in ((self.weight, "weight"), (self.bias, "bias"),
                        (self.running_mean, "running_mean"), (self.running_var, "running_var"),
                        (self.num_batches_tracked, "num_batches_tracked"),
                        (residual, "residual")):
            _bridge.check_same_device(t, f"{name}.{what}", x, "the input")
            if t is None or what == "num_batches_tracked":
                continue
            if not (half and what != "residual" and t.dtype == torch.float32):
                _bridge.check_same_dtype(t, f"{name}.{what}", x, "the input")
        if residual is not None and residual.shape != x.shape:
            raise ValueError(f"{name}: residual has shape {tuple(residual.shape)}, the input "
                             f"has {tuple(x.shape)}")

    def _empty_forward(self, x, residual, rm, rv, use_batch):
        """An empty batch (N == 0, or an empty spatial axis), as torch does it: an empty output
        (in the graph: the parameters get zero gradients), the running statistics untouched,
        ``num_batches_tracked`` incremented in training. torch's own functional batch norm does
        this (there is no work for a kernel); momentum 0 keeps the running statistics as
        they are."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        y = nn.functional.batch_norm(x, rm, rv, self.weight, self.bias, use_batch, 0.0,
                                     self.eps)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self._RELU else y


_BN_DOC = """{what}

    A drop-in ``torch.nn.{base}``: same constructor and the same parameter and buffer names
    (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so a
    state_dict loads either way; ``forward`` runs ``fastreg.batch_norm`` (statistics in float64,
    running statistics and ``num_batches_tracked`` updated in place as torch does).
    {layout}

    Parameters
    ----------
    num_features : int
        C, the channel count.
    eps, momentum, affine, track_running_stats, device, dtype, bias
        As in torch (``momentum=None``: cumulative average; ``bias=False``: an affine weight
        without a bias).
    backend : {{"auto", "numpy", "cpu", "c", "cuda"}}
        Keyword only; "auto" picks "cuda" for CUDA tensors and the fastest host backend that
        implements batch norm otherwise.

    Returns
    -------
    {name}
    """


class BatchNorm1d(_FastregBatchNorm, nn.BatchNorm1d):
    __doc__ = _BN_DOC.format(what="Batch norm of (N, C) or (N, C, L) input.", base="BatchNorm1d",
                             layout="", name="BatchNorm1d")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def forward(self, x):
        """Normalize x (see the class docstring).

        Parameters
        ----------
        x : torch.Tensor (N, C) or (N, C, L), float32 or float64, the module's dtype and device

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x)


class BatchNorm2d(_FastregBatchNorm, nn.BatchNorm2d):
    __doc__ = _BN_DOC.format(
        what="Batch norm of (N, C, H, W) input.", base="BatchNorm2d",
        layout="Channels-last input is normalized in its own layout (no layout copy) and the "
               "output is channels-last too.", name="BatchNorm2d")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def forward(self, x):
        """Normalize x (see the class docstring).

        Parameters
        ----------
        x : torch.Tensor (N, C, H, W), float32 or float64, the module's dtype and device

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x)


class BatchNorm3d(_FastregBatchNorm, nn.BatchNorm3d):
    __doc__ = _BN_DOC.format(
        what="Batch norm of (N, C, D, H, W) input.", base="BatchNorm3d",
        layout="Channels-last-3d input is normalized in its own layout (no layout copy) and the "
               "output is channels-last-3d too.", name="BatchNorm3d")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def forward(self, x):
        """Normalize x (see the class docstring).

        Parameters
        ----------
        x : torch.Tensor (N, C, D, H, W), float32 or float64, the module's dtype and device

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x)


class BatchNormReLU2d(_FastregBatchNorm, _NormBase):
    __doc__ = _BN_DOC.format(
        what="Batch norm fused with a ReLU, ``relu(bn(x) [+ residual])``, in one pass.",
        base="BatchNorm2d",
        layout="``forward(x, residual=None)`` adds the residual before the ReLU (the fused "
               "BN + add + ReLU of ResNet blocks). Backward recomputes the ReLU mask from the "
               "output.\n\n    Not an ``nn.BatchNorm2d`` instance (it is one followed by a ReLU): "
               "tools that replace batch-norm layers found by ``isinstance`` (torch's "
               "``nn.SyncBatchNorm.convert_sync_batchnorm``, ``torch.utils.mkldnn``, timm's "
               "``freeze_batch_norm_2d``) would silently drop the ReLU, so they leave it alone; "
               "``frt.SyncBatchNorm.convert_sync_batchnorm`` synchronizes it with the ReLU kept. "
               "(``torch.optim.swa_utils.update_bn`` skips it too: reset its running statistics "
               "yourself.)", name="BatchNormReLU2d")

    _RELU = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.backend = backend

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")

    def forward(self, x, residual=None):
        """``relu(bn(x) + residual)``.

        Parameters
        ----------
        x : torch.Tensor (N, C, H, W)
        residual : torch.Tensor like x, optional

        Returns
        -------
        torch.Tensor
        """
        return self._fastreg_forward(x, residual)
