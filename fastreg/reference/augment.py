"""Image augmentation in plain NumPy: the oracle for every backend's augmentation kernels, and the
one place where the per-sample random parameters are drawn.

Random parameters
-----------------
Every random quantity of an op comes from the Philox stream (fastreg.reference.philox) under an
op key derived from ``(seed, epoch, tag)`` by one Philox call (``op_key``); ``tag`` is
``code << 8 | position`` (the op's code below and its position in a Compose, 0 when called
alone). Draw ``d`` of the sample with global index ``i`` is stream word ``(i << 32) + d`` of the
op key, so it depends on ``(seed, epoch, i)`` alone, never on the batch split, the backend or
the thread count. Global indices are < 2**32, and a sample has at most 2**32 draws (Gaussian
noise draws one word per value).

The per-sample parameters (flip flags, angles, crop boxes, lambdas, ...) are O(N) and are
computed here, on the host, once per call (``*_params`` and ``*_matrices``); the kernels below
only apply them: parameters in, pixels out. The one exception is Gaussian noise, one normal per
value: its kernels draw the words themselves (``aug_noise``).

Kernel contract (registered in fastreg._registry; every backend has these names)
-----------------------------------------------------------------------------
Images reach the kernels as 4-D C-contiguous arrays ``(M, H, W, C)``: an NHWC batch as is, an
NCHW batch as ``(N * C, H, W, 1)`` (one plane per channel, per-sample parameters repeated C
times). dtypes: uint8 or float32 (targets: also int32, int64 for ``aug_flip``/``aug_affine``
with ``nearest=True``).

    aug_flip(x, hflip, vflip, out)
        out[m] = x[m] flipped left-right where hflip[m], upside-down where vflip[m] (uint8 (M,)
        flags). out is not x.
    aug_affine(x, mats, border, fill, nearest, out)
        x (M, H, W, C), out (M, Ho, Wo, C); mats float64 (M, 2, 3): the inverse map, output
        pixel (column u, row v) -> source point ``sx = (a00 u + a01 v) + a02``,
        ``sy = (a10 u + a11 v) + a12`` (pixel centres at integer coordinates; float64, in this
        order of operations). border 0: constant ``fill`` (a value of x's dtype) outside the
        image; 1: reflect (NumPy's "reflect", edge not repeated); 2: edge (the nearest pixel of
        the image: NumPy's and torchvision's "edge"). See ``_resample``. out is not x.
    aug_noise(x, key, first, stds, out)
        x, out (N, L): value j of row n gets ``stds[n] * z`` with z the normal of stream word
        ``((first + n) << 32) + j`` under ``key`` (see ``normals``); uint8 results are clipped
        to [0, 255] and rounded half to even. out may be x.
    aug_erase(x, rects, value, out)
        out = x except rows y0 .. y0 + h - 1, columns x0 .. x0 + w - 1 of each image, set to
        ``value`` (of x's dtype); rects int64 (M, 4) = (y0, x0, h, w), h = 0: untouched.
        out may be x.
    aug_mix(x, partner, lam, out)
        x, out (N, L): out[n] = x[n] * lam[n] + x[partner[n]] * (1 - lam[n]) in float32 (lam
        float32 (N,)); uint8 clipped and rounded half to even. out is not x.
    aug_paste(x, partner, rects, out)
        (M, H, W, C): out[m] = x[m] with the rectangle rects[m] taken from x[partner[m]].
        out is not x.

Arithmetic (what makes "cpu" agree with this module bit for bit; "cuda" may contract a*b+c
into a fused multiply-add, see fastreg.augment for its tolerances):

- ``aug_affine`` quantizes source coordinates to 1/256 pixel, ``q = floor(s * 256 + 0.5)``
  (float64, s first clamped to [-2**20, 2**20]). Bilinear: ``x0 = q >> 8``, ``fx = q & 255``;
  uint8 ``top = v00 (256 - fx) + v01 fx`` (ints), ``value = (top (256 - fy) + bottom fy +
  32768) >> 16`` (rounded half up); float32 ``top = v00 wx0 + v01 wx1`` with ``wx0 = (256 -
  fx) / 256``, ``wx1 = fx / 256``, ``value = top wy0 + bottom wy1``, and a tap of weight 0 is
  not read (so integral maps copy exactly, NaN and inf included). Nearest: index
  ``(q + 128) >> 8``.
- normals: Box-Muller in float32 with polynomial log, sin and cos (no libm: identical in NumPy
  and Numba), see ``normals``.
"""
import numpy as np

