"""RandAugment, TrivialAugmentWide, ColorJitter, GaussianBlur, Normalize and the colour ops:
definitions (hand-computed cases and transcriptions of torchvision's uint8 tensor code), every
backend against the reference bit for bit, reproducibility across batch splits, op frequencies,
bad input."""
import math

import numpy as np
import pytest

import fastreg
import fastreg.augment as A
from fastreg.augment import color as C
from fastreg.reference import augment as ref
from fastreg.reference import augment_color as R

HOST = ("numpy", "cpu", "c")


@pytest.fixture(params=HOST)
def backend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param} unavailable: {reason}")
    return request.param


def images(n=6, h=9, w=7, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    if n > 2:
        x[1] = x[1] // 4 + 60           # low contrast: autocontrast and equalize act
        x[2] = 77                        # constant: autocontrast / equalize leave it
    return x


# --- hand-computed cases ----------------------------------------------------------------------

def one(v):
    return np.array(v, np.uint8).reshape(1, 1, -1, 1)


def test_hand_computed_point_ops():
    x = one([0, 100, 200, 255])
    assert A.adjust_brightness(x, 1.5).ravel().tolist() == [0, 150, 255, 255]
    assert A.adjust_brightness(x, 0.33).ravel().tolist() == [0, 33, 66, 84]   # 200*.33=66.0000
    assert A.posterize(one([0b10110111, 255, 3]), 3).ravel().tolist() == [0b10100000, 224, 0]
    assert A.posterize(one([0b10110111]), 0).ravel().tolist() == [0]
    assert A.solarize(x, 100.0).ravel().tolist() == [0, 155, 55, 0]
    assert A.solarize(x, 100.5).ravel().tolist() == [0, 100, 55, 0]
    # autocontrast: (v - 50) / f32(100 * f32(1 / 255)) truncated: 100 / 0.39215687 is
    # 254.99999 -> 254, as torch computes it (the maximum need not reach 255)
    assert A.autocontrast(one([50, 100, 150])).ravel().tolist() == [0, 127, 254]
    assert A.autocontrast(one([0, 255, 51])).ravel().tolist() == [0, 255, 51]
    assert A.autocontrast(one([9, 9, 9])).ravel().tolist() == [9, 9, 9]


def test_hand_computed_equalize():
    # 300 pixels: 100 of value 10, 100 of 20, 100 of 30; step = (300 - 100) // 255 = 0 ->
    # unchanged; with 600 pixels step = 400 // 255 = 1 -> lut[20] = cum[19] = 200 -> 200...
    x = np.repeat(np.array([10, 20, 30], np.uint8), 100).reshape(1, 1, 300, 1)
    np.testing.assert_array_equal(A.equalize(x), x)
    x = np.repeat(np.array([10, 20, 30], np.uint8), 200).reshape(1, 1, 600, 1)
    # step = (600 - 200) // 255 = 1: lut[k] = min(cum[k - 1], 255): 10 -> cum[9] = 0,
    # 20 -> cum[19] = 200, 30 -> min(400, 255) = 255
    got = A.equalize(x).ravel()
    assert sorted(set(got.tolist())) == [0, 200, 255]


def test_hand_computed_gray_saturation_contrast():
    px = np.array([[[[200, 100, 50]]]], np.uint8)   # luma 200*.2989 + 100*.587 + 50*.114 = 124.18
    assert R.gray(px[0])[0, 0] == 124.0
    # factor 0: grey everywhere
    np.testing.assert_array_equal(A.adjust_saturation(px, 0.0).ravel(), [124, 124, 124])
    np.testing.assert_array_equal(A.adjust_saturation(px, 1.0).ravel(), [200, 100, 50])
    # contrast 0: the mean of the floored luma (one pixel: itself)
    np.testing.assert_array_equal(A.adjust_contrast(px, 0.0).ravel(), [124, 124, 124])
    # factor 2: 2 v - 124, truncated and clamped
    np.testing.assert_array_equal(A.adjust_contrast(px, 2.0).ravel(), [255, 76, 0])


def test_hand_computed_sharpness():
    x = np.full((1, 3, 3, 1), 10, np.uint8)
    x[0, 1, 1] = 36                     # S = 8 * 10 + 5 * 36 = 260, blurred = 20
    got = A.adjust_sharpness(x, 0.0)    # factor 0: the blurred centre, border unchanged
    assert got[0, 1, 1, 0] == 20 and got[0, 0, 0, 0] == 10
    assert A.adjust_sharpness(x, 2.0)[0, 1, 1, 0] == 52   # 36 + (1 - 2)(20 - 36)
    assert A.adjust_sharpness(x[:, :2], 0.0)[0, 1, 1, 0] == 36   # H <= 2: unchanged


# --- transcriptions of torchvision's uint8 tensor code (NumPy; CHW per image) ----------------------

def tv_blend(img1, img2, ratio):
    # image1.mul(ratio).add_(image2, alpha=1 - ratio): torch's vectorized add_ with alpha is a
    # fused multiply-add (exact in float64 for the factors used here, then rounded once)
    f32 = np.float32
    a = img1.astype(f32) * f32(ratio)
    out = (np.asarray(img2, f32).astype(np.float64) * np.float64(f32(1.0 - ratio))
           + a.astype(np.float64)).astype(f32)
    return np.clip(out, 0, 255).astype(np.uint8)


def tv_gray(img):        # _rgb_to_grayscale_image with torch's vectorized fmadd
    r, g, b = (img[k].astype(np.float32) for k in range(3))
    t = r * np.float32(0.2989)
    t = (g.astype(np.float64) * np.float64(np.float32(0.587)) + t).astype(np.float32)
    t = (b.astype(np.float64) * np.float64(np.float32(0.114)) + t).astype(np.float32)
    return t[None]


def tv_adjust(op, img, f):
    if op == "brightness":
        return np.clip(img.astype(np.float32) * np.float32(f), 0, 255).astype(np.uint8)
    if op == "saturation":
        return tv_blend(img, np.floor(tv_gray(img)), f)
    if op == "contrast":
        g = np.floor(tv_gray(img))
        return tv_blend(img, np.float32(g.astype(np.float64).mean()), f)
    if op == "sharpness":
        out = img.astype(np.float32)
        k = np.ones((3, 3), np.float32)
        k[1, 1] = 5
        _, h, w = img.shape
        blurred = np.zeros((img.shape[0], h - 2, w - 2), np.float32)
        for dy in range(3):
            for dx in range(3):
                blurred += k[dy, dx] * out[:, dy:dy + h - 2, dx:dx + w - 2]
        blurred = np.round(blurred / np.float32(13))
        view = out[:, 1:-1, 1:-1]
        d = blurred - view
        view[...] = (d.astype(np.float64) * np.float32(1.0 - f) + view).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)
    if op == "posterize":
        return img & np.uint8(((1 << int(f)) - 1) << (8 - int(f)))
    if op == "solarize":
        return np.where(img >= np.float32(f), 255 - img, img).astype(np.uint8)
    if op == "autocontrast":
        fl = img.astype(np.float32)
        lo = fl.min(axis=(1, 2), keepdims=True)
        hi = fl.max(axis=(1, 2), keepdims=True)
        eq = hi == lo
        inv = (hi - lo) * np.float32(1.0 / 255)
        lo = np.where(eq, 0, lo)
        inv = np.where(eq, 1, inv)
        return np.clip((fl - lo) / inv, 0, 255).astype(np.uint8)
    if op == "equalize":
        out = img.copy()
        for c in range(img.shape[0]):
            flat = img[c].ravel()
            hist = np.bincount(flat, minlength=256)
            cum = np.cumsum(hist)
            nnm = flat.size - hist[np.argmax(cum)]
            step = nnm // 255
            if step == 0:
                continue
            lut = np.concatenate([[0], np.clip((cum[:-1] + step // 2) // step, 0, 255)])
            out[c] = lut.astype(np.uint8)[img[c]]
        return out
    raise ValueError(op)


CASES = [("brightness", 1.37), ("brightness", 0.21), ("saturation", 0.0), ("saturation", 1.62),
         ("contrast", 0.35), ("contrast", 1.9), ("sharpness", 0.1), ("sharpness", 1.99),
         ("posterize", 4), ("posterize", 7), ("solarize", 127.5), ("solarize", 0.0),
         ("autocontrast", 0), ("equalize", 0)]


def test_transcription_hand_cases():
    img = np.array([[[200]], [[100]], [[50]]], np.uint8)
    assert tv_adjust("saturation", img, 0.0).ravel().tolist() == [124, 124, 124]
    assert tv_adjust("brightness", img, 1.5).ravel().tolist() == [255, 150, 75]
    x = np.full((1, 3, 3), 10, np.uint8)
    x[0, 1, 1] = 36
    assert tv_adjust("sharpness", x, 0.0)[0, 1, 1] == 20


@pytest.mark.parametrize("op,f", CASES)
def test_ops_equal_torchvision_transcription(op, f):
    x = images(5, 11, 13, 3, seed=7)
    got = R.aug_color(x, np.full(5, R.OP_CODES[op], np.int64), np.full(5, float(f)),
                      out := np.zeros_like(x))
    for n in range(5):
        expected = tv_adjust(op, x[n].transpose(2, 0, 1), f).transpose(1, 2, 0)
        np.testing.assert_array_equal(out[n], expected, err_msg=f"{op} sample {n}")
    assert got is None


def test_gray_matches_torch_if_installed():
    torch = pytest.importorskip("torch")
    x = images(1, 16, 64, 3, seed=3)[0].transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(x))
    r, g, b = t.unbind(0)
    l_img = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)
    np.testing.assert_array_equal(np.floor(l_img.numpy()), np.floor(tv_gray(x)[0]))


def test_magnitude_bins_match_torch_if_installed():
    torch = pytest.importorskip("torch")
    for bins in (31, 10, 2, 17):
        for pol, wide in (("randaugment", False), ("trivialaugment", True)):
            expect = {
                "ShearX": torch.linspace(0.0, 0.99 if wide else 0.3, bins),
                "TranslateX": torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * 224, bins),
                "TranslateY": torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * 160, bins),
                "Rotate": torch.linspace(0.0, 135.0 if wide else 30.0, bins),
                "Brightness": torch.linspace(0.0, 0.99 if wide else 0.9, bins),
                "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4))))
                .round().int(),
                "Solarize": torch.linspace(1.0, 0.0, bins)}
            for op, t in expect.items():
                got = R.magnitude_bins(pol, op, bins, 160, 224)
                np.testing.assert_array_equal(got, t.double().numpy(), err_msg=f"{pol} {op}")


