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
from ._jit import NO_STEP, inner, launch, stepped, twin

F32 = np.float32
U = np.uint64
U0, U1, U2, U3, U255, U256, U512 = U(0), U(1), U(2), U(3), U(255), U(256), U(512)
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


@inner
def _hue_pixels(img, dst, size, shift):
    """torchvision's _rgb_to_hsv, hue shift, _hsv_to_rgb, to_dtype(uint8) of the RGB pixels of
    img[:size] into dst."""
    for i in range(U0, size, U3):
        r = F32(img[i]) * INV255
        g = F32(img[i + U1]) * INV255
        b = F32(img[i + U2]) * INV255
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
        j = np.int64(fi) % 6
        sxf = s * fr
        oms = ONE32 - s
        q = min((ONE32 - sxf) * maxc, ONE32)
        t = min((sxf + oms) * maxc, ONE32)
        p = min(oms * maxc, ONE32)
        for k in range(U3):
            sel = HSV_SELECT[k, j]
            v = maxc if sel == 0 else (p if sel == 1 else (q if sel == 2 else t))
            dst[i + k] = np.uint8(v * TO_U8)


@inner
def _copy(img, dst, i0, i1):
    """dst[i0:i1] = img[i0:i1], element by element (a slice assignment would compile Numba's
    shape check and its error message: about 2 s of the first call's compile)."""
    for i in range(i0, i1):
        dst[i] = img[i]


@inner
def _apply_lut(img, dst, lut, size, c):
    """dst = lut[256 * k + img] per channel k (c tables of 256 one after the other); a pass per
    channel (faster than the channels of a pixel together)."""
    for k in range(c):
        base = U256 * k
        for i in range(k, size, c):
            dst[i] = lut[base + img[i]]


@inner
def _sample(img, dst, code, p, buf, h, w, c, same):
    """Op code on one flat (h, w, c) image; buf: int64 scratch of 2 * 256 * c + 3 * w * c.
    h, w, c: uint64 (Numba tests a signed index for a negative value: slower loops)."""
    n = h * w
    size = n * c
    if (code == IDENTITY or ((code == SATURATION or code == HUE) and c != U3)
            or (code == SHARPNESS and (h <= U2 or w <= U2))):
        if not same:
            _copy(img, dst, U0, size)
        return
    if code == SATURATION:
        a = F32(p)
        b = F32(1.0 - p)
        for i in range(U0, size, U3):
            r0, g0, b0 = img[i], img[i + U1], img[i + U2]
            o = _gray(r0, g0, b0)
            dst[i] = _trunc(_fma32(o, b, F32(r0) * a))
            dst[i + U1] = _trunc(_fma32(o, b, F32(g0) * a))
            dst[i + U2] = _trunc(_fma32(o, b, F32(b0) * a))
        return
    if code == HUE:
        _hue_pixels(img, dst, size, F32(p))
        return
    if code == SHARPNESS:
        # rows are read from a copy of the three source rows around y (out may be img): a ring
        # of three rows of wc values in buf
        wc = w * c
        alpha = F32(1.0 - p)
        for i in range(wc + wc):
            buf[i] = img[i]
        if not same:
            _copy(img, dst, U0, wc)
            _copy(img, dst, size - wc, size)
        for y in range(U1, h - U1):
            prev = ((y - U1) % U3) * wc
            cur = (y % U3) * wc
            nxt = ((y + U1) % U3) * wc
            row = y * wc
            for i in range(wc):
                buf[nxt + i] = img[row + wc + i]
            for k in range(c):
                dst[row + k] = buf[cur + k]
                dst[row + wc - c + k] = buf[cur + wc - c + k]
            for i in range(c, wc - c):
                s = (buf[prev + i - c] + buf[prev + i] + buf[prev + i + c] + buf[cur + i - c]
                     + 5 * buf[cur + i] + buf[cur + i + c] + buf[nxt + i - c] + buf[nxt + i]
                     + buf[nxt + i + c])
                v = buf[cur + i]
                d = (2 * s + 13) // 26 - v
                dst[row + i] = _trunc(_fma32(F32(d), alpha, F32(v)))
        return
    # the table ops: lut = buf[:256 * c], channel k's table at 256 * k
    if code == BRIGHTNESS:
        a = F32(p)
        for v in range(256):
            buf[v] = _trunc(F32(v) * a)
    elif code == POSTERIZE:
        bits = np.int64(p)
        mask = ((1 << bits) - 1) << (8 - bits)
        for v in range(256):
            buf[v] = v & mask
    elif code == SOLARIZE:
        t = F32(p)
        for v in range(256):
            buf[v] = 255 - v if F32(v) >= t else v
    elif code == CONTRAST:
        total = 0
        if c == U3:
            for i in range(U0, size, U3):
                total += np.int64(_gray(img[i], img[i + U1], img[i + U2]))
        else:
            for i in range(U0, size, c):
                total += np.int64(img[i])
        mean = F32(total / n) if n > U0 else F32(0.0)
        a = F32(p)
        b = F32(1.0 - p)
        for v in range(256):
            buf[v] = _trunc(_fma32(mean, b, F32(v) * a))
    else:  # AUTOCONTRAST, EQUALIZE: from the channels' histograms at buf[256 * c:]
        hist = U256 * c
        for i in range(hist):
            buf[hist + i] = 0
        for k in range(c):
            lut = U256 * k
            hk = hist + lut
            for i in range(k, size, c):
                buf[hk + img[i]] += 1
            lo = U0
            while lo < U255 and buf[hk + lo] == 0:
                lo += U1
            hi = U255
            while hi > U0 and buf[hk + hi] == 0:
                hi -= U1
            if code == AUTOCONTRAST:
                if n == U0 or lo >= hi:
                    for v in range(256):
                        buf[lut + v] = v
                else:
                    inv = F32(hi - lo) * INV255
                    for v in range(256):
                        buf[lut + v] = _trunc((F32(v) - F32(lo)) / inv)
            else:
                step = (np.int64(n) - buf[hk + hi]) // 255
                if step == 0:
                    for v in range(256):
                        buf[lut + v] = v
                else:
                    cum = 0
                    buf[lut] = 0
                    for v in range(1, 256):
                        cum += buf[hk + v - 1]
                        e = (cum + step // 2) // step
                        buf[lut + v] = e if e < 255 else 255
        _apply_lut(img, dst, buf, size, c)
        return
    for i in range(U256, U256 * c):
        buf[i] = buf[i - U256]
    _apply_lut(img, dst, buf, size, c)


@stepped
def _color_kernel(x, codes, params, out, dims, unused, steps, t, T):
    """Share t of T of the samples (one step; a stepped kernel: see fastreg/cpu/_jit.py, its
    parallel version compiles the loop once instead of five times). x and out: (n, h * w * c);
    dims: (h, w, c, 1 when x and out share memory), uint64."""
    n = x.shape[0]
    h, w, c, same = dims
    buf = np.empty(U512 * c + U3 * w * c, np.int64)
    for i in range(t * n // T, (t + 1) * n // T):
        if codes[i] != SKIP:
            _sample(x[i], out[i], codes[i], params[i], buf, h, w, c, same != U0)


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
    n, h, w, c = x.shape
    launch(_color_kernel, _plan(_COLOR_WEIGHT * x.size), xc.reshape(n, h * w * c), codes,
           params, oc.reshape(n, h * w * c), tuple(np.uint64(v) for v in (h, w, c, np.shares_memory(xc, oc))), (),
           (0, NO_STEP, NO_STEP))
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