from .philox import _rounds

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
TWO32 = 1 << 32

# op codes: tag = code << 8 | position in a Compose (0 alone)
CODES = {"flip": 1, "rot90": 3, "rotate": 4, "crop": 5, "resized_crop": 6, "noise": 7,
         "erasing": 8, "mixup": 9, "cutmix": 10, "partner": 11}


# --- the random stream of an op ----------------------------------------------------------------

def _philox_int(c, k0, k1):
    """Philox4x32-10 of the counter ``c`` (four 32-bit ints) under the key (k0, k1), in Python
    integers (the same rounds as fastreg.reference.philox; for one counter this is ~20x faster
    than NumPy on 1-element arrays)."""
    c0, c1, c2, c3 = c
    for _ in range(10):
        p0 = c0 * 0xD2511F53
        p1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1,
                          p0 & 0xFFFFFFFF)
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def op_key(seed, epoch, tag):
    """The 64-bit Philox key of one op: Philox4x32-10 of the counter ``(epoch & 0xFFFFFFFF,
    epoch >> 32, tag, 0x41554721)`` under the key ``seed``; words 0 and 1 form the key."""
    seed, epoch = int(seed), int(epoch)
    w = _philox_int((epoch & 0xFFFFFFFF, epoch >> 32, int(tag), 0x41554721),
                    seed & 0xFFFFFFFF, seed >> 32)
    return w[0] | (w[1] << 32)


def words_at(key, g):
    """Stream words at the positions ``g`` (uint64 array, any shape) under ``key``."""
    g = np.asarray(g, np.uint64)
    b = g >> np.uint64(2)
    zero = np.zeros_like(b)
    w = _rounds(b & _M32, b >> _S32, zero, zero, np.uint64(key & 0xFFFFFFFF),
                np.uint64(key >> 32))
    j = g & np.uint64(3)
    out = np.where(j == 0, w[0], np.where(j == 1, w[1], np.where(j == 2, w[2], w[3])))
    return out.astype(np.uint32)


def block_words(key, indices, d0, ndraws):
    """uint32 (len(indices), ndraws): draws ``d0 .. d0 + ndraws - 1`` of each sample under
    ``key`` (draw d of sample i is word ``(i << 32) + d``), ``d0`` a multiple of 4.

    The draws of a sample are consecutive stream words, so they come whole Philox blocks at a
    time: block ``(i << 30) + (d >> 2)`` holds draws ``d .. d + 3``."""
    i = np.asarray(indices, np.uint64)[:, None]
    nb = (ndraws + 3) // 4
    b = (i << np.uint64(30)) + np.uint64(d0 >> 2) + np.arange(nb, dtype=np.uint64)[None, :]
    return _blocks(key, b.reshape(-1)).reshape(len(i), 4 * nb)[:, :ndraws]


def _blocks(key, b):
    """uint32 (len(b), 4): Philox4x32-10 of the counters ``(b & 0xFFFFFFFF, b >> 32, 0, 0)``
    (``b`` uint64, 1-D) under ``key``, the stream's blocks as fastreg.reference.philox defines
    them.

    NumPy spends about 80 array operations per call here (10 rounds), 0.3 ms for 256 samples
    x 16 draws, which set the cost of drawing a batch's parameters. When the C extension is
    built its ``fr_philox4x32`` computes the same words (every backend's Philox is tested bit
    for bit against the reference: tests/test_philox*.py) in microseconds, so it is used; else
    NumPy. Either way the words, hence every parameter, are the same."""
    c = _c_philox()
    if c is None or len(b) == 0:
        zero = np.zeros_like(b)
        w = _rounds(b & _M32, b >> _S32, zero, zero, np.uint64(key & 0xFFFFFFFF),
                    np.uint64(key >> 32))
        return np.stack(w, axis=1).astype(np.uint32)
    ctr = np.zeros((len(b), 4), np.uint32)
    ctr[:, 0] = b & _M32
    ctr[:, 1] = b >> _S32
    keys = np.empty((len(b), 2), np.uint32)
    keys[:, 0] = key & 0xFFFFFFFF
    keys[:, 1] = key >> 32
    out = np.empty((len(b), 4), np.uint32)
    c(ctr, keys, out)
    return out


