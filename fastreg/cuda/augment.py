"""Image augmentation kernels on the GPU (Numba CUDA): one thread per output pixel (per Philox
block of 4 values for noise, per value for mixup), grid-stride loops.

Same definitions as fastreg/reference/augment.py. Integer paths (flips, rot90, crops, erasing,
cutmix, uint8 bilinear weights) are bit-exact; the float arithmetic may be contracted into fused
multiply-adds by the CUDA compiler, so source coordinates of non-integral maps, noise values and
mixup blends can differ from the reference in the last bits (uint8 results by at most 1).
"""
import math

import numpy as np
from numba import cuda

from .philox import (U0, U8, MASK32, as_device, dev_in, finish, launch_1d, philox4x32_device,
                     split_seed, to_device_args)

F32 = np.float32
LIM = float(1 << 20)
U30 = np.uint64(30)
SQRT2 = F32(1.41421356)
LN2 = F32(0.693147180559945)
TWO_PI_2M24 = F32(2.0 * np.pi / 2 ** 24)
L1, L3, L5, L7, L9 = F32(1.0), F32(1.0 / 3.0), F32(1.0 / 5.0), F32(1.0 / 7.0), F32(1.0 / 9.0)
S3, S5, S7, S9 = F32(-1.0 / 6.0), F32(1.0 / 120.0), F32(-1.0 / 5040.0), F32(1.0 / 362880.0)
C2, C4, C6, C8, C10 = (F32(-0.5), F32(1.0 / 24.0), F32(-1.0 / 720.0), F32(1.0 / 40320.0),
                       F32(-1.0 / 3628800.0))
MAGIC = F32(12582912.0)
F0 = F32(0.0)
F255 = F32(255.0)
INV256 = F32(1.0 / 256.0)


@cuda.jit(device=True)
def quantize_device(s):
    """floor(s * 256 + 0.5) of the clamped coordinate, as int64."""
    s = min(max(s, -LIM), LIM)
    return np.int64(math.floor(s * 256.0 + 0.5))


@cuda.jit(device=True)
def tap_device(i, n, border):
    """Index into an axis of n for tap i: reflected (border 1), clamped (border 2, edge), or -1
    when outside."""
    if border == 1:
        if n == 1:
            return 0
        period = 2 * (n - 1)
        i = i % period
        return period - i if i >= n else i
    if border == 2:
        return 0 if i < 0 else (n - 1 if i >= n else i)
    return i if 0 <= i < n else -1


@cuda.jit(device=True)
def pixel_device(e, ho, wo):
    """(image, row, column) of flat output pixel e."""
    m = e // (ho * wo)
    r = e - m * ho * wo
    v = r // wo
    return m, v, r - v * wo


@cuda.jit(cache=True)
def _flip_kernel(x, hflip, vflip, out):
    nm, h, w, c = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * h * w, stride):
        m, v, u = pixel_device(e, h, w)
        sv = h - 1 - v if vflip[m] != 0 else v
        su = w - 1 - u if hflip[m] != 0 else u
        for k in range(c):
            out[m, v, u, k] = x[m, sv, su, k]


@cuda.jit(device=True)
def source_device(mats, m, u, v):
    fu = float(u)
    fv = float(v)
    qx = quantize_device((mats[m, 0, 0] * fu + mats[m, 0, 1] * fv) + mats[m, 0, 2])
    qy = quantize_device((mats[m, 1, 0] * fu + mats[m, 1, 1] * fv) + mats[m, 1, 2])
    return qx, qy


