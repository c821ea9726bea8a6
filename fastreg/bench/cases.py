"""What the benchmarks time: each op as one ready-to-call closure, the bytes it must move, and its
PyTorch peer. Shared by the ``python -m fastreg.bench`` table and the pytest-benchmark suites in
``bench/``, so both time the same calls and count the same bytes.

Every closure does exactly one call and, on the CUDA backend, synchronizes before returning (data
stays on the device; no host-device copies are timed). Building a closure allocates its inputs
and outputs but runs nothing: call it once to warm up (JIT, first touch of the pages) before timing.
"""
from functools import partial

import numpy as np

import fastreg
from fastreg import _registry
from fastreg.dropout import _threshold

P = 0.5
SEED = 0x5EED

#: op name -> (label, the backend kernel it runs; see fastreg._registry for the contract)
OPS = {
    "dropout": ("dropout p=0.5", "dropout"),
    "dropout_backward": ("dropout_backward", "dropout"),
    "dropout_mask_packed": ("dropout_mask packed", "dropout_mask_packed"),
    "random_bits": ("random_bits", "random_bits"),
    "uniform": ("uniform", "uniform"),
}

#: what each op's PyTorch peer is, for legends
TORCH_PEERS = {
    "dropout": "F.dropout(x, 0.5, training=True)",
    "dropout_backward": "aten.native_dropout_backward(g, mask, 2.0) (mask stored, not regenerated)",
    "dropout_mask_packed": "torch.empty(n, dtype=bool).bernoulli_(0.5) (one byte per element)",
    "random_bits": "torch.empty(n, dtype=int32).random_() (31 random bits)",
    "uniform": "torch.rand(n, dtype=dtype)",
}

#: ops without an ``out=`` argument: their preallocated variant calls the backend kernel into a
#: preallocated array (what the public function does, minus the allocation and argument checks)
KERNEL_ONLY_OUT = ("dropout_mask_packed", "random_bits", "uniform")


def nbytes(op, n, dtype=np.float32):
    """The bytes ``op`` must move for n elements: the figure GB/s is computed from.

    dropout and dropout_backward read x and write out (``2 * itemsize * n``); the packed mask
    writes one bit per element (``ceil(n / 8)``); random_bits writes ``4 * n``; uniform writes
    ``itemsize * n``. Random numbers are computed, not loaded, so they move no bytes.
    """
    itemsize = np.dtype(dtype).itemsize
    if op in ("dropout", "dropout_backward"):
        return 2 * itemsize * n
    if op == "dropout_mask_packed":
        return (n + 7) // 8
    if op == "random_bits":
        return 4 * n
    if op == "uniform":
        return itemsize * n
    raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")


def size_id(n):
    """``2^k`` for powers of two, else the number."""
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def group(op, n, dtype=None):
    """The pytest-benchmark group of op at n elements (and dtype): backends and torch side by
    side."""
    return f"{op} {np.dtype(dtype).name + ' ' if dtype is not None else ''}n={size_id(n)}"


def unavailable(op, backend):
    """Why ``op`` cannot run on ``backend`` here (a string), or None when it can."""
    try:
        _registry.get(OPS[op][1], backend)
    except fastreg.BackendUnavailableError as exc:
        return str(exc)
    return None


def input_array(n, dtype=np.float32):
    """The host input every backend and torch read: n uniform values in [0, 1), fixed seed."""
    return np.random.default_rng(0).random(n, dtype=np.dtype(dtype).type)


def _synchronized(call):
    from numba import cuda

    def run():
        result = call()
        cuda.synchronize()
        return result
    return run


def fastreg_call(op, backend, x, *, preallocated):
    """One fastreg call of ``op`` on ``backend`` at x's size (and dtype, where the op has one).

    Parameters
    ----------
    op : str
        A key of ``OPS``.
    backend : str
        "numpy", "cpu", "c" or "cuda" (x is copied to the device once, here).
    x : ndarray
        Host input (dropout ops) or size-and-dtype template (the others).
    preallocated : bool
        True: write into an output allocated here, once (``out=``, the hot-loop way; for
        ``KERNEL_ONLY_OUT`` ops, the backend kernel itself). False: a fresh result every call.

    Returns
    -------
    callable
        No arguments; returns the call's result.

    Raises
    ------
    fastreg.BackendUnavailableError
        The backend or its kernel for ``op`` cannot run here.
    """
    kernel = _registry.get(OPS[op][1], backend)   # raises, with the reason, if it cannot run
    mod = _registry.module(backend)
    device = backend == "cuda"
    n, dtype = x.size, x.dtype

    def empty(shape, dt):
        return mod.empty(shape, dt) if device else np.empty(shape, dt)

    if op in ("dropout", "dropout_backward"):
        public = getattr(fastreg, op)
        xin = mod.to_device(x) if device else x
        if preallocated:
            out = empty(x.shape, dtype)
            call = partial(public, xin, P, seed=SEED, out=out, backend=backend)
        else:
            call = partial(public, xin, P, seed=SEED, backend=backend)
    elif op in KERNEL_ONLY_OUT:
        if preallocated:
            if op == "dropout_mask_packed":
                out = empty(((n + 7) // 8,), np.uint8)
                args = (SEED, 0, _threshold(P), n, out)
            else:
                out = empty((n,), np.uint32 if op == "random_bits" else dtype)
                args = (SEED, 0, out)

            def call():
                kernel(*args)
                return out
        elif op == "dropout_mask_packed":
            call = partial(fastreg.dropout_mask, n, P, seed=SEED, packed=True, backend=backend)
        elif op == "random_bits":
            call = partial(fastreg.random.random_bits, n, seed=SEED, backend=backend)
        else:
            call = partial(fastreg.random.uniform, n, seed=SEED, dtype=dtype, backend=backend)
    else:
        raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")
    return _synchronized(call) if device else call


def torch_available():
    """True when PyTorch imports."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def torch_call(op, x, *, device="cpu"):
    """The PyTorch peer of ``op`` (see ``TORCH_PEERS``) on the same data, as a callable.

    ``device="cuda"`` puts the data on torch's GPU and synchronizes inside the call. Raises
    ImportError without torch.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x).to(device)
    n = x.size
    if op == "dropout":
        call = partial(F.dropout, xt, P, training=True)
    elif op == "dropout_backward":
        mask = torch.empty(n, dtype=torch.bool, device=device).bernoulli_(1.0 - P)
        call = partial(torch.ops.aten.native_dropout_backward, xt, mask, 1.0 / (1.0 - P))
    elif op == "dropout_mask_packed":
        mask = torch.empty(n, dtype=torch.bool, device=device)
        call = partial(mask.bernoulli_, 1.0 - P)
    elif op == "random_bits":
        words = torch.empty(n, dtype=torch.int32, device=device)
        call = words.random_
    elif op == "uniform":
        call = partial(torch.rand, n, dtype=xt.dtype, device=device)
    else:
        raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")
    if device == "cuda":
        def run():
            result = call()
            torch.cuda.synchronize()
            return result
        return run
    return call