_C_PHILOX = []


def _c_philox():
    """The C backend's ``philox4x32(ctr, key, out)``, or None if the extension is not built."""
    if not _C_PHILOX:
        from .. import _registry
        mod = _registry._load("c")
        _C_PHILOX.append(None if mod is None else mod.philox4x32)
    return _C_PHILOX[0]


def sample_words(seed, epoch, tag, indices, ndraws):
    """uint32 (len(indices), ndraws): draw d of sample i is word ``(i << 32) + d`` of the op key."""
    return block_words(op_key(seed, epoch, tag), indices, 0, ndraws)


def unit(words):
    """Uniform float64 in [0, 1): ``w / 2**32`` (exact)."""
    return words.astype(np.float64) * (1.0 / TWO32)


def below(words, n):
    """Uniform integers in [0, n) (n < 2**32): ``(w * n) >> 32``, exact in uint64."""
    return ((words.astype(np.uint64) * np.uint64(n)) >> _S32).astype(np.int64)


def bernoulli(words, p):
    """True with probability p: ``w < round(p * 2**32)`` (p = 1: always)."""
    t = min(int(np.floor(p * TWO32 + 0.5)), TWO32)
    return words.astype(np.uint64) < np.uint64(t)


def sample_params(op, seed, epoch, indices, position=0, **kw):
    """The per-sample parameters of ``op`` for the global sample indices ``indices``.

    One entry point for every op (the wrappers and Compose call it): ``op`` is one of "flip",
    "rot90", "rotate", "crop", "resized_crop", "noise", "erasing", "mixup", "cutmix"; ``kw`` are
    the op's settings (see each ``_params_*``). Returns a dict of arrays with one row per sample.
    """
    tag = (CODES[op] << 8) | int(position)
    return _PARAMS[op](seed, epoch, tag, np.asarray(indices, np.int64), **kw)


def _params_flip(seed, epoch, tag, idx, p, direction):
    w = sample_words(seed, epoch, tag, idx, 2)
    h = bernoulli(w[:, 0], p) if direction in ("horizontal", "both") else np.zeros(len(idx), bool)
    v = bernoulli(w[:, 1], p) if direction in ("vertical", "both") else np.zeros(len(idx), bool)
    return {"hflip": h, "vflip": v}


def _params_rot90(seed, epoch, tag, idx, p):
    """k quarter turns counter-clockwise: 0 with probability 1 - p, else 1, 2 or 3 uniformly."""
    w = sample_words(seed, epoch, tag, idx, 2)
    k = np.where(bernoulli(w[:, 0], p), 1 + below(w[:, 1], 3), 0)
    return {"k": k}


def _params_rotate(seed, epoch, tag, idx, lo, hi, p=1.0):
    w = sample_words(seed, epoch, tag, idx, 2)
    angle = lo + (hi - lo) * unit(w[:, 0])
    return {"angle": np.where(bernoulli(w[:, 1], p), angle, 0.0)}


def _params_crop(seed, epoch, tag, idx, span_y, span_x):
    """Crop offsets uniform in [0, span_y] x [0, span_x] (the padded image minus the crop)."""
    w = sample_words(seed, epoch, tag, idx, 2)
    return {"top": below(w[:, 0], span_y + 1), "left": below(w[:, 1], span_x + 1)}


