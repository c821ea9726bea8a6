"""Run one backend op on validated arrays: the glue between a public wrapper and a kernel.

``Job`` makes inputs kernel-ready (host: contiguous, copying non-contiguous input; device: a
zero-copy view, non-contiguous device arrays refused), picks where the kernel writes, and hands
the result back where the caller's data lives: NumPy for host input, a device array for device
input, or ``out`` itself when one was given. A result for a foreign CUDA array (CuPy, torch)
comes back as that type (``like_caller``), zero-copy, on the same device.
"""
import numpy as np

from . import _arrays, _registry


class Job:
    def __init__(self, backend, host_input):
        self.backend = backend
        self.device = backend == "cuda"
        self.host_input = host_input      # False only when the caller's arrays live on the device
        self.mod = _registry.module(backend)
        self.like = None                  # the caller's first device input (see like_caller)

    def op(self, name):
        return _registry.get(name, self.backend)

    def contig(self, a):
        """A C-contiguous array the backend's kernels accept."""
        if not self.device:
            return np.ascontiguousarray(a)
        if _arrays.is_device(a):
            self.like = a if self.like is None else self.like
            if not _arrays.DeviceArrayInfo(a).c_contiguous:
                raise ValueError("non-contiguous CUDA arrays are not supported; pass a "
                                 "C-contiguous array")
            return self.mod.as_device(a)
        return self.mod.to_device(np.ascontiguousarray(a))

    def empty(self, shape, dtype):
        return self.mod.empty(shape, dtype) if self.device else np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        z = np.zeros(shape, dtype)
        return self.mod.to_device(z) if self.device else z

    def target(self, out, shape, dtype):
        """Where the kernel writes: ``out`` itself when the kernel can write it directly, else a
        fresh array."""
        if out is not None:
            if self.device and not self.host_input:
                return self.mod.as_device(out)
            if not self.device and out.flags.c_contiguous:
                return out
        return self.empty(shape, dtype)

    def finish(self, result, out):
        """The value to return: ``out`` (filled) when given, else the result."""
        if self.device and self.host_input:
            result = self.mod.copy_to_host(result)
        if out is None:
            return like_caller(result, self.like) if self.like is not None else result
        if result is not out and not (self.device and not self.host_input):
            out[...] = result
        return out


def like_caller(result, like):
    """A new device result as the caller's array type: ``cupy.ndarray`` for CuPy input,
    ``torch.Tensor`` (on the input's device) for torch input, the Numba device array otherwise.

    Zero-copy: both wrap the result's memory through ``__cuda_array_interface__`` and keep it
    alive. cupy / torch are imported only when the input already is one of theirs (its type's
    module says so), so fastreg never imports them otherwise. Stream semantics: fastreg's kernels
    run on the default stream; Numba synchronizes the stream an input array declares (CUDA array
    interface v3) before using it, and the result is ready in default-stream order.
    """
    package = type(like).__module__.partition(".")[0]
    if package == "cupy":
        import cupy
        return cupy.asarray(result)
    if package == "torch":
        import torch
        return torch.as_tensor(result, device=like.device)
    return result


def flat(a):
    """A 1-D view of a C-contiguous host or device array."""
    return a.reshape(-1) if a.ndim != 1 else a
