"""Colour augmentation kernels on the CPU with Numba (definitions and contract in
fastreg/reference/augment_color.py; bit for bit the same results).

``aug_color`` is parallel over samples, one pass per call: each sample runs its own op (a
per-sample table lookup for the point ops, a per-pixel blend for saturation and sharpness).
``aug_blur`` is parallel over (sample, row) for each of its two passes (a launch each);
``aug_normalize`` over (sample, row). Every kernel is run in shares (``split``,
fastreg/cpu/_jit.py: compiled once, no ``prange``).
"""
import math

import numpy as np

from .. import _threads
from ._jit import inner, launch, split

F32 = np.float32
U = np.uint64
U0, U1, U2, U3, U256 = U(0), U(1), U(2), U(3), U(256)
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


@split
def _color_kernel(x, codes, params, out, dims, scratch, t, T):
    """Share t of T of the samples (a split kernel: see fastreg/cpu/_jit.py, compiled once). x
    and out: (n, h * w * c); dims: (h, w, c, 1 when x and out share memory), uint64; scratch:
    int64, a row of 512 * c + 4 * w * c per share (row t: share t's tables, histograms or
    sharpness's rows).

    For a short first-call compile: flat images indexed with uint64 (Numba tests a signed index
    for a negative value: more code to lower, and slower loops that LLVM does not vectorize);
    the ops written out in this loop, not in a helper called per sample (Numba optimizes and
    emits a helper's machine code on its own, then again inside the kernel: ~0.1 s here); no
    allocation (np.empty is an overload of its own to compile)."""
    h, w, c, same_ = dims
    same = same_ != U0
    n = h * w
    size = n * c
    buf = scratch[t]
    for j in range(t * x.shape[0] // T, (t + 1) * x.shape[0] // T):
        code = codes[j]
        if code == SKIP:
            continue
        p = params[j]
        img = x[j]
        dst = out[j]
        if ((code == SATURATION or code == HUE) and c != U3) or (
                code == SHARPNESS and (h <= U2 or w <= U2)):
            code = IDENTITY  # (the reference leaves these images as they are)
        if code == IDENTITY:
            if not same:
                for i in range(size):  # (element by element: Numba's slice assignment compiles
                    dst[i] = img[i]    # a shape check and its message, seconds of compile)
            continue
        if code == SATURATION:
            a = F32(p)
            b = F32(1.0 - p)
            for i in range(U0, size, U3):
                r0, g0, b0 = img[i], img[i + U1], img[i + U2]
                o = _gray(r0, g0, b0)
                dst[i] = _trunc(_fma32(o, b, F32(r0) * a))
                dst[i + U1] = _trunc(_fma32(o, b, F32(g0) * a))
                dst[i + U2] = _trunc(_fma32(o, b, F32(b0) * a))
            continue
        if code == HUE:
            _hue_pixels(img, dst, size, F32(p))
            continue
        if code == SHARPNESS:
            # out may be img: the rows are read from copies, a ring of the three source rows
            # around y in buf[:3 * wc], their column sums in buf[3 * wc:] (the 3x3 sum with 5
            # at the centre = three column sums + 4 * centre)
            wc = w * c
            sums = U3 * wc
            alpha = F32(1.0 - p)
            for i in range(wc + wc):
                buf[i] = img[i]
            if not same:
                for i in range(wc):  # the first and last rows
                    dst[i] = img[i]
                    dst[size - wc + i] = img[size - wc + i]
            for y in range(U1, h - U1):
                prev = ((y - U1) % U3) * wc
                cur = (y % U3) * wc
                nxt = ((y + U1) % U3) * wc
                row = y * wc
                for i in range(wc):
                    v = img[row + wc + i]
                    buf[nxt + i] = v
                    buf[sums + i] = buf[prev + i] + buf[cur + i] + v
                for i in range(c):
                    dst[row + i] = buf[cur + i]
                    dst[row + wc - c + i] = buf[cur + wc - c + i]
                for i in range(c, wc - c):
                    v = buf[cur + i]
                    s = buf[sums + i - c] + buf[sums + i] + buf[sums + i + c] + 4 * v
                    d = (2 * s + 13) // 26 - v
                    dst[row + i] = _trunc(_fma32(F32(d), alpha, F32(v)))
            continue
        # the table ops: lut = buf[:256 * c], channel k's table at 256 * k
        if code == AUTOCONTRAST or code == EQUALIZE:
            # from the channel's histogram at buf[256 * c:] (autocontrast's min and max too: a
            # histogram pass per channel is faster than the min and max of the values)
            for k in range(c):
                lut = U256 * k
                hk = U256 * c + lut
                for v in range(U256):
                    buf[hk + v] = 0
                for i in range(k, size, c):
                    buf[hk + img[i]] += 1
                lo = U256
                hi = U0
                for v in range(U256):
                    if buf[hk + v] != 0:
                        lo = v if lo == U256 else lo
                        hi = v
                step = (np.int64(n) - buf[hk + hi]) // 255  # EQUALIZE
                half = step // 2
                inv = F32(hi - lo) * INV255  # AUTOCONTRAST
                flat = lo >= hi if code == AUTOCONTRAST else step == 0
                cum = 0
                for v in range(U256):
                    if flat:
                        e = np.int64(v)
                    elif code == AUTOCONTRAST:
                        e = np.int64(_trunc((F32(v) - F32(lo)) / inv))
                    else:
                        e = (cum + half) // step
                        e = e if e < 255 else 255
                        cum += buf[hk + v]
                    buf[lut + v] = e
        else:
            a = F32(p)
            b = F32(1.0 - p)
            mean = F32(0.0)
            if code == CONTRAST:
                total = 0
                if c == U3:
                    for i in range(U0, size, U3):
                        total += np.int64(_gray(img[i], img[i + U1], img[i + U2]))
                else:
                    for i in range(U0, size, c):
                        total += np.int64(img[i])
                if n > U0:
                    mean = F32(total / n)
            if code == BRIGHTNESS:
                for v in range(256):
                    buf[v] = _trunc(F32(v) * a)
            elif code == CONTRAST:
                for v in range(256):
                    buf[v] = _trunc(_fma32(mean, b, F32(v) * a))
            elif code == POSTERIZE:
                bits = np.int64(p)
                mask = ((1 << bits) - 1) << (8 - bits)
                for v in range(256):
                    buf[v] = v & mask
            else:  # SOLARIZE
                for v in range(256):
                    buf[v] = 255 - v if F32(v) >= a else v
            for i in range(U256, U256 * c):  # the same table for every channel
                buf[i] = buf[i - U256]
        for k in range(c):  # dst = the tables; a pass per channel (faster than by pixel)
            lut = U256 * k
            for i in range(k, size, c):
                dst[i] = buf[lut + img[i]]


@split
def _blur_rows_kernel(x, weights, cols, tmp, share, shares):
    """tmp[n, y] = the horizontal pass of row y of sample n (float32)."""
    n_count, h, w, c = x.shape
    k = weights.shape[1]
    rows = n_count * h
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        n = r // h
        y = r - n * h
        for xx in range(w):
            for ch in range(c):
                acc = F32(0.0)
                for t in range(k):
                    acc = acc + weights[n, t] * F32(x[n, y, cols[xx, t], ch])
                tmp[n, y, xx, ch] = acc


@split
def _blur_cols_kernel(tmp, weights, rows, out, share, shares):
    """out[n, y] = the vertical pass of row y of sample n from tmp (all of tmp written: the
    rows pass is a launch of its own, finished before this one starts)."""
    n_count, h, w, c = tmp.shape
    k = weights.shape[1]
    items = n_count * h
    for r in range(share * items // shares, (share + 1) * items // shares):
        n = r // h
        y = r - n * h
        for xx in range(w):
            for ch in range(c):
                acc = F32(0.0)
                for t in range(k):
                    acc = acc + weights[n, t] * tmp[n, rows[y, t], xx, ch]
                v = min(max(acc, ZERO32), MAX32)
                out[n, y, xx, ch] = np.uint8((v + MAGIC) - MAGIC)


@split
def _normalize_kernel(x, lut, out, share, shares):
    """out[n, y] = the channels' tables of row y of sample n, a pass per channel with its table
    row hoisted (faster than by pixel once compiled serially: 64x224x224x3 on one thread,
    9.0 -> 6.8 ms; by pixel, the prange version's code had been the faster one)."""
    n_count, h, w, c = x.shape
    rows = n_count * h
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        n = r // h
        y = r - n * h
        src = x[n, y]
        dst = out[n, y]
        for ch in range(c):
            table = lut[ch]
            for xx in range(w):
                dst[xx, ch] = table[src[xx, ch]]


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
    nt = _plan(_COLOR_WEIGHT * x.size)
    # a scratch row per share: launch runs at most nt shares (T <= nt, see fastreg/cpu/_jit.py);
    # the point ops write a table of 256 even for 0 channels
    scratch = np.empty((max(nt, 1), 512 * max(c, 1) + 4 * w * c), np.int64)
    launch(_color_kernel, nt, xc.reshape(n, h * w * c), codes, params, oc.reshape(n, h * w * c),
           (U(h), U(w), U(c), U(np.shares_memory(xc, oc))), scratch)
    if oc is not out:
        out[...] = oc


def aug_blur(x, weights, out):
    n, h, w, c = x.shape
    k = weights.shape[1]
    tmp = np.empty((n, h, w, c), F32)
    nt = _plan(_BLUR_WEIGHT * x.size)
    launch(_blur_rows_kernel, nt, x, weights, _reflect_table(w, k), tmp)
    launch(_blur_cols_kernel, nt, tmp, weights, _reflect_table(h, k), out)


def _numba_layout(a):
    return "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "A"


def aug_normalize(x, lut, out):
    # the two specializations fastreg warmup compiles: x and out both C-contiguous (NHWC) or
    # both strided views (NCHW); any other pair (a strided or Fortran-order x or out beside a
    # contiguous one) would compile another, so it runs on C-contiguous copies (uint8 x: a
    # quarter of the float32 output's bytes)
    kind = _numba_layout(x)
    if kind == _numba_layout(out) and kind != "F":
        launch(_normalize_kernel, _plan(x.size), x, lut, out)
        return
    x = np.ascontiguousarray(x)
    dst = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    launch(_normalize_kernel, _plan(x.size), x, lut, dst)
    if dst is not out:
        out[...] = dst
