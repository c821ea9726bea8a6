"""Run one backend op on validated arrays: the glue between a public wrapper and a kernel.

``Job`` makes inputs kernel-ready (host: contiguous, copying non-contiguous input; device: a
zero-copy view, non-contiguous device arrays refused), picks where the kernel writes, and hands
the result back where the caller's data lives: NumPy for host input, a device array for device
input, or ``out`` itself when one was given.
"""
import numpy as np

from . import _arrays, _registry


class Job:
    def __init__(self, backend, host_input):
        self.backend = backend
        self.device = backend == "cuda"
        self.host_input = host_input      # False only when the caller's arrays live on the device
        self.mod = _registry.module(backend)

    def op(self, name):
        return _registry.get(name, self.backend)

    def contig(self, a):
        """A C-contiguous array the backend's kernels accept."""
        if not self.device:
            return np.ascontiguousarray(a)
        if _arrays.is_device(a):
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
            return result
        if result is not out and not (self.device and not self.host_input):
            out[...] = result
        return out


def flat(a):
    """A 1-D view of a C-contiguous host or device array."""
    return a.reshape(-1) if a.ndim != 1 else a
