"""What the benchmarks time: each op as one ready-to-call closure, the bytes it must move, and its
PyTorch peer (two for the optimizer steps: torch's foreach and fused implementations), and the
small ops (``SMALL_OPS``: per-call cost on small arrays). Shared by the ``python -m fastreg.bench``
table and the pytest-benchmark suites in ``bench/``, so both time the same calls and count the
same bytes.

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
_STATE_STREAMS = {"sgd_step": 2, "adamw_step": 4}   # of those, the optimizer state's


def nbytes(op, n, dtype=np.float32):
    """The bytes ``op`` must move for n elements: the figure GB/s is computed from.

    dropout and dropout_backward read x and write out (``2 * itemsize * n``); the packed mask
    writes one bit per element (``ceil(n / 8)``); random_bits writes ``4 * n``; uniform writes
    ``itemsize * n``. Random numbers are computed, not loaded, so they move no bytes.

    The penalty and optimizer ops stream their arrays once: l1_grad reads w and writes out
    (``2 * itemsize * n``); l2_grad_accumulate reads w and reads and writes g (``3``); prox_l1
    reads and writes w in place (``2``); l1_penalty reads w (``1``); sgd_step reads p, g and the
    momentum buffer and writes p and the buffer (``5``); adamw_step reads p, g, m and v and writes
    p, m and v (``7 * itemsize * n``). A 16-bit parameter keeps its optimizer state in float32
    (fastreg's rule): the state's streams count 4 bytes each there (sgd_step ``3 * 2 + 2 * 4``,
    adamw_step ``3 * 2 + 4 * 4`` bytes per element).
    """
    itemsize = np.dtype(dtype).itemsize
    if op in _STATE_STREAMS and itemsize == 2:
        state = _STATE_STREAMS[op]
        return ((STREAMS[op] - state) * itemsize + state * 4) * n
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


# --- batch norm -----------------------------------------------------------------------------------
# Batch norm is timed on fixed layer shapes, not on n elements: the shape decides the kernels'
# regime (NCHW: per channel rows, fused statistics and normalization while a channel is in cache;
# channels-last and (N, C): per-thread partial sums over row chunks).

#: layout -> (shape, channel axis): a ResNet-50 stage-1 activation in NCHW and in channels-last,
#: and a wide fully connected layer
BN_LAYOUTS = {"nchw": ((32, 64, 56, 56), 1), "nhwc": ((32, 56, 56, 64), -1),
              "nc": ((8192, 1024), 1)}
#: the same layouts, small: quick runs (the CI smoke test) and the NumPy reference
BN_QUICK_LAYOUTS = {"nchw": ((8, 16, 28, 28), 1), "nhwc": ((8, 28, 28, 16), -1),
                    "nc": ((1024, 256), 1)}

#: batch-norm op -> (label, the backend kernel it needs)
BN_OPS = {
    "bn_train": ("bn train fwd", "bn_forward_train"),
    "bn_train_backward": ("bn train fwd+bwd", "bn_backward"),
    "bn_infer": ("bn infer fwd", "bn_apply"),
    "bn_relu": ("bn+relu fused", "bn_forward_train"),
    "bn_then_relu": ("bn, then relu pass", "bn_apply"),
}

#: arrays of the input's size each batch-norm op must read or write once (see ``bn_nbytes``)
BN_STREAMS = {"bn_train": 2, "bn_train_backward": 5, "bn_infer": 2, "bn_relu": 2,
              "bn_then_relu": 2}

BN_TORCH_PEERS = {
    "bn_train": "F.batch_norm(x, rm, rv, w, b, training=True)",
    "bn_train_backward": "F.batch_norm(x, rm, rv, w, b, training=True).backward(gy) (autograd; "
                         "x, w, b require grad; their .grad set to None before each call)",
    "bn_infer": "F.batch_norm(x, rm, rv, w, b, training=False)",
    "bn_relu": "F.relu(F.batch_norm(x, rm, rv, w, b, training=True), inplace=True)",
    "bn_then_relu": "F.relu(F.batch_norm(x, rm, rv, w, b, training=True), inplace=True)",
}


def bn_shape(layout, quick=False):
    """(shape, channel axis) of a layout of ``BN_LAYOUTS`` (``BN_QUICK_LAYOUTS`` when quick)."""
    table = BN_QUICK_LAYOUTS if quick else BN_LAYOUTS
    if layout not in table:
        raise ValueError(f"unknown layout {layout!r}; expected one of {tuple(table)}")
    return table[layout]


def bn_nbytes(op, shape, dtype=np.float32):
    """The bytes batch-norm ``op`` must move on an input of ``shape``: the figure GB/s is
    computed from (S = itemsize * elements, one array).

    Training forward, with or without the fused ReLU, and inference read x and write y (2 S):
    the statistics need a pass over x too, but a backend that keeps each channel in cache
    between the two (the fused NCHW kernels) reads it from memory once. ``bn_then_relu`` does the
    same work as ``bn_relu`` (2 S) in two passes, the forward and then an in-place ReLU over y.
    Forward + backward adds the backward's read of gy and x and write of gx (5 S in all). The
    per-channel arrays (C values) are not counted.
    """
    if op not in BN_OPS:
        raise ValueError(f"unknown batch-norm op {op!r}; expected one of {tuple(BN_OPS)}")
    return BN_STREAMS[op] * np.dtype(dtype).itemsize * int(np.prod(shape))


def bn_unavailable(op, backend):
    """Why batch-norm ``op`` cannot run on ``backend`` (a string), or None (see ``unavailable``)."""
    if op not in BN_OPS:
        raise ValueError(f"unknown batch-norm op {op!r}; expected one of {tuple(BN_OPS)}")
    for kernel in {"bn_forward_train", "bn_running_update", BN_OPS[op][1]}:
        try:
            _registry.get(kernel, backend)
        except fastreg.BackendUnavailableError as exc:
            return str(exc)
    return None


def bn_arrays(shape, axis, dtype=np.float32):
    """(x, gy, weight, bias, running_mean, running_var) on the host, fixed seed: x normal with
    mean 0.5 and std 2, the gradient standard normal, the parameters near 1 and 0."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    C = shape[axis]
    x = (rng.standard_normal(shape, dtype=np.float64) * 2 + 0.5).astype(dtype)
    gy = rng.standard_normal(shape, dtype=np.float64).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = (rng.standard_normal(C) * 0.1).astype(dtype)
    return x, gy, w, b, np.zeros(C, dtype), np.ones(C, dtype)


def bn_fastreg_call(op, backend, layout, dtype=np.float32, *, quick=False):
    """One fastreg call of batch-norm ``op`` on ``backend`` in ``layout`` (see ``bn_shape``),
    writing into outputs allocated here, once (``out=``).

    Returns a callable with no arguments (it returns y, or grad_x for ``bn_train_backward``).
    The training ops update their own running statistics on every call. ``bn_then_relu`` runs
    the training forward into y and then the backend's own in-place ReLU pass over y (its
    ``bn_apply`` with scale 1 and shift 0: a ReLU at the speed of that backend's element-wise
    kernels). Raises fastreg.BackendUnavailableError when the backend cannot run it.
    """
    why = bn_unavailable(op, backend)
    if why is not None:
        raise fastreg.BackendUnavailableError(why)
    shape, axis = bn_shape(layout, quick)
    mod = _registry.module(backend)
    device = backend == "cuda"
    x, gy, w, b, rm, rv = (mod.to_device(a) if device else a
                           for a in bn_arrays(shape, axis, dtype))
    y = mod.empty(shape, np.dtype(dtype)) if device else np.empty(shape, dtype)
    common = dict(axis=axis, out=y, backend=backend)
    if op in ("bn_infer", "bn_relu", "bn_train"):
        kwargs = dict(common, training=op != "bn_infer",
                      activation="relu" if op == "bn_relu" else None)

        def call():
            return fastreg.batch_norm(x, rm, rv, w, b, **kwargs)[0]
    elif op == "bn_train_backward":
        gx = mod.empty(shape, np.dtype(dtype)) if device else np.empty(shape, dtype)

        def call():
            _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, **common)
            return fastreg.batch_norm_backward(gy, x, saved, w, out=gx, backend=backend)[0]
    else:   # bn_then_relu
        ax = axis % len(shape)
        C = shape[ax]
        dims = (int(np.prod(shape[:ax])), C, int(np.prod(shape[ax + 1:])))
        apply = _registry.get("bn_apply", backend)

        def coeff(value):
            a = np.full(C, value, dtype)
            return mod.to_device(a) if device else a

        zero, one = coeff(0), coeff(1)
        y3 = y.reshape(dims)

        def call():
            fastreg.batch_norm(x, rm, rv, w, b, training=True, **common)
            apply(y3, zero, one, zero, None, True, y3)
            return y
    return _synchronized(call) if device else call