@cuda.jit(cache=True)
def _affine_u8_kernel(x, mats, border, fill, out):
    nm, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    fillv = np.int64(fill)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * ho * wo, stride):
        m, v, u = pixel_device(e, ho, wo)
        qx, qy = source_device(mats, m, u, v)
        x0 = qx >> 8
        y0 = qy >> 8
        fx = qx & 255
        fy = qy & 255
        ix0 = tap_device(x0, w, border)
        ix1 = tap_device(x0 + 1, w, border)
        iy0 = tap_device(y0, h, border)
        iy1 = tap_device(y0 + 1, h, border)
        for k in range(c):
            v00 = np.int64(x[m, iy0, ix0, k]) if iy0 >= 0 and ix0 >= 0 else fillv
            v01 = np.int64(x[m, iy0, ix1, k]) if iy0 >= 0 and ix1 >= 0 else fillv
            v10 = np.int64(x[m, iy1, ix0, k]) if iy1 >= 0 and ix0 >= 0 else fillv
            v11 = np.int64(x[m, iy1, ix1, k]) if iy1 >= 0 and ix1 >= 0 else fillv
            top = v00 * (256 - fx) + v01 * fx
            bot = v10 * (256 - fx) + v11 * fx
            out[m, v, u, k] = (top * (256 - fy) + bot * fy + 32768) >> 16


@cuda.jit(cache=True)
def _affine_f32_kernel(x, mats, border, fill, out):
    nm, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * ho * wo, stride):
        m, v, u = pixel_device(e, ho, wo)
        qx, qy = source_device(mats, m, u, v)
        x0 = qx >> 8
        y0 = qy >> 8
        fx = qx & 255
        fy = qy & 255
        wx0 = F32(256 - fx) * INV256
        wx1 = F32(fx) * INV256
        wy0 = F32(256 - fy) * INV256
        wy1 = F32(fy) * INV256
        ix0 = tap_device(x0, w, border)
        ix1 = tap_device(x0 + 1, w, border)
        iy0 = tap_device(y0, h, border)
        iy1 = tap_device(y0 + 1, h, border)
        for k in range(c):
            v00 = x[m, iy0, ix0, k] if iy0 >= 0 and ix0 >= 0 else fill
            top = v00
            if fx != 0:
                v01 = x[m, iy0, ix1, k] if iy0 >= 0 and ix1 >= 0 else fill
                top = v00 * wx0 + v01 * wx1
            if fy == 0:
                out[m, v, u, k] = top
            else:
                v10 = x[m, iy1, ix0, k] if iy1 >= 0 and ix0 >= 0 else fill
                bot = v10
                if fx != 0:
                    v11 = x[m, iy1, ix1, k] if iy1 >= 0 and ix1 >= 0 else fill
                    bot = v10 * wx0 + v11 * wx1
                out[m, v, u, k] = top * wy0 + bot * wy1


@cuda.jit(cache=True)
def _affine_nearest_kernel(x, mats, border, fill, out):
    nm, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * ho * wo, stride):
        m, v, u = pixel_device(e, ho, wo)
        qx, qy = source_device(mats, m, u, v)
        ix = tap_device((qx + 128) >> 8, w, border)
        iy = tap_device((qy + 128) >> 8, h, border)
        for k in range(c):
            if ix >= 0 and iy >= 0:
                out[m, v, u, k] = x[m, iy, ix, k]
            else:
                out[m, v, u, k] = fill


@cuda.jit(device=True)
def box_muller_device(w0, w1):
    """Two float32 normals from two words, as fastreg.reference.augment.box_muller (the
    exponent found by integer search instead of a bit cast: the same m and e)."""
    a = np.int64(w0 >> U8) + 1
    t = a
    e = 0
    if t >= 65536:
        t >>= 16
        e += 16
    if t >= 256:
        t >>= 8
        e += 8
    if t >= 16:
        t >>= 4
        e += 4
    if t >= 4:
        t >>= 2
        e += 2
    if t >= 2:
        e += 1
    mm = F32(a) / F32(1 << e)          # exact: a has at most 24 bits
    if mm > SQRT2:
        mm = mm * F32(0.5)
        e += 1
    f = (mm - L1) / (mm + L1)
    f2 = f * f
    p = L7 + f2 * L9
    p = L5 + f2 * p
    p = L3 + f2 * p
    p = L1 + f2 * p
    lnu = F32(e - 24) * LN2 + F32(2.0) * f * p
    rr = math.sqrt(F32(-2.0) * lnu)
    vv = np.int64(w1 >> U8)
    k = (vv + (1 << 21)) >> 22
    d = vv - (k << 22)
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
    q = k & 3
    ct = cc
    st = s
    if q == 1:
        ct = -s
        st = cc
    elif q == 2:
        ct = -cc
        st = -s
    elif q == 3:
        ct = s
        st = -cc
    return F32(rr) * ct, F32(rr) * st


