"""Colour and intensity augmentation in plain NumPy: the oracle for the colour kernels, and the
per-sample parameters of RandAugment, TrivialAugmentWide, ColorJitter and GaussianBlur.

Definitions follow torchvision's ``transforms.v2.functional`` tensor ops on uint8 images,
reimplemented (fastreg.augment.color lists where we differ):

- ``fma32(a, b, c)``: the float32 fused multiply-add ``a * b + c`` rounded once (computed in
  float64 and rounded to odd, then to float32: correctly rounded for every input).
- ``blend(a, b, r)`` = ``trunc(clamp(fma32(f32(b), f32(1 - r), f32(a) * f32(r)), 0, 255))``
  (torchvision's ``_blend``: ``image1.mul(r).add_(image2, alpha=1 - r)``, and torch's
  vectorized ``add_`` with ``alpha`` is a fused multiply-add: equal to torch 2.13 on this CPU,
  tests/test_augment_color_backends.py; ``clamp_``, ``.to(uint8)`` truncates).
- brightness(f): ``trunc(clamp(f32(v) * f32(f), 0, 255))``.
- grayscale (``_rgb_to_grayscale_image``): ``t = f32(r) * f32(.2989)``,
  ``t = fma32(f32(g), f32(.587), t)``, ``t = fma32(f32(b), f32(.114), t)`` (torch's
  vectorized ``add_(.., alpha=)`` is a fused multiply-add), then ``floor``.
- saturation(f) ("Color"): ``blend(v, gray, f)`` per channel (1 channel: unchanged).
- contrast(f): ``blend(v, mean, f)``, mean = ``f32(sum(gray) / (H W))`` (float64 division of
  the exact integer sum; 1 channel: the values themselves).
- sharpness(f): interior pixels only (images with H or W <= 2 unchanged); ``S`` = the 3x3
  neighbourhood sum with the centre counted 5 times (torchvision's kernel [1 1 1; 1 5 1; 1 1 1]
  / 13), ``blurred = round(S / 13)`` (never a tie: S / 13 is exact as ``(2 S + 13) // 26``),
  ``y = fma32(f32(blurred - v), f32(1 - f), f32(v))``, ``trunc(clamp(y, 0, 255))``.
- posterize(bits): ``v & (((1 << bits) - 1) << (8 - bits))``.
- solarize(t): ``255 - v`` where ``v >= f32(t)``.
- autocontrast: per channel, min m and max M over the image; M == m: unchanged; else
  ``trunc(clamp(f32(v - m) / f32(f32(M - m) * f32(1 / 255)), 0, 255))``.
- equalize: per channel, PIL's rule as torchvision's ``equalize_image``: histogram h, cumulative
  c, ``step = (count - h[last non-empty bin]) // 255``; step == 0: unchanged; else
  ``lut[0] = 0``, ``lut[k] = min((c[k - 1] + step // 2) // step, 255)``.
- Gaussian blur: per-sample float32 1-D kernel w (K taps) applied along rows then columns with
  NumPy "reflect" borders, each tap accumulated ``acc = acc + w[k] * v`` in float32 from 0 in
  tap order; ``round-half-even(clamp(acc, 0, 255))``.
- hue(f) (``f`` in [-0.5, 0.5]; 1 channel: unchanged): torchvision's ``adjust_hue`` on uint8,
  every step a float32 operation in torch's order: ``x = f32(v) * f32(1 / 255)``;
  ``_rgb_to_hsv`` (PIL's formulas: ``s = (M - m) / M``, ``rc = (M - r) / (M - m)``, ...,
  ``h = fmod(h * f32(1 / 6) + 1, 1)``); ``h = remainder(h + f32(f), 1)``; ``_hsv_to_rgb``
  (``i = floor(6 h) mod 6``, ``p, q, t`` clamped to <= 1, the (v, p, q, t) selection table);
  back to uint8 as ``to_dtype(uint8, scale=True)``: ``trunc(rgb * f32(255.999))``.
- normalize: float32 ``(f32(v) * f32(1 / 255) - mean[c]) / std[c]`` (torchvision's
  ``to_dtype(float32, scale=True)`` then ``normalize``); ``scale=False`` drops the ``* 1/255``.

Kernel contract (every backend module with colour kernels has these names)
--------------------------------------------------------------------------
Images are uint8 NHWC views ``(N, H, W, C)``, C in {1, 3} for ``aug_color``; they may be
strided (an NCHW batch is passed as ``x.transpose(0, 2, 3, 1)``).

    aug_color(x, codes, params, out)
        codes int64 (N,), params float64 (N,): sample n gets op ``codes[n]`` (see OP_CODES) with
        parameter ``params[n]`` (factor, bits or threshold); ``SKIP``: out[n] not written.
        out may be x.
    aug_blur(x, weights, out)
        weights float32 (N, K), K odd and K // 2 < min(H, W). out is not x.
    aug_normalize(x, lut, out)
        lut float32 (C, 256); out float32 (N, H, W, C): ``out[..., c] = lut[c, x[..., c]]``.

Random parameters: the same scheme as fastreg.reference.augment (draw d of global sample i is
word ``(i << 32) + d`` of the op key of ``(seed, epoch, code << 8 | position)``).
"""
import math

