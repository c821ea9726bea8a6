"""Colour augmentation kernels on the CPU with Numba (definitions and contract in
fastreg/reference/augment_color.py; bit for bit the same results).

``aug_color`` is parallel over samples, one pass per call: each sample runs its own op (a
per-sample table lookup for the point ops, a per-pixel blend for saturation and sharpness).
``aug_blur`` is parallel over (sample, row) for each of its two passes; ``aug_normalize`` over
(sample, row).
"""
import math

import numpy as np
from numba import prange

from .. import _threads
from ._jit import NO_STEP, inline, inner, launch, stepped, twin

F32 = np.float32
Z0 = np.int64(0)  # a 0 that is not a literal (a literal argument gets a compile of its own)
GRAY_R, GRAY_G, GRAY_B = F32(0.2989), F32(0.587), F32(0.114)
INV255 = F32(1.0 / 255.0)
MAGIC = F32(12582912.0)
ZERO32, MAX32 = F32(0.0), F32(255.0)

SIXTH = F32(1.0 / 6.0)
TO_U8 = F32(255.999)
ONE32 = F32(1.0)
TWO53 = 9007199254740992.0
HSV_SELECT = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], np.int64)

SKIP, IDENTITY, BRIGHTNESS, SATURATION, CONTRAST, SHARPNESS, POSTERIZE, SOLARIZE, \
    AUTOCONTRAST, EQUALIZE, HUE = -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9


@inner
def _trunc(y):
    """clamp to [0, 255] and truncate (torch's ``.to(uint8)`` after ``clamp_``)."""
    return np.uint8(min(max(y, ZERO32), MAX32))


@inner
def _fma32(a, b, c):
    """float32 a * b + c rounded once (fastreg.reference.augment_color.fma32): the float64 sum
    of the exact product, rounded to odd when inexact, then to float32."""
    # np.float64, not float(): Numba's float() of a float32 stays float32
    c64 = np.float64(c)
    p = np.float64(a) * np.float64(b)
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)
    if e != 0.0:
        m, _ = math.frexp(s)
        if np.int64(m * TWO53) & 1 == 0:
            s = np.nextafter(s, np.inf if e > 0 else -np.inf)
    return F32(s)


@inner
def _gray(r, g, b):
    """floor of the float32 luma with torch's two fused multiply-adds."""
    t = F32(r) * GRAY_R
    t = _fma32(F32(g), GRAY_G, t)
    t = _fma32(F32(b), GRAY_B, t)
    return F32(np.floor(t))


@inline
def _hue_pixel(r8, g8, b8, shift, dst, k0):
    """torchvision's _rgb_to_hsv, hue shift, _hsv_to_rgb, to_dtype(uint8) of one pixel; the
    three results go to dst[k0], dst[k0 + 1], dst[k0 + 2]."""
    r = F32(r8) * INV255
    g = F32(g8) * INV255
    b = F32(b8) * INV255
    maxc = max(max(r, g), b)
    minc = min(min(r, g), b)
    eqc = maxc == minc
    crange = maxc - minc
    s = crange / (ONE32 if eqc else maxc)
    div = ONE32 if eqc else crange
    rc = (maxc - r) / div
    gc = (maxc - g) / div
    bc = (maxc - b) / div
    neq_r = maxc != r
    eq_g = maxc == g
    hg = ((rc + F32(2.0)) - bc) * F32(1.0 if (eq_g and neq_r) else 0.0)
    hr = (bc - gc) * F32(0.0 if neq_r else 1.0)
    hb = ((gc + F32(4.0)) - rc) * F32(1.0 if (neq_r and not eq_g) else 0.0)
    h = (hr + hg) + hb
    h = F32(np.fmod(h * SIXTH + ONE32, ONE32))
    h = F32(np.fmod(h + shift, ONE32))
    if h < 0:
        h = h + ONE32
    h6 = h * F32(6.0)
    fi = F32(np.floor(h6))
    fr = h6 - fi
    i = np.int64(fi) % 6
    sxf = s * fr
    oms = ONE32 - s
    q = min((ONE32 - sxf) * maxc, ONE32)
    t = min((sxf + oms) * maxc, ONE32)
    p = min(oms * maxc, ONE32)
    for k in range(3):
        j = HSV_SELECT[k, i]
        v = maxc if j == 0 else (p if j == 1 else (q if j == 2 else t))
        dst[k0 + k] = np.uint8(v * TO_U8)


@inner
def _copy_rows(img, dst, y0, y1):
    """dst[y0:y1] = img[y0:y1], element by element (a slice assignment would compile Numba's
    shape check and its error message: about 2 s of the first call's compile)."""
    h, w, c = img.shape
    for y in range(y0, y1):
        for x in range(w):
            for k in range(c):
                dst[y, x, k] = img[y, x, k]