def bn_torch_call(op, layout, dtype=np.float32, *, quick=False, device="cpu"):
    """The PyTorch peer of batch-norm ``op`` (see ``BN_TORCH_PEERS``) on the same data; "nhwc" is
    a channels-last tensor (torch's (N, C, H, W) view of the NHWC array). ``device="cuda"``
    synchronizes inside the call. Raises ImportError without torch."""
    import torch
    import torch.nn.functional as F

    if op not in BN_OPS:
        raise ValueError(f"unknown batch-norm op {op!r}; expected one of {tuple(BN_OPS)}")
    shape, axis = bn_shape(layout, quick)
    x, gy, w, b, rm, rv = (torch.from_numpy(a).to(device) for a in bn_arrays(shape, axis, dtype))
    if axis % len(shape) == len(shape) - 1 and len(shape) > 2:   # channels-last
        order = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
        x, gy = x.permute(order), gy.permute(order)
    if op == "bn_train_backward":
        x.requires_grad_(True)
        w.requires_grad_(True)
        b.requires_grad_(True)

        def call():
            x.grad = w.grad = b.grad = None   # as zero_grad(set_to_none=True): no accumulation
            F.batch_norm(x, rm, rv, w, b, training=True).backward(gy)
            return x.grad
    elif op == "bn_infer":
        def call():
            with torch.no_grad():
                return F.batch_norm(x, rm, rv, w, b, training=False)
    elif op in ("bn_relu", "bn_then_relu"):
        def call():
            with torch.no_grad():
                return F.relu(F.batch_norm(x, rm, rv, w, b, training=True), inplace=True)
    else:
        def call():
            with torch.no_grad():
                return F.batch_norm(x, rm, rv, w, b, training=True)
    if device == "cuda":
        def run():
            result = call()
            torch.cuda.synchronize()
            return result
        return run
    return call


