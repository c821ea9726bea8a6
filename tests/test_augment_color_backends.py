"""Every colour kernel (aug_color with each op, aug_blur, aug_normalize) on every host backend
against the reference, bit for bit, on tiny images with edge cases (size 0 and 1, constant
images, strided and in-place arrays, extreme factors); the correctly rounded fma32; blend and
hue against torch's own float32 operations; ``indices=`` and ColorJitter's hue."""
from fractions import Fraction

import numpy as np
import pytest

import fastreg
import fastreg.augment as A
from fastreg import _registry
from fastreg.reference import augment_color as R

F32 = np.float32
OPS = sorted(R.OP_CODES.items(), key=lambda kv: kv[1])
# per op: parameters, extremes included (factors within 1e-7 of 0 and 1 need the rounding to
# odd of fma32; 1e6 and 1e-9 the same)
PARAMS = {"identity": [0.0], "brightness": [0.0, 0.37, 1.0, 1.9999999, 1e6],
          "saturation": [0.0, 1e-9, 0.4, 0.9999999, 1.0, 1.0000001, 1.62, 1e6],
          "contrast": [0.0, 1e-9, 0.35, 0.9999999, 1.0, 1.9],
          "sharpness": [0.0, 1e-9, 0.2, 0.9999999, 1.0, 1.0000001, 1.99],
          "posterize": [0, 1, 4, 7, 8], "solarize": [0.0, 0.5, 127.5, 128.0, 255.0, 255.5],
          "autocontrast": [0.0], "equalize": [0.0],
          "hue": [-0.5, -0.2, -1e-7, 0.0, 1e-7, 0.13, 0.5]}
SHAPES = [(5, 6, 7, 3), (3, 3, 3, 1), (2, 1, 1, 3), (2, 2, 5, 3), (1, 4, 2, 1), (0, 4, 4, 3),
          (2, 0, 3, 3)]


@pytest.fixture(params=("numpy", "cpu", "c"))
def backend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param} unavailable: {reason}")
    return request.param


def kernels(backend):
    return _registry.module(backend)


def batch(shape, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if shape[0] > 1 and x.size:
        x[1] = 77                               # constant image
    if shape[0] > 2 and x.size:
        x[2] = x[2] // 8 + 100                  # low contrast: autocontrast, equalize act
    return x


def test_registered_everywhere_on_the_host():
    for op in ("aug_color", "aug_blur", "aug_normalize"):
        assert op in _registry.OPS
        for b in ("numpy", "cpu", "c"):
            if fastreg.available_backends()[b] is None:
                assert callable(_registry.get(op, b))


@pytest.mark.parametrize("op,code", OPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_aug_color_every_op(backend, op, code, shape):
    x = batch(shape, seed=code)
    n = shape[0]
    mod = kernels(backend)
    for p in PARAMS[op]:
        codes = np.full(n, code, np.int64)
        if n > 1:
            codes[-1] = R.SKIP                  # not written
        params = np.full(n, float(p))
        expected = np.full_like(x, 9)
        R.aug_color(x, codes, params, expected)
        got = np.full_like(x, 9)
        before = x.copy()
        mod.aug_color(x, codes, params, got)
        np.testing.assert_array_equal(got, expected, err_msg=f"{op}({p}) on {backend}")
        np.testing.assert_array_equal(x, before)
        # an NCHW batch's NHWC view, and in place on it
        xs = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        got = np.full_like(x, 9)
        mod.aug_color(xs, codes, params, got)
        np.testing.assert_array_equal(got, expected, err_msg=f"strided {op}({p})")
        mod.aug_color(xs, codes, params, xs)
        keep = (codes == R.SKIP)[:, None, None, None]
        np.testing.assert_array_equal(np.where(keep, x, xs), np.where(keep, x, expected),
                                      err_msg=f"in place {op}({p})")


def test_aug_color_mixed_codes_one_call(backend):
    x = batch((13, 5, 4, 3), seed=3)
    codes = np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 4], np.int64)
    params = np.array([0, 0, 1.3, 0.4, 1.7, 0.2, 3, 128.0, 0, 0, 0.3, 1e-9, 1.0000001])
    expected = np.zeros_like(x)
    R.aug_color(x, codes, params, expected)
    got = np.zeros_like(x)
    kernels(backend).aug_color(x, codes, params, got)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape,k", [((3, 6, 5, 3), 3), ((2, 4, 9, 1), 7), ((2, 1, 5, 3), 1),
                                     ((1, 2, 2, 3), 3), ((0, 3, 3, 3), 3)])
