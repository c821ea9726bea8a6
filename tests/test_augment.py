"""Image augmentation: every backend against the NumPy reference, the reference against direct
definitions (np.flip, np.rot90, np.pad), per-sample determinism across batch splits, statistics
of the flip rate and the noise, and argument errors.

Every backend ("cpu", "c" and "cuda") is held to the reference bit for bit where the contract says
so; the C backend also on every ISA path (portable, AVX2, AVX-512) and thread count. The CUDA
backend runs under the simulator on a few 5x7 images.
"""
import math

import numpy as np
import pytest
from conftest import CUDA_SIM

import fastreg
import fastreg.augment as A
from fastreg.reference import augment as ref

BACKENDS = ("numpy", "cpu", "c", "cuda")
DTYPES = (np.uint8, np.float32)
LAYOUTS = ("NHWC", "NCHW")
SEED = 0x0123456789ABCDEF


@pytest.fixture(params=BACKENDS)
def backend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setenv("FASTREG_CUDA_TPB", "32")


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def images(n, h, w, c, dtype, layout="NHWC", seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        x = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    else:
        x = (rng.standard_normal((n, h, w, c)) * 50).astype(np.float32)
    return x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def small(backend):
    """Batch dims: tiny under the CUDA simulator."""
    return (3, 5, 7, 3) if backend == "cuda" and CUDA_SIM else (6, 9, 11, 3)


# op name -> (call, exact on cuda?)
OPS = {
    "flip_h": (lambda x, **k: A.random_flip(x, 0.5, **k), True),
    "flip_both": (lambda x, **k: A.random_flip(x, 0.5, direction="both", **k), True),
    "rotate": (lambda x, **k: A.random_rotate(x, 40, fill=9, **k), False),
    "rotate_nearest": (lambda x, **k: A.random_rotate(x, (-90, 90), interpolation="nearest",
                                                      **k), False),
    "crop_const": (lambda x, **k: A.random_crop(x, (4, 5), padding=2, fill=3, **k), True),
    "crop_reflect": (lambda x, **k: A.random_crop(x, (5, 7), padding=(2, 3),
                                                  padding_mode="reflect", **k), True),
    "crop_edge": (lambda x, **k: A.random_crop(x, (5, 7), padding=(2, 3), padding_mode="edge",
                                               **k), True),
    "resized_crop": (lambda x, **k: A.random_resized_crop(x, (6, 4), **k), False),
    "resized_crop_up": (lambda x, **k: A.random_resized_crop(x, (13, 17), scale=(0.5, 1.0),
                                                             **k), False),
    "noise": (lambda x, **k: A.gaussian_noise(x, (0.0, 20.0), **k), False),
    "erasing": (lambda x, **k: A.random_erasing(x, 0.8, value=17, **k), True),
    "mixup": (lambda x, **k: A.mixup(x, np.arange(x.shape[0]) % 4, 0.4, num_classes=4,
                                     **k), False),
    "cutmix": (lambda x, **k: A.cutmix(x, np.arange(x.shape[0]) % 4, 1.0, num_classes=4,
                                       **k), True),
    "compose": (lambda x, **k: A.Compose([A.RandomFlip(), A.RandomRotate(25),
                                          A.RandomCrop(5, 1), A.GaussianNoise(4.0),
                                          A.RandomErasing(0.5)])(x, **k), False),
}


def check_close(got, expected, exact):
    got = host(got)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if exact:
        np.testing.assert_array_equal(got, expected)
    elif expected.dtype == np.uint8:   # the CUDA tolerance (fused multiply-add)
        assert np.max(np.abs(got.astype(int) - expected.astype(int))) <= 1
    else:
        scale = max(1.0, float(np.max(np.abs(expected))))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


# --- every backend against the reference --------------------------------------------------------

@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_op_vs_reference(backend, op, dtype, layout):
    fn, exact_on_cuda = OPS[op]
    x = images(*small(backend), dtype, layout)
    before = x.copy()
    kw = dict(seed=SEED, epoch=3, index_offset=11, layout=layout)
    expected = fn(x, backend="numpy", **kw)
    got = fn(x, backend=backend, **kw)
    exact = backend != "cuda" or exact_on_cuda
    if isinstance(expected, tuple):
        check_close(got[0], expected[0], exact)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)
    else:
        check_close(got, expected, exact)
    np.testing.assert_array_equal(x, before)  # input untouched