# --- small ops ------------------------------------------------------------------------------------
# Where users call fastreg: small arrays, one call at a time, per-call overhead and thread wake-up
# rather than bandwidth. Timed per call in microseconds (``fastreg bench``'s small-ops section,
# bench/bench_small.py), float32, beside the PyTorch call a user would write instead.

#: small op -> (label, what the fastreg call is)
SMALL_OPS = {
    "small_dropout": ("dropout 64x128", "fastreg.dropout(x, 0.5, seed=s) (a fresh result)"),
    "small_bn_train": ("bn train fwd 64x256",
                       "fastreg.batch_norm(x, rm, rv, w, b, training=True) (fresh y)"),
    "small_bn_infer": ("bn infer fwd 64x256",
                       "fastreg.batch_norm(x, rm, rv, w, b, training=False) (fresh y)"),
    "small_bn_train_backward": ("bn fwd+bwd 64x256",
                                "fastreg.batch_norm(..., training=True), then "
                                "fastreg.batch_norm_backward(gy, x, saved, w)"),
    "small_adamw_step": ("adamw step 1e5",
                         "fastreg.optim.AdamW([p], lr=1e-3, decay_mask=[True]).step([g])"),
    "small_l2_grad": ("l2_grad 1e5", "fastreg.l2_grad(w, lam, out=o)"),
}

#: the PyTorch call beside each small op, on the same data and threads
SMALL_TORCH_PEERS = {
    "small_dropout": "F.dropout(x, 0.5, training=True)",
    "small_bn_train": "F.batch_norm(x, rm, rv, w, b, training=True) under no_grad",
    "small_bn_infer": "F.batch_norm(x, rm, rv, w, b, training=False) under no_grad",
    "small_bn_train_backward": "F.batch_norm(x, rm, rv, w, b, training=True).backward(gy) "
                               "(x, w, b require grad)",
    "small_adamw_step": "torch.optim.AdamW([p], lr=1e-3).step() (torch's CPU default, the "
                        "for-loop implementation)",
    "small_l2_grad": "torch.mul(w, 2 * lam, out=o)",
}

