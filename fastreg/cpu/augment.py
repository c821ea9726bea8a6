"""Image augmentation kernels on the CPU with Numba (definitions and contract in
fastreg/reference/augment.py; bit for bit the same results).

Parallel over (image, output row) for the geometric kernels and over (sample, block of values)
for Gaussian noise: each kernel is a ``split`` kernel (fastreg/cpu/_jit.py), ``k(*args, share,
shares)`` runs share ``share`` of ``shares`` of those work items, compiled once. Kernels take
the per-sample parameters as arrays (flags, inverse maps, rectangles, lambdas) and never draw
random numbers, except ``aug_noise``, which draws its Philox words in blocks of CHUNK values as
fastreg.cpu.philox does.
"""
import math

import numpy as np

from .. import _threads
from ._jit import inline, jit, launch, split
from .philox import MASK, S32, ZERO, philox_rounds

F32 = np.float32
LIM = float(1 << 20)
SQRT2 = F32(1.41421356)
LN2 = F32(0.693147180559945)
TWO_PI_2M24 = F32(2.0 * np.pi / 2 ** 24)
L1, L3, L5, L7, L9 = F32(1.0), F32(1.0 / 3.0), F32(1.0 / 5.0), F32(1.0 / 7.0), F32(1.0 / 9.0)
S3, S5, S7, S9 = F32(-1.0 / 6.0), F32(1.0 / 120.0), F32(-1.0 / 5040.0), F32(1.0 / 362880.0)
C2, C4, C6, C8, C10 = (F32(-0.5), F32(1.0 / 24.0), F32(-1.0 / 720.0), F32(1.0 / 40320.0),
                       F32(-1.0 / 3628800.0))
MAGIC = F32(12582912.0)
NOISE_CHUNK = 2048     # values per noise task (a multiple of 4: tasks start on Philox blocks)


# --- geometric kernels ----------------------------------------------------------------------------

@inline
def _reverse_rgb(src, dst, w):
    """dst = src with its 3-value pixels in reverse order. Unsigned indices: Numba then emits no
    negative-index wrap-around, and LLVM vectorizes the stride-3 loop (3x faster)."""
    n = np.uint64(3 * w)
    one = np.uint64(1)
    two = np.uint64(2)
    three = np.uint64(3)
    for u in range(w):
        uu = np.uint64(u)
        sp = n - three - three * uu
        dp = three * uu
        dst[dp] = src[sp]
        dst[dp + one] = src[sp + one]
        dst[dp + two] = src[sp + two]


@split
def _flip_kernel(x, hflip, vflip, out, share, shares):
    m_count, h, w, c = x.shape
    rows = m_count * h
    # the images as rows, reshaped once: a reshape per row cost as much as copying the row
    # (224x224x3 uint8: 0.60 -> 0.34 ms per 32 images unflipped, one thread)
    xr = x.reshape(rows, w * c)
    outr = out.reshape(rows, w * c)
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // h
        v = r - m * h
        sv = h - 1 - v if vflip[m] else v
        src = xr[m * h + sv]
        dst = outr[r]
        if hflip[m]:
            if c == 1:
                last = np.uint64(w - 1)
                for u in range(w):
                    dst[np.uint64(u)] = src[last - np.uint64(u)]
            elif c == 3:
                _reverse_rgb(src, dst, w)
            else:
                for u in range(w):
                    s = c * (w - 1 - u)
                    for k in range(c):
                        dst[c * u + k] = src[s + k]
        else:
            for u in range(dst.size):   # a loop, not dst[:] = src (its shape check: 3 s compile)
                dst[u] = src[u]


@inline
def quantize(s):
    """floor(s * 256 + 0.5) of the clamped coordinate, as int64."""
    s = min(max(s, -LIM), LIM)
    return np.int64(math.floor(s * 256.0 + 0.5))


@inline
def reflect(i, n):
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    return period - i if i >= n else i


@jit
def tap_index(i, n, border):
    """Index into an axis of n for the tap i: reflected, clamped (edge), or -1 when outside
    (constant). Compiled
    once and called (LLVM still inlines it): inlined into Numba's IR at the 4 call sites of a
    kernel it was typed 4 times (about 0.4 s more of cold compile)."""
    if border == 1:
        return reflect(i, n)
    if border == 2:   # edge
        return 0 if i < 0 else (n - 1 if i >= n else i)
    return i if 0 <= i < n else -1