@pytest.mark.parametrize("op", ["flip_both", "rotate", "crop_reflect", "resized_crop"])
def test_target_follows_images(backend, op):
    """A mask gets the same geometry, by nearest neighbour: resample an image whose values are
    its own pixel ids and compare with the mask."""
    n, h, w, _ = small(backend)
    ids = np.arange(n * h * w, dtype=np.int32).reshape(n, h, w)
    x = images(n, h, w, 3, np.uint8)
    kw = dict(seed=5, epoch=1, index_offset=2, target_fill=-1)
    fn = OPS[op][0]
    got_x, got_t = fn(x, target=ids, backend=backend, **kw)
    exp_x, exp_t = fn(x, target=ids, backend="numpy", **kw)
    np.testing.assert_array_equal(host(got_t), exp_t)
    assert exp_t.shape == host(got_x).shape[:3] and exp_t.dtype == np.int32
    if op in ("flip_both", "crop_reflect"):  # integral maps: the mask moves exactly as pixels
        gathered = x.reshape(-1, 3)[exp_t.reshape(-1)].reshape(exp_x.shape)
        np.testing.assert_array_equal(gathered, exp_x)


@pytest.mark.parametrize("op", ["flip_both", "rotate", "crop_reflect", "resized_crop"])
def test_target_of_images_without_channels(backend, op):
    """Images with C = 0 have no values, but their pixels and their target do: the target gets
    the same geometry as with any C (it was returned unwritten before)."""
    n, h, w, _ = small(backend)
    ids = np.arange(n * h * w, dtype=np.int32).reshape(n, h, w)
    kw = dict(seed=5, epoch=1, index_offset=2, target_fill=-1)
    fn = OPS[op][0]
    got_x, got_t = fn(np.zeros((n, h, w, 0), np.float32), target=ids, backend=backend, **kw)
    one_x, exp_t = fn(np.zeros((n, h, w, 1), np.float32), target=ids, backend="numpy", **kw)
    np.testing.assert_array_equal(host(got_t), exp_t)
    assert host(got_x).shape == one_x.shape[:3] + (0,)


def test_noise_and_erasing_leave_target(backend):
    x = images(*small(backend), np.float32)
    t = np.ones(x.shape[:3], np.uint8)
    _, t2 = A.gaussian_noise(x, 1.0, seed=1, target=t, backend=backend)
    _, t3 = A.random_erasing(x, 1.0, seed=1, target=t, backend=backend)
    assert t2 is t and t3 is t


# --- the reference against direct definitions ---------------------------------------------------

def torchvision_erasing_box(u, height, width, scale, ratio, tries=10):
    """torchvision's RandomErasing.get_params, transcribed, fed with the uniforms ``u`` (4 per
    try: area, log-aspect, row, column) instead of torch's generator: (y0, x0, h, w), or
    (0, 0, 0, 0) when no box fits (torchvision then returns the image unchanged)."""
    lr = np.log(ratio)
    for t in range(tries):
        erase_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[4 * t])
        aspect = math.exp(lr[0] + (lr[1] - lr[0]) * u[4 * t + 1])
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if not (h < height and w < width):
            continue
        i = int(u[4 * t + 2] * (height - h + 1))       # randint(0, height - h + 1)
        j = int(u[4 * t + 3] * (width - w + 1))
        return (i, j, h, w)
    return (0, 0, 0, 0)


@pytest.mark.parametrize("height, width, scale, ratio", [
    (6, 6, (0.02, 0.33), (0.3, 3.3)), (5, 9, (0.3, 1.0), (0.2, 5.0)), (4, 4, (0.6, 1.0), (0.5, 2)),
    (1, 7, (0.01, 0.5), (0.3, 3.3)), (7, 7, (1.0, 1.0), (1.0, 1.0))])