def _params_resized_crop(seed, epoch, tag, idx, height, width, scale, ratio, tries=10):
    """Szegedy et al. (2015) / torchvision RandomResizedCrop: area fraction uniform in
    ``scale``, aspect ratio log-uniform in ``ratio``, position uniform; the first of ``tries``
    boxes that fits, else the centre crop at the clamped ratio."""
    n = len(idx)
    w = unit(sample_words(seed, epoch, tag, idx, 4 * tries))
    area = float(height * width)
    top = np.zeros(n, np.float64)
    left = np.zeros(n, np.float64)
    bh = np.zeros(n, np.float64)
    bw = np.zeros(n, np.float64)
    done = np.zeros(n, bool)
    lr = np.log(ratio)
    for t in range(tries):
        target = area * (scale[0] + (scale[1] - scale[0]) * w[:, 4 * t])
        ar = np.exp(lr[0] + (lr[1] - lr[0]) * w[:, 4 * t + 1])
        cw = np.round(np.sqrt(target * ar))
        ch = np.round(np.sqrt(target / ar))
        ok = ~done & (cw > 0) & (ch > 0) & (cw <= width) & (ch <= height)
        top = np.where(ok, np.floor(w[:, 4 * t + 2] * (height - ch + 1)), top)
        left = np.where(ok, np.floor(w[:, 4 * t + 3] * (width - cw + 1)), left)
        bh = np.where(ok, ch, bh)
        bw = np.where(ok, cw, bw)
        done |= ok
    # fallback: centre crop with the ratio clamped to the range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    bh = np.where(done, bh, fh)
    bw = np.where(done, bw, fw)
    top = np.where(done, top, (height - fh) // 2)
    left = np.where(done, left, (width - fw) // 2)
    return {"top": top, "left": left, "height": bh, "width": bw}


def _params_noise(seed, epoch, tag, idx, lo, hi):
    """Per-sample std uniform in [lo, hi] (float32), and the op key of the per-value normals."""
    w = sample_words(seed, epoch, tag, idx, 1)
    std = (lo + (hi - lo) * unit(w[:, 0])).astype(np.float32)
    # the normals use the same op key, at draws 0 .. L - 1 of a second key (tag | 0x80000000)
    return {"std": std, "key": op_key(seed, epoch, tag | 0x80000000)}


def _params_erasing(seed, epoch, tag, idx, height, width, p, scale, ratio, tries=10):
    """Zhong et al. (2017) random erasing: with probability p, the first of ``tries`` boxes
    (area fraction uniform in ``scale``, aspect log-uniform in ``ratio``) that fits; none fits:
    nothing erased. Returns rects (y0, x0, h, w).

    "Fits" is torchvision's ``RandomErasing.get_params`` rule: the box is strictly smaller than
    the image (``h < height and w < width``), so a box as tall or as wide as the image is
    retried; a box rounded to 0 rows or columns fits and erases nothing, as there."""
    n = len(idx)
    raw = sample_words(seed, epoch, tag, idx, 1 + 4 * tries)
    on = bernoulli(raw[:, 0], p)
    w = unit(raw[:, 1:])
    rects = np.zeros((n, 4), np.int64)
    done = ~on
    lr = np.log(ratio)
    area = float(height * width)
    for t in range(tries):
        target = area * (scale[0] + (scale[1] - scale[0]) * w[:, 4 * t])
        ar = np.exp(lr[0] + (lr[1] - lr[0]) * w[:, 4 * t + 1])
        eh = np.round(np.sqrt(target * ar)).astype(np.int64)
        ew = np.round(np.sqrt(target / ar)).astype(np.int64)
        ok = ~done & (eh < height) & (ew < width)
        y0 = np.floor(w[:, 4 * t + 2] * (height - eh + 1)).astype(np.int64)
        x0 = np.floor(w[:, 4 * t + 3] * (width - ew + 1)).astype(np.int64)
        rects[ok] = np.stack([y0, x0, eh, ew], axis=1)[ok]
        done |= ok
    return {"rects": rects}


class _Draws:
    """The draws of a batch of samples, fetched 16 at a time per sample, and a cursor per sample
    (its next unread draw): the sequential reading of ``beta`` below, for all samples at once."""

    STEP = 16

    def __init__(self, key, idx):
        self.key, self.idx = key, idx
        self.words = np.empty((len(idx), 0), np.float64)
        self.cursor = np.zeros(len(idx), np.int64)

    def take(self, rows, count):
        """Draws ``cursor .. cursor + count - 1`` of the samples ``rows``: float64 (len(rows),
        count) holding the words."""
        at = self.cursor[rows][:, None] + np.arange(count)
        while at.size and at[:, -1].max() >= self.words.shape[1]:  # more rejections than drawn
            more = block_words(self.key, self.idx, self.words.shape[1], self.STEP)
            self.words = np.concatenate([self.words, more.astype(np.float64)], axis=1)
        return self.words[rows[:, None], at]


def _gamma(draws, alpha):
    """Gamma(alpha, 1) per sample by Marsaglia & Tsang (2000), vectorized over the samples (see
    ``beta``); advances each sample's cursor past the draws it used."""
    n = len(draws.cursor)
    everyone = np.arange(n)
    boost = np.ones(n)
    a = alpha
    if a < 1.0:  # Gamma(a) = Gamma(a + 1) * U**(1/a), U in (0, 1]
        boost = (1.0 - draws.take(everyone, 1)[:, 0] / TWO32) ** (1.0 / a)
        draws.cursor += 1
        a += 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    out = np.empty(n)
    pending = everyone
    while pending.size:
        w = draws.take(pending, 3)
        u1 = (w[:, 0] + 0.5) / TWO32
        u2 = w[:, 1] / TWO32
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)   # Box-Muller, float64
        t = 1.0 + c * z
        v = t * t * t
        ok = v > 0
        draws.cursor[pending] += np.where(ok, 3, 2)  # v <= 0: rejected after two draws
        rows, z, v = pending[ok], z[ok], v[ok]
        u = (w[ok, 2] + 0.5) / TWO32
        accept = np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v)
        out[rows[accept]] = d * v[accept] * boost[rows[accept]]
        pending = np.concatenate([pending[~ok], rows[~accept]])
    return out