@inner
def _apply_lut(img, dst, lut):
    h, w, c = img.shape
    for y in range(h):
        for x in range(w):
            for k in range(c):
                dst[y, x, k] = lut[k, img[y, x, k]]


@inner
def _blend_lut(lut, k, other, f):
    """lut[k, v] = blend(v, other, f) for every v."""
    a = F32(f)
    b = F32(1.0 - f)
    o = F32(other)
    for v in range(256):
        lut[k, v] = _trunc(_fma32(o, b, F32(v) * a))


@inner
def _sample(img, dst, code, p, lut, same):
    h, w, c = img.shape
    if code == IDENTITY:
        if not same:
            _copy_rows(img, dst, Z0, h)
        return
    if code == BRIGHTNESS:
        a = F32(p)
        for k in range(c):
            for v in range(256):
                lut[k, v] = _trunc(F32(v) * a)
        _apply_lut(img, dst, lut)
        return
    if code == POSTERIZE:
        bits = np.int64(p)
        mask = np.uint8(((1 << bits) - 1) << (8 - bits))
        for k in range(c):
            for v in range(256):
                lut[k, v] = np.uint8(v) & mask
        _apply_lut(img, dst, lut)
        return
    if code == SOLARIZE:
        t = F32(p)
        for k in range(c):
            for v in range(256):
                lut[k, v] = np.uint8(255 - v) if F32(v) >= t else np.uint8(v)
        _apply_lut(img, dst, lut)
        return
    if code == CONTRAST:
        total = 0
        if c == 3:
            for y in range(h):
                for x in range(w):
                    total += np.int64(_gray(img[y, x, 0], img[y, x, 1], img[y, x, 2]))
        else:
            for y in range(h):
                for x in range(w):
                    total += np.int64(img[y, x, 0])
        mean = F32(total / (h * w)) if h * w > 0 else F32(0.0)
        for k in range(c):
            _blend_lut(lut, k, mean, p)
        _apply_lut(img, dst, lut)
        return
    if code == SATURATION:
        if c != 3:
            if not same:
                _copy_rows(img, dst, Z0, h)
            return
        a = F32(p)
        b = F32(1.0 - p)
        for y in range(h):
            for x in range(w):
                r0, g0, b0 = img[y, x, 0], img[y, x, 1], img[y, x, 2]
                o = _gray(r0, g0, b0)
                dst[y, x, 0] = _trunc(_fma32(o, b, F32(r0) * a))
                dst[y, x, 1] = _trunc(_fma32(o, b, F32(g0) * a))
                dst[y, x, 2] = _trunc(_fma32(o, b, F32(b0) * a))
        return
    if code == HUE:
        if c != 3:
            if not same:
                _copy_rows(img, dst, Z0, h)
            return
        shift = F32(p)
        for y in range(h):
            for x in range(w):
                _hue_pixel(img[y, x, 0], img[y, x, 1], img[y, x, 2], shift, dst[y, x], 0)
        return
    if code == AUTOCONTRAST:
        for k in range(c):
            lo = 255
            hi = 0
            for y in range(h):
                for x in range(w):
                    v = np.int64(img[y, x, k])
                    lo = min(lo, v)
                    hi = max(hi, v)
            if h * w == 0 or lo == hi:
                for v in range(256):
                    lut[k, v] = np.uint8(v)
            else:
                inv = F32(hi - lo) * INV255
                for v in range(256):
                    lut[k, v] = _trunc((F32(v) - F32(lo)) / inv)
        _apply_lut(img, dst, lut)
        return
    if code == EQUALIZE:
        hist = np.empty(256, np.int64)  # zeroed per channel
        for k in range(c):
            for v in range(256):
                hist[v] = 0
            for y in range(h):
                for x in range(w):
                    hist[img[y, x, k]] += 1
            last = 0
            for v in range(256):
                if hist[v] > 0:
                    last = v
            step = (h * w - hist[last]) // 255
            if step == 0:
                for v in range(256):
                    lut[k, v] = np.uint8(v)
            else:
                cum = 0
                lut[k, 0] = 0
                for v in range(1, 256):
                    cum += hist[v - 1]
                    lut[k, v] = np.uint8(min((cum + step // 2) // step, 255))
        _apply_lut(img, dst, lut)
        return
    if code == SHARPNESS:
        # rows are read from a copy of the three source rows around y: out may be x
        if h <= 2 or w <= 2:
            if not same:
                _copy_rows(img, dst, Z0, h)
            return
        alpha = F32(1.0 - p)
        prev = np.empty((w, c), np.int64)
        cur = np.empty((w, c), np.int64)
        nxt = np.empty((w, c), np.int64)
        for x in range(w):
            for k in range(c):
                prev[x, k] = img[0, x, k]
                cur[x, k] = img[1, x, k]
        if not same:
            _copy_rows(img, dst, Z0, Z0 + 1)
            _copy_rows(img, dst, h - 1, h)
        for y in range(1, h - 1):
            for x in range(w):
                for k in range(c):
                    nxt[x, k] = img[y + 1, x, k]
            for k in range(c):
                dst[y, 0, k] = np.uint8(cur[0, k])
                dst[y, w - 1, k] = np.uint8(cur[w - 1, k])
            for x in range(1, w - 1):
                for k in range(c):
                    s = (prev[x - 1, k] + prev[x, k] + prev[x + 1, k] + cur[x - 1, k]
                         + 5 * cur[x, k] + cur[x + 1, k] + nxt[x - 1, k] + nxt[x, k]
                         + nxt[x + 1, k])
                    v = cur[x, k]
                    d = (2 * s + 13) // 26 - v
                    dst[y, x, k] = _trunc(_fma32(F32(d), alpha, F32(v)))
            prev, cur, nxt = cur, nxt, prev
        return


@stepped
def _color_kernel(x, codes, params, out, same, unused, steps, t, T):
    """Share t of T of the samples (one step; a stepped kernel: see fastreg/cpu/_jit.py, its
    parallel version compiles the loop once instead of five times)."""
    n = x.shape[0]
    lut = np.empty((x.shape[3], 256), np.uint8)
    for i in range(t * n // T, (t + 1) * n // T):
        if codes[i] != SKIP:
            _sample(x[i], out[i], codes[i], params[i], lut, same)


@twin
def _blur_rows_kernel(x, weights, cols, tmp):
    """tmp[n, y] = the horizontal pass of row y of sample n (float32)."""
    n_count, h, w, c = x.shape
    k = weights.shape[1]
    for r in prange(n_count * h):
        n = r // h
        y = r - n * h
        for xx in range(w):
            for ch in range(c):
                acc = F32(0.0)
                for t in range(k):
                    acc = acc + weights[n, t] * F32(x[n, y, cols[xx, t], ch])
                tmp[n, y, xx, ch] = acc


@twin
def _blur_cols_kernel(tmp, weights, rows, out):
    n_count, h, w, c = tmp.shape
    k = weights.shape[1]
    for r in prange(n_count * h):
        n = r // h
        y = r - n * h
        for xx in range(w):
            for ch in range(c):
                acc = F32(0.0)
                for t in range(k):
                    acc = acc + weights[n, t] * tmp[n, rows[y, t], xx, ch]
                v = min(max(acc, ZERO32), MAX32)
                out[n, y, xx, ch] = np.uint8((v + MAGIC) - MAGIC)


@twin
def _normalize_kernel(x, lut, out):
    n_count, h, w, c = x.shape
    for r in prange(n_count * h):
        n = r // h
        y = r - n * h
        for xx in range(w):
            for ch in range(c):
                out[n, y, xx, ch] = lut[ch, x[n, y, xx, ch]]


# --- ops (the contract of fastreg/reference/augment_color.py) --------------------------------------

_COLOR_WEIGHT = 4   # per byte: a table lookup, a blend or a 3x3 sum
_BLUR_WEIGHT = 8    # per byte and pass: K taps


def _plan(work):
    return _threads.plan(work, "augment")


def _reflect_table(n, k):
    r = k // 2
    i = np.arange(n)[:, None] + np.arange(k)[None, :] - r
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.ascontiguousarray(np.where(i >= n, period - i, i)).astype(np.int64)


def aug_color(x, codes, params, out):
    # The kernel sees C-contiguous arrays only, so that it compiles once per dtype (a strided
    # x or out made Numba compile it again for each layout, ~14 s of CPU each): a strided x is
    # copied, a strided out is written through a contiguous copy of it (the samples the kernel
    # skips, code < 0, keep out's values).
    xc = np.ascontiguousarray(x)
    oc = np.ascontiguousarray(out)
    launch(_color_kernel, _plan(_COLOR_WEIGHT * x.size), xc, codes, params, oc,
           np.shares_memory(xc, oc), (), (0, NO_STEP, NO_STEP))
    if oc is not out:
        out[...] = oc


def aug_blur(x, weights, out):
    n, h, w, c = x.shape
    k = weights.shape[1]
    tmp = np.empty((n, h, w, c), F32)
    nt = _plan(_BLUR_WEIGHT * x.size)
    launch(_blur_rows_kernel, nt, x, weights, _reflect_table(w, k), tmp)
    launch(_blur_cols_kernel, nt, tmp, weights, _reflect_table(h, k), out)


def aug_normalize(x, lut, out):
    launch(_normalize_kernel, _plan(x.size), x, lut, out)