import numpy as np

from . import augment as ref

F32 = np.float32

# op codes of the policies, ColorJitter and GaussianBlur (tags ``code << 8 | position``; chosen
# far from fastreg.reference.augment.CODES)
CODES = {"randaugment": 32, "trivialaugment": 33, "colorjitter": 34, "blur": 35}

# aug_color op codes
SKIP, IDENTITY, BRIGHTNESS, SATURATION, CONTRAST, SHARPNESS, POSTERIZE, SOLARIZE, \
    AUTOCONTRAST, EQUALIZE, HUE = -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
OP_CODES = {"identity": IDENTITY, "brightness": BRIGHTNESS, "saturation": SATURATION,
            "contrast": CONTRAST, "sharpness": SHARPNESS, "posterize": POSTERIZE,
            "solarize": SOLARIZE, "autocontrast": AUTOCONTRAST, "equalize": EQUALIZE,
            "hue": HUE}

GRAY_R, GRAY_G, GRAY_B = F32(0.2989), F32(0.587), F32(0.114)
INV255 = F32(1.0 / 255.0)
SIXTH = F32(1.0 / 6.0)
TO_U8 = F32(255.999)         # torchvision's to_dtype(uint8, scale=True): 255 + 1 - 1e-3
# _hsv_to_rgb: which of (v, p, q, t) is r, g, b for sector i = 0..5
HSV_SELECT = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], np.int64)
MAGIC = F32(12582912.0)


# --- pixel definitions ----------------------------------------------------------------------------

def trunc_u8(y):
    """float32 -> uint8 as torch's ``clamp_(0, 255).to(uint8)``: clamp, truncate."""
    return np.minimum(np.maximum(y, F32(0)), F32(255)).astype(np.uint8)


def fma32(a, b, c):
    """float32 fused multiply-add ``a * b + c`` (float32 arrays), rounded once: the product is
    exact in float64; the float64 sum is rounded to odd (nudged to its odd neighbour when it is
    inexact and even), which then rounds to float32 correctly (53 >= 24 + 2 bits)."""
    a, b, c = np.broadcast_arrays(*(np.asarray(v, F32).astype(np.float64) for v in (a, b, c)))
    shape = a.shape
    a, b, c = (v.reshape(-1) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)          # TwoSum: s + e == p + c exactly
    bits = s.view(np.int64)
    odd = np.where((e != 0) & ((bits & 1) == 0), bits + np.where((e > 0) == (s > 0), 1, -1), bits)
    return odd.view(np.float64).astype(F32).reshape(shape)


def blend(a, b, r):
    """torchvision's ``_blend`` on uint8: a, b arrays (b may be float32), r a Python float."""
    a = np.asarray(a, F32)
    b = np.broadcast_to(np.asarray(b, F32), a.shape)
    return trunc_u8(fma32(b, np.full(a.shape, F32(1.0 - r)), a * F32(r)))


def gray(img):
    """floor of the float32 luma of an (H, W, 3) uint8 image, as float32 (H, W)."""
    r, g, b = (img[..., k].astype(F32) for k in range(3))
    t = r * GRAY_R
    t = fma32(g, np.full_like(g, GRAY_G), t)
    t = fma32(b, np.full_like(b, GRAY_B), t)
    return np.floor(t)


def brightness(img, f):
    return trunc_u8(img.astype(F32) * F32(f))


