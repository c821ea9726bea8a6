"""fastreg: fast regularization kernels for deep learning.

Backends: "numpy" (reference), "cpu" (Numba), "c" (cffi + OpenMP), "cuda" (Numba CUDA); see
``available_backends()``. Importing fastreg loads none of them: each is imported on first use.
"""
from . import optim, random
from ._registry import BackendUnavailableError, available_backends
from ._threads import get_num_threads, set_num_threads, threads
from .batchnorm import (BatchNormSaved, batch_norm, batch_norm_backward, batch_norm_stats,
                        fold_batch_norm, merge_stats)
from .dropblock import drop_block, drop_block_backward
from .dropout import (channel_dropout, channel_dropout_backward, drop_path, drop_path_backward,
                      dropout, dropout_backward, dropout_mask)
from .loss import cross_entropy
from .penalty import (elastic_net_grad, elastic_net_penalty, l1_grad, l1_penalty, l2_grad,
                      l2_penalty, prox_elastic_net, prox_group_lasso, prox_l1)
from . import schedules
from .clip import (NonFiniteNormError, adaptive_clip_grad, clip_grad_norm, clip_grads_with_norm,
                   grad_norm)
from .ema import EMA, ema_decay, ema_update

__version__ = "0.1.0"

__all__ = [
    "available_backends", "BackendUnavailableError", "random",
    "get_num_threads", "set_num_threads", "threads",
    "dropout", "dropout_backward", "dropout_mask",
    "channel_dropout", "channel_dropout_backward", "drop_path", "drop_path_backward",
    "drop_block", "drop_block_backward",
    "l1_penalty", "l2_penalty", "elastic_net_penalty", "l1_grad", "l2_grad", "elastic_net_grad",
    "prox_l1", "prox_elastic_net", "prox_group_lasso", "optim",
    "batch_norm", "batch_norm_backward", "batch_norm_stats", "merge_stats", "fold_batch_norm",
    "BatchNormSaved",
    "cross_entropy",
    "ema_update", "ema_decay", "EMA", "grad_norm", "clip_grad_norm", "clip_grads_with_norm",
    "adaptive_clip_grad", "NonFiniteNormError", "schedules",
]