def test_erasing_boxes_follow_torchvision(height, width, scale, ratio):
    idx = np.arange(300)
    rects = ref.sample_params("erasing", 5, 2, idx, height=height, width=width, p=1.0,
                              scale=scale, ratio=ratio)["rects"]
    tag = ref.CODES["erasing"] << 8
    u = ref.unit(ref.sample_words(5, 2, tag, idx, 41))[:, 1:]
    expected = np.array([torchvision_erasing_box(row, height, width, scale, ratio) for row in u])
    np.testing.assert_array_equal(rects, expected)
    assert (rects[:, 2] < height).all() and (rects[:, 3] < width).all()
    if scale == (1.0, 1.0):                  # the whole image never fits: nothing erased
        assert not rects.any()


def test_erasing_never_covers_the_whole_height_or_width(backend):
    x = np.full((40, 6, 6, 1), 200, np.uint8)
    got = host(A.random_erasing(x, 1.0, scale=(0.5, 1.0), ratio=(0.3, 3.3), value=0, seed=9,
                                backend=backend))
    erased = got[..., 0] == 0
    rows, cols = erased.any(axis=2).sum(axis=1), erased.any(axis=1).sum(axis=1)
    assert (rows < 6).all() and (cols < 6).all() and erased.any()
    whole = host(A.random_erasing(x, 1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), value=0, seed=9,
                                  backend=backend))
    np.testing.assert_array_equal(whole, x)   # a 6x6 box in a 6x6 image never fits


def test_flip_definition():
    x = images(40, 4, 5, 2, np.uint8)
    idx = 7 + np.arange(40)
    got = A.random_flip(x, 0.5, direction="both", seed=SEED, index_offset=7, backend="numpy")
    prm = ref.sample_params("flip", SEED, 0, idx, p=0.5, direction="both")
    for i in range(40):
        e = x[i]
        if prm["hflip"][i]:
            e = np.flip(e, 1)
        if prm["vflip"][i]:
            e = np.flip(e, 0)
        np.testing.assert_array_equal(got[i], e)
    assert 0 < prm["hflip"].sum() < 40 and 0 < prm["vflip"].sum() < 40


@pytest.mark.parametrize("dtype", DTYPES)
def test_rot90_and_rotate_by_quarter_turns(dtype):
    x = images(30, 6, 6, 3, dtype)
    got = A.random_rot90(x, 1.0, seed=2, backend="numpy")
    k = ref.sample_params("rot90", 2, 0, np.arange(30), p=1.0)["k"]
    assert set(k) == {1, 2, 3}
    for i in range(30):
        np.testing.assert_array_equal(got[i], np.rot90(x[i], k[i]))
    # a rotation by exactly 90 degrees through the bilinear path is np.rot90, exactly
    r = A.random_rotate(x, (90, 90), seed=2, backend="numpy")
    np.testing.assert_array_equal(r, np.rot90(x, 1, axes=(1, 2)))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_crop_definition(mode):
    x = images(20, 7, 8, 3, np.uint8)
    got = A.random_crop(x, (6, 5), padding=(2, 3), padding_mode=mode, fill=44, seed=4,
                        index_offset=100, backend="numpy")
    prm = ref.sample_params("crop", 4, 0, 100 + np.arange(20), span_y=7 + 4 - 6,
                            span_x=8 + 6 - 5)
    kw = {"constant_values": 44} if mode == "constant" else {}
    padded = np.pad(x, ((0, 0), (2, 2), (3, 3), (0, 0)), mode=mode, **kw)
    for i in range(20):
        t, l = prm["top"][i], prm["left"][i]
        np.testing.assert_array_equal(got[i], padded[i, t:t + 6, l:l + 5])


def _resize_align_corners_false(img, oh, ow):
    """torch.nn.functional.interpolate(mode="bilinear", align_corners=False) of one (H, W, C)
    float image, written out: source coordinates clamped to the image, float64."""
    h, w = img.shape[:2]
    img = img.astype(np.float64)

    def axis(n_out, n_in):
        s = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0
    y0, y1, fy = axis(oh, h)
    x0, x1, fx = axis(ow, w)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