@split
def _affine_u8_kernel(x, mats, border, fill, out, share, shares):
    m_count, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    fillv = np.int32(fill)
    rows = m_count * ho
    qx = np.empty(wo, np.int64)   # a row's source points (once per share, not per row)
    qy = np.empty(wo, np.int64)
    xflat = x.reshape(m_count, h * w * c)   # (reshaped once, not per row)
    outr = out.reshape(rows, wo * c)
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // ho
        v = r - m * ho
        fv = float(v)
        a00, a01, a02 = mats[m, 0, 0], mats[m, 0, 1], mats[m, 0, 2]
        a10, a11, a12 = mats[m, 1, 0], mats[m, 1, 1], mats[m, 1, 2]
        img = x[m]
        dst = out[m, v]
        flat = xflat[m]
        dflat = outr[r]
        for u in range(wo):   # the source points of the row: a vectorized pass
            fu = float(u)
            qx[u] = quantize((a00 * fu + a01 * fv) + a02)
            qy[u] = quantize((a10 * fu + a11 * fv) + a12)
        for u in range(wo):
            x0 = qx[u] >> 8
            y0 = qy[u] >> 8
            fx = np.int32(qx[u] & 255)
            fy = np.int32(qy[u] & 255)
            gx = np.int32(256) - fx
            gy = np.int32(256) - fy
            if x0 >= 0 and y0 >= 0 and x0 + 1 < w and y0 + 1 < h:   # interior: 4 taps
                # unsigned indices: no negative-index wrap-around code in the hot loop
                b0 = np.uint64((y0 * w + x0) * c)
                b1 = b0 + np.uint64(c)
                b2 = b0 + np.uint64(w * c)
                b3 = b2 + np.uint64(c)
                d0 = np.uint64(u * c)
                if c == 3:   # unrolled RGB
                    for kk in (np.uint64(0), np.uint64(1), np.uint64(2)):
                        top = np.int32(flat[b0 + kk]) * gx + np.int32(flat[b1 + kk]) * fx
                        bot = np.int32(flat[b2 + kk]) * gx + np.int32(flat[b3 + kk]) * fx
                        dflat[d0 + kk] = (top * gy + bot * fy + np.int32(32768)) >> np.int32(16)
                    continue
                for k in range(c):
                    kk = np.uint64(k)
                    top = np.int32(flat[b0 + kk]) * gx + np.int32(flat[b1 + kk]) * fx
                    bot = np.int32(flat[b2 + kk]) * gx + np.int32(flat[b3 + kk]) * fx
                    dflat[d0 + kk] = (top * gy + bot * fy + np.int32(32768)) >> np.int32(16)
            else:
                ix0 = tap_index(x0, w, border)
                ix1 = tap_index(x0 + 1, w, border)
                iy0 = tap_index(y0, h, border)
                iy1 = tap_index(y0 + 1, h, border)
                for k in range(c):
                    v00 = np.int32(img[iy0, ix0, k]) if iy0 >= 0 and ix0 >= 0 else fillv
                    v01 = np.int32(img[iy0, ix1, k]) if iy0 >= 0 and ix1 >= 0 else fillv
                    v10 = np.int32(img[iy1, ix0, k]) if iy1 >= 0 and ix0 >= 0 else fillv
                    v11 = np.int32(img[iy1, ix1, k]) if iy1 >= 0 and ix1 >= 0 else fillv
                    top = v00 * gx + v01 * fx
                    bot = v10 * gx + v11 * fx
                    dst[u, k] = (top * gy + bot * fy + np.int32(32768)) >> np.int32(16)


@split
def _affine_f32_kernel(x, mats, border, fill, out, share, shares):
    m_count, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    inv = F32(1.0 / 256.0)
    rows = m_count * ho
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // ho
        v = r - m * ho
        fv = float(v)
        a00, a01, a02 = mats[m, 0, 0], mats[m, 0, 1], mats[m, 0, 2]
        a10, a11, a12 = mats[m, 1, 0], mats[m, 1, 1], mats[m, 1, 2]
        img = x[m]
        dst = out[m, v]
        for u in range(wo):
            fu = float(u)
            qx = quantize((a00 * fu + a01 * fv) + a02)
            qy = quantize((a10 * fu + a11 * fv) + a12)
            x0 = qx >> 8
            y0 = qy >> 8
            fx = qx & 255
            fy = qy & 255
            wx0 = F32(256 - fx) * inv
            wx1 = F32(fx) * inv
            wy0 = F32(256 - fy) * inv
            wy1 = F32(fy) * inv
            ix0 = tap_index(x0, w, border)
            ix1 = tap_index(x0 + 1, w, border)
            iy0 = tap_index(y0, h, border)
            iy1 = tap_index(y0 + 1, h, border)
            for k in range(c):
                v00 = img[iy0, ix0, k] if iy0 >= 0 and ix0 >= 0 else fill
                if fx == 0:
                    top = v00
                else:
                    v01 = img[iy0, ix1, k] if iy0 >= 0 and ix1 >= 0 else fill
                    top = v00 * wx0 + v01 * wx1
                if fy == 0:
                    dst[u, k] = top
                else:
                    v10 = img[iy1, ix0, k] if iy1 >= 0 and ix0 >= 0 else fill
                    if fx == 0:
                        bot = v10
                    else:
                        v11 = img[iy1, ix1, k] if iy1 >= 0 and ix1 >= 0 else fill
                        bot = v10 * wx0 + v11 * wx1
                    dst[u, k] = top * wy0 + bot * wy1


