"""Philox4x32-10 stream kernels of backend "c" (csrc/dropout.c, csrc/philox.h).

Same names, signatures and results as fastreg.reference.philox; the arrays are already validated
and contiguous (see fastreg._registry). Arrays are passed to C without copying, except one that
is not aligned for its dtype (possible with views of raw buffers), which goes through an aligned
copy.
"""
import numpy as np

from . import _check, _plan, ffi, lib


def _in(ctype, a):
    """A read-only C pointer to contiguous ``a``."""
    if not a.flags.aligned:
        a = a.copy()
    return ffi.from_buffer(ctype + "[]", a)


def _call_out(out, run):
    """run(target) writes its result into target: out itself, or an aligned stand-in."""
    if out.flags.aligned:
        run(out)
    else:
        tmp = np.empty_like(out)
        run(tmp)
        out[...] = tmp


def _out(ctype, a):
    return ffi.from_buffer(ctype + "[]", a, require_writable=True)


def philox4x32(ctr, key, out):
    """out[j] = Philox4x32-10(ctr[j], key[j]); ctr (n, 4), key (n, 2), out (n, 4), all uint32."""
    n = out.shape[0]
    if n == 0:
        return
    c, k = _in("uint32_t", ctr), _in("uint32_t", key)
    _plan(4 * n, "random")
    _call_out(out, lambda o: _check(lib.fr_philox4x32(c, k, _out("uint32_t", o), n),
                                    "fr_philox4x32"))


def random_bits(seed, offset, out):
    """out[i] = word ``offset + i`` of the stream (uint32, 1-D)."""
    n = out.size
    if n == 0:
        return
    _plan(n, "random")
    _call_out(out, lambda o: _check(lib.fr_random_bits(seed, offset, _out("uint32_t", o), n),
                                    "fr_random_bits"))


def uniform(seed, offset, out):
    """Uniform floats in [0, 1), as fastreg.reference.uniform (float32 or float64 out)."""
    n = out.size
    if n == 0:
        return
    if out.dtype == np.float32:
        fn, ctype, name = lib.fr_uniform_f32, "float", "fr_uniform_f32"
    else:
        fn, ctype, name = lib.fr_uniform_f64, "double", "fr_uniform_f64"
    _plan(n * (out.itemsize // 4), "random")  # stream words: 1 or 2 per element
    _call_out(out, lambda o: _check(fn(seed, offset, _out(ctype, o), n), name))