def beta(seed, epoch, tag, idx, alpha):
    """lambda ~ Beta(alpha, alpha) per sample: ``g1 / (g1 + g2)`` (0.5 if both are 0) with g1,
    g2 two Gamma(alpha, 1) variates read in order from the sample's draws 0, 1, 2, ...

    One Gamma(a) variate, reading draws in order (Marsaglia & Tsang 2000), all in float64:

    - a < 1: ``boost = (1 - w / 2**32) ** (1 / a)`` from one draw, then a + 1 in place of a;
    - ``d = a - 1/3``, ``c = 1 / sqrt(9 d)``; each attempt reads ``u1 = (w + 0.5) / 2**32`` and
      ``u2 = w' / 2**32``, ``z = sqrt(-2 log u1) cos(2 pi u2)``, ``t = 1 + c z``,
      ``v = t t t``; ``v <= 0`` rejects (two draws used), else ``u = (w'' + 0.5) / 2**32`` and
      the attempt accepts when ``log u < z z / 2 + d - d v + d log v`` (three draws used);
    - the variate is ``d v boost``.

    A sample's lambda depends on (seed, epoch, tag, its index) alone. The samples are processed
    together (one NumPy operation per step for all samples still rejecting); the result is the
    same as reading each sample's draws one by one. log, cos and sqrt are NumPy's float64
    functions: the same lambdas on every backend of a process (they are computed here, on the
    host), possibly different in the last bits on another CPU or NumPy build.
    """
    idx = np.asarray(idx, np.int64)
    draws = _Draws(op_key(seed, epoch, tag), idx)
    g1 = _gamma(draws, alpha)
    g2 = _gamma(draws, alpha)
    total = g1 + g2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, g1 / total, 0.5)


