"""Colour augmentation kernels on the GPU (Numba CUDA): aug_color (every colour op), aug_blur,
aug_normalize, with the definitions of fastreg/reference/augment_color.py, bit for bit.

aug_color runs three kernels: per-sample histograms by atomics (only for the samples whose op
needs statistics: contrast's luma sum, autocontrast's range, equalize's table), one thread per
(sample, channel) building that sample's 256-entry table, and one thread per pixel applying the
table or the per-pixel op (saturation, sharpness, hue). Products that feed an addition go
through ``mul_rn_device`` (never fused by the compiler); the fused multiply-adds of the
definitions are float64 sums of exact products rounded to odd (``fma32_device``), as on the
host.
"""
import math

import numpy as np
from numba import cuda

from .. import _arrays
from .penalty import mul_rn_device
from .philox import dev_in, launch_1d

F32 = np.float32
GRAY_R, GRAY_G, GRAY_B = F32(0.2989), F32(0.587), F32(0.114)
INV255 = F32(1.0 / 255.0)
SIXTH = F32(1.0 / 6.0)
TO_U8 = F32(255.999)
MAGIC = F32(12582912.0)
ZERO32, ONE32, MAX32 = F32(0.0), F32(1.0), F32(255.0)
TWO53 = 9007199254740992.0

SKIP, IDENTITY, BRIGHTNESS, SATURATION, CONTRAST, SHARPNESS, POSTERIZE, SOLARIZE, \
    AUTOCONTRAST, EQUALIZE, HUE = -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9


# --- device helpers ---------------------------------------------------------------------------------

@cuda.jit(device=True)
def fma32_device(a, b, c):
    """float32 a * b + c rounded once: the float64 sum of the exact product, rounded to odd when
    inexact (fastreg.reference.augment_color.fma32)."""
    c64 = np.float64(c)
    p = mul_rn_device(np.float64(a), np.float64(b))
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)
    if e != 0.0:
        m, ex = math.frexp(s)
        if np.int64(m * TWO53) & 1 == 0:
            ulp = math.ldexp(1.0, ex - 53)    # to the odd neighbour (below a power of two a
            s = s + ulp if e > 0 else s - ulp  # step of ulp stays within the same float32)
    return F32(s)


@cuda.jit(device=True)
def trunc_device(y):
    return np.uint8(min(max(y, ZERO32), MAX32))


@cuda.jit(device=True)
def gray_device(r, g, b):
    t = mul_rn_device(F32(r), GRAY_R)
    t = fma32_device(F32(g), GRAY_G, t)
    t = fma32_device(F32(b), GRAY_B, t)
    return F32(math.floor(t))


@cuda.jit(device=True)
def hue_channel_device(r8, g8, b8, shift, k):
    """Channel k of torchvision's adjust_hue of one uint8 pixel (reference: ``hue``)."""
    r = mul_rn_device(F32(r8), INV255)
    g = mul_rn_device(F32(g8), INV255)
    b = mul_rn_device(F32(b8), INV255)
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
    hg = mul_rn_device((rc + F32(2.0)) - bc, F32(1.0) if (eq_g and neq_r) else F32(0.0))
    hr = mul_rn_device(bc - gc, F32(0.0) if neq_r else F32(1.0))
    hb = mul_rn_device((gc + F32(4.0)) - rc, F32(1.0) if (neq_r and not eq_g) else F32(0.0))
    h = (hr + hg) + hb
    h = mul_rn_device(h, SIXTH) + ONE32
    h = h - F32(2.0) if h >= F32(2.0) else (h - ONE32 if h >= ONE32 else h)   # fmod(h, 1)
    h = h + shift
    h = h - ONE32 if h >= ONE32 else (h + ONE32 if h <= -ONE32 else h)
    if h < ZERO32:
        h = h + ONE32
    h6 = mul_rn_device(h, F32(6.0))
    i0 = np.int32(h6)                 # h6 >= 0: truncation is floor
    fr = h6 - F32(i0)
    i = i0 % 6
    sxf = mul_rn_device(s, fr)
    oms = ONE32 - s
    q = min(mul_rn_device(ONE32 - sxf, maxc), ONE32)
    t = min(mul_rn_device(sxf + oms, maxc), ONE32)
    p = min(mul_rn_device(oms, maxc), ONE32)
    # HSV_SELECT[k][i]: 0 v, 1 p, 2 q, 3 t
    if k == 0:
        j = 0 if (i == 0 or i == 5) else (2 if i == 1 else (1 if (i == 2 or i == 3) else 3))
    elif k == 1:
        j = 3 if i == 0 else (0 if (i == 1 or i == 2) else (2 if i == 3 else 1))
    else:
        j = 1 if (i == 0 or i == 1) else (3 if i == 2 else (0 if (i == 3 or i == 4) else 2))
    v = maxc if j == 0 else (p if j == 1 else (q if j == 2 else t))
    return np.uint8(mul_rn_device(v, TO_U8))