@pytest.mark.parametrize("size", [(30, 23), (5, 4)])
def test_resized_crop_of_the_whole_image_is_torchvisions_resize(backend, size):
    """A box of the whole image resized up or down: torchvision's resize (no antialiasing),
    edge pixels repeated, no darkened border (a constant border darkened the outer rows and
    columns of an upscale before: 200 -> 86 on a constant image)."""
    x = images(2, 12, 12, 3, np.float32)
    got = host(A.random_resized_crop(x, size, scale=(1, 1), ratio=(1, 1), seed=0,
                                     backend=backend))
    for i in range(2):
        np.testing.assert_allclose(got[i], _resize_align_corners_false(x[i], *size),
                                   rtol=0, atol=1.0)   # positions in 1/256 pixel: <= 0.62
    flat = np.full((1, 10, 10, 3), 200, np.uint8)
    up = host(A.random_resized_crop(flat, 32, scale=(1, 1), ratio=(1, 1), seed=0,
                                    backend=backend))
    assert (up == 200).all()
    # a Compose of the resized crop alone does the same; with a rotation the border is constant
    assert A.Compose([A.RandomResizedCrop(32, (1, 1), (1, 1))]).padding_mode is None
    np.testing.assert_array_equal(host(A.Compose([A.RandomResizedCrop(32, (1, 1), (1, 1))])(
        flat, seed=0, backend=backend)), up)
    rot = host(A.Compose([A.RandomResizedCrop(32, (1, 1), (1, 1)), A.RandomRotate((45, 45))])(
        flat, seed=0, backend=backend))
    assert rot[0, 0, 0, 0] == 0


def test_identity_cases():
    x = images(5, 8, 8, 3, np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 1, 0] = np.inf
    for y in (A.random_rotate(x, 30, p=0.0, seed=1, backend="numpy"),
              A.random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1), seed=1, backend="numpy"),
              A.random_crop(x, 8, seed=1, backend="numpy"),
              A.gaussian_noise(x, 0.0, seed=1, backend="numpy")):
        np.testing.assert_array_equal(y, x)


def test_rotation_is_smooth_and_filled():
    """A constant image rotated keeps its value inside and blends to fill at the corners."""
    x = np.full((1, 32, 32, 1), 200, np.uint8)
    y = A.random_rotate(x, (45, 45), fill=0, seed=0, backend="numpy")[0, :, :, 0]
    assert y[16, 16] == 200 and y[0, 0] == 0 and y[16, 0] == 200


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("op", sorted(set(OPS) - {"mixup", "cutmix"}))
def test_batch_split_determinism(backend, op):
    """Sample i gets the same transform whatever batch it is in: whole batch == its halves."""
    fn, _ = OPS[op]
    x = images(*small(backend), np.uint8)
    kw = dict(seed=SEED, epoch=2)
    whole = host(fn(x, index_offset=50, backend=backend, **kw))
    a = host(fn(x[:2], index_offset=50, backend=backend, **kw))
    b = host(fn(x[2:], index_offset=52, backend=backend, **kw))
    np.testing.assert_array_equal(whole, np.concatenate([a, b]))


def test_seed_and_epoch_change_transforms():
    x = images(8, 9, 9, 3, np.uint8)
    base = A.random_rotate(x, 30, seed=1, epoch=0, backend="numpy")
    np.testing.assert_array_equal(base, A.random_rotate(x, 30, seed=1, epoch=0,
                                                        backend="numpy"))
    assert not np.array_equal(base, A.random_rotate(x, 30, seed=2, backend="numpy"))
    assert not np.array_equal(base, A.random_rotate(x, 30, seed=1, epoch=1, backend="numpy"))


def test_compose_single_op_equals_function():
    x = images(6, 9, 9, 3, np.uint8)
    kw = dict(seed=3, epoch=1, index_offset=4, backend="cpu")
    np.testing.assert_array_equal(A.Compose([A.RandomRotate(20)])(x, **kw),
                                  A.random_rotate(x, 20, **kw))
    np.testing.assert_array_equal(A.Compose([A.GaussianNoise(3.0)])(x, **kw),
                                  A.gaussian_noise(x, 3.0, **kw))
    # two flips compose to one map (and still run as an exact flip)
    y = A.Compose([A.RandomFlip(1.0), A.RandomFlip(1.0, "vertical")])(x, **kw)
    np.testing.assert_array_equal(y, x[:, ::-1, ::-1])
    np.testing.assert_array_equal(A.Compose([])(x, **kw), x)