def test_aug_blur(backend, shape, k):
    x = batch(shape, seed=5)
    sig = np.linspace(0.2, 3.0, shape[0])
    w = np.stack([R.gaussian_weights(s, k) for s in sig]) if shape[0] else \
        np.zeros((0, k), F32)
    expected = np.zeros_like(x)
    R.aug_blur(x, w, expected)
    got = np.zeros_like(x)
    xs = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    kernels(backend).aug_blur(xs, w, got)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_c_blur_every_isa(isa):
    # the C blur's tap loops: 32 values per step in AVX2, a vectorized loop after it, the
    # reflected border values; rows long enough for several steps and a tail, kernels with no
    # interior value (23 taps on 12 pixels), strided input
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("backend c unavailable")
    import fastreg.c as fc
    if isa == "avx2" and not fc.has_avx2():
        pytest.skip("no AVX2 on this CPU")
    previous = fc.set_isa(isa)
    try:
        for shape, k in (((2, 13, 45, 3), 7), ((2, 12, 45, 3), 23), ((1, 9, 70, 1), 5),
                         ((2, 12, 12, 3), 23), ((1, 5, 40, 3), 1)):
            x = batch(shape, seed=k)
            w = np.stack([R.gaussian_weights(s, k) for s in np.linspace(0.3, 6.0, shape[0])])
            expected = np.zeros_like(x)
            R.aug_blur(x, w, expected)
            for xin in (x, np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)):
                got = np.zeros_like(x)
                fc.aug_blur(xin, w, got)
                np.testing.assert_array_equal(got, expected, err_msg=f"{shape} k={k}")
    finally:
        fc.set_isa(previous)


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (2, 3, 3, 1), (0, 2, 2, 3)])
def test_aug_normalize(backend, shape):
    x = batch(shape, seed=6)
    c = shape[3]
    lut = R.normalize_lut(np.linspace(0.3, 0.6, c), np.linspace(0.2, 0.3, c))
    expected = np.zeros(shape, F32)
    R.aug_normalize(x, lut, expected)
    got = np.zeros(shape, F32)
    xs = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    kernels(backend).aug_normalize(xs, lut, got)
    np.testing.assert_array_equal(got, expected)


def test_public_functions_every_backend(backend):
    x = batch((4, 5, 6, 3), seed=8)
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for fn, p in ((A.adjust_hue, [0.1, -0.4, 0.0, 0.5]), (A.adjust_saturation, 0.3),
                  (A.adjust_sharpness, [0.0, 1.0, 2.0, 0.5]), (A.equalize, None)):
        args = () if p is None else (p,)
        expected = fn(x, *args, backend="numpy")
        np.testing.assert_array_equal(fn(x, *args, backend=backend), expected)
        got = fn(xc, *args, layout="NCHW", backend=backend)
        np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), expected)


# --- the arithmetic ------------------------------------------------------------------------------

def _nearest32(exact):
    """The float32 nearest to a Fraction, ties to even."""
    f = F32(float(exact))
    cands = [np.nextafter(f, F32(-np.inf)), f, np.nextafter(f, F32(np.inf))]
    dist = [abs(Fraction(float(c)) - exact) for c in cands]
    best = min(dist)
    ties = [c for c, d in zip(cands, dist) if d == best]
    return ties[0] if len(ties) == 1 else [t for t in ties if t.view(np.int32) % 2 == 0][0]