@cuda.jit(device=True)
def noise_one_device(x, out, row, j, length, std, z, is_u8):
    if j < length:
        y = F32(x[row, j]) + std * z
        if is_u8:
            y = min(max(y, F0), F255)
            out[row, j] = (y + MAGIC) - MAGIC
        else:
            out[row, j] = y


@cuda.jit(cache=True)
def _noise_kernel(x, k0, k1, first, stds, out, is_u8):
    # Thread t: Philox block j of row `row` = values 4j .. 4j + 3 of that sample.
    n, length = x.shape
    nb = (length + 3) // 4
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, n * nb, stride):
        row = t // nb
        j = t - row * nb
        b = ((first + np.uint64(row)) << U30) + np.uint64(j)
        w0, w1, w2, w3 = philox4x32_device(b & MASK32, b >> np.uint64(32), U0, U0, k0, k1)
        z0, z1 = box_muller_device(w0, w1)
        z2, z3 = box_muller_device(w2, w3)
        std = stds[row]
        noise_one_device(x, out, row, 4 * j, length, std, z0, is_u8)
        noise_one_device(x, out, row, 4 * j + 1, length, std, z1, is_u8)
        noise_one_device(x, out, row, 4 * j + 2, length, std, z2, is_u8)
        noise_one_device(x, out, row, 4 * j + 3, length, std, z3, is_u8)


@cuda.jit(cache=True)
def _erase_kernel(x, rects, value, out):
    nm, h, w, c = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * h * w, stride):
        m, v, u = pixel_device(e, h, w)
        inside = (rects[m, 0] <= v < rects[m, 0] + rects[m, 2]
                  and rects[m, 1] <= u < rects[m, 1] + rects[m, 3])
        for k in range(c):
            if inside:
                out[m, v, u, k] = value
            else:
                out[m, v, u, k] = x[m, v, u, k]


@cuda.jit(cache=True)
def _mix_kernel(x, partner, lam, out, is_u8):
    n, length = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, n * length, stride):
        r = e // length
        i = e - r * length
        a = lam[r]
        y = F32(x[r, i]) * a + F32(x[partner[r], i]) * (F32(1.0) - a)
        if is_u8:
            y = min(max(y, F0), F255)
            out[r, i] = (y + MAGIC) - MAGIC
        else:
            out[r, i] = y


