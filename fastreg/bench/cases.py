"""What the benchmarks time: each op as one ready-to-call closure, the bytes it must move, and its
PyTorch peer (two for the optimizer steps: torch's foreach and fused implementations). Shared by the ``python -m fastreg.bench`` table and the pytest-benchmark suites in
``bench/``, so both time the same calls and count the same bytes.

Every closure does exactly one call and, on the CUDA backend, synchronizes before returning (data
stays on the device; no host-device copies are timed). Building a closure allocates its inputs
and outputs but runs nothing: call it once to warm up (JIT, first touch of the pages) before timing.

The penalty and optimizer ops work on signed data, ``w = 2 * x - 1`` (and a gradient
``g = 0.5 - x[::-1]``), copied per closure: the in-place ones (``prox_l1``, ``l2_grad_accumulate``,
the optimizer steps) update their own copy on every call, never the caller's x. Their strengths
are small (``LAM``, ``THRESHOLD``, lr 0.01 / 1e-3), so values stay finite and mostly nonzero
over thousands of repetitions.
"""
from functools import partial

import numpy as np

import fastreg
from fastreg import _registry
from fastreg.dropout import _threshold

P = 0.5
SEED = 0x5EED
LAM = 1e-4              # penalty strength of l1_grad, l2_grad_accumulate, l1_penalty
THRESHOLD = 1e-6        # prox_l1's threshold (lr * lam): few weights reach zero per call
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
ADAMW_ARGS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

#: op name -> (label, the backend kernel it runs; see fastreg._registry for the contract)
OPS = {
    "dropout": ("dropout p=0.5", "dropout"),
    "dropout_backward": ("dropout_backward", "dropout"),
    "dropout_mask_packed": ("dropout_mask packed", "dropout_mask_packed"),
    "random_bits": ("random_bits", "random_bits"),
    "uniform": ("uniform", "uniform"),
    "l1_grad": ("l1_grad", "penalty_grad"),
    "l2_grad_accumulate": ("l2_grad accumulate", "penalty_grad"),
    "prox_l1": ("prox_l1", "soft_threshold"),
    "l1_penalty": ("l1_penalty", "penalty_sums"),
    "sgd_step": ("sgd step", "sgd_step"),
    "adamw_step": ("adamw step", "adam_step"),
}

#: ops with a second PyTorch peer, its ``fused=True`` implementation (``torch_call(fused=True)``)
FUSED_OPS = ("sgd_step", "adamw_step")

#: how each op places its result, the variants ``fastreg_call`` can build: "out=" writes into a
#: preallocated array (preallocated=True), "fresh" allocates it on every call
#: (preallocated=False), "in place" updates its operands (the op's only form,
#: preallocated=True), "scalar" returns a float (preallocated=True)
ALLOCS = {op: ("out=", "fresh") for op in OPS}
ALLOCS.update(l2_grad_accumulate=("in place",), prox_l1=("in place",), l1_penalty=("scalar",),
              sgd_step=("in place",), adamw_step=("in place",))

#: what each op's PyTorch peer is, for legends
TORCH_PEERS = {
    "dropout": "F.dropout(x, 0.5, training=True)",
    "dropout_backward": "aten.native_dropout_backward(g, mask, 2.0) (mask stored, not regenerated)",
    "dropout_mask_packed": "torch.empty(n, dtype=bool).bernoulli_(0.5) (one byte per element)",
    "random_bits": "torch.empty(n, dtype=int32).random_() (31 random bits)",
    "uniform": "torch.rand(n, dtype=dtype)",
    "l1_grad": "torch.sign(w, out=o).mul_(lam)",
    "l2_grad_accumulate": "g.add_(w, alpha=2 * lam)",
    "prox_l1": "w.copy_(torch.sign(w) * torch.clamp(w.abs() - t, min=0))",
    "l1_penalty": "w.abs().sum() * lam",
    "sgd_step": "torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-4, "
                "foreach=True).step() (torch's CPU default is the for-loop, no faster)",
    "adamw_step": "torch.optim.AdamW([p], lr=1e-3, foreach=True).step() (torch's CPU default "
                  "is the slower for-loop)",
}

#: the second peer of the FUSED_OPS
TORCH_FUSED_PEERS = {
    "sgd_step": "torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-4, "
                "fused=True).step()",
    "adamw_step": "torch.optim.AdamW([p], lr=1e-3, fused=True).step()",
}

#: ops without an ``out=`` argument: their preallocated variant calls the backend kernel into a
#: preallocated array (what the public function does, minus the allocation and argument checks)
KERNEL_ONLY_OUT = ("dropout_mask_packed", "random_bits", "uniform")


#: arrays of n elements each op reads or writes once (a read-modify-write counts twice)
STREAMS = {"l1_grad": 2, "l2_grad_accumulate": 3, "prox_l1": 2, "l1_penalty": 1,
           "sgd_step": 5, "adamw_step": 7}