def test_magnitude_tables_written_down():
    assert R.POLICY_OPS[0] == "Identity" and len(R.POLICY_OPS) == 14
    assert R.magnitude_bins("randaugment", "Posterize", 31, 1, 1)[[0, 9, 30]].tolist() == \
        [8, 7, 4]
    assert R.magnitude_bins("trivialaugment", "Posterize", 31, 1, 1)[[0, 30]].tolist() == [8, 2]
    assert R.magnitude_bins("randaugment", "Rotate", 31, 1, 1)[9] == pytest.approx(9.0)
    assert R.magnitude_bins("trivialaugment", "TranslateX", 31, 1, 1)[30] == 32.0
    assert R.magnitude_bins("randaugment", "Identity", 31, 1, 1) is None


def test_policy_geometry():
    # translate by int(m) pixels, fill outside; rotate equals fastreg's rotation map
    m = R.policy_matrix("TranslateX", -3.7, 8, 10)
    np.testing.assert_allclose(m[:2], [[1, 0, 3], [0, 1, 0]], atol=1e-12)
    m = R.policy_matrix("TranslateY", 2.2, 8, 10)
    np.testing.assert_allclose(m[:2], [[1, 0, 0], [0, 1, -2]], atol=1e-12)
    np.testing.assert_allclose(R.policy_matrix("Rotate", 30.0, 8, 10),
                               ref.rotate_matrices(np.array([30.0]), 8, 10)[0], atol=1e-12)
    # ShearX(m): src_x = dst_x + m (dst_y + 0.5) (about the top-left corner, pixel (-0.5, -0.5))
    m = R.policy_matrix("ShearX", 0.3, 8, 10)
    np.testing.assert_allclose(m[:2], [[1, 0.3, 0.15], [0, 1, 0]], atol=1e-12)
    m = R.policy_matrix("ShearY", 0.3, 8, 10)
    np.testing.assert_allclose(m[:2], [[1, 0, 0], [0.3, 1, 0.15]], atol=1e-12)


