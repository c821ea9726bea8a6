"""Colour augmentation kernels of backend "c" (csrc/augment_color.c).

Same names, signatures and results (bit for bit) as fastreg.reference.augment_color: images are
uint8 (N, H, W, C) views with any strides (an NCHW batch comes as its NHWC view; they are passed
to C with their element strides, no copy); ``out`` may be ``x`` for ``aug_color``.
"""
import numpy as np

from . import _check, _plan, ffi, lib

__all__ = ["aug_color", "aug_blur", "aug_normalize"]

# The "augment" grain counts bytes of image (fastreg._threads.GRAIN); a colour op costs a table
# lookup to a few float32 operations per byte, a blur 2 K taps per byte
_COLOR_WEIGHT = 4
_BLUR_WEIGHT = 8


def _ptr(a, writable=False):
    """(C pointer to a's first element, its element strides as int64_t[4]) for a uint8 or
    float32 view; a view with a negative stride or unaligned goes through a copy."""
    if any(s < 0 for s in a.strides) or not a.flags.aligned:
        a = np.ascontiguousarray(a)
    strides = np.array([s // a.itemsize for s in a.strides], np.int64)
    # the memory from a's first element to its last, as one flat run for from_buffer
    span = 1 + sum((d - 1) * s for d, s in zip(a.shape, strides.tolist()))
    flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))
    ctype = "uint8_t[]" if a.dtype == np.uint8 else "float[]"
    return (ffi.from_buffer(ctype, flat, require_writable=writable),
            ffi.from_buffer("int64_t[]", strides))


def _target(out):
    """(array the kernel writes, finish()): out itself, or an aligned copy of it with
    non-negative strides that finish() copies back."""
    if all(s >= 0 for s in out.strides) and out.flags.aligned:
        return out, lambda: None
    tmp = np.array(out)

    def finish():
        out[...] = tmp
    return tmp, finish


def _dims(a):
    return ffi.from_buffer("int64_t[]", np.array(a.shape, np.int64))


def aug_color(x, codes, params, out):
    """out[n] = op codes[n] of x[n] with parameter params[n] (-1: out[n] not written)."""
    if x.size == 0:
        return
    codes = np.ascontiguousarray(codes, np.int64)
    params = np.ascontiguousarray(params, np.float64)
    target, finish = _target(out)
    op, os_ = _ptr(target, writable=True)
    xp, xs = _ptr(x)    # out may be x: the kernel reads each source row before writing it
    _plan(_COLOR_WEIGHT * x.size, "augment")
    _check(lib.fr_aug_color_u8(xp, xs, ffi.from_buffer("int64_t[]", codes),
                               ffi.from_buffer("double[]", params), op, os_, _dims(x)),
           "fr_aug_color_u8")
    finish()


def aug_blur(x, weights, out):
    """Separable Gaussian blur, weights float32 (N, K); out is not x."""
    if x.size == 0:
        return
    k = weights.shape[1]
    w = np.ascontiguousarray(weights, np.float32)
    target, finish = _target(out)
    xp, xs = _ptr(x)
    op, os_ = _ptr(target, writable=True)
    _plan(_BLUR_WEIGHT * x.size, "augment")
    _check(lib.fr_aug_blur_u8(xp, xs, ffi.from_buffer("float[]", w), k, op, os_, _dims(x)),
           "fr_aug_blur_u8")
    finish()


def aug_normalize(x, lut, out):
    """out[..., c] = lut[c, x[..., c]] (float32 out)."""
    if x.size == 0:
        return
    lp = ffi.from_buffer("float[]", np.ascontiguousarray(lut, np.float32))
    target, finish = _target(out)
    xp, xs = _ptr(x)
    op, os_ = _ptr(target, writable=True)
    _plan(x.size, "augment")
    _check(lib.fr_aug_normalize_u8(xp, xs, lp, op, os_, _dims(x)), "fr_aug_normalize_u8")
    finish()
