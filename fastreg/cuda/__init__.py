"""The Numba CUDA backend ("cuda"): the same ops as fastreg.reference, on device arrays.

Importing this package needs neither a GPU nor a driver and compiles nothing: kernels are lazily
compiled ``@cuda.jit(cache=True)`` functions, built on first launch. ``unavailable_reason()`` says
why the backend cannot run here (None when it can, including under NUMBA_ENABLE_CUDASIM=1).

Ops (see fastreg._registry for the contract): ``philox4x32``, ``random_bits``, ``uniform``,
``dropout``, ``dropout_mask``, ``dropout_mask_packed``, ``group_dropout``. Arguments may be Numba
device arrays, any object with ``__cuda_array_interface__``, or NumPy arrays (copied to the device
and the result copied back).

For your own kernels: ``philox4x32_device``, ``stream_block_device`` and ``stream_word_device``
(see fastreg.cuda.philox) give the same words, hence the same masks, as fastreg's ops.
"""
import importlib.util

_IMPORT_ERROR = None
_INSTALL = 'pip install "fastreg-kernels[cuda]" (NVIDIA\'s numba-cuda)'

try:
    from numba import cuda as _cuda
    from .philox import (philox4x32, random_bits, uniform, philox4x32_device,
                         stream_block_device, stream_word_device, split_seed,
                         as_device, empty, to_device, copy_to_host)
    from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout
    from .penalty import penalty_sums, penalty_grad, soft_threshold, group_lasso, all_finite
    from .optim import sgd_step, adam_step
    from .augment import aug_affine, aug_erase, aug_flip, aug_mix, aug_noise, aug_paste
    from .augment_color import aug_blur, aug_color, aug_normalize
    from .batchnorm import (bn_stats, bn_apply, bn_forward_train, bn_backward_reduce,
                            bn_backward_apply, bn_backward, bn_forward_coeffs, bn_running_update,
                            bn_backward_coeffs)
    from .dropblock import drop_block_apply, drop_block_mask
    from .ema import ema_update
    from .clip import norm_sum, row_norm_sums, scale, scale_rows
    from .loss import ce_hard, ce_soft
    from .half import float32_to_half, half_to_float32
except Exception as exc:  # numba-cuda missing or broken: report it, do not fail the import
    _cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["unavailable_reason", "philox4x32", "random_bits", "uniform", "dropout",
           "dropout_mask", "dropout_mask_packed", "group_dropout", "philox4x32_device",
           "stream_block_device", "stream_word_device", "split_seed", "as_device", "empty",
           "to_device", "copy_to_host"]
__all__ += ["penalty_sums", "penalty_grad", "soft_threshold", "group_lasso", "all_finite",
            "sgd_step", "adam_step"]
__all__ += ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
            "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs"]
__all__ += ["ce_hard", "ce_soft"]
__all__ += ["drop_block_mask", "drop_block_apply"]

__all__ += ["ema_update", "norm_sum", "scale", "row_norm_sums", "scale_rows"]


def unavailable_reason():
    """Why the CUDA backend cannot run here.

    Returns
    -------
    str or None
        None when ``numba.cuda`` imports and finds a GPU (or runs under the simulator,
        NUMBA_ENABLE_CUDASIM=1); otherwise a short reason.
    """
    if _cuda is None:
        if importlib.util.find_spec("numba_cuda") is None:
            # numba's own numba.cuda (deprecated) imports, but lacks what the kernels use
            return f"numba-cuda is not installed: {_INSTALL}"
        return f"numba-cuda does not import ({_IMPORT_ERROR}); reinstall it: {_INSTALL}"
    try:
        if _cuda.is_available():
            return None
    except Exception as exc:
        return f"no CUDA driver/GPU found ({type(exc).__name__}: {exc})"
    return "no CUDA driver/GPU found (numba.cuda.is_available() is False)"