# --- backends against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(9, 7, 6, 3), (4, 3, 3, 1), (1, 1, 1, 3), (3, 2, 5, 3),
                                   (0, 4, 4, 3), (2, 0, 4, 3)])
def test_aug_color_backends(backend, shape):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    n = shape[0]
    codes = np.resize(np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8], np.int64), n)
    params = np.resize(np.array([0, 0, 1.3, 0.4, 1.7, 0.2, 3, 128.0, 0, 0]), n)
    expected = np.full_like(x, 5)
    R.aug_color(x, codes, params, expected)
    mod = C.kernels(fastreg.augment.compose.resolve_backend(backend, x))
    got = np.full_like(x, 5)
    mod.aug_color(x, codes, params, got)
    np.testing.assert_array_equal(got, expected)
    # in place and strided (an NCHW batch's NHWC view)
    inplace = x.copy()
    mod.aug_color(inplace, codes, params, inplace)
    np.testing.assert_array_equal(np.where(codes[:, None, None, None] < 0, x, inplace),
                                  np.where(codes[:, None, None, None] < 0, x, expected))
    xs = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    got2 = np.full_like(xs, 5)
    mod.aug_color(xs, codes, params, got2)
    np.testing.assert_array_equal(got2, expected)


def test_ops_every_backend(backend):
    x = images(7, 10, 9, 3, seed=2)
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    pipelines = [A.RandAugment(2, 9), A.RandAugment(3, 30, interpolation="bilinear", fill=128),
                 A.TrivialAugmentWide(), A.ColorJitter(0.4, 0.4, 0.4), A.ColorJitter(0, 0.5, 0),
                 A.GaussianBlur(5, (0.1, 2.0)), A.GaussianBlur(3, 0.8),
                 A.Compose([A.RandomFlip(), A.TrivialAugmentWide(), A.GaussianBlur(3)])]
    for op in pipelines:
        expected = op(x, seed=11, epoch=2, backend="numpy")
        np.testing.assert_array_equal(op(x, seed=11, epoch=2, backend=backend), expected)
        got = op(xc, seed=11, epoch=2, layout="NCHW", backend=backend)
        np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), expected)
    norm = A.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    expected = ((x.astype(np.float32) * np.float32(1 / 255) - np.float32([0.485, 0.456, 0.406]))
                / np.float32([0.229, 0.224, 0.225]))
    np.testing.assert_array_equal(norm(x, backend=backend), expected)
    np.testing.assert_array_equal(norm(xc, layout="NCHW", backend=backend).transpose(0, 2, 3, 1),
                                  expected)
    fused = norm.after(A.TrivialAugmentWide())(x, seed=4, backend=backend)
    np.testing.assert_array_equal(fused, norm(A.TrivialAugmentWide()(x, seed=4), backend="numpy"))