SMALL_DROPOUT_SHAPE = (64, 128)
SMALL_BN_SHAPE = (64, 256)       # (N, C): channel axis 1
SMALL_N = 100_000                # parameters of the optimizer step and the penalty


def _small_check(op):
    if op not in SMALL_OPS:
        raise ValueError(f"unknown small op {op!r}; expected one of {tuple(SMALL_OPS)}")


def small_arrays(op):
    """The float32 host arrays of small op ``op``, fixed seed: ``(x,)`` for dropout, the
    ``bn_arrays`` of (64, 256) for batch norm, ``(w, g)`` (weights in [-1, 1), a small gradient)
    for the optimizer step and the penalty."""
    _small_check(op)
    if op == "small_dropout":
        return (input_array(int(np.prod(SMALL_DROPOUT_SHAPE))).reshape(SMALL_DROPOUT_SHAPE),)
    if op in ("small_bn_train", "small_bn_infer", "small_bn_train_backward"):
        return bn_arrays(SMALL_BN_SHAPE, 1)
    x = input_array(SMALL_N)
    return signed_array(x), grad_array(x) * np.float32(1e-3)


def small_call(op, backend):
    """One fastreg call of small op ``op`` on host ``backend`` ("auto", "numpy", "cpu" or "c":
    the name is passed on as given, so "auto" pays for its resolution as a user's call does).

    Returns a callable with no arguments (it returns the result: y, grad_x, the parameter or the
    gradient). The optimizer step and batch norm's running statistics update their own copies
    on every call. Raises fastreg.BackendUnavailableError where the backend cannot run it.
    """
    _small_check(op)
    if backend != "auto":
        _registry.module(backend)   # raises, with the reason, if it cannot run
    arrays = [a.copy() for a in small_arrays(op)]
    if op == "small_dropout":
        (x,) = arrays
        return partial(fastreg.dropout, x, P, seed=SEED, backend=backend)
    if op in ("small_bn_train", "small_bn_infer"):
        x, _, w, b, rm, rv = arrays
        training = op == "small_bn_train"

        def call():
            return fastreg.batch_norm(x, rm, rv, w, b, training=training, backend=backend)[0]
        return call
    if op == "small_bn_train_backward":
        x, gy, w, b, rm, rv = arrays

        def call():
            _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, backend=backend)
            return fastreg.batch_norm_backward(gy, x, saved, w, backend=backend)[0]
        return call
    w, g = arrays
    if op == "small_adamw_step":
        opt = fastreg.optim.AdamW([w], **ADAMW_ARGS, decay_mask=[True], backend=backend)
        grads = [g]

        def call():
            opt.step(grads)
            return w
        return call
    return partial(fastreg.l2_grad, w, LAM, out=np.empty_like(w), backend=backend)


def small_torch_call(op):
    """The PyTorch peer of small op ``op`` (see ``SMALL_TORCH_PEERS``) on the same data, as a
    callable with no arguments. Raises ImportError without torch."""
    import torch
    import torch.nn.functional as F

    _small_check(op)
    arrays = [torch.from_numpy(a.copy()) for a in small_arrays(op)]
    if op == "small_dropout":
        (x,) = arrays
        return partial(F.dropout, x, P, training=True)
    if op in ("small_bn_train", "small_bn_infer"):
        x, _, w, b, rm, rv = arrays
        training = op == "small_bn_train"

        def call():
            with torch.no_grad():
                return F.batch_norm(x, rm, rv, w, b, training=training)
        return call
    if op == "small_bn_train_backward":
        x, gy, w, b, rm, rv = arrays
        for t in (x, w, b):
            t.requires_grad_(True)

        def call():
            x.grad = w.grad = b.grad = None   # as zero_grad(set_to_none=True)
            F.batch_norm(x, rm, rv, w, b, training=True).backward(gy)
            return x.grad
        return call
    w, g = arrays
    if op == "small_adamw_step":
        w.grad = g
        opt = torch.optim.AdamW([w], **ADAMW_ARGS)

        def call():
            opt.step()
            return w
        return call
    return partial(torch.mul, w, 2 * LAM, out=torch.empty_like(w))