# --- statistics --------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_flip_rate_within_5_sigma(p):
    n = 20000
    x = np.zeros((n, 1, 2, 1), np.uint8)
    x[:, 0, 1] = 1
    y = A.random_flip(x, p, seed=9, backend="cpu")
    flipped = int(y[:, 0, 0, 0].sum())
    assert abs(flipped - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_noise_statistics():
    x = np.zeros((4, 64, 64, 3), np.float32)
    z = A.gaussian_noise(x, 2.0, seed=5, backend="cpu").reshape(-1) / 2.0
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 5 * math.sqrt(0.5 / n)
    # the shape: normal quantiles (Phi(-1) = 0.1587, Phi(-2) = 0.0228)
    for q, pr in ((-1.0, 0.158655), (-2.0, 0.022750), (1.0, 0.841345)):
        frac = np.mean(z < q)
        assert abs(frac - pr) < 5 * math.sqrt(pr * (1 - pr) / n)
    # uint8: clipped and rounded, mean preserved mid-range
    u = A.gaussian_noise(np.full((4, 64, 64, 3), 128, np.uint8), 10.0, seed=5, backend="cpu")
    assert abs(u.astype(float).std() - 10.0) < 0.3 and abs(u.mean() - 128) < 0.3


def test_box_muller_accuracy():
    """The polynomial Box-Muller against float64 libm on the same words."""
    rng = np.random.default_rng(1)
    w0, w1 = (rng.integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32)
              for _ in range(2))
    z0, z1 = ref.box_muller(w0, w1)
    u1 = ((w0 >> 8).astype(np.float64) + 1) * 2.0**-24
    th = 2 * np.pi * (w1 >> 8).astype(np.float64) * 2.0**-24
    r = np.sqrt(-2 * np.log(u1))
    np.testing.assert_allclose(z0, r * np.cos(th), atol=2e-6 * 6)
    np.testing.assert_allclose(z1, r * np.sin(th), atol=2e-6 * 6)


def test_mixup_and_cutmix_labels():
    x = images(10, 8, 8, 3, np.float32)
    y, soft = A.mixup(x, np.arange(10), 0.4, num_classes=10, seed=1, backend="cpu")
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    lam = ref.sample_params("mixup", 1, 0, np.arange(10), alpha=0.4)["lam"].astype(np.float32)
    partner = ref.partner_of(1, 0, np.arange(10))
    assert np.all(partner != np.arange(10)) and sorted(partner) == list(range(10))
    np.testing.assert_allclose(soft[np.arange(10), np.arange(10)], lam, rtol=1e-6)
    np.testing.assert_allclose(y, x * lam[:, None, None, None]
                               + x[partner] * (1 - lam[:, None, None, None]), rtol=1e-5,
                               atol=1e-4)
    y, soft = A.cutmix(x, np.arange(10), 1.0, num_classes=10, seed=1, backend="cpu")
    kept = (y == x).all(axis=3).mean(axis=(1, 2))
    np.testing.assert_allclose(soft[np.arange(10), np.arange(10)], kept)
    lams = ref.sample_params("mixup", 7, 0, np.arange(4000), alpha=1.0)["lam"]
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / 12) < 0.01  # Beta(1,1)


# --- arguments ---------------------------------------------------------------------------------