def test_deterministic_functions_per_sample(backend):
    x = images(4, 6, 5, 3, seed=9)
    f = np.array([0.0, 0.5, 1.0, 1.8])
    got = A.adjust_contrast(x, f, backend=backend)
    for n in range(4):
        np.testing.assert_array_equal(got[n], R.contrast(x[n], f[n]))
    y = x.copy()
    assert A.posterize(y, 2, out=y, backend=backend) is y
    np.testing.assert_array_equal(y, x & 0xC0)
    np.testing.assert_array_equal(A.gaussian_blur(x, 3, 1.0, backend=backend),
                                  A.gaussian_blur(x, 3, 1.0, backend="numpy"))


def test_blur_close_to_2d_convolution():
    # torchvision convolves with the 2-D outer product: separable float32 differs by <= 1
    x = images(3, 12, 11, 3, seed=5)
    got = A.gaussian_blur(x, 5, 1.3, backend="numpy")
    w = R.gaussian_weights(1.3, 5).astype(np.float64)
    k2 = np.outer(w, w)
    pad = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    conv = sum(k2[i, j] * pad[:, i:i + 12, j:j + 11] for i in range(5) for j in range(5))
    assert np.abs(got.astype(int) - np.round(conv)).max() <= 1


# --- randomness: keyed per sample, frequencies -----------------------------------------------------