@cuda.jit(cache=True)
def _paste_kernel(x, partner, rects, out):
    nm, h, w, c = x.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, nm * h * w, stride):
        m, v, u = pixel_device(e, h, w)
        src = m
        if rects[m, 0] <= v < rects[m, 0] + rects[m, 2] and \
                rects[m, 1] <= u < rects[m, 1] + rects[m, 3]:
            src = partner[m]
        for k in range(c):
            out[m, v, u, k] = x[src, v, u, k]


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def _u8(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype == np.bool_ else a.astype(np.uint8)


def aug_flip(x, hflip, vflip, out):
    """out[m] = x[m] flipped where hflip / vflip (see fastreg.reference.augment).

    Parameters
    ----------
    x, out : device or host arrays (M, H, W, C)
    hflip, vflip : host arrays (M,), bool or uint8

    Returns
    -------
    None
    """
    (x_d, h_d, v_d), out_d = to_device_args((x, _u8(hflip), _u8(vflip)), out)
    launch_1d(_flip_kernel, x_d.shape[0] * x_d.shape[1] * x_d.shape[2], x_d, h_d, v_d, out_d)
    finish(out, out_d)


def aug_affine(x, mats, border, fill, nearest, out):
    """Resample through per-image inverse maps (see fastreg.reference.augment).

    Parameters
    ----------
    x : device or host array (M, H, W, C)
    mats : host array float64 (M, 2, 3)
    border : int
        0 constant, 1 reflect.
    fill : float
        Cast to x's dtype.
    nearest : bool
    out : device or host array (M, Ho, Wo, C)

    Returns
    -------
    None
    """
    (x_d, m_d), out_d = to_device_args((x, np.ascontiguousarray(mats, np.float64)), out)
    dtype = np.dtype(x_d.dtype)
    fill = dtype.type(fill)
    if nearest:
        kernel = _affine_nearest_kernel
    elif dtype == np.uint8:
        kernel = _affine_u8_kernel
    else:
        kernel = _affine_f32_kernel
    launch_1d(kernel, out_d.shape[0] * out_d.shape[1] * out_d.shape[2], x_d, m_d,
              np.int64(border), fill, out_d)
    finish(out, out_d)


def aug_noise(x, key, first, stds, out):
    """Gaussian noise from the Philox stream of ``key`` (see fastreg.reference.augment).

    Parameters
    ----------
    x, out : device or host arrays (N, L), uint8 or float32; out may be x
    key : int
        The op's noise key.
    first : int
        Global index of row 0.
    stds : host array float32 (N,)

    Returns
    -------
    None
    """
    same = out is x
    (x_d, s_d), out_d = to_device_args((x, np.ascontiguousarray(stds, np.float32)), out)
    if same:
        out_d = x_d
    n, length = x_d.shape
    k0, k1 = split_seed(key)
    launch_1d(_noise_kernel, n * ((length + 3) // 4), x_d, k0, k1, np.uint64(first), s_d, out_d,
              np.dtype(x_d.dtype) == np.uint8)
    finish(out, out_d)


def aug_erase(x, rects, value, out):
    """Rectangles set to value (see fastreg.reference.augment); out may be x.

    Parameters
    ----------
    x, out : device or host arrays (M, H, W, C)
    rects : host array int64 (M, 4)
    value : float

    Returns
    -------
    None
    """
    same = out is x
    (x_d, r_d), out_d = to_device_args((x, np.ascontiguousarray(rects, np.int64)), out)
    if same:
        out_d = x_d
    launch_1d(_erase_kernel, x_d.shape[0] * x_d.shape[1] * x_d.shape[2], x_d, r_d,
              np.dtype(x_d.dtype).type(value), out_d)
    finish(out, out_d)


def aug_mix(x, partner, lam, out):
    """out[n] = x[n] lam[n] + x[partner[n]] (1 - lam[n]) (see fastreg.reference.augment).

    Parameters
    ----------
    x, out : device or host arrays (N, L)
    partner : host array int64 (N,)
    lam : host array float32 (N,)

    Returns
    -------
    None
    """
    (x_d, p_d, l_d), out_d = to_device_args(
        (x, np.ascontiguousarray(partner, np.int64), np.ascontiguousarray(lam, np.float32)), out)
    launch_1d(_mix_kernel, x_d.size, x_d, p_d, l_d, out_d, np.dtype(x_d.dtype) == np.uint8)
    finish(out, out_d)


def aug_paste(x, partner, rects, out):
    """CutMix paste (see fastreg.reference.augment).

    Parameters
    ----------
    x, out : device or host arrays (M, H, W, C)
    partner : host array int64 (M,)
    rects : host array int64 (M, 4)

    Returns
    -------
    None
    """
    (x_d, p_d, r_d), out_d = to_device_args(
        (x, np.ascontiguousarray(partner, np.int64), np.ascontiguousarray(rects, np.int64)), out)
    launch_1d(_paste_kernel, x_d.shape[0] * x_d.shape[1] * x_d.shape[2], x_d, p_d, r_d, out_d)
    finish(out, out_d)


__all__ = ["aug_flip", "aug_affine", "aug_noise", "aug_erase", "aug_mix", "aug_paste",
           "box_muller_device", "as_device", "dev_in"]