def saturation(img, f):
    if img.shape[-1] == 1:
        return img.copy()
    return blend(img, gray(img)[..., None], f)


def contrast(img, f):
    h, w, c = img.shape
    g = gray(img) if c == 3 else img[..., 0].astype(F32)
    total = float(np.sum(g, dtype=np.float64))
    mean = F32(total / (h * w)) if h * w else F32(0)
    return blend(img, np.full(img.shape, mean, F32), f)


def sharpness(img, f):
    h, w, c = img.shape
    out = img.copy()
    if h <= 2 or w <= 2:
        return out
    x = img.astype(np.int64)
    s = np.zeros((h - 2, w - 2, c), np.int64)
    for dy in range(3):
        for dx in range(3):
            s += x[dy:dy + h - 2, dx:dx + w - 2]
    centre = x[1:-1, 1:-1]
    s += 4 * centre
    blurred = (2 * s + 13) // 26
    d = (blurred - centre).astype(F32)
    y = fma32(d, np.full_like(d, F32(1.0 - f)), centre.astype(F32))
    out[1:-1, 1:-1] = trunc_u8(y)
    return out


def posterize(img, bits):
    bits = int(bits)
    mask = ((1 << bits) - 1) << (8 - bits)
    return img & np.uint8(mask)


def solarize(img, threshold):
    t = F32(threshold)
    return np.where(img.astype(F32) >= t, 255 - img, img).astype(np.uint8)


def autocontrast(img):
    out = img.copy()
    for k in range(img.shape[-1]):
        v = img[..., k]
        if v.size == 0:
            continue
        lo, hi = int(v.min()), int(v.max())
        if lo == hi:
            continue
        inv = F32(hi - lo) * INV255
        out[..., k] = trunc_u8((v.astype(F32) - F32(lo)) / inv)
    return out


