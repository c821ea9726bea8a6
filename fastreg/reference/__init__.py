"""The pure-NumPy reference implementations: the test oracle, also served as backend "numpy".

Every function here has the same name and signature in fastreg.cpu, fastreg.c and fastreg.cuda
(see fastreg._registry for the contract).
"""
from .philox import philox4x32, random_bits, uniform
from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout
from .penalty import all_finite, group_lasso, penalty_grad, penalty_sums, soft_threshold
from .optim import adam_step, sgd_step
from .augment import aug_affine, aug_erase, aug_flip, aug_mix, aug_noise, aug_paste
from .augment_color import aug_blur, aug_color, aug_normalize
from .batchnorm import (bn_apply, bn_backward, bn_backward_apply, bn_backward_coeffs,
                        bn_backward_reduce, bn_forward_coeffs, bn_forward_train,
                        bn_running_update, bn_stats)
from .loss import ce_hard, ce_soft
from .dropblock import drop_block_apply, drop_block_mask

__all__ = ["unavailable_reason", "philox4x32", "random_bits", "uniform", "dropout", "dropout_mask",
           "dropout_mask_packed", "group_dropout", "penalty_sums", "penalty_grad",
           "soft_threshold", "group_lasso", "all_finite", "sgd_step", "adam_step",
           "bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs",
           "ce_hard", "ce_soft"]
__all__ += ["drop_block_mask", "drop_block_apply"]


def unavailable_reason():
    """The reference needs only NumPy: always available."""
    return None


from .ema import ema_update  # noqa: E402
from .clip import norm_sum, row_norm_sums, scale, scale_rows  # noqa: E402

__all__ += ["ema_update", "norm_sum", "scale", "row_norm_sums", "scale_rows"]
from .half import float32_to_half, half_to_float32  # noqa: E402