def partner_of(seed, epoch, idx, position=0):
    """The mixing partner of each batch entry: entries sorted by a per-sample key (draw 0 of the
    "partner" op, keyed by global index), each mixed with the next one in that order, cyclically
    (no sample is its own partner when N > 1). It depends on which samples share the batch."""
    tag = (CODES["partner"] << 8) | int(position)
    order = np.argsort(sample_words(seed, epoch, tag, idx, 1)[:, 0], kind="stable")
    partner = np.empty(len(idx), np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def _params_mixup(seed, epoch, tag, idx, alpha):
    return {"lam": beta(seed, epoch, tag, idx, alpha)}


def _params_cutmix(seed, epoch, tag, idx, alpha, height, width):
    """Yun et al. (2019): box of area (1 - lambda) H W, centre uniform, clipped to the image;
    the label weight is 1 - (clipped area) / (H W)."""
    lam = beta(seed, epoch, tag, idx, alpha)
    # centre draws: draws 2**31 and 2**31 + 1 of the sample (the Gamma draws use the low ones)
    w = block_words(op_key(seed, epoch, tag), idx, 1 << 31, 2)
    cut = np.sqrt(1.0 - lam)
    ch = np.floor(height * cut).astype(np.int64)
    cw = np.floor(width * cut).astype(np.int64)
    cy = below(w[:, 0], height)
    cx = below(w[:, 1], width)
    y0 = np.clip(cy - ch // 2, 0, height)
    y1 = np.clip(cy + ch - ch // 2, 0, height)
    x0 = np.clip(cx - cw // 2, 0, width)
    x1 = np.clip(cx + cw - cw // 2, 0, width)
    rects = np.stack([y0, x0, y1 - y0, x1 - x0], axis=1)
    # the share of the image that stays; an image without pixels keeps all of its label
    area = float(height * width)
    weight = 1.0 - (y1 - y0) * (x1 - x0) / area if area else np.ones(len(rects))
    return {"rects": rects, "lam": weight}


_PARAMS = {"flip": _params_flip, "rot90": _params_rot90, "rotate": _params_rotate,
           "crop": _params_crop, "resized_crop": _params_resized_crop, "noise": _params_noise,
           "erasing": _params_erasing, "mixup": _params_mixup, "cutmix": _params_cutmix}


# --- geometry: inverse maps (output pixel -> source point), 3x3 float64 per sample ----------------

def _eye(n):
    return np.repeat(np.eye(3)[None], n, axis=0)


def flip_matrices(hflip, vflip, height, width):
    """Exact integer maps: u -> W - 1 - u where hflip, v -> H - 1 - v where vflip."""
    m = _eye(len(hflip))
    m[hflip, 0, 0] = -1.0
    m[hflip, 0, 2] = width - 1
    m[vflip, 1, 1] = -1.0
    m[vflip, 1, 2] = height - 1
    return m


def rot90_matrices(k, size):
    """k quarter turns counter-clockwise (as np.rot90 on the (H, W) axes) of a square image of
    side ``size``: exact integer maps. out = rot90(x, k): out[v, u] = x[src]."""
    n = size - 1
    m = _eye(len(k))
    k = np.asarray(k) % 4
    # np.rot90(x, 1)[v, u] = x[u, n - v]; k=2: x[n - v, n - u]; k=3: x[n - u, v]
    table = {1: [[0, -1, n], [1, 0, 0]], 2: [[-1, 0, n], [0, -1, n]], 3: [[0, 1, 0], [-1, 0, n]]}
    for q, rows in table.items():
        m[k == q, :2, :] = np.array(rows, np.float64)
    return m


def rotate_matrices(angle_deg, height, width):
    """Rotation by ``angle`` degrees counter-clockwise (as displayed, rows going down) about the
    image centre ((W - 1) / 2, (H - 1) / 2); angle 0 gives the exact identity."""
    t = np.deg2rad(np.asarray(angle_deg, np.float64))
    c, s = np.cos(t), np.sin(t)
    c = np.where(angle_deg == 0, 1.0, c)
    s = np.where(angle_deg == 0, 0.0, s)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    m = _eye(len(t))
    # source = centre + R (dest - centre), R = [[c, -s], [s, c]]
    m[:, 0, 0], m[:, 0, 1] = c, -s
    m[:, 1, 0], m[:, 1, 1] = s, c
    m[:, 0, 2] = cx - c * cx + s * cy
    m[:, 1, 2] = cy - s * cx - c * cy
    return m


def translate_matrices(dy, dx):
    """source = dest + (dx, dy): an integer crop at offset (dy, dx) is exact."""
    m = _eye(len(dy))
    m[:, 0, 2] = dx
    m[:, 1, 2] = dy
    return m


def resize_matrices(top, left, bh, bw, out_h, out_w):
    """The box (top, left, bh, bw) of the source resized to (out_h, out_w), pixel centres aligned
    (align_corners=False): sx = left + (u + 0.5) bw / out_w - 0.5."""
    m = _eye(len(top))
    sx = np.asarray(bw, np.float64) / out_w
    sy = np.asarray(bh, np.float64) / out_h
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    m[:, 0, 2] = left + 0.5 * sx - 0.5
    m[:, 1, 2] = top + 0.5 * sy - 0.5
    return m


# --- the kernels --------------------------------------------------------------------------------

def aug_flip(x, hflip, vflip, out):
    """out[m] = x[m] with axis 2 (W) reversed where hflip[m], axis 1 (H) where vflip[m]."""
    for m in range(x.shape[0]):
        img = x[m]
        if hflip[m]:
            img = img[:, ::-1]
        if vflip[m]:
            img = img[::-1]
        out[m] = img


_LIM = float(1 << 20)


def _quantize(s):
    """Source coordinate -> 1/256-pixel integer, floor(s * 256 + 0.5)."""
    s = np.minimum(np.maximum(s, -_LIM), _LIM)
    return np.floor(s * 256.0 + 0.5).astype(np.int64)


def reflect_index(i, n):
    """NumPy's "reflect" padding: ... 2 1 | 0 1 2 ... n-1 | n-2 ..., for any integer i."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def _taps(img, iy, ix, border, fill):
    """img[iy, ix] (H, W, C) at integer index arrays, with the border rule: (..., C)."""
    h, w = img.shape[:2]
    if border == 1:
        return img[reflect_index(iy, h), reflect_index(ix, w)]
    if border == 2:   # edge: the nearest pixel of the image
        return img[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    v = img[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
    return np.where(inside[..., None], v, np.asarray(fill, img.dtype))


def aug_affine(x, mats, border, fill, nearest, out):
    """Resample every image through its inverse map (see the module docstring)."""
    ho, wo = out.shape[1:3]
    v, u = np.mgrid[0:ho, 0:wo].astype(np.float64)
    for m in range(x.shape[0]):
        a = mats[m]
        qx = _quantize((a[0, 0] * u + a[0, 1] * v) + a[0, 2])
        qy = _quantize((a[1, 0] * u + a[1, 1] * v) + a[1, 2])
        img = x[m]
        if nearest:
            out[m] = _taps(img, (qy + 128) >> 8, (qx + 128) >> 8, border, fill)
            continue
        x0, fx = qx >> 8, (qx & 255)[..., None]
        y0, fy = qy >> 8, (qy & 255)[..., None]
        v00 = _taps(img, y0, x0, border, fill)
        v01 = _taps(img, y0, x0 + 1, border, fill)
        v10 = _taps(img, y0 + 1, x0, border, fill)
        v11 = _taps(img, y0 + 1, x0 + 1, border, fill)
        if x.dtype == np.uint8:
            v00, v01, v10, v11 = (t.astype(np.int64) for t in (v00, v01, v10, v11))
            top = v00 * (256 - fx) + v01 * fx
            bot = v10 * (256 - fx) + v11 * fx
            out[m] = (top * (256 - fy) + bot * fy + 32768) >> 16
        else:
            f32 = np.float32
            wx0, wx1 = (256 - fx).astype(f32) / f32(256), fx.astype(f32) / f32(256)
            wy0, wy1 = (256 - fy).astype(f32) / f32(256), fy.astype(f32) / f32(256)
            top = np.where(fx == 0, v00, v00 * wx0 + v01 * wx1)
            bot = np.where(fx == 0, v10, v10 * wx0 + v11 * wx1)
            out[m] = np.where(fy == 0, top, top * wy0 + bot * wy1)


# Box-Muller constants, float32
F32 = np.float32
SQRT2 = F32(1.41421356)
LN2 = F32(0.693147180559945)
TWO_PI_2M24 = F32(2.0 * np.pi / 2 ** 24)
LOG_C = (F32(1.0 / 3.0), F32(1.0 / 5.0), F32(1.0 / 7.0), F32(1.0 / 9.0))
SIN_C = (F32(-1.0 / 6.0), F32(1.0 / 120.0), F32(-1.0 / 5040.0), F32(1.0 / 362880.0))
COS_C = (F32(-0.5), F32(1.0 / 24.0), F32(-1.0 / 720.0), F32(1.0 / 40320.0),
         F32(-1.0 / 3628800.0))
MAGIC = F32(12582912.0)  # 1.5 * 2**23: (y + MAGIC) - MAGIC rounds |y| < 2**22 half to even


def box_muller(w0, w1):
    """Two standard normals (float32) from two words per pair.

    ``a = (w0 >> 8) + 1`` (in [1, 2**24]), ``u1 = a 2**-24`` in (0, 1];
    ``ln u1 = (e - 24) ln 2 + ln m`` with ``a = m 2**e``, m in [sqrt(1/2), sqrt(2)) from the
    float's bits and ``ln m = 2 f (1 + f^2/3 + f^4/5 + f^6/7 + f^8/9)``, ``f = (m - 1)/(m + 1)``;
    ``r = sqrt(-2 ln u1)``. The angle ``2 pi (w1 >> 8) 2**-24`` is reduced exactly to the
    nearest quarter turn k plus ``phi`` in [-pi/4, pi/4), with Taylor sin (to phi^9) and cos (to
    phi^10). Returns ``(r cos, r sin)``. Every step is one float32 operation in a fixed order.
    """
    w0 = np.asarray(w0, np.uint32)
    w1 = np.asarray(w1, np.uint32)
    a = ((w0 >> np.uint32(8)) + np.uint32(1)).astype(F32)
    bits = a.view(np.uint32)
    e = (bits >> np.uint32(23)).astype(np.int32) - np.int32(127)
    m = ((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(F32)
    big = m > SQRT2
    m = np.where(big, m * F32(0.5), m)
    e = e + big.astype(np.int32)
    f = (m - F32(1)) / (m + F32(1))
    f2 = f * f
    p = LOG_C[2] + f2 * LOG_C[3]
    p = LOG_C[1] + f2 * p
    p = LOG_C[0] + f2 * p
    p = F32(1) + f2 * p
    lnu = (e - np.int32(24)).astype(F32) * LN2 + F32(2) * f * p
    r = np.sqrt(F32(-2) * lnu)
    v = (w1 >> np.uint32(8)).astype(np.int32)
    k = (v + np.int32(1 << 21)) >> np.int32(22)
    d = v - (k << np.int32(22))
    phi = d.astype(F32) * TWO_PI_2M24
    p2 = phi * phi
    s = SIN_C[2] + p2 * SIN_C[3]
    s = SIN_C[1] + p2 * s
    s = SIN_C[0] + p2 * s
    s = phi + phi * (p2 * s)
    c = COS_C[3] + p2 * COS_C[4]
    c = COS_C[2] + p2 * c
    c = COS_C[1] + p2 * c
    c = COS_C[0] + p2 * c
    c = F32(1) + p2 * c
    q = k & np.int32(3)
    cos_t = np.where(q == 0, c, np.where(q == 1, -s, np.where(q == 2, -c, s)))
    sin_t = np.where(q == 0, s, np.where(q == 1, c, np.where(q == 2, -s, -c)))
    return r * cos_t, r * sin_t


def normals(key, index, count):
    """Normals 0 .. count - 1 of sample ``index``: value j from stream words
    ``(index << 32) + 2 (j // 2)`` and ``+ 1`` (Box-Muller pair), the cos for even j, the sin
    for odd j."""
    npairs = (count + 1) // 2
    g = (np.uint64(index) << _S32) + np.arange(2 * npairs, dtype=np.uint64)
    w = words_at(key, g)
    z0, z1 = box_muller(w[0::2], w[1::2])
    return np.stack([z0, z1], axis=1).reshape(-1)[:count]


def finish_u8(y):
    """float32 -> uint8: clip to [0, 255], round half to even."""
    y = np.minimum(np.maximum(y, F32(0)), F32(255))
    return ((y + MAGIC) - MAGIC).astype(np.uint8)


def aug_noise(x, key, first, stds, out):
    """out[n] = x[n] + stds[n] * normals(key, first + n, L) (float32; uint8 clipped, rounded)."""
    for n in range(x.shape[0]):
        z = normals(key, int(first) + n, x.shape[1])
        y = x[n].astype(F32) + stds[n] * z
        out[n] = finish_u8(y) if x.dtype == np.uint8 else y


def aug_erase(x, rects, value, out):
    """out = x with each rectangle set to value."""
    out[...] = x
    for m in range(x.shape[0]):
        y0, x0, h, w = (int(t) for t in rects[m])
        out[m, y0:y0 + h, x0:x0 + w, :] = value


def aug_mix(x, partner, lam, out):
    """out[n] = x[n] lam[n] + x[partner[n]] (1 - lam[n]), float32 (uint8 clipped, rounded)."""
    for n in range(x.shape[0]):
        a = lam[n]
        y = x[n].astype(F32) * a + x[partner[n]].astype(F32) * (F32(1) - a)
        out[n] = finish_u8(y) if x.dtype == np.uint8 else y


def aug_paste(x, partner, rects, out):
    """out[m] = x[m] with rectangle rects[m] = (y0, x0, h, w) copied from x[partner[m]]."""
    out[...] = x
    for m in range(x.shape[0]):
        y0, x0, h, w = (int(t) for t in rects[m])
        out[m, y0:y0 + h, x0:x0 + w, :] = x[partner[m], y0:y0 + h, x0:x0 + w, :]