@split
def _affine_nearest_kernel(x, mats, border, fill, out, share, shares):
    m_count, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    rows = m_count * ho
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // ho
        v = r - m * ho
        fv = float(v)
        a00, a01, a02 = mats[m, 0, 0], mats[m, 0, 1], mats[m, 0, 2]
        a10, a11, a12 = mats[m, 1, 0], mats[m, 1, 1], mats[m, 1, 2]
        img = x[m]
        dst = out[m, v]
        for u in range(wo):
            fu = float(u)
            ix = tap_index((quantize((a00 * fu + a01 * fv) + a02) + 128) >> 8, w, border)
            iy = tap_index((quantize((a10 * fu + a11 * fv) + a12) + 128) >> 8, h, border)
            if ix >= 0 and iy >= 0:
                for k in range(c):
                    dst[u, k] = img[iy, ix, k]
            else:
                for k in range(c):
                    dst[u, k] = fill


# --- Gaussian noise -------------------------------------------------------------------------------

@inline
def box_muller(w0, w1):
    """Two float32 normals from two uint32 words, exactly as
    fastreg.reference.augment.box_muller (written with selects so that LLVM vectorizes it)."""
    a = F32((w0 >> np.uint32(8)) + np.uint32(1))
    bits = a.view(np.uint32)
    e = np.int32(bits >> np.uint32(23)) - np.int32(127)
    mm = np.uint32((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32)
    big = mm > SQRT2
    mm = mm * F32(0.5) if big else mm
    e = e + np.int32(1) if big else e
    f = (mm - L1) / (mm + L1)
    f2 = f * f
    p = L7 + f2 * L9
    p = L5 + f2 * p
    p = L3 + f2 * p
    p = L1 + f2 * p
    lnu = F32(e - np.int32(24)) * LN2 + F32(2.0) * f * p
    rr = np.sqrt(F32(-2.0) * lnu)
    vv = np.int32(w1 >> np.uint32(8))
    k = (vv + np.int32(1 << 21)) >> np.int32(22)
    d = vv - (k << np.int32(22))
    phi = F32(d) * TWO_PI_2M24
    p2 = phi * phi
    s = S7 + p2 * S9
    s = S5 + p2 * s
    s = S3 + p2 * s
    s = phi + phi * (p2 * s)
    cc = C8 + p2 * C10
    cc = C6 + p2 * cc
    cc = C4 + p2 * cc
    cc = C2 + p2 * cc
    cc = L1 + p2 * cc
    q = k & np.int32(3)
    # quadrant q: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c)
    swap = (q & np.int32(1)) != 0
    ct = s if swap else cc
    st = cc if swap else s
    ct = -ct if (q == 1 or q == 2) else ct
    st = -st if q >= 2 else st
    return rr * ct, rr * st


@split
def _noise_kernel(x, key, first, stds, out, is_u8, share, shares):
    n, length = x.shape
    k0 = key & MASK
    k1 = key >> S32
    chunks = (length + NOISE_CHUNK - 1) // NOISE_CHUNK
    tasks = n * chunks
    lanes = np.empty((4, NOISE_CHUNK // 4), np.uint32)   # (once per share, not per task)
    z = np.empty((4, NOISE_CHUNK // 4), np.float32)
    for t in range(share * tasks // shares, (share + 1) * tasks // shares):
        row = t // chunks
        j0 = (t - row * chunks) * NOISE_CHUNK
        count = min(NOISE_CHUNK, length - j0)
        nb = (count + 3) // 4
        # word (i << 32) + j lies in Philox block (i << 30) + (j >> 2)
        b0 = ((first + np.uint64(row)) << np.uint64(30)) + np.uint64(j0 >> 2)
        for j in range(nb):   # Philox, vectorized over blocks (unit-stride lane rows)
            b = b0 + np.uint64(j)
            r0, r1, r2, r3 = philox_rounds(b & MASK, b >> S32, ZERO, ZERO, k0, k1)
            lanes[0, j] = r0
            lanes[1, j] = r1
            lanes[2, j] = r2
            lanes[3, j] = r3
        for q in range(0, 4, 2):   # Box-Muller on the pairs (words 4j, 4j+1) and (4j+2, 4j+3)
            for j in range(nb):       # (one call site: box_muller is inlined, typed per site)
                z0, z1 = box_muller(lanes[q, j], lanes[q + 1, j])
                z[q, j] = z0
                z[q + 1, j] = z1
        std = stds[row]
        xs = x[row, j0:j0 + count]
        o = out[row, j0:j0 + count]
        full = count // 4
        # one store loop for both dtypes (is_u8 is loop-invariant: LLVM unswitches it); the
        # float32 sum is stored rounded to uint8 or as is
        for j in range(full):
            for q in range(4):
                y = F32(xs[4 * j + q]) + std * z[q, j]
                if is_u8:
                    y = (min(max(y, F32(0.0)), F32(255.0)) + MAGIC) - MAGIC
                o[4 * j + q] = y
        for i in range(4 * full, count):
            y = F32(xs[i]) + std * z[i - 4 * full, full]
            if is_u8:
                y = (min(max(y, F32(0.0)), F32(255.0)) + MAGIC) - MAGIC
            o[i] = y


# --- erasing, mixup, cutmix -----------------------------------------------------------------------

@split
def _erase_kernel(x, rects, value, out, same, share, shares):
    m_count, h, w, c = x.shape
    rows = m_count * h
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // h
        v = r - m * h
        # element loops, not slice assignments (their shape checks compile for seconds)
        if not same:
            for u in range(w):
                for k in range(c):
                    out[m, v, u, k] = x[m, v, u, k]
        y0, x0, eh, ew = rects[m, 0], rects[m, 1], rects[m, 2], rects[m, 3]
        if y0 <= v < y0 + eh:
            for u in range(max(x0, 0), min(x0 + ew, w)):
                for k in range(c):
                    out[m, v, u, k] = value


@split
def _mix_kernel(x, partner, lam, out, is_u8, share, shares):
    n, length = x.shape
    for r in range(share * n // shares, (share + 1) * n // shares):
        a = lam[r]
        b = F32(1.0) - a
        xs = x[r]
        ps = x[partner[r]]
        o = out[r]
        if is_u8:
            for i in range(length):
                y = F32(xs[i]) * a + F32(ps[i]) * b
                y = min(max(y, F32(0.0)), F32(255.0))
                o[i] = np.uint8((y + MAGIC) - MAGIC)
        else:
            for i in range(length):
                o[i] = xs[i] * a + ps[i] * b


@split
def _paste_kernel(x, partner, rects, out, share, shares):
    m_count, h, w, c = x.shape
    rows = m_count * h
    for r in range(share * rows // shares, (share + 1) * rows // shares):
        m = r // h
        v = r - m * h
        # element loops, not slice assignments (their shape checks compile for seconds)
        for u in range(w):
            for k in range(c):
                out[m, v, u, k] = x[m, v, u, k]
        y0, x0, eh, ew = rects[m, 0], rects[m, 1], rects[m, 2], rects[m, 3]
        if y0 <= v < y0 + eh:
            p = partner[m]
            for u in range(max(x0, 0), min(x0 + ew, w)):
                for k in range(c):
                    out[m, v, u, k] = x[p, v, u, k]


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

# The "augment" grain counts bytes of image copied; resampling and noise cost more per byte, so
# their work is weighted (measured with bench/grain.py, see fastreg._threads.GRAIN).
_AFFINE_WEIGHT = 16  # bilinear: four taps and their weights per output byte
_NOISE_WEIGHT = 16   # per value: a Philox word and a Box-Muller transform


def _plan(work):
    return _threads.plan(work, "augment")


def aug_flip(x, hflip, vflip, out):
    launch(_flip_kernel, _plan(x.nbytes), x, hflip.view(np.uint8), vflip.view(np.uint8), out)


def aug_affine(x, mats, border, fill, nearest, out):
    fill = x.dtype.type(fill)
    nt = _plan(_AFFINE_WEIGHT * out.nbytes)
    if nearest:
        launch(_affine_nearest_kernel, nt, x, mats, np.int64(border), fill, out)
    elif x.dtype == np.uint8:
        launch(_affine_u8_kernel, nt, x, mats, np.int64(border), fill, out)
    else:
        launch(_affine_f32_kernel, nt, x, mats, np.int64(border), fill, out)


def aug_noise(x, key, first, stds, out):
    launch(_noise_kernel, _plan(_NOISE_WEIGHT * x.size), x, np.uint64(key), np.uint64(first),
           stds, out, x.dtype == np.uint8)


def aug_erase(x, rects, value, out):
    launch(_erase_kernel, _plan(x.nbytes), x, rects, x.dtype.type(value), out, out is x)


def aug_mix(x, partner, lam, out):
    launch(_mix_kernel, _plan(x.nbytes), x, partner, lam, out, x.dtype == np.uint8)


def aug_paste(x, partner, rects, out):
    launch(_paste_kernel, _plan(x.nbytes), x, partner, rects, out)