def test_fma32_correctly_rounded():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(300).astype(F32)
    b = (rng.standard_normal(300) * 10.0 ** rng.integers(-12, 12, 300)).astype(F32)
    c = (rng.standard_normal(300) * 10.0 ** rng.integers(-12, 12, 300)).astype(F32)
    got = R.fma32(a, b, c)
    for i in range(300):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        assert got[i] == _nearest32(exact), i
    # a float32 tie in float64 that a plain float64 sum would round the wrong way
    t = F32(1 + 2 ** -12)
    assert R.fma32(t, t, F32(2 ** -60)) == np.nextafter(F32(1 + 2 ** -11), F32(2))
    assert R.fma32(t, t, F32(0)) == F32(1 + 2 ** -11)


def test_blend_equals_torch_ops():
    torch = pytest.importorskip("torch")
    x = batch((1, 37, 29, 3), seed=4)[0]
    g = np.floor(R.gray(x))
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    tg = torch.from_numpy(np.ascontiguousarray(g[None]))
    for r in (0.3, 1.37, 0.77, 1.9, 0.123456, 1e-9, 0.9999999):
        # torchvision's _blend: image1.mul(ratio).add_(image2, alpha=1 - ratio).clamp_(0, 255)
        out = t.mul(r).add_(tg, alpha=1.0 - r).clamp_(0, 255).to(torch.uint8).numpy()
        np.testing.assert_array_equal(out.transpose(1, 2, 0), R.blend(x, g[..., None], r),
                                      err_msg=f"ratio {r}")


