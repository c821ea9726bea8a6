"""The pure-NumPy reference implementations: the test oracle, also served as backend "numpy".

Every function here has the same name and signature in fastreg.cpu, fastreg.c and fastreg.cuda
(see fastreg._registry for the contract).
"""
from .philox import philox4x32, random_bits, uniform
from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout

__all__ = ["unavailable_reason", "philox4x32", "random_bits", "uniform", "dropout", "dropout_mask",
           "dropout_mask_packed", "group_dropout"]


def unavailable_reason():
    """The reference needs only NumPy: always available."""
    return None