def test_reproducible_across_splits_and_seeds():
    x = images(10, 8, 8, 3, seed=4)
    for op in (A.RandAugment(2, 9), A.TrivialAugmentWide(), A.ColorJitter(0.3, 0.3, 0.3),
               A.GaussianBlur(3)):
        full = op(x, seed=1, epoch=3, backend="numpy")
        parts = [op(x[a:b], seed=1, epoch=3, index_offset=a, backend="numpy")
                 for a, b in ((0, 3), (3, 4), (4, 10))]
        np.testing.assert_array_equal(full, np.concatenate(parts))
        assert not np.array_equal(full, op(x, seed=2, epoch=3, backend="numpy"))
        np.testing.assert_array_equal(full, op(x, seed=1, epoch=3, backend="numpy"))
    assert not np.array_equal(A.TrivialAugmentWide()(x, seed=1, epoch=0),
                              A.TrivialAugmentWide()(x, seed=1, epoch=1))


def _policy_one_by_one(op, x, seed, epoch):
    """A policy applied sample by sample from its definition: each slot's colour op through the
    reference aug_color, its geometric op through the reference aug_affine (nearest, fill)."""
    n, h, w, _ = x.shape
    ops, mags = op.params(seed, epoch, np.arange(n), h, w)
    out = x.copy()
    for i in range(n):
        img = x[i:i + 1].copy()
        for s in range(ops.shape[1]):
            codes, params, geo, mats = R.slot_plan(ops[i:i + 1, s], mags[i:i + 1, s], h, w)
            nxt = np.empty_like(img)
            if geo[0]:
                ref.aug_affine(img, mats, 0, op.fill, True, nxt)
            else:
                R.aug_color(img, codes, params, nxt)
            img = nxt
        out[i] = img[0]
    return out


def test_policies_equal_sample_by_sample(backend):
    # the batched policy (geometric samples resampled a run of consecutive samples at a time,
    # in place from the second slot on) against each sample's ops one by one; NCHW, in place
    x = images(13, 8, 9, 3, seed=7)
    for op in (A.RandAugment(3, 20, fill=5), A.TrivialAugmentWide(fill=9)):
        expected = _policy_one_by_one(op, x, seed=3, epoch=1)
        np.testing.assert_array_equal(op(x, seed=3, epoch=1, backend=backend), expected)
        xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        got = op(xc, seed=3, epoch=1, layout="NCHW", backend=backend)
        np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), expected)
        y = x.copy()
        op(y, seed=3, epoch=1, out=y, backend=backend)
        np.testing.assert_array_equal(y, expected)


def _bound(n, p):
    return 5 * math.sqrt(n * p * (1 - p)) + 1