# --- aug_color ----------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _color_stats_kernel(x, codes, hist, gray_hist):
    """Per-sample histograms of the channels (and of the floored luma for 3-channel contrast)."""
    n_count, h, w, c = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_count * h * w, stride):
        n = e // (h * w)
        code = codes[n]
        if code != CONTRAST and code != AUTOCONTRAST and code != EQUALIZE:
            continue
        r = e - n * h * w
        y = r // w
        xx = r - y * w
        if code == CONTRAST:
            if c == 3:
                g = np.int64(gray_device(x[n, y, xx, 0], x[n, y, xx, 1], x[n, y, xx, 2]))
                cuda.atomic.add(gray_hist, (n, g), 1)
            else:
                cuda.atomic.add(hist, (n, 0, np.int64(x[n, y, xx, 0])), 1)
        else:
            for k in range(c):
                cuda.atomic.add(hist, (n, k, np.int64(x[n, y, xx, k])), 1)


@cuda.jit(cache=True)
def _color_lut_kernel(codes, params, hist, gray_hist, hw, c, luts):
    """luts[n, k] = the 256-entry table of sample n's op on channel k (table ops only)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n_count = codes.shape[0]
    for e in range(start, n_count * c, stride):
        n = e // c
        k = e - n * c
        code = codes[n]
        p = params[n]
        if code == BRIGHTNESS:
            a = F32(p)
            for v in range(256):
                luts[n, k, v] = trunc_device(mul_rn_device(F32(v), a))
        elif code == POSTERIZE:
            bits = np.int64(p)
            mask = ((1 << bits) - 1) << (8 - bits)
            for v in range(256):
                luts[n, k, v] = np.uint8(v & mask)
        elif code == SOLARIZE:
            t = F32(p)
            for v in range(256):
                luts[n, k, v] = np.uint8(255 - v) if F32(v) >= t else np.uint8(v)
        elif code == CONTRAST:
            total = 0
            for v in range(256):
                total += v * (gray_hist[n, v] if c == 3 else hist[n, 0, v])
            mean = F32(total / hw) if hw > 0 else ZERO32
            a = F32(p)
            bw = F32(1.0 - p)
            for v in range(256):
                luts[n, k, v] = trunc_device(fma32_device(mean, bw, mul_rn_device(F32(v), a)))
        elif code == AUTOCONTRAST:
            lo = 0
            while lo < 256 and hist[n, k, lo] == 0:
                lo += 1
            hi = 255
            while hi >= 0 and hist[n, k, hi] == 0:
                hi -= 1
            if lo >= hi:
                for v in range(256):
                    luts[n, k, v] = np.uint8(v)
            else:
                inv = mul_rn_device(F32(hi - lo), INV255)
                for v in range(256):
                    luts[n, k, v] = trunc_device((F32(v) - F32(lo)) / inv)
        elif code == EQUALIZE:
            last = 0
            for v in range(256):
                if hist[n, k, v] > 0:
                    last = v
            step = (hw - hist[n, k, last]) // 255
            if step == 0:
                for v in range(256):
                    luts[n, k, v] = np.uint8(v)
            else:
                cum = 0
                luts[n, k, 0] = 0
                for v in range(1, 256):
                    cum += hist[n, k, v - 1]
                    luts[n, k, v] = np.uint8(min((cum + step // 2) // step, 255))


@cuda.jit(cache=True)
def _color_apply_kernel(x, codes, params, luts, out):
    """One thread per pixel: the table, or the per-pixel op; x is not out."""
    n_count, h, w, c = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_count * h * w, stride):
        n = e // (h * w)
        code = codes[n]
        if code == SKIP:
            continue
        r = e - n * h * w
        y = r // w
        xx = r - y * w
        if code == SATURATION and c == 3:
            a = F32(params[n])
            bw = F32(1.0 - params[n])
            g = gray_device(x[n, y, xx, 0], x[n, y, xx, 1], x[n, y, xx, 2])
            for k in range(3):
                out[n, y, xx, k] = trunc_device(
                    fma32_device(g, bw, mul_rn_device(F32(x[n, y, xx, k]), a)))
        elif code == HUE and c == 3:
            shift = F32(params[n])
            r8, g8, b8 = x[n, y, xx, 0], x[n, y, xx, 1], x[n, y, xx, 2]
            for k in range(3):
                out[n, y, xx, k] = hue_channel_device(r8, g8, b8, shift, k)
        elif code == SHARPNESS and h > 2 and w > 2 and 0 < y < h - 1 and 0 < xx < w - 1:
            alpha = F32(1.0 - params[n])
            for k in range(c):
                s = 4 * np.int64(x[n, y, xx, k])
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        s += np.int64(x[n, y + dy, xx + dx, k])
                v = np.int64(x[n, y, xx, k])
                d = (2 * s + 13) // 26 - v
                out[n, y, xx, k] = trunc_device(fma32_device(F32(d), alpha, F32(v)))
        elif code == BRIGHTNESS or code == CONTRAST or code == POSTERIZE or \
                code == SOLARIZE or code == AUTOCONTRAST or code == EQUALIZE:
            for k in range(c):
                out[n, y, xx, k] = luts[n, k, x[n, y, xx, k]]
        else:   # identity, and the ops that leave this pixel or image unchanged
            for k in range(c):
                out[n, y, xx, k] = x[n, y, xx, k]


# --- aug_blur, aug_normalize ---------------------------------------------------------------------------

@cuda.jit(device=True)
def reflect_device(i, n):
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    return period - i if i >= n else i


@cuda.jit(cache=True)
def _blur_rows_kernel(x, weights, tmp):
    n_count, h, w, c = x.shape
    k = weights.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_count * h * w, stride):
        n = e // (h * w)
        r = e - n * h * w
        y = r // w
        xx = r - y * w
        for ch in range(c):
            acc = ZERO32
            for t in range(k):
                acc = acc + mul_rn_device(weights[n, t],
                                          F32(x[n, y, reflect_device(xx + t - k // 2, w), ch]))
            tmp[n, y, xx, ch] = acc


@cuda.jit(cache=True)
def _blur_cols_kernel(tmp, weights, out):
    n_count, h, w, c = tmp.shape
    k = weights.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_count * h * w, stride):
        n = e // (h * w)
        r = e - n * h * w
        y = r // w
        xx = r - y * w
        for ch in range(c):
            acc = ZERO32
            for t in range(k):
                acc = acc + mul_rn_device(weights[n, t],
                                          tmp[n, reflect_device(y + t - k // 2, h), xx, ch])
            v = min(max(acc, ZERO32), MAX32)
            out[n, y, xx, ch] = np.uint8((v + MAGIC) - MAGIC)


@cuda.jit(cache=True)
def _normalize_kernel(x, lut, out):
    n_count, h, w, c = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_count * h * w, stride):
        n = e // (h * w)
        r = e - n * h * w
        y = r // w
        xx = r - y * w
        for ch in range(c):
            out[n, y, xx, ch] = lut[ch, x[n, y, xx, ch]]


# --- ops (the contract of fastreg/reference/augment_color.py) --------------------------------------

def _host(a):
    return isinstance(a, np.ndarray)


def _source(x, out):
    """A device array of x that the kernel may read while writing out: a copy when out may
    alias x on the device."""
    if _host(x):
        return cuda.to_device(np.ascontiguousarray(x))
    if not _host(out):
        return cuda.to_device(x.copy_to_host()) if _same_memory(x, out) else dev_in(x)
    return dev_in(x)


def _same_memory(a, b):
    return _arrays._extents_overlap(_arrays.DeviceArrayInfo(a), _arrays.DeviceArrayInfo(b))


def _target(out, keep):
    """(device array the kernel writes, finish()): for a host out a device copy (its values
    when ``keep``: samples not written keep them), copied back by finish()."""
    if not _host(out):
        return dev_in(out), lambda: None
    d = cuda.to_device(np.ascontiguousarray(out)) if keep else \
        cuda.device_array(out.shape, dtype=out.dtype)

    def finish():
        out[...] = d.copy_to_host()
    return d, finish


def aug_color(x, codes, params, out):
    """out[n] = op codes[n] of x[n] with parameter params[n] (SKIP: out[n] not written).

    Parameters
    ----------
    x, out : device or host arrays uint8 (N, H, W, C), C in {1, 3}; out may be x
    codes : host array int64 (N,)
    params : host array float64 (N,)

    Returns
    -------
    None
    """
    n, h, w, c = x.shape
    if n * h * w * c == 0:
        return
    codes = np.ascontiguousarray(codes, np.int64)
    params = np.ascontiguousarray(params, np.float64)
    x_d = _source(x, out)
    out_d, finish = _target(out, keep=bool(np.any(codes == SKIP)))
    codes_d, params_d = cuda.to_device(codes), cuda.to_device(params)
    stats = bool(np.any((codes == CONTRAST) | (codes == AUTOCONTRAST) | (codes == EQUALIZE)))
    hist = cuda.to_device(np.zeros((n, 3, 256), np.int32) if stats else
                          np.zeros((1, 3, 256), np.int32))
    gray_hist = cuda.to_device(np.zeros((n if stats else 1, 256), np.int32))
    luts = cuda.device_array((n, c, 256), np.uint8)
    if stats:
        launch_1d(_color_stats_kernel, n * h * w, x_d, codes_d, hist, gray_hist)
    launch_1d(_color_lut_kernel, n * c, codes_d, params_d, hist, gray_hist, np.int64(h * w),
              np.int64(c), luts)
    launch_1d(_color_apply_kernel, n * h * w, x_d, codes_d, params_d, luts, out_d)
    finish()


def aug_blur(x, weights, out):
    """Separable Gaussian blur, weights float32 (N, K) (see the reference); out is not x.

    Parameters
    ----------
    x, out : device or host arrays uint8 (N, H, W, C)
    weights : host array float32 (N, K)

    Returns
    -------
    None
    """
    n, h, w, c = x.shape
    if n * h * w * c == 0:
        return
    x_d = _source(x, out)
    w_d = cuda.to_device(np.ascontiguousarray(weights, np.float32))
    tmp = cuda.device_array((n, h, w, c), np.float32)
    out_d, finish = _target(out, keep=False)
    launch_1d(_blur_rows_kernel, n * h * w, x_d, w_d, tmp)
    launch_1d(_blur_cols_kernel, n * h * w, tmp, w_d, out_d)
    finish()


def aug_normalize(x, lut, out):
    """out[..., c] = lut[c, x[..., c]] (float32 out).

    Parameters
    ----------
    x : device or host array uint8 (N, H, W, C)
    lut : host array float32 (C, 256)
    out : device or host array float32 (N, H, W, C)

    Returns
    -------
    None
    """
    n, h, w, c = x.shape
    if n * h * w * c == 0:
        return
    x_d = _source(x, out)
    out_d, finish = _target(out, keep=False)
    launch_1d(_normalize_kernel, n * h * w, x_d, cuda.to_device(np.ascontiguousarray(lut)),
              out_d)
    finish()