def test_bad_inputs():
    x = images(2, 5, 5, 3, np.uint8)
    with pytest.raises(TypeError, match="uint8 or float32"):
        A.random_flip(x.astype(np.float64), seed=1)
    with pytest.raises(ValueError, match="4-D"):
        A.random_flip(x[0], seed=1)
    with pytest.raises(ValueError, match="layout"):
        A.random_flip(x, seed=1, layout="HWC")
    with pytest.raises(ValueError, match="p must be in"):
        A.random_flip(x, 1.5, seed=1)
    with pytest.raises(ValueError, match="finite"):
        A.random_rotate(x, float("nan"), seed=1)
    with pytest.raises(ValueError, match="finite"):
        A.gaussian_noise(x, float("inf"), seed=1)
    with pytest.raises(ValueError, match=">= 0"):
        A.gaussian_noise(x, -1.0, seed=1)
    with pytest.raises(ValueError, match="does not match"):
        A.random_flip(x, seed=1, target=np.zeros((2, 5, 4), np.uint8))
    with pytest.raises(ValueError, match="square"):
        A.random_rot90(images(2, 5, 6, 3, np.uint8), seed=1)
    with pytest.raises(ValueError, match="larger"):
        A.random_crop(x, 8, padding=1, seed=1)
    with pytest.raises(ValueError, match="fill"):
        A.random_rotate(x, 10, fill=300, seed=1)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        A.random_flip(x, seed=1, index_offset=2**32 - 1)
    with pytest.raises(ValueError, match="num_classes"):
        A.mixup(x, np.array([0, 1]), seed=1)
    with pytest.raises(ValueError, match="labels must be in"):
        A.mixup(x, np.array([0, 5]), num_classes=3, seed=1)
    with pytest.raises(ValueError, match="out must have shape"):
        A.random_flip(x, seed=1, out=np.empty((2, 5, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="share memory"):
        A.random_rotate(x, 10, seed=1, out=x)
    with pytest.raises(TypeError):
        A.random_flip(x)  # seed is required


def test_out_and_in_place(backend):
    x = images(*small(backend), np.float32)
    out = np.empty_like(x)
    r = A.random_flip(x, seed=1, out=out, backend=backend)
    assert r is out
    np.testing.assert_array_equal(out, A.random_flip(x, seed=1, backend="numpy"))
    expected = A.gaussian_noise(x, 1.0, seed=1, backend="numpy")
    y = x.copy()
    r = A.gaussian_noise(y, 1.0, seed=1, out=y, backend=backend)
    assert r is y
    check_close(y, expected, backend != "cuda")
    y = x.copy()
    A.random_erasing(y, 1.0, seed=1, out=y, backend=backend)
    np.testing.assert_array_equal(y, A.random_erasing(x, 1.0, seed=1, backend="numpy"))


def test_non_contiguous_and_empty():
    x = images(4, 6, 6, 3, np.uint8)[:, :, ::-1]
    np.testing.assert_array_equal(A.random_rotate(x, 10, seed=1, backend="cpu"),
                                  A.random_rotate(np.ascontiguousarray(x), 10, seed=1,
                                                  backend="numpy"))
    e = np.zeros((0, 6, 6, 3), np.uint8)
    assert A.random_flip(e, seed=1, backend="cpu").shape == e.shape
    assert A.random_crop(e, 4, seed=1, backend="cpu").shape == (0, 4, 4, 3)


def test_images_without_pixels(backend):
    """Images of height or width 0 that a geometric op would turn into images with pixels are
    refused with a clear error on every backend (the C kernel returned a status, Numba read
    outside the array); ops whose output has no pixels either run; cutmix keeps all of each
    label (the empty box pastes nothing)."""
    for shape in ((4, 0, 3, 3), (2, 3, 0, 1), (1, 0, 0, 3)):
        x = np.zeros(shape, np.uint8)
        for mode in ("constant", "edge", "reflect"):
            with pytest.raises(ValueError, match="no pixels"):
                A.random_crop(x, 2, padding=1, padding_mode=mode, seed=0, backend=backend)
        with pytest.raises(ValueError, match="no pixels"):
            A.random_resized_crop(x, 4, seed=0, backend=backend)
        assert A.random_flip(x, seed=0, backend=backend).shape == shape
        assert A.random_rotate(x, 10, seed=0, backend=backend).shape == shape
    x = np.zeros((3, 4, 0, 3), np.float32)
    _, soft = A.cutmix(x, np.arange(3), num_classes=3, seed=0, backend=backend)
    np.testing.assert_array_equal(soft, np.eye(3, dtype=soft.dtype))


def test_fill_and_normalize_arguments_named():
    """A fill beyond the images' (or the target's) dtype, and a mean / std that is not a
    number, are refused naming the argument (NumPy's OverflowError or an inf fill before)."""
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="fill must be within float32's range"):
        A.random_rotate(x, 10, fill=1e39, seed=0)
    mask = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(ValueError, match=r"target_fill must be in \[-2147483648"):
        A.random_rotate(x, 10, seed=0, target=mask, target_fill=2 ** 40)
    u8 = np.zeros((1, 2, 2, 3), np.uint8)
    for bad, exc in (("a", TypeError), ([1, "b", 2], TypeError), ([np.nan], ValueError),
                     ([[0.5, 0.5]], ValueError)):
        with pytest.raises(exc, match="mean"):
            A.normalize(u8, bad, 0.2)
        with pytest.raises(exc, match="std"):
            A.normalize(u8, 0.5, bad)


def test_import_loads_no_backend():
    import subprocess
    import sys
    code = ("import sys, fastreg.augment as A; import numpy as np; "
            "assert 'numba' not in sys.modules; "
            "A.random_flip(np.zeros((1, 2, 2, 1), np.uint8), seed=1, backend='numpy'); "
            "assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstrings():
    for name in A.__all__:
        obj = getattr(A, name)
        fn = obj.__call__ if name == "Compose" else obj
        if isinstance(obj, type) and name != "Compose":
            continue
        doc = fn.__doc__ or ""
        assert "Parameters" in doc and "Returns" in doc, name


# --- the C backend's vector paths ------------------------------------------------------------------

def _c_or_skip(isa):
    reason = fastreg.available_backends()["c"]
    if reason is not None:
        pytest.skip(f"backend 'c' unavailable: {reason}")
    import fastreg.c as fc
    if isa == "avx2" and not fc.has_avx2() or isa == "avx512" and not fc.has_avx512():
        pytest.skip(f"no {isa} on this CPU")
    return fc


@pytest.mark.parametrize("isa", ["c-portable", "c-avx2", "c-avx512"])
@pytest.mark.parametrize("shape", [(3, 40, 53, 3), (2, 31, 29, 1), (2, 12, 9, 4)])
def test_c_isa_paths_vs_reference(isa, shape):
    """Every ISA path of the C kernels (byte-shuffle flips, gathered bilinear and nearest
    rows, vectorized Box-Muller) gives the reference's bits, on widths that leave loop tails and
    on rotations whose taps reach the last pixel of the batch (the gathers' bounds)."""
    fc = _c_or_skip(isa[2:])
    previous = fc.set_isa(isa[2:])
    # streaming stores (flips of large outputs) on the AVX-512 run, ordinary ones elsewhere
    stores = fc.set_stream_stores("always" if isa == "c-avx512" else "never")
    try:
        for dtype in DTYPES:
            x = images(*shape, dtype, seed=shape[2])
            calls = [
                lambda b: A.random_flip(x, 0.5, direction="both", seed=4, backend=b),
                lambda b: A.random_flip(x, 1.0, seed=4, backend=b),
                lambda b: A.random_rotate(x, 180, fill=7, seed=4, backend=b),
                lambda b: A.random_rotate(x, (0, 0.3), seed=4, backend=b),   # near-identity
                lambda b: A.Compose([A.RandomRotate(60)], padding_mode="reflect")(
                    x, seed=4, backend=b),
                lambda b: A.random_resized_crop(x, (50, 23), scale=(0.2, 1), seed=4,
                                                backend=b),
                lambda b: A.random_rotate(x, 45, interpolation="nearest", seed=4, backend=b),
                # nearest, the source's last pixel reached (the gathers' bound), fill outside
                lambda b: A.random_rotate(x, (179, 181), interpolation="nearest", fill=7,
                                          seed=4, backend=b),
                lambda b: A.Compose([A.RandomRotate(60)], padding_mode="reflect",
                                    interpolation="nearest")(x, seed=4, backend=b),
                lambda b: A.gaussian_noise(x, (0.0, 40.0), seed=4, index_offset=7, backend=b),
                lambda b: A.random_erasing(x, 1.0, value=3, seed=4, backend=b),
                lambda b: A.mixup(x, np.arange(shape[0]), 0.4, num_classes=shape[0], seed=4,
                                  backend=b)[0],
                lambda b: A.cutmix(x, np.arange(shape[0]), 1.0, num_classes=shape[0], seed=4,
                                   backend=b)[0],
            ]
            for k, fn in enumerate(calls):
                np.testing.assert_array_equal(fn("c"), fn("numpy"), err_msg=f"call {k}")
    finally:
        fc.set_isa(previous)
        fc.set_stream_stores(stores)


@pytest.mark.parametrize("tdtype", [np.uint8, np.int32, np.int64, np.float32])
@pytest.mark.parametrize("be", ["c"])   # the id [c-...]: .ci/c_sanitize.sh selects it
def test_c_target_dtypes_and_in_place(be, tdtype):
    """Nearest resampling and flips of every target dtype; noise and erasing in place."""
    _c_or_skip("portable")
    x = images(3, 10, 13, 3, np.uint8)
    t = (np.arange(3 * 10 * 13) % 97).astype(tdtype).reshape(3, 10, 13)
    for fn in (lambda b: A.random_rotate(x, 30, target=t, target_fill=5, seed=2, backend=b),
               lambda b: A.random_flip(x, 0.5, direction="both", target=t, seed=2, backend=b)):
        (gx, gt), (ex, et) = fn("c"), fn("numpy")
        np.testing.assert_array_equal(gx, ex)
        np.testing.assert_array_equal(gt, et)
    for dtype in DTYPES:
        y = images(3, 10, 13, 3, dtype)
        expected = A.gaussian_noise(y, 5.0, seed=3, backend="numpy")
        assert A.gaussian_noise(y, 5.0, seed=3, out=y, backend="c") is y
        np.testing.assert_array_equal(y, expected)
        expected = A.random_erasing(y, 1.0, value=2, seed=3, backend="numpy")
        A.random_erasing(y, 1.0, value=2, seed=3, out=y, backend="c")
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("be", ["c"])
def test_c_threads_do_not_change_results(be, tmp_path):
    """OMP_NUM_THREADS 1 vs 2 in fresh processes: the same bytes."""
    _c_or_skip("portable")
    import subprocess
    import sys
    code = ("import numpy as np, fastreg.augment as A, hashlib\n"
            "x = np.random.default_rng(0).integers(0, 256, (5, 64, 48, 3)).astype(np.uint8)\n"
            "y = A.Compose([A.RandomRotate(30), A.GaussianNoise(8.0)])(x, seed=1, backend='c')\n"
            "z = A.random_flip(x, seed=1, backend='c')\n"
            "print(hashlib.sha256(y.tobytes() + z.tobytes()).hexdigest())\n")
    outs = []
    for n in ("1", "2"):
        env = dict(__import__("os").environ, OMP_NUM_THREADS=n)
        # cwd away from the checkout: "-c" puts the cwd first on sys.path, and the checkout's
        # fastreg/ has no compiled C extension when the tests run against an installed fastreg
        outs.append(subprocess.run([sys.executable, "-c", code], check=True, env=env,
                                   cwd=tmp_path, capture_output=True, text=True).stdout)
    assert outs[0] == outs[1] and outs[0].strip()


@pytest.mark.parametrize("be", ["c"])
def test_auto_prefers_c_on_host(be, monkeypatch):
    _c_or_skip("portable")
    from fastreg.augment import compose
    monkeypatch.delenv("FASTREG_BACKEND", raising=False)
    x = images(2, 5, 5, 3, np.uint8)
    if fastreg.available_backends()["cpu"] is None:
        assert compose.resolve_backend("auto", x).backend == "c"
    monkeypatch.setenv("FASTREG_BACKEND", "numpy")
    assert compose.resolve_backend("auto", x).backend == "numpy"
    np.testing.assert_array_equal(A.random_rotate(x, 20, seed=1),
                                  A.random_rotate(x, 20, seed=1, backend="numpy"))


def test_compose_checks_erasing_value_before_any_work():
    """A value that does not fit the dtype is refused before the geometric pass writes out=."""
    x = np.zeros((2, 6, 6, 3), np.uint8)
    out = np.full_like(x, 7)
    pipeline = A.Compose([A.RandomRotate(30.0), A.RandomErasing(1.0, value=300.0)])
    with pytest.raises(ValueError, match="value"):
        pipeline(x, seed=1, out=out, backend="numpy")
    assert np.all(out == 7)
