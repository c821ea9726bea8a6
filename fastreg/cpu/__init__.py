"""Backend "cpu": Numba kernels, run in shares on the calling thread and fastreg's own threads
(fastreg/cpu/_jit.py; fastreg.set_num_threads, capped by NUMBA_NUM_THREADS).

Compiled on first call and cached on disk (cache=True); importing this package compiles nothing.
"""
from .philox import philox4x32, random_bits, uniform
from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout


def unavailable_reason():
    return None
from .penalty import all_finite, group_lasso, penalty_grad, penalty_sums, soft_threshold
from .optim import adam_step, sgd_step
from .augment import aug_affine, aug_erase, aug_flip, aug_mix, aug_noise, aug_paste
from .augment_color import aug_blur, aug_color, aug_normalize
from .batchnorm import (bn_apply, bn_backward, bn_backward_apply, bn_backward_coeffs,
                        bn_backward_reduce, bn_forward_coeffs, bn_forward_infer, bn_forward_train,
                        bn_running_update, bn_stats)
from .ema import address_lists, ema_update, ema_update_at
from .clip import norm_sum, norm_sum_at, row_norm_sums, scale, scale_at, scale_rows
from .dropblock import drop_block_apply, drop_block_mask
from .loss import ce_hard, ce_soft
from .half import float32_to_half, half_to_float32