def _torch_adjust_hue(torch, image, f):
    """torchvision.transforms.v2.functional.adjust_hue_image's steps on a uint8 (3, H, W)."""
    x = image.to(torch.float32).mul_(1.0 / 255)
    r, g, _ = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    eqc = maxc == minc
    crange = maxc - minc
    ones = torch.ones_like(maxc)
    s = crange / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, crange).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - x) / div).unbind(dim=-3)
    neq_r = maxc != r
    eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(eq_g & neq_r)
    hr = bc.sub_(gc).mul_(~neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(neq_r.logical_and_(eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    h = h.add_(f).remainder_(1.0)
    h6 = h.mul(6)
    i = torch.floor(h6)
    fr = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * fr
    oms = 1.0 - s
    q = (1.0 - sxf).mul_(maxc).clamp_(max=1.0)
    t = sxf.add_(oms).mul_(maxc).clamp_(max=1.0)
    p = oms.mul_(maxc).clamp_(max=1.0)
    i.remainder_(6)
    vpqt = torch.stack((maxc, p, q, t), dim=-3)
    select = torch.tensor(R.HSV_SELECT)[:, i]
    return vpqt.gather(-3, select).mul(255.999).to(torch.uint8)


def test_hue_equals_torch_ops():
    torch = pytest.importorskip("torch")
    x = batch((1, 23, 31, 3), seed=9)[0]
    x[0, :4] = [[9, 9, 9], [255, 0, 0], [0, 255, 255], [12, 200, 12]]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    for f in (-0.5, -0.31, 0.0, 0.07, 0.25, 0.5):
        expected = _torch_adjust_hue(torch, t, f).numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(R.hue(x, f), expected, err_msg=f"hue {f}")
    np.testing.assert_array_equal(R.hue(x, 0.0), x)          # a whole turn: unchanged here


# --- policies and ColorJitter: indices, hue ---------------------------------------------------------

@pytest.mark.parametrize("op", [A.RandAugment(2, 9), A.TrivialAugmentWide(),
                                A.ColorJitter(0.4, 0.4, 0.4, 0.1), A.GaussianBlur(3)])
def test_indices(backend, op):
    x = batch((6, 6, 5, 3), seed=2)
    ids = np.array([5, 900, 3, 3, 77, 12])
    expected = op(x, seed=1, epoch=2, indices=ids, backend="numpy")
    perm = np.array([4, 0, 5, 2, 1, 3])
    got = op(x[perm], seed=1, epoch=2, indices=ids[perm], backend=backend)
    np.testing.assert_array_equal(got, expected[perm])
    # consecutive ids are index_offset
    np.testing.assert_array_equal(op(x, seed=1, indices=np.arange(40, 46), backend=backend),
                                  op(x, seed=1, index_offset=40, backend="numpy"))
    with pytest.raises(ValueError, match="indices"):
        op(x, seed=1, indices=ids[:3], backend=backend)
    with pytest.raises(ValueError, match="index_offset"):
        op(x, seed=1, indices=ids, index_offset=2, backend=backend)


def test_jitter_hue_order_and_range():
    n = 12000
    ranges = {"brightness": (0.6, 1.4), "contrast": (0.5, 1.5), "saturation": (0, 2),
              "hue": (-0.2, 0.3)}
    order, f = R.jitter_params(3, 0, np.arange(n), 0, ranges)
    assert order.shape == (n, 4) and np.all(np.sort(order, axis=1) == np.arange(4))
    perms = order @ np.array([64, 16, 4, 1])
    counts = np.unique(perms, return_counts=True)[1]
    bound = 5 * np.sqrt(n / 24 * (1 - 1 / 24)) + 1
    assert len(counts) == 24 and np.all(np.abs(counts - n / 24) < bound)
    assert f[:, 3].min() >= -0.2 and f[:, 3].max() < 0.3
    # without hue: the orders and factors of before (draws 0..4 only)
    o3, f3 = R.jitter_params(3, 0, np.arange(n), 0, {**ranges, "hue": None})
    np.testing.assert_array_equal(o3, order[order != 3].reshape(n, 3))
    np.testing.assert_array_equal(f3[:, :3], f[:, :3])
    with pytest.raises(ValueError, match="hue"):
        A.ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match="hue"):
        A.ColorJitter(hue=-0.1)
    with pytest.raises(ValueError, match="factor"):
        A.adjust_hue(batch((1, 2, 2, 3)), 0.7)



@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_c_row_loops_every_isa(isa):
    # the C backend's saturation, contrast and sharpness rows have a portable copy
    # (tables, plain double sums) and an AVX2 + FMA copy (hardware fused multiply-add): the
    # same bits
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("backend c unavailable")
    import fastreg.c as fc
    if isa == "avx2" and not fc.has_avx2():
        pytest.skip("no AVX2 on this CPU")
    x = batch((8, 5, 37, 3), seed=12)     # 37 pixels: two 16-pixel blocks and a tail
    codes = np.array([2, 3, 4, 2, 4, 3, 1, 1], np.int64)
    params = np.array([0.3, 1.7, 0.2, 1.9, 1.6, 0.0, 0.7, 1.3])
    expected = np.zeros_like(x)
    R.aug_color(x, codes, params, expected)
    previous = fc.set_isa(isa)
    try:
        got = np.zeros_like(x)
        fc.aug_color(x, codes, params, got)
    finally:
        fc.set_isa(previous)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_c_hue_every_isa(isa):
    # the C hue: a scalar loop and an AVX2 copy of it (8 pixels per step), the same float32
    # steps; every sector, grays and ties of the maximum (a grid of values), random pixels,
    # shifts at and near 0 and +-0.5, widths leaving an 8-pixel tail
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("backend c unavailable")
    import fastreg.c as fc
    if isa == "avx2" and not fc.has_avx2():
        pytest.skip("no AVX2 on this CPU")
    v = np.arange(0, 256, 17, dtype=np.uint8)
    grid = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    rand = np.random.default_rng(3).integers(0, 256, (1150, 3), dtype=np.uint8)
    pix = np.concatenate([grid, rand]).reshape(2, 43, 61, 3)
    previous = fc.set_isa(isa)
    try:
        for f in (-0.5, -0.2, -1e-7, 0.0, 1e-7, 0.13, 0.5):
            params = np.full(2, f)
            expected = np.zeros_like(pix)
            R.aug_color(pix, np.full(2, R.HUE), params, expected)
            got = np.zeros_like(pix)
            fc.aug_color(pix, np.full(2, R.HUE), params, got)
            np.testing.assert_array_equal(got, expected, err_msg=f"hue {f}")
    finally:
        fc.set_isa(previous)


# --- CUDA (under NUMBA_ENABLE_CUDASIM=1 on the CPU; tiny images) ------------------------------------

def _cuda_or_skip():
    reason = fastreg.available_backends()["cuda"]
    if reason is not None:
        pytest.skip(f"backend cuda unavailable: {reason}")


@pytest.mark.parametrize("shape", [(11, 4, 5, 3), (3, 3, 3, 1), (2, 1, 1, 3), (0, 2, 2, 3)])
def test_cuda_kernels(shape):
    _cuda_or_skip()
    from numba import cuda
    mod = kernels("cuda")
    x = batch(shape, seed=21)
    n = shape[0]
    codes = np.resize(np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.int64), n)
    params = np.resize(np.array([0, 0, 1.3, 1e-9, 1.7, 0.2, 3, 128.0, 0, 0, 0.3]), n)
    expected = np.full_like(x, 5)
    R.aug_color(x, codes, params, expected)
    got = np.full_like(x, 5)
    mod.aug_color(x, codes, params, got)
    np.testing.assert_array_equal(got, expected)
    keep = (codes == R.SKIP)[:, None, None, None]
    d = cuda.to_device(x)                                   # in place on the device
    mod.aug_color(d, codes, params, d)
    np.testing.assert_array_equal(np.where(keep, x, d.copy_to_host()),
                                  np.where(keep, x, expected))
    if min(shape[1:3]) > 1:
        w = np.stack([R.gaussian_weights(s, 3) for s in np.linspace(0.3, 2, n)]) if n else \
            np.zeros((0, 3), F32)
        expected = np.zeros_like(x)
        R.aug_blur(x, w, expected)
        got = np.zeros_like(x)
        mod.aug_blur(x, w, got)
        np.testing.assert_array_equal(got, expected)
    lut = R.normalize_lut(np.full(shape[3], 0.4), np.full(shape[3], 0.2))
    expected = np.zeros(shape, F32)
    R.aug_normalize(x, lut, expected)
    got = np.zeros(shape, F32)
    mod.aug_normalize(x, lut, got)
    np.testing.assert_array_equal(got, expected)


def test_cuda_pipelines():
    _cuda_or_skip()
    from numba import cuda
    x = batch((4, 5, 4, 3), seed=22)
    for op in (A.RandAugment(2, 9), A.RandAugment(2, 20, interpolation="bilinear", fill=100),
               A.TrivialAugmentWide(), A.ColorJitter(0.4, 0.4, 0.4, 0.2), A.GaussianBlur(3)):
        expected = op(x, seed=3, epoch=1, backend="numpy")
        np.testing.assert_array_equal(op(x, seed=3, epoch=1, backend="cuda"), expected)
        got = op(cuda.to_device(x), seed=3, epoch=1)       # device in, device out
        np.testing.assert_array_equal(got.copy_to_host(), expected)
    with pytest.raises(TypeError, match="host arrays"):
        A.adjust_hue(cuda.to_device(x), 0.1)
    with pytest.raises(TypeError, match="host arrays"):
        A.Normalize([0.5], [0.2])(cuda.to_device(x))
    np.testing.assert_array_equal(A.adjust_hue(x, 0.1, backend="cuda"),
                                  A.adjust_hue(x, 0.1, backend="numpy"))
    with pytest.raises(fastreg.BackendUnavailableError, match="NHWC"):
        A.ColorJitter(0.4)(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), seed=0,
                           layout="NCHW", backend="cuda")


def test_gaussian_blur_refuses_a_sigma_pair():
    """gaussian_blur blurs every sample with one sigma; a pair (a per-sample range for
    GaussianBlur, (sigma_x, sigma_y) for torchvision's functional) is refused, not guessed."""
    x = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="sigma must be one real number"):
        A.gaussian_blur(x, 3, (0.5, 2.0))
    assert A.gaussian_blur(x, 3, np.float64(1.0)).shape == x.shape


def test_normalize_after_passes_indices():
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
    op = A.RandAugment(2, 9)
    norm = A.Normalize([0.5], [0.25])
    got = norm.after(op)(x, seed=1, indices=np.arange(10, 14))
    want = norm(op(x, seed=1, indices=np.arange(10, 14)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(norm.after(op)(x, seed=1), norm(op(x, seed=1)))
