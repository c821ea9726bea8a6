"""DropBlock: every backend against the NumPy reference, exactly; the reference against loop
transcriptions of its definition and of timm's drop_block_fast_2d; statistics; the torch module."""
import math

import numpy as np
import pytest
from conftest import CUDA_SIM, big, bits

import fastreg
from fastreg import _registry, _threads
from fastreg.dropblock import gamma
from fastreg.reference import dropblock as ref
from fastreg.reference.philox import stream_words

SEED = 0x0123456789ABCDEF
DTYPES = [np.float32, np.float64]


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def data(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def threshold(g):
    return min(math.floor(g * 2**32 + 0.5), 2**32)


def seeds_of(seed, offset, t, shape):
    """Seed flags (N, C, H, W) straight from the stream layout of the definition."""
    n, c, h, w = shape
    words = stream_words(seed, offset, n * c * h * w).reshape(shape)
    return words.astype(np.uint64) < t


def painted_keep(seeds, k):
    """Transcription of step 2 by painting: a seed at (a, b) drops rows a - (k - 1) // 2 ..
    a + k // 2 and the same columns, clipped to the map."""
    n, c, h, w = seeds.shape
    keep = np.ones(seeds.shape, bool)
    for nn, cc, a, b in zip(*np.nonzero(seeds)):
        keep[nn, cc, max(0, a - (k - 1) // 2):a + k // 2 + 1,
             max(0, b - (k - 1) // 2):b + k // 2 + 1] = False
    return keep


def expected_output(x, p, block_size, seed, offset, gamma_scale=1.0, layout="NCHW"):
    """drop_block from the definition (loops and painting), for comparison with the reference."""
    xl = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    n, c, h, w = xl.shape
    k = min(block_size, h, w)
    t = threshold(gamma(p, block_size, h, w, gamma_scale))
    keep = painted_keep(seeds_of(seed, offset, t, xl.shape), k)
    kept = int(keep.sum())
    scale = x.dtype.type(keep.size / kept if kept else 1)
    y = np.where(keep, xl * scale, x.dtype.type(0))
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


# ---- the definition -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 1, 1), (3, 2, 5, 5), (1, 2, 13, 8)])
@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reference_matches_definition(shape, block_size, layout):
    if block_size > min(shape[2:]):
        pytest.skip("block larger than the map")
    x = data(shape)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for p in (0.05, 0.3, 1.0):
        got = fastreg.drop_block(x, p, block_size, seed=SEED, offset=7, layout=layout,
                                 backend="numpy")
        np.testing.assert_array_equal(bits(got), bits(expected_output(x, p, block_size, SEED, 7,
                                                                      layout=layout)))


def test_gamma_is_timms_formula():
    # gamma_scale * drop_prob * total_size / clipped**2 / ((W - bs + 1) * (H - bs + 1))
    assert gamma(0.1, 7, 14, 10) == 1.0 * 0.1 * (10 * 14) / 7 ** 2 / ((10 - 7 + 1) * (14 - 7 + 1))
    assert gamma(0.2, 3, 8, 8, 0.5) == 0.5 * 0.2 * 64 / 9 / 36
    # both sides smaller than the block: the clipped size in the numerator, as timm
    assert gamma(0.3, 7, 4, 5) == 0.3 * 20 / 4 ** 2 / ((5 - 7 + 1) * (4 - 7 + 1))
    with pytest.raises(ValueError, match="block_size=7 does not fit the 5x10"):
        gamma(0.1, 7, 5, 10)
    with pytest.raises(ValueError, match="does not fit"):
        gamma(0.1, 7, 6, 6)  # timm divides by zero


# ---- every backend against the reference ------------------------------------------------------

CASES = [((2, 3, 7, 9), 3), ((1, 1, 1, 1), 1), ((3, 2, 5, 5), 5), ((2, 4, 13, 8), 4),
         ((1, 3, 6, 11), 2), ((0, 3, 5, 5), 3), ((2, 0, 5, 5), 3), ((2, 3, 6, 6), 7)]


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_vs_reference(kernel_backend, shape, block_size, dtype, layout):
    if kernel_backend == "cuda" and CUDA_SIM and (dtype == np.float64 or layout == "NHWC"):
        pytest.skip("kept small under the CUDA simulator")
    x = data(shape, dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if block_size == 7:  # a map smaller than the block on both sides: timm's formula holds
        x = x[:, :, :4, :5] if layout == "NCHW" else x[:, :4, :5, :]
    for p, offset in ((0.1, 0), (0.5, 2**40 + 3), (1.0, 1)):
        kw = dict(seed=SEED, offset=offset, layout=layout)
        expected = fastreg.drop_block(x, p, block_size, backend="numpy", **kw)
        got = host(fastreg.drop_block(x, p, block_size, backend=kernel_backend, **kw))
        assert got.shape == x.shape and got.dtype == x.dtype
        np.testing.assert_array_equal(bits(got), bits(expected))
        grad = data(x.shape, dtype, seed=1)
        np.testing.assert_array_equal(
            bits(host(fastreg.drop_block_backward(grad, p, block_size, backend=kernel_backend,
                                                  **kw))),
            bits(fastreg.drop_block_backward(grad, p, block_size, backend="numpy", **kw)))


@pytest.mark.parametrize("t", [0, 1, 1 << 26, 1 << 31, (1 << 32) - 1, 1 << 32])
def test_mask_op_vs_reference(kernel_backend, t):
    if kernel_backend == "cuda" and CUDA_SIM and t not in (0, 1 << 31, 1 << 32):
        pytest.skip("kept small under the CUDA simulator")
    shapes = [(2, 3, 7, 9), (1, 2, 5, 6)] if kernel_backend == "cuda" and CUDA_SIM else \
        [(2, 3, 7, 9), (1, 2, 5, 6), (3, 1, 40, 70), (2, 5, 1, 33)]
    for shape in shapes:
        for k in (1, 2, 3, 5):
            if k > min(shape[2:]):
                continue
            for channels_last in (False, True):
                n, c, h, w = shape
                mshape = (n, h, w, c) if channels_last else shape
                expected = np.empty(mshape, np.uint8)
                kept = ref.drop_block_mask(SEED, 2**33 + 1, t, k, channels_last, expected)
                got = np.full(mshape, 9, np.uint8)
                got_kept = _registry.get("drop_block_mask", kernel_backend)(
                    SEED, 2**33 + 1, t, k, channels_last, got)
                assert got_kept == kept == int(expected.sum())
                np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("host_backend", ["cpu", "c"])
def test_serial_and_parallel_paths(host_backend, monkeypatch):
    """Planes spread over 2 threads (grain shrunk) give the reference's mask, count and output."""
    if fastreg.available_backends()[host_backend] is not None:
        pytest.skip(f"backend {host_backend!r} unavailable")
    for fam in _threads.GRAIN:
        monkeypatch.setitem(_threads.GRAIN, fam, 16)
    x = data((3, 5, 17, 12))
    expected = fastreg.drop_block(x, 0.3, 3, seed=SEED, offset=5, backend="numpy")
    if host_backend == "c":
        import fastreg.c as fc
        count = fc.parallel_regions
    else:
        from fastreg.cpu import _jit
        count = lambda: _jit.launches["parallel"]  # noqa: E731
    for n in (1, 2):
        before = count()
        with fastreg.threads(n):
            got = fastreg.drop_block(x, 0.3, 3, seed=SEED, offset=5, backend=host_backend)
        assert (count() > before) == (n == 2)
        np.testing.assert_array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_c_isas(isa):
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("C backend unavailable")
    import fastreg.c as fc
    if (isa == "avx2" and not fc.has_avx2()) or (isa == "avx512" and not fc.has_avx512()):
        pytest.skip(f"this CPU has no {isa}")
    x = data((2, 3, 45, 61))  # planes of 2745 words: more than one generator tile
    previous = fc.set_isa(isa)
    try:
        for offset in (0, 1, 2, 3):
            np.testing.assert_array_equal(
                bits(fastreg.drop_block(x, 0.2, 5, seed=SEED, offset=offset, backend="c")),
                bits(fastreg.drop_block(x, 0.2, 5, seed=SEED, offset=offset, backend="numpy")))
    finally:
        fc.set_isa(previous)


# ---- properties -------------------------------------------------------------------------------

def test_layouts_give_the_transposed_result(backend):
    x = data((2, 3, 6, 7))
    a = host(fastreg.drop_block(x, 0.3, 3, seed=4, offset=9, backend=backend))
    b = host(fastreg.drop_block(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), 0.3, 3, seed=4,
                                offset=9, layout="nhwc", backend=backend))
    np.testing.assert_array_equal(bits(a), bits(b.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_blocks_are_squares_around_seeds(backend, k):
    """The dropped set is the union of k x k squares at the seeds (painted), clipped; a lone
    interior seed of an odd block is its centre."""
    shape = (2, 2, 9, 11)
    t = 1 << 27
    mask = np.empty(shape, np.uint8)
    _registry.get("drop_block_mask", backend)(SEED, 3, t, k, False, mask)
    seeds = seeds_of(SEED, 3, t, shape)
    assert seeds.any()
    np.testing.assert_array_equal(mask.astype(bool), painted_keep(seeds, k))
    one = np.zeros(shape, bool)
    one[1, 0, 4, 5] = True
    square = ~painted_keep(one, k)
    rows, cols = np.nonzero(square[1, 0])
    assert len(rows) == k * k and rows.max() - rows.min() == k - 1 == cols.max() - cols.min()
    if k % 2:
        assert (rows.min() + rows.max()) // 2 == 4 and (cols.min() + cols.max()) // 2 == 5


def _expected_dropped_per_plane(t, k, h, w):
    q = t / 2**32
    rows = np.array([min(h - 1, i + (k - 1) // 2) - max(0, i - k // 2) + 1 for i in range(h)])
    cols = np.array([min(w - 1, j + (k - 1) // 2) - max(0, j - k // 2) + 1 for j in range(w)])
    return float(np.sum(1 - (1 - q) ** np.outer(rows, cols)))


@pytest.mark.parametrize("p, block_size", [(0.1, 3), (0.2, 5), (0.05, 7)])
def test_drop_fraction_within_5_sigma(backend, p, block_size):
    """Planes are independent (disjoint stream words): their mean dropped count matches the exact
    expectation sum(1 - (1 - q)**cover) within 5 standard errors."""
    n = big(backend, 256)
    shape = (n, 8, 16, 16)
    t = threshold(gamma(p, block_size, 16, 16))
    mask = np.empty(shape, np.uint8)
    kept = _registry.get("drop_block_mask", backend)(SEED, 11, t, block_size, False, mask)
    dropped = (1 - mask).reshape(n * 8, -1).sum(axis=1)
    assert kept == mask.size - dropped.sum()
    se = dropped.std(ddof=1) / math.sqrt(dropped.size)
    expected = _expected_dropped_per_plane(t, block_size, 16, 16)
    assert abs(dropped.mean() - expected) < 5 * se + 1e-9, (dropped.mean(), expected, se)
    # timm's rate corrects for the (H - bs + 1)(W - bs + 1) valid centres although the fast form
    # seeds everywhere: the fraction dropped is of the order of p, above it for large blocks
    assert 0.5 * p < dropped.mean() / 256 < 2.5 * p


def test_same_seed_same_output_other_seed_or_offset_other(backend):
    x = data((2, 3, 8, 8))
    a = host(fastreg.drop_block(x, 0.3, 3, seed=1, backend=backend))
    np.testing.assert_array_equal(bits(a), bits(host(fastreg.drop_block(x, 0.3, 3, seed=1,
                                                                        backend=backend))))
    assert not np.array_equal(a, host(fastreg.drop_block(x, 0.3, 3, seed=2, backend=backend)))
    assert not np.array_equal(a, host(fastreg.drop_block(x, 0.3, 3, seed=1, offset=1,
                                                         backend=backend)))


def test_split_batch_masks_equal_whole(backend):
    """The mask of samples [0, a) at offset o and [a, N) at o + a C H W is the whole batch's."""
    shape = (4, 3, 6, 7)
    per = 3 * 6 * 7
    op = _registry.get("drop_block_mask", backend)
    whole = np.empty(shape, np.uint8)
    op(SEED, 5, 1 << 29, 3, False, whole)
    a = np.empty((1,) + shape[1:], np.uint8)
    b = np.empty((3,) + shape[1:], np.uint8)
    op(SEED, 5, 1 << 29, 3, False, a)
    op(SEED, 5 + per, 1 << 29, 3, False, b)
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)


def test_backward_is_mask_times_grad_times_scale(backend):
    x = np.ones((2, 3, 9, 9), np.float32)
    kw = dict(seed=SEED, offset=3, backend=backend)
    y = host(fastreg.drop_block(x, 0.25, 3, **kw))
    keep = y != 0
    kept = int(keep.sum())
    assert 0 < kept < x.size
    scale = np.float32(x.size / kept)
    assert np.all(y[keep] == scale)  # timm's numel / kept normalization
    g = data(x.shape, seed=3)
    gx = host(fastreg.drop_block_backward(g, 0.25, 3, **kw))
    np.testing.assert_array_equal(bits(gx), bits(np.where(keep, g * scale, np.float32(0))))


def test_identity_cases(backend):
    x = data((2, 3, 5, 5))
    x[0, 0, 0, 0] = np.nan
    for kw in (dict(p=0.0), dict(p=0.5, training=False), dict(p=0.5, gamma_scale=0.0)):
        y = host(fastreg.drop_block(x, block_size=3, seed=1, backend=backend, **kw))
        assert y is not x
        np.testing.assert_array_equal(bits(y), bits(x))


def test_all_dropped_and_non_finite(backend):
    x = np.full((2, 2, 4, 4), np.inf, np.float32)
    x[0, 0, 1] = np.nan
    y = host(fastreg.drop_block(x, 1.0, 2, seed=1, gamma_scale=3.0, backend=backend))
    assert gamma(1.0, 2, 4, 4, 3.0) > 1 and np.all(bits(y) == 0)  # every position a seed
    y = host(fastreg.drop_block(x, 0.5, 3, seed=1, backend=backend))
    keep = host(fastreg.drop_block(np.ones_like(x), 0.5, 3, seed=1, backend=backend)) != 0
    assert keep.any() and not keep.all()
    assert np.all(bits(y[~keep]) == 0)  # dropped inf and NaN: exactly +0.0
    np.testing.assert_array_equal(y[keep], x[keep])  # kept: inf * scale, NaN


def test_empty_and_size_one(backend):
    for shape in ((0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)):
        y = host(fastreg.drop_block(np.ones(shape, np.float32), 0.5, 3, seed=1, backend=backend))
        assert y.shape == shape
    y = host(fastreg.drop_block(np.full((1, 1, 1, 1), 2.0), 0.5, 1, seed=1, backend=backend))
    assert y.shape == (1, 1, 1, 1) and y.dtype == np.float64
    # gamma = p: kept (word >= 2**31) with the value itself (scale 1), else 0
    w = stream_words(1, 0, 1)[0]
    assert y[0, 0, 0, 0] == (2.0 if w >= 2**31 else 0.0)


def test_out_in_place_and_input_untouched(backend):
    if backend == "cuda":
        pytest.skip("host out= with device compute: covered by the dropout tests")
    x = data((2, 3, 8, 8))
    keep = x.copy()
    expected = fastreg.drop_block(x, 0.3, 3, seed=2, backend="numpy")
    np.testing.assert_array_equal(x, keep)
    out = np.empty_like(x)
    assert fastreg.drop_block(x, 0.3, 3, seed=2, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, keep)
    y = x.copy()
    assert fastreg.drop_block(y, 0.3, 3, seed=2, out=y, backend=backend) is y
    np.testing.assert_array_equal(y, expected)


def test_non_contiguous_input(backend):
    base = data((4, 3, 10, 20), np.float64)
    x = base[::2, :, :, ::2]
    expected = fastreg.drop_block(np.ascontiguousarray(x), 0.3, 3, seed=6, backend="numpy")
    np.testing.assert_array_equal(host(fastreg.drop_block(x, 0.3, 3, seed=6, backend=backend)),
                                  expected)


def test_device_arrays_stay_on_device(backend):
    if backend != "cuda":
        pytest.skip("device arrays are for the cuda backend")
    from numba import cuda
    x = data((1, 2, 5, 6))
    y = fastreg.drop_block(cuda.to_device(x), 0.3, 3, seed=4)
    assert hasattr(y, "copy_to_host")
    np.testing.assert_array_equal(y.copy_to_host(),
                                  fastreg.drop_block(x, 0.3, 3, seed=4, backend="numpy"))


# ---- timm's drop_block_fast_2d, transcribed -----------------------------------------------------

def timm_fast_2d(x, drop_prob, block_size, gamma_scale=1.0, seed_mask=None):
    """timm.layers.drop.drop_block_fast_2d (with_noise=False), written out from its definition;
    ``seed_mask`` stands for its ``bernoulli_(gamma)`` draw when given."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    _, _, h, w = x.shape
    clipped = min(block_size, min(w, h))
    rate = gamma_scale * drop_prob * (w * h) / clipped ** 2 / (
        (w - block_size + 1) * (h - block_size + 1))
    seeds = seed_mask if seed_mask is not None else torch.empty_like(x).bernoulli_(rate)
    dropped = F.max_pool2d(seeds.to(x.dtype), kernel_size=clipped, stride=1,
                           padding=clipped // 2)
    keep = 1 - dropped
    scale = (keep.numel() / keep.to(torch.float32).sum().add(1e-6)).to(x.dtype)
    return x * keep * scale


@pytest.mark.parametrize("shape, p, block_size", [((4, 3, 12, 12), 0.1, 3),
                                                  ((2, 5, 9, 14), 0.2, 5),
                                                  ((2, 2, 7, 7), 0.1, 7),
                                                  ((3, 2, 5, 5), 0.3, 7)])
def test_matches_timm_given_the_same_seeds(backend, shape, p, block_size):
    torch = pytest.importorskip("torch")
    if backend == "cuda" and CUDA_SIM and math.prod(shape) > 300:
        pytest.skip("kept small under the CUDA simulator")
    x = data(shape)
    _, _, h, w = shape
    t = threshold(gamma(p, block_size, h, w))
    seeds = torch.from_numpy(seeds_of(SEED, 0, t, shape).astype(np.float32))
    expected = timm_fast_2d(torch.from_numpy(x), p, block_size, seed_mask=seeds).numpy()
    got = host(fastreg.drop_block(x, p, block_size, seed=SEED, backend=backend))
    np.testing.assert_array_equal(got == 0, expected == 0)
    # normalization: timm divides numel by (kept + 1e-6) in float32, fastreg rounds numel / kept
    # to float32 once: the scales differ by about 1e-6 / kept relative plus an ulp or two
    kept = int(np.count_nonzero(got))
    np.testing.assert_allclose(got, expected, rtol=2 ** -22 + 2e-6 / kept, atol=0)


@pytest.mark.parametrize("shape, k", [((2, 3, 8, 9), 2), ((2, 2, 7, 10), 4), ((1, 2, 4, 5), 4)])
def test_even_blocks_are_the_first_outputs_of_the_max_pool(backend, shape, k):
    """Even k: timm's pooled map has one more row and column than x (its product fails); the
    definition keeps the first H x W outputs of the same pooling."""
    torch = pytest.importorskip("torch")
    seeds = seeds_of(SEED, 0, 1 << 29, shape)
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(seeds.astype(np.float32)),
                                            kernel_size=k, stride=1, padding=k // 2)
    assert pooled.shape[2:] == (shape[2] + 1, shape[3] + 1)
    mask = np.empty(shape, np.uint8)
    _registry.get("drop_block_mask", backend)(SEED, 0, 1 << 29, k, False, mask)
    np.testing.assert_array_equal(mask, 1 - pooled[:, :, :shape[2], :shape[3]].numpy())


def test_drop_fraction_matches_timm_statistically():
    """timm's own Bernoulli draws (torch's generator) and fastreg's stream drop the same fraction
    within 5 standard errors of the difference (planes are independent in both)."""
    torch = pytest.importorskip("torch")
    shape = (128, 8, 14, 14)
    torch.manual_seed(0)
    x = torch.ones(shape)
    timm_keep = (timm_fast_2d(x, 0.15, 5) != 0).reshape(-1, 14 * 14).float().mean(1).numpy()
    ours = fastreg.drop_block(np.ones(shape, np.float32), 0.15, 5, seed=SEED)
    ours_keep = (ours != 0).reshape(-1, 14 * 14).mean(1)
    se = math.sqrt(timm_keep.var(ddof=1) / timm_keep.size + ours_keep.var(ddof=1) / ours_keep.size)
    assert abs(timm_keep.mean() - ours_keep.mean()) < 5 * se


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input():
    x = np.ones((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        fastreg.drop_block(np.ones((3, 8, 8), np.float32), seed=1)
    with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
        fastreg.drop_block(np.ones((2, 3, 8, 8), np.int32), seed=1)
    with pytest.raises(TypeError, match="grad_y must be float32"):
        fastreg.drop_block_backward(np.ones((2, 3, 8, 8), np.uint8), seed=1)
    with pytest.raises(ValueError, match="p must be in"):
        fastreg.drop_block(x, 1.5, seed=1)
    with pytest.raises(TypeError, match="block_size must be an int"):
        fastreg.drop_block(x, 0.1, 3.0, seed=1)
    with pytest.raises(TypeError, match="block_size must be an int"):
        fastreg.drop_block(x, 0.1, True, seed=1)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        fastreg.drop_block(x, 0.1, 0, seed=1)
    with pytest.raises(ValueError, match="block_size=9 does not fit"):
        fastreg.drop_block(x, 0.1, 9, seed=1)
    with pytest.raises(ValueError, match="block_size=9 does not fit"):  # NHWC: map is 3 x 8
        fastreg.drop_block(x, 0.1, 9, seed=1, layout="NHWC")
    with pytest.raises(ValueError, match="layout"):
        fastreg.drop_block(x, seed=1, layout="CHWN")
    with pytest.raises(ValueError, match="gamma_scale"):
        fastreg.drop_block(x, seed=1, gamma_scale=-1.0)
    with pytest.raises(ValueError, match="gamma_scale"):
        fastreg.drop_block(x, seed=1, gamma_scale=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        fastreg.drop_block(x, seed=-1)
    with pytest.raises(TypeError):
        fastreg.drop_block(x)  # seed is required
    with pytest.raises(ValueError, match="exceeds 2\\*\\*64"):
        fastreg.drop_block(x, seed=1, offset=2**64 - 10)
    with pytest.raises(TypeError, match="training"):
        fastreg.drop_block(x, seed=1, training=1)
    with pytest.raises(ValueError, match="out must have shape"):
        fastreg.drop_block(x, seed=1, out=np.empty((2, 3, 8, 7), np.float32))
    with pytest.raises(ValueError, match="backend must be one of"):
        fastreg.drop_block(x, seed=1, backend="gpu")
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError):
        fastreg.drop_block(x, 0.1, 9, seed=1, out=out)
    assert np.all(out == 7.0)


def test_end_of_counter_space(backend):
    x = data((1, 2, 3, 3))
    off = 2**64 - x.size
    np.testing.assert_array_equal(
        host(fastreg.drop_block(x, 0.4, 2, seed=3, offset=off, backend=backend)),
        fastreg.drop_block(x, 0.4, 2, seed=3, offset=off, backend="numpy"))


# ---- torch ------------------------------------------------------------------------------------

def test_torch_module():
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    m = frt.DropBlock2d(0.2, 3, seed=5)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    y = m(x)
    assert m.offset == x.numel()
    np.testing.assert_array_equal(y.detach().numpy(),
                                  fastreg.drop_block(x.detach().numpy(), 0.2, 3, seed=5))
    g = torch.randn_like(y)
    y.backward(g)
    np.testing.assert_array_equal(x.grad.numpy(),
                                  fastreg.drop_block_backward(g.numpy(), 0.2, 3, seed=5))
    y2 = m(x)  # the next call uses the next words
    np.testing.assert_array_equal(y2.detach().numpy(), fastreg.drop_block(
        x.detach().numpy(), 0.2, 3, seed=5, offset=x.numel()))
    assert m.offset == 2 * x.numel()
    # channels-last input: same values, channels-last output
    xc = x.detach().contiguous(memory_format=torch.channels_last)
    m.offset = 0
    yc = m(xc)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(yc.numpy(), y.detach().numpy())
    # eval: x itself, counter unchanged
    m.eval()
    assert m(x) is x and m.offset == x.numel()
    # state: seed and offset round-trip
    m2 = frt.DropBlock2d(0.2, 3, seed=99)
    m2.load_state_dict(m.state_dict())
    assert (m2.seed, m2.offset) == (5, x.numel())
    assert "block_size=3" in repr(m)
    with pytest.raises(ValueError, match="4-D"):
        m.train()(torch.randn(3, 9, 9))
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        m(torch.zeros(2, 3, 9, 9, dtype=torch.int32))
    x16 = torch.randn(2, 3, 9, 9).half()   # 16-bit input: the float32 mask
    y16 = frt.DropBlock2d(0.2, 3, seed=4)(x16)
    y32 = frt.DropBlock2d(0.2, 3, seed=4)(x16.float())
    assert y16.dtype == torch.float16 and torch.equal(y16, y32.half())
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        frt.DropBlock2d(0.1, 0)
    before = m.offset
    with pytest.raises(ValueError, match="does not fit"):
        frt.DropBlock2d(0.1, 7)(torch.randn(1, 1, 5, 10))
    assert m.offset == before


def test_torch_module_vs_timm_transcription():
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    m = frt.DropBlock2d(0.1, 5, seed=SEED)
    x = torch.randn(4, 3, 12, 12)
    t = threshold(gamma(0.1, 5, 12, 12))
    seeds = torch.from_numpy(seeds_of(SEED, 0, t, tuple(x.shape)).astype(np.float32))
    torch.testing.assert_close(m(x), timm_fast_2d(x, 0.1, 5, seed_mask=seeds), rtol=2 ** -22,
                               atol=0)


def test_huge_gamma_scale_seeds_everywhere():
    """A rate beyond 1 seeds every position, also for a gamma_scale whose product with 2**32
    overflows a float (an OverflowError before)."""
    x = np.ones((2, 3, 8, 8), np.float32)
    a = fastreg.drop_block(x, 0.3, 3, seed=3, gamma_scale=1e30, backend="numpy")
    b = fastreg.drop_block(x, 0.3, 3, seed=3, gamma_scale=1e300, backend="numpy")
    assert not a.any()
    np.testing.assert_array_equal(a, b)


def test_torch_module_refused_in_place_keeps_the_counter():
    """DropBlock2d(inplace=True) on a leaf that requires grad raises torch's error before the
    stream counter moves (as the dropout modules); its repr shows inplace."""
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    m = frt.DropBlock2d(0.3, 3, seed=1, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        m(torch.randn(2, 3, 6, 6, requires_grad=True))
    assert m.offset == 0 and "inplace=True" in repr(m)
    x = torch.randn(2, 3, 6, 6)
    assert m(x) is x and m.offset > 0


def test_torch_module_refuses_a_block_that_does_not_fit_before_any_draw():
    """A block_size that does not fit the map is refused before the counter moves and before
    torch's generator is drawn from (the word activation checkpointing replays)."""
    torch = pytest.importorskip("torch")
    import fastreg.torch as frt
    m, x = frt.DropBlock2d(0.1, 5, seed=1), torch.randn(2, 3, 4, 4)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="does not fit the 4x4 feature map"):
        m(x)
    assert m.offset == 0 and torch.equal(torch.get_rng_state(), state)
    assert m(torch.randn(2, 3, 0, 4)).shape == (2, 3, 0, 4)   # nothing to drop: no check
