"""Image augmentation kernels of backend "c" (csrc/augment.c).

Same names, signatures and results (bit for bit) as fastreg.reference.augment: the arrays are
already validated and C-contiguous (images (M, H, W, C), flags (M,), mats (M, 2, 3) float64,
rects (M, 4) int64, partner (N,) int64, lam / stds (N,) float32); see the kernel contract in
fastreg/reference/augment.py. ``out`` may be ``x`` for aug_noise and aug_erase.
"""
import numpy as np

from . import _check, _plan, ffi, lib
from .philox import _call_out, _in, _out

__all__ = ["aug_flip", "aug_affine", "aug_noise", "aug_erase", "aug_mix", "aug_paste"]

# The "augment" grain counts bytes of image copied; resampling and noise cost more per byte, so
# their work is weighted (measured with bench/grain.py, see fastreg._threads.GRAIN).
_AFFINE_WEIGHT = 16  # bilinear: four taps and their weights per output byte
_NOISE_WEIGHT = 16   # per value: a Philox word and a Box-Muller transform


def _bytes_in(a):
    """A read-only ``uint8_t *`` over contiguous ``a`` (any dtype)."""
    return ffi.from_buffer("uint8_t[]", a)


def _bytes_out(a):
    return ffi.from_buffer("uint8_t[]", a, require_writable=True)


def _flags(f):
    return np.ascontiguousarray(f).view(np.uint8) if f.dtype.itemsize == 1 else \
        np.ascontiguousarray(f != 0, np.uint8)


def _int64(a, shape=None):
    a = np.ascontiguousarray(a, np.int64)
    return a if shape is None else a.reshape(shape)


def aug_flip(x, hflip, vflip, out):
    """out[m] = x[m] flipped left-right where hflip[m], upside-down where vflip[m]."""
    m, h, w, c = x.shape
    if x.size == 0:
        return
    hf, vf = _in("uint8_t", _flags(hflip)), _in("uint8_t", _flags(vflip))
    xp = _bytes_in(x)
    _plan(x.nbytes, "augment")
    _call_out(out, lambda o: _check(lib.fr_aug_flip(xp, hf, vf, _bytes_out(o), m, h, w,
                                                    c * x.dtype.itemsize), "fr_aug_flip"))


def aug_affine(x, mats, border, fill, nearest, out):
    """Resample every image through its inverse map (see fastreg.reference.augment)."""
    m, h, w, c = x.shape
    ho, wo = out.shape[1:3]
    if out.size == 0:
        return
    mp = _in("double", np.ascontiguousarray(mats, np.float64))
    border = int(border)
    _plan(_AFFINE_WEIGHT * out.nbytes, "augment")
    if nearest:
        fv = np.array([fill], dtype=x.dtype)   # one value of x's dtype
        fp = _bytes_in(fv)
        xp = _bytes_in(x)
        _call_out(out, lambda o: _check(lib.fr_aug_affine_nearest(
            xp, mp, border, fp, _bytes_out(o), m, h, w, c, ho, wo, x.dtype.itemsize),
            "fr_aug_affine_nearest"))
    elif x.dtype == np.uint8:
        xp = _in("uint8_t", x)
        f = int(np.uint8(fill))
        _call_out(out, lambda o: _check(lib.fr_aug_affine_u8(
            xp, mp, border, f, _out("uint8_t", o), m, h, w, c, ho, wo), "fr_aug_affine_u8"))
    elif x.dtype == np.float32:
        xp = _in("float", x)
        f = float(np.float32(fill))
        _call_out(out, lambda o: _check(lib.fr_aug_affine_f32(
            xp, mp, border, f, _out("float", o), m, h, w, c, ho, wo), "fr_aug_affine_f32"))
    else:
        raise TypeError(f"bilinear aug_affine takes uint8 or float32 images, got {x.dtype}")


def aug_noise(x, key, first, stds, out):
    """out[n] = x[n] + stds[n] * normals(key, first + n, L); uint8 clipped, rounded. out may be x."""
    n, length = x.shape
    if x.size == 0:
        return
    key, first = int(key), int(first)
    sp = _in("float", np.ascontiguousarray(stds, np.float32))
    _plan(_NOISE_WEIGHT * x.size, "augment")
    if x.dtype == np.uint8:
        fn, ctype, name = lib.fr_aug_noise_u8, "uint8_t", "fr_aug_noise_u8"
    else:
        fn, ctype, name = lib.fr_aug_noise_f32, "float", "fr_aug_noise_f32"
    if out is x and x.flags.aligned:
        p = _out(ctype, x)
        _check(fn(p, key, first, sp, p, n, length), name)
        return
    xp = _in(ctype, x)
    _call_out(out, lambda o: _check(fn(xp, key, first, sp, _out(ctype, o), n, length), name))


def aug_erase(x, rects, value, out):
    """out = x with each rectangle (y0, x0, h, w) set to value. out may be x."""
    m, h, w, c = x.shape
    if x.size == 0:
        return
    rp = _in("int64_t", _int64(rects, (m, 4)))
    vp = _bytes_in(np.array([value], dtype=x.dtype))
    _plan(x.nbytes, "augment")
    if out is x:
        p = _bytes_out(x)
        _check(lib.fr_aug_erase(p, rp, vp, p, m, h, w, c, x.dtype.itemsize), "fr_aug_erase")
        return
    xp = _bytes_in(x)
    _call_out(out, lambda o: _check(lib.fr_aug_erase(xp, rp, vp, _bytes_out(o), m, h, w, c,
                                                     x.dtype.itemsize), "fr_aug_erase"))


def aug_mix(x, partner, lam, out):
    """out[n] = x[n] lam[n] + x[partner[n]] (1 - lam[n]) in float32 (uint8 clipped, rounded)."""
    n, length = x.shape
    if x.size == 0:
        return
    pp = _in("int64_t", _int64(partner))
    lp = _in("float", np.ascontiguousarray(lam, np.float32))
    _plan(x.nbytes, "augment")
    if x.dtype == np.uint8:
        fn, ctype, name = lib.fr_aug_mix_u8, "uint8_t", "fr_aug_mix_u8"
    else:
        fn, ctype, name = lib.fr_aug_mix_f32, "float", "fr_aug_mix_f32"
    xp = _in(ctype, x)
    _call_out(out, lambda o: _check(fn(xp, pp, lp, _out(ctype, o), n, length), name))


def aug_paste(x, partner, rects, out):
    """out[m] = x[m] with rectangle rects[m] copied from x[partner[m]]."""
    m, h, w, c = x.shape
    if x.size == 0:
        return
    pp = _in("int64_t", _int64(partner))
    rp = _in("int64_t", _int64(rects, (m, 4)))
    xp = _bytes_in(x)
    _plan(x.nbytes, "augment")
    _call_out(out, lambda o: _check(lib.fr_aug_paste(xp, pp, rp, _bytes_out(o), m, h, w,
                                                     c * x.dtype.itemsize), "fr_aug_paste"))