def equalize_lut(values):
    """PIL / torchvision equalization table of one channel (uint8 array), or None (unchanged)."""
    hist = np.bincount(values.reshape(-1), minlength=256).astype(np.int64)
    if values.size == 0:
        return None
    last = int(np.flatnonzero(hist)[-1])
    step = (values.size - int(hist[last])) // 255
    if step == 0:
        return None
    cum = np.cumsum(hist)
    lut = np.zeros(256, np.int64)
    lut[1:] = np.minimum((cum[:-1] + step // 2) // step, 255)
    return lut.astype(np.uint8)


def equalize(img):
    out = img.copy()
    for k in range(img.shape[-1]):
        lut = equalize_lut(img[..., k])
        if lut is not None:
            out[..., k] = lut[img[..., k]]
    return out


def hue(img, f):
    if img.shape[-1] == 1 or img.size == 0:
        return img.copy()
    x = img.astype(F32) * INV255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    eqc = maxc == minc
    crange = maxc - minc
    one = F32(1)
    s = crange / np.where(eqc, one, maxc)
    div = np.where(eqc, one, crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    neq_r = maxc != r
    eq_g = maxc == g
    hg = ((rc + F32(2)) - bc) * (eq_g & neq_r).astype(F32)
    hr = (bc - gc) * (~neq_r).astype(F32)
    hb = ((gc + F32(4)) - rc) * (neq_r & ~eq_g).astype(F32)
    h = (hr + hg) + hb
    h = np.fmod(h * SIXTH + one, one)
    h = np.fmod(h + F32(f), one)                    # torch.remainder(., 1): fmod, + 1 if < 0
    h = np.where(h < 0, h + one, h)
    h6 = h * F32(6)
    i = np.floor(h6)
    fr = h6 - i
    i = np.mod(i.astype(np.int64), 6)
    sxf = s * fr
    oms = one - s
    q = np.minimum((one - sxf) * maxc, one)
    t = np.minimum((sxf + oms) * maxc, one)
    p = np.minimum(oms * maxc, one)
    vpqt = np.stack([maxc, p, q, t])
    out = np.empty_like(img)
    for k in range(3):
        sel = HSV_SELECT[k][i]
        v = np.take_along_axis(vpqt, sel[None], axis=0)[0]
        out[..., k] = (v * TO_U8).astype(np.uint8)
    return out


_APPLY = {IDENTITY: lambda img, p: img.copy(), BRIGHTNESS: brightness, SATURATION: saturation,
          CONTRAST: contrast, SHARPNESS: sharpness, POSTERIZE: posterize, SOLARIZE: solarize,
          AUTOCONTRAST: lambda img, p: autocontrast(img),
          EQUALIZE: lambda img, p: equalize(img), HUE: hue}


# --- kernels --------------------------------------------------------------------------------------

def aug_color(x, codes, params, out):
    """out[n] = op codes[n] of x[n] with parameter params[n] (SKIP: out[n] untouched)."""
    for n in range(x.shape[0]):
        code = int(codes[n])
        if code == SKIP:
            continue
        out[n] = _APPLY[code](np.array(x[n]), float(params[n]))


def reflect_index(i, n):
    return ref.reflect_index(i, n)


def aug_blur(x, weights, out):
    """Separable Gaussian blur, float32, reflect borders (see the module docstring)."""
    n_count, h, w, c = x.shape
    k = weights.shape[1]
    r = k // 2
    cols = reflect_index(np.arange(w)[:, None] + np.arange(k)[None, :] - r, w)   # (W, K)
    rows = reflect_index(np.arange(h)[:, None] + np.arange(k)[None, :] - r, h)   # (H, K)
    for n in range(n_count):
        img = x[n].astype(F32)
        wt = weights[n].astype(F32)
        acc = np.zeros((h, w, c), F32)
        for t in range(k):
            acc = acc + wt[t] * img[:, cols[:, t], :]
        acc2 = np.zeros((h, w, c), F32)
        for t in range(k):
            acc2 = acc2 + wt[t] * acc[rows[:, t], :, :]
        y = np.minimum(np.maximum(acc2, F32(0)), F32(255))
        out[n] = ((y + MAGIC) - MAGIC).astype(np.uint8)


def normalize_lut(mean, std, scale=True):
    """float32 (C, 256): ``(f32(v) * f32(1 / 255) - mean[c]) / std[c]`` (no ``* 1/255`` when
    scale is False)."""
    v = np.arange(256, dtype=F32)
    if scale:
        v = v * INV255
    m = np.asarray(mean, F32)[:, None]
    s = np.asarray(std, F32)[:, None]
    return ((v[None, :] - m) / s).astype(F32)


def aug_normalize(x, lut, out):
    for k in range(x.shape[-1]):
        out[..., k] = lut[k][x[..., k]]


# --- policies: op lists and magnitude bins (torchvision.transforms.v2, written down) --------------

# RandAugment and TrivialAugmentWide draw uniformly among these 14 ops, in this order
POLICY_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
              "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast",
              "Equalize")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness")


def linspace32(start, end, steps):
    """torch.linspace(start, end, steps) in float32 as torch's CPU kernel computes it: ``step =
    (end - start) / (steps - 1)`` in float32; element i is ``start + step * i`` below
    ``steps // 2``, else ``end - step * (steps - i - 1)``, each a fused multiply-add (one
    rounding: the compiler contracts them in torch's AVX2 build; equal to torch 2.13's values,
    tests/test_augment_policies.py)."""
    s, e = F32(start), F32(end)
    step = (e - s) / F32(steps - 1)
    i = np.arange(steps)
    lo = (float(step) * i.astype(np.float64) + float(s)).astype(F32)
    hi = (-float(step) * (steps - i - 1).astype(np.float64) + float(e)).astype(F32)
    return np.where(i < steps // 2, lo, hi).astype(F32)


def _posterize_bins(num_bins, span):
    """(8 - arange(n) / ((n - 1) / span)).round().int(), in float32, round half to even."""
    q = np.arange(num_bins).astype(F32) / F32((num_bins - 1) / span)
    return np.round(F32(8) - q).astype(np.int64)


def magnitude_bins(policy, op, num_bins, height, width):
    """The magnitude table of ``op`` (float64 copies of torchvision's float32 values), or None
    for ops without magnitude. ``policy``: "randaugment" or "trivialaugment"."""
    wide = policy == "trivialaugment"
    if op in ("Identity", "AutoContrast", "Equalize"):
        return None
    if op in ("ShearX", "ShearY"):
        t = linspace32(0.0, 0.99 if wide else 0.3, num_bins)
    elif op == "TranslateX":
        t = linspace32(0.0, 32.0 if wide else 150.0 / 331.0 * width, num_bins)
    elif op == "TranslateY":
        t = linspace32(0.0, 32.0 if wide else 150.0 / 331.0 * height, num_bins)
    elif op == "Rotate":
        t = linspace32(0.0, 135.0 if wide else 30.0, num_bins)
    elif op in ("Brightness", "Color", "Contrast", "Sharpness"):
        t = linspace32(0.0, 0.99 if wide else 0.9, num_bins)
    elif op == "Posterize":
        return _posterize_bins(num_bins, 6 if wide else 4).astype(np.float64)
    elif op == "Solarize":
        t = linspace32(1.0, 0.0, num_bins)
    else:
        raise ValueError(f"unknown policy op {op!r}")
    return t.astype(np.float64)


def policy_params(policy, seed, epoch, indices, position, num_ops, magnitude, num_bins, height,
                  width):
    """Per-sample ops and signed magnitudes: (op index (N, S) into POLICY_OPS, magnitude (N, S)
    float64). RandAugment: S = num_ops slots, slot s uses draws 2s (op: ``below(w, 14)``) and
    2s + 1 (sign: negative when ``bernoulli(w, 0.5)``), magnitude bin ``magnitude``.
    TrivialAugmentWide: S = 1, draws 0 (op), 1 (bin: ``below(w, num_bins)``), 2 (sign)."""
    idx = np.asarray(indices, np.int64)
    tag = (CODES[policy] << 8) | int(position)
    n = len(idx)
    nd = 2 * num_ops if policy == "randaugment" else 3
    w = ref.sample_words(seed, epoch, tag, idx, max(nd, 1))
    if policy == "randaugment":
        slots = num_ops
        ops = np.stack([ref.below(w[:, 2 * s], len(POLICY_OPS)) for s in range(slots)], axis=1) \
            if slots else np.zeros((n, 0), np.int64)
        neg = np.stack([ref.bernoulli(w[:, 2 * s + 1], 0.5) for s in range(slots)], axis=1) \
            if slots else np.zeros((n, 0), bool)
        bins = np.full((n, slots), int(magnitude), np.int64)
    else:
        slots = 1
        ops = ref.below(w[:, 0], len(POLICY_OPS))[:, None]
        bins = ref.below(w[:, 1], num_bins)[:, None]
        neg = ref.bernoulli(w[:, 2], 0.5)[:, None]
    mags = np.zeros((n, slots), np.float64)
    for k, name in enumerate(POLICY_OPS):
        table = magnitude_bins(policy, name, num_bins, height, width)
        if table is None:
            continue
        sel = ops == k
        m = table[bins[sel]]
        if name in SIGNED:
            m = np.where(neg[sel], -m, m)
        mags[sel] = m
    return ops, mags


def inverse_affine(center, angle, translate, shear):
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1) as a 3x3 map output pixel ->
    source point, in pixel-index coordinates: ``src = c + M^-1 (dst - c - t)``; angle and shear
    in degrees (clockwise angle, as ``F.affine``)."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return np.array([[m[0], m[1], m[2]], [m[3], m[4], m[5]], [0.0, 0.0, 1.0]])


def policy_matrix(op, magnitude, height, width):
    """The inverse map of a geometric policy op (torchvision's ``_apply_image_or_video_transform``:
    shears about the top-left corner of the image, pixel (-0.5, -0.5); translations by
    ``int(magnitude)`` pixels; rotation about the centre ((W - 1) / 2, (H - 1) / 2),
    counter-clockwise for a positive angle)."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    corner = (-0.5, -0.5)
    if op == "ShearX":
        return inverse_affine(corner, 0.0, (0, 0), (math.degrees(math.atan(magnitude)), 0.0))
    if op == "ShearY":
        return inverse_affine(corner, 0.0, (0, 0), (0.0, math.degrees(math.atan(magnitude))))
    if op == "TranslateX":
        return inverse_affine(centre, 0.0, (int(magnitude), 0), (0.0, 0.0))
    if op == "TranslateY":
        return inverse_affine(centre, 0.0, (0, int(magnitude)), (0.0, 0.0))
    if op == "Rotate":
        return inverse_affine(centre, -magnitude, (0, 0), (0.0, 0.0))
    raise ValueError(f"{op!r} is not a geometric op")


_COLOR_OF = {"Identity": IDENTITY, "Brightness": BRIGHTNESS, "Color": SATURATION,
             "Contrast": CONTRAST, "Sharpness": SHARPNESS, "Posterize": POSTERIZE,
             "Solarize": SOLARIZE, "AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE}


def slot_plan(ops, mags, height, width):
    """One slot of a policy as kernel arguments: (codes int64 (N,), params float64 (N,),
    geometric bool (N,), mats float64 (N, 2, 3)). Colour parameters: ``1 + magnitude``
    (brightness, colour, contrast, sharpness), ``int(magnitude)`` bits (posterize),
    ``255 * magnitude`` (solarize threshold)."""
    n = len(ops)
    codes = np.full(n, SKIP, np.int64)
    params = np.zeros(n, np.float64)
    geo = np.zeros(n, bool)
    mats = np.zeros((n, 2, 3), np.float64)
    for j in range(n):
        name = POLICY_OPS[int(ops[j])]
        m = float(mags[j])
        if name in GEOMETRIC:
            geo[j] = True
            mats[j] = policy_matrix(name, m, height, width)[:2]
            continue
        codes[j] = _COLOR_OF[name]
        if name in ("Brightness", "Color", "Contrast", "Sharpness"):
            params[j] = 1.0 + m
        elif name == "Posterize":
            params[j] = float(int(m))
        elif name == "Solarize":
            params[j] = 255.0 * m
    return codes, params, geo, mats


# --- ColorJitter and GaussianBlur parameters --------------------------------------------------------

JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")


def jitter_params(seed, epoch, indices, position, ranges):
    """Per sample: an order of the adjustments and a factor for each. Brightness, contrast and
    saturation are ordered by a uniform permutation (Fisher-Yates, draws 0 and 1) with factors
    uniform in their ranges (draws 2, 3, 4: ``lo + (hi - lo) u``); when ``ranges["hue"]`` is
    set, hue (factor: draw 6) is inserted at position ``below(draw 5, 4)`` of that order (a
    uniform permutation of the four). ``ranges`` maps a name to (lo, hi) or None (not applied).
    Returns (order int64 (N, 3 or 4) of indices into JITTER_ORDER, factors float64 (N, 4))."""
    idx = np.asarray(indices, np.int64)
    tag = (CODES["colorjitter"] << 8) | int(position)
    with_hue = ranges.get("hue") is not None
    w = ref.sample_words(seed, epoch, tag, idx, 7 if with_hue else 5)
    n = len(idx)
    order = np.tile(np.arange(3), (n, 1))
    for s, i in enumerate((2, 1)):      # Fisher-Yates: swap i with j uniform in [0, i]
        j = ref.below(w[:, s], i + 1)
        a = order[np.arange(n), i].copy()
        order[np.arange(n), i] = order[np.arange(n), j]
        order[np.arange(n), j] = a
    factors = np.ones((n, 4), np.float64)
    factors[:, 3] = 0.0
    for k, name in enumerate(JITTER_ORDER[:3]):
        r = ranges.get(name)
        if r is not None:
            factors[:, k] = r[0] + (r[1] - r[0]) * ref.unit(w[:, 2 + k])
    if with_hue:
        lo, hi = ranges["hue"]
        factors[:, 3] = lo + (hi - lo) * ref.unit(w[:, 6])
        at = ref.below(w[:, 5], 4)
        full = np.empty((n, 4), np.int64)
        for i in range(n):
            full[i] = np.insert(order[i], at[i], 3)
        order = full
    return order, factors


def gaussian_weights(sigma, kernel_size):
    """float32 (K,): ``exp(-x^2 / (2 sigma^2))`` at x = -K//2 .. K//2, normalized (float64,
    rounded once), torchvision's ``_get_gaussian_kernel1d``."""
    r = kernel_size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    e = np.exp(-0.5 * (x / sigma) ** 2)
    return (e / e.sum()).astype(F32)


def blur_params(seed, epoch, indices, position, sigma, kernel_size):
    """Per-sample sigma uniform in ``sigma`` (draw 0) and its float32 kernel (N, K)."""
    idx = np.asarray(indices, np.int64)
    tag = (CODES["blur"] << 8) | int(position)
    w = ref.sample_words(seed, epoch, tag, idx, 1)
    s = sigma[0] + (sigma[1] - sigma[0]) * ref.unit(w[:, 0])
    weights = np.stack([gaussian_weights(v, kernel_size) for v in s]) if len(s) else \
        np.zeros((0, kernel_size), F32)
    return s, weights