def test_op_frequencies():
    n = 20000
    idx = np.arange(n)
    ops, mags = R.policy_params("randaugment", 7, 0, idx, 0, 2, 9, 31, 32, 32)
    for s in range(2):
        counts = np.bincount(ops[:, s], minlength=14)
        assert np.all(np.abs(counts - n / 14) < _bound(n, 1 / 14)), counts
    assert np.mean(ops[:, 0] == ops[:, 1]) == pytest.approx(1 / 14, abs=_bound(n, 1 / 14) / n)
    rot = ops == R.POLICY_OPS.index("Rotate")
    neg = mags[rot] < 0
    assert abs(neg.sum() - rot.sum() / 2) < _bound(rot.sum(), 0.5)
    np.testing.assert_allclose(np.abs(mags[rot]), 9.0, rtol=1e-6)
    ops, mags = R.policy_params("trivialaugment", 7, 0, idx, 0, 1, 0, 31, 32, 32)
    counts = np.bincount(ops[:, 0], minlength=14)
    assert np.all(np.abs(counts - n / 14) < _bound(n, 1 / 14)), counts
    solar = ops[:, 0] == R.POLICY_OPS.index("Solarize")
    bins = np.round((1 - mags[solar, 0]) * 30).astype(int)     # linspace(1, 0, 31)
    c = np.bincount(bins, minlength=31)
    assert np.all(np.abs(c - solar.sum() / 31) < _bound(solar.sum(), 1 / 31))


def test_jitter_orders_and_factors():
    n = 12000
    order, f = R.jitter_params(3, 0, np.arange(n), 0, {"brightness": (0.6, 1.4),
                                                       "contrast": None, "saturation": (0, 2)})
    perms = order @ np.array([9, 3, 1])
    counts = np.bincount(perms)[np.bincount(perms) > 0]
    assert len(counts) == 6 and np.all(np.abs(counts - n / 6) < _bound(n, 1 / 6))
    assert f[:, 0].min() >= 0.6 and f[:, 0].max() < 1.4 and np.all(f[:, 1] == 1.0)
    assert abs(f[:, 2].mean() - 1.0) < 5 * (2 / math.sqrt(12)) / math.sqrt(n)


# --- bad input ------------------------------------------------------------------------------------

def test_bad_input():
    x = images(2, 5, 5, 3)
    with pytest.raises(TypeError, match="uint8"):
        A.RandAugment()(x.astype(np.float32), seed=0)
    with pytest.raises(TypeError, match="uint8"):
        A.Compose([A.ColorJitter(0.2)])(x.astype(np.float32), seed=0)
    with pytest.raises(ValueError, match="channels"):
        A.TrivialAugmentWide()(np.zeros((2, 5, 5, 4), np.uint8), seed=0)
    with pytest.raises(ValueError, match="magnitude"):
        A.RandAugment(2, 31)
    with pytest.raises(ValueError, match="num_ops"):
        A.RandAugment(-1)
    with pytest.raises(TypeError, match="num_ops"):
        A.RandAugment(1.5)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        A.TrivialAugmentWide(num_magnitude_bins=1)
    with pytest.raises(ValueError, match="interpolation"):
        A.TrivialAugmentWide(interpolation="bicubic")
    with pytest.raises(ValueError, match="fill"):
        A.RandAugment(fill=300)
    with pytest.raises(ValueError, match="kernel_size"):
        A.GaussianBlur(4)
    with pytest.raises(ValueError, match="kernel_size"):
        A.GaussianBlur(11)(x, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        A.GaussianBlur(3, 0.0)
    with pytest.raises(ValueError, match="brightness"):
        A.ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="std"):
        A.Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="mean"):
        A.Normalize([0.5, 0.5], [0.2])(x)
    with pytest.raises(ValueError, match="bits"):
        A.posterize(x, 9)
    with pytest.raises(ValueError, match="factor"):
        A.adjust_brightness(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="factor"):
        A.adjust_brightness(x, -1.0)
    for odd in (None, True, "2"):   # None once meant a factor of 0: a black batch, silently
        with pytest.raises(TypeError, match="factor must be a real number"):
            A.adjust_brightness(x, odd)
        with pytest.raises(TypeError, match="threshold must be a real number"):
            A.solarize(x, odd)
    with pytest.raises(ValueError, match="seed"):
        A.RandAugment()(x, seed=-1)
    with pytest.raises(ValueError, match="out"):
        A.RandAugment()(x, seed=0, out=np.zeros((2, 5, 5, 2), np.uint8))
    before = x.copy()
    A.RandAugment(4, 20)(x, seed=0)
    np.testing.assert_array_equal(x, before)        # input untouched
