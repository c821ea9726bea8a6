"""The one place where the trainer picks its array module (NumPy or CuPy).

Every layer, loss and the trainer call ``array_module(x)`` and use the returned module for their
array maths, so the same code runs on NumPy arrays (host) and on CuPy arrays (GPU). CuPy is never
imported unless an array of CuPy's type arrives. The CuPy path is untested here (no GPU, CuPy not
installed): it relies on CuPy mirroring the NumPy calls used (matmul/maximum/multiply with out=,
take, exp, log, argmax) and on fastreg's kernels accepting CuPy arrays through
``__cuda_array_interface__`` (backend "cuda").
"""
import numpy as np


def array_module(x):
    """The array module of ``x``: ``cupy`` for CuPy arrays, else ``numpy``.

    Parameters
    ----------
    x : array
        Any array.

    Returns
    -------
    module
        ``numpy`` or ``cupy``.
    """
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_host(x):
    """``x`` as a NumPy array (a copy from the GPU for CuPy arrays, ``x`` itself otherwise).

    Parameters
    ----------
    x : array

    Returns
    -------
    numpy.ndarray
    """
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def like(x, host):
    """``host`` (a NumPy array) moved to the module of ``x`` (a copy to the GPU for CuPy).

    Parameters
    ----------
    x : array
        Decides the array module.
    host : numpy.ndarray

    Returns
    -------
    array
    """
    return array_module(x).asarray(host)
