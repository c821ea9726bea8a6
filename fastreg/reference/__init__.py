"""The pure-NumPy reference implementations: the test oracle, also served as backend "numpy".

Every function here has the same name and signature in fastreg.cpu, fastreg.c and fastreg.cuda
(see fastreg._registry for the contract).
"""
from .philox import philox4x32, random_bits, uniform
from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout
from .penalty import all_finite, group_lasso, penalty_grad, penalty_sums, soft_threshold
from .optim import adam_step, sgd_step

__all__ = ["unavailable_reason", "philox4x32", "random_bits", "uniform", "dropout", "dropout_mask",
           "dropout_mask_packed", "group_dropout", "penalty_sums", "penalty_grad",
           "soft_threshold", "group_lasso", "all_finite", "sgd_step", "adam_step"]


def unavailable_reason():
    """The reference needs only NumPy: always available."""
    return None
