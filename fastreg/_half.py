"""16-bit floats (float16, bfloat16) in the public wrappers: float32 math, rounded at the end.

A 16-bit op runs the float32 kernel of its backend between two conversion passes of that same
backend (``half_to_float32`` / ``float32_to_half``: fastreg/reference/half.py defines them, cpu,
c and cuda convert bits in fastreg/cpu/half.py, csrc/half.h, fastreg/cuda/half.py). So a
16-bit result is by construction the float32 result on the widened input, rounded to nearest
even: the reference's definition, bit for bit on every backend, and dropout masks are those of
float32 for the same (seed, offset). The cost is two extra passes over the data (the float32
paths are untouched).

Backend "c" also has fused 16-bit kernels for the hottest ops (``fused``: dropout, the penalty
gradients and prox steps, the SGD and Adam / AdamW steps): they read and write each 16-bit array
once, converting in registers (or in L1 blocks) around the float32 kernel's own arithmetic
(csrc/half.h), so they give the same bits in one pass. The
numpy, cpu and cuda backends run the conversion passes.

Kernels see 16-bit arrays as their uint16 bits only: Numba has no bfloat16, NumPy needs
ml_dtypes for it, and device arrays may not declare it.
"""
import numpy as np

from . import _arrays, _registry
from ._dispatch import flat

F32 = np.dtype(np.float32)


def bits(job, a):
    """The uint16 view of a 16-bit array for ``job``'s kernels (host: contiguous ndarray;
    device: a C-contiguous device array)."""
    if job.device and _arrays.is_device(a):
        return job.contig(a).view(np.uint16)
    return job.contig(_arrays.half_bits(a))


def out_bits(job, out):
    """The uint16 view of a caller's 16-bit ``out`` (None stays None)."""
    if out is None:
        return None
    if job.device and _arrays.is_device(out):
        return job.mod.as_device(out).view(np.uint16)
    return _arrays.half_bits(out)


def widen(job, a, kind):
    """A new float32 array (on ``job``'s side) with the values of the 16-bit ``a``."""
    b = bits(job, a)
    a32 = job.empty(b.shape, F32)
    if b.size:
        job.op("half_to_float32")(flat(b), kind, flat(a32))
    return a32


def narrow(job, a32, kind, target):
    """Round float32 ``a32`` into ``target`` (uint16 bits of kind ``kind``, same size)."""
    if a32.size:
        job.op("float32_to_half")(flat(a32), kind, flat(target))


def store(job, a32, kind, target):
    """Round float32 ``a32`` (as many elements as ``target``) into the caller's 16-bit
    ``target`` in place (through a kernel-side copy when it cannot be written directly)."""
    tb = out_bits(job, target)
    res = job.target(tb, tuple(tb.shape), np.uint16)
    narrow(job, a32, kind, res)
    job.finish(res, tb)


def as_dtype(r, dtype):
    """A result held as uint16 bits, viewed as the 16-bit ``dtype`` (NumPy, Numba, torch)."""
    if type(r).__module__.partition(".")[0] == "torch":
        import torch
        return r.view(torch.float16 if dtype == _arrays.FLOAT16 else torch.bfloat16)
    return r.view(dtype)


def fused(job, name):
    """``job``'s backend's fused 16-bit kernel ``name`` (``dropout_half``, ``penalty_grad_half``,
    ``soft_threshold_half``, ``sgd_step_half``, ``adam_step_half``: see fastreg/c/dropout.py,
    penalty.py and optim.py), or None where the
    backend has none and the op runs between conversion passes."""
    return getattr(job.mod, name, None)


def fused_host(backend, name):
    """``fused`` for a resolved host backend name (the wrappers' short paths, which build no
    job)."""
    mod = _registry._loaded.get(backend)
    return getattr(mod if mod is not None else _registry.module(backend), name, None)


def elementwise_fused(job, x, out, dtype, fn):
    """A 16-bit op ``x -> result`` run by a fused kernel: ``fn(xb, res)`` reads the uint16 bits
    ``xb`` (1-D, non-empty) and writes the result's bits into ``res`` (1-D; the same memory as
    ``xb`` when working in place); ``out`` as in ``elementwise``."""
    xb = bits(job, x)
    ob = out_bits(job, out)
    res = job.target(ob, xb.shape, np.uint16)
    if xb.size:
        fn(flat(xb), flat(res))
    r = job.finish(res, ob)
    return out if out is not None else as_dtype(r, dtype)


def elementwise(job, x, out, dtype, fn):
    """A 16-bit op ``x -> result`` (result shaped and typed like x): ``fn(x32)`` computes the
    float32 result in place on the widened ``x32``; it is rounded into ``out`` (the caller's
    16-bit array, or None for a new one). Returns what the wrapper returns."""
    kind = _arrays.half_kind(dtype)
    x32 = widen(job, x, kind)
    if x32.size:
        fn(x32)
    ob = out_bits(job, out)
    res = job.target(ob, x32.shape, np.uint16)
    narrow(job, x32, kind, res)
    r = job.finish(res, ob)
    return out if out is not None else as_dtype(r, dtype)
