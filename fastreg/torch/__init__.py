"""fastreg for PyTorch: autograd Functions, nn.Modules and optimizers backed by fastreg kernels.

A one-line change to an existing model::

    import fastreg.torch as frt
    model = frt.convert(model)             # nn.Dropout*, nn.BatchNorm*d -> fastreg modules
    opt = frt.optim.AdamW(model.parameters(), lr=1e-3)

The modules work on the tensors' own memory: CPU tensors through NumPy views, CUDA tensors
through ``__cuda_array_interface__`` (the CUDA backend); results are written into tensors
allocated by torch, so nothing is copied back. fastreg itself never imports torch: only this
subpackage does, and it needs the optional extra ``pip install "fastreg-kernels[torch]"``.

Contents
--------
Dropout, Dropout1d, Dropout2d, Dropout3d, DropPath
    Counter-based dropout: the module owns a seed and a 64-bit counter (carried in the
    state_dict's metadata, not as keys); the mask is regenerated in backward, never stored.
BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d
    Drop-in ``torch.nn.BatchNorm*d`` (same parameters and buffers), the last fused with a ReLU
    (and an optional residual add).
SyncBatchNorm, SyncBatchNormReLU
    Batch norm synchronized over a ``torch.distributed`` process group (gloo on CPU tensors),
    exact for uneven per-rank batches; ``SyncBatchNorm.convert_sync_batchnorm``.
functions
    The autograd Functions and functional forms (``dropout``, ``channel_dropout``,
    ``drop_path``, ``batch_norm``).
ops
    The same computations as PyTorch custom operators (``torch.ops.fastreg.*``), used while
    ``torch.compile`` or ``torch.export`` traces.
optim
    ``SGD``, ``Adam``, ``AdamW``: ``torch.optim.Optimizer`` subclasses running fastreg's fused
    update kernels.
convert
    Swap the torch modules of an existing model for these.
ModelEma
    timm's ``ModelEmaV3`` on fastreg's fused EMA kernel.
clip_grad_norm_, adaptive_clip_grad_
    ``torch.nn.utils.clip_grad_norm_`` and timm's ``adaptive_clip_grad`` on a model's
    parameters, through fastreg's list kernels for CPU float32/float64 gradients.
"""
try:
    import torch as _torch  # noqa: F401  (absolute import: the real PyTorch, not this package)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastreg.torch needs PyTorch, which is not installed. Install it with "
        "`pip install \"fastreg-kernels[torch]\"` (or `pip install torch==2.13.0`); the rest of "
        "fastreg works without it."
    ) from exc

from . import functions, optim
from .convert import convert
from .dropblock import DropBlock2d
from .functions import batch_norm, channel_dropout, drop_path, dropout
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d, Dropout, Dropout1d,
                      Dropout2d, Dropout3d, DropPath)
from .sync_batchnorm import SyncBatchNorm, SyncBatchNormReLU

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath", "BatchNorm1d",
           "BatchNorm2d", "BatchNormReLU2d", "convert", "optim", "functions", "dropout",
           "channel_dropout", "drop_path", "batch_norm"]
__all__ += ["DropBlock2d", "BatchNorm3d", "SyncBatchNorm", "SyncBatchNormReLU"]
from .clip import adaptive_clip_grad_, clip_grad_norm_  # noqa: E402
from .ema import ModelEma  # noqa: E402

__all__ += ["ModelEma", "clip_grad_norm_", "adaptive_clip_grad_"]