def nbytes(op, n, dtype=np.float32):
    """The bytes ``op`` must move for n elements: the figure GB/s is computed from.

    dropout and dropout_backward read x and write out (``2 * itemsize * n``); the packed mask
    writes one bit per element (``ceil(n / 8)``); random_bits writes ``4 * n``; uniform writes
    ``itemsize * n``. Random numbers are computed, not loaded, so they move no bytes.

    The penalty and optimizer ops stream their arrays once: l1_grad reads w and writes out
    (``2 * itemsize * n``); l2_grad_accumulate reads w and reads and writes g (``3``); prox_l1
    reads and writes w in place (``2``); l1_penalty reads w (``1``); sgd_step reads p, g and the
    momentum buffer and writes p and the buffer (``5``); adamw_step reads p, g, m and v and writes
    p, m and v (``7 * itemsize * n``).
    """
    itemsize = np.dtype(dtype).itemsize
    if op in STREAMS:
        return STREAMS[op] * itemsize * n
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
    """Why ``op`` cannot run on ``backend`` here (a string), or None when it can: the backend
    does not load, or does not implement the kernel ``op`` runs (``OPS[op][1]``; e.g. a penalty
    or optimizer kernel that has not landed on that backend yet). A kernel may still refuse at
    its first call (BackendUnavailableError): callers warm up inside ``try``."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")
    try:
        _registry.get(OPS[op][1], backend)
    except fastreg.BackendUnavailableError as exc:
        return str(exc)
    return None


def input_array(n, dtype=np.float32):
    """The host input every backend and torch read: n uniform values in [0, 1), fixed seed."""
    return np.random.default_rng(0).random(n, dtype=np.dtype(dtype).type)


def signed_array(x):
    """``2 * x - 1`` in x's dtype, a fresh array: the weights (parameters) of the penalty and
    optimizer ops, in [-1, 1)."""
    return (x * 2 - 1).astype(x.dtype, copy=False)


def grad_array(x):
    """``0.5 - x[::-1]`` in x's dtype, a fresh contiguous array: the gradient that
    l2_grad_accumulate adds into and the optimizer steps read."""
    return (x.dtype.type(0.5) - x[::-1]).astype(x.dtype, copy=False)


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
        Host input (dropout ops), the data the penalty and optimizer ops derive their own
        arrays from (``signed_array``, ``grad_array``; x itself is never modified), or a
        size-and-dtype template (the others).
    preallocated : bool
        True: write into an output allocated here, once (``out=``, the hot-loop way; for
        ``KERNEL_ONLY_OUT`` ops, the backend kernel itself; the in-place and scalar ops of
        ``ALLOCS``). False: a fresh result every call (only ops whose ALLOCS has "fresh").

    Returns
    -------
    callable
        No arguments; returns the call's result (the updated array for the in-place ops: w for
        prox_l1, g for l2_grad_accumulate, the parameter for the optimizer steps).

    Raises
    ------
    fastreg.BackendUnavailableError
        The backend or its kernel for ``op`` cannot run here.
    ValueError
        An unknown op, or preallocated=False for an op without a fresh variant.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")
    if not preallocated and "fresh" not in ALLOCS[op]:
        raise ValueError(f"{op} has no fresh variant ({ALLOCS[op][0]} only): pass "
                         "preallocated=True")
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
    elif op in STREAMS:
        def place(a):
            return mod.to_device(a) if device else a

        w = place(signed_array(x))
        if op == "l1_grad":
            out = {"out": empty(x.shape, dtype)} if preallocated else {}
            call = partial(fastreg.l1_grad, w, LAM, backend=backend, **out)
        elif op == "l2_grad_accumulate":
            call = partial(fastreg.l2_grad, w, LAM, out=place(grad_array(x)), accumulate=True,
                           backend=backend)
        elif op == "prox_l1":
            call = partial(fastreg.prox_l1, w, THRESHOLD, backend=backend)
        elif op == "l1_penalty":
            call = partial(fastreg.l1_penalty, w, LAM, backend=backend)
        else:
            cls, kwargs = ((fastreg.optim.SGD, SGD_ARGS) if op == "sgd_step"
                           else (fastreg.optim.AdamW, ADAMW_ARGS))
            # decay_mask=[True]: decay this 1-D parameter too, as torch does (fastreg's default
            # exempts 1-D parameters)
            opt = cls([w], **kwargs, decay_mask=[True], backend=backend)
            grads = [place(grad_array(x))]

            def call():
                opt.step(grads)
                return w
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


def torch_call(op, x, *, device="cpu", fused=False):
    """The PyTorch peer of ``op`` (see ``TORCH_PEERS``) on the same data, as a callable.

    ``device="cuda"`` puts the data on torch's GPU and synchronizes inside the call. ``fused``
    (``FUSED_OPS`` only): the optimizer with ``fused=True`` instead of ``foreach=True``. The
    in-place peers update their own copies, as ``fastreg_call`` does. Raises ImportError without
    torch, ValueError for fused on another op.
    """
    import torch
    import torch.nn.functional as F

    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {tuple(OPS)}")
    if fused and op not in FUSED_OPS:
        raise ValueError(f"{op} has no fused torch peer; only {FUSED_OPS} do")
    n = x.size
    if op in STREAMS:
        w = torch.from_numpy(signed_array(x)).to(device)
        if op == "l1_grad":
            o = torch.empty_like(w)

            def call():
                return torch.sign(w, out=o).mul_(LAM)
        elif op == "l2_grad_accumulate":
            g = torch.from_numpy(grad_array(x)).to(device)
            call = partial(g.add_, w, alpha=2 * LAM)
        elif op == "prox_l1":
            def call():
                return w.copy_(torch.sign(w) * torch.clamp(w.abs() - THRESHOLD, min=0))
        elif op == "l1_penalty":
            def call():
                return w.abs().sum() * LAM
        else:
            w.grad = torch.from_numpy(grad_array(x)).to(device)
            cls, kwargs = ((torch.optim.SGD, SGD_ARGS) if op == "sgd_step"
                           else (torch.optim.AdamW, ADAMW_ARGS))
            opt = cls([w], **kwargs, **({"fused": True} if fused else {"foreach": True}))

            def call():
                opt.step()
                return w
    else:
        xt = torch.from_numpy(x).to(device)
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
        else:
            call = partial(torch.rand, n, dtype=xt.dtype, device=device)
    if device == "cuda":
        def run():
            result = call()
            torch.cuda.synchronize()
            return result
        return run
    return call
