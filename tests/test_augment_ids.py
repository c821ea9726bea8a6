"""Mixup/cutmix lambdas (Beta(alpha, alpha) from the Philox stream, vectorized) and ``indices=``
(samples keyed by their dataset ids) on every augmentation op and Compose."""
import math

import numpy as np
import pytest
from conftest import CUDA_SIM

import fastreg
import fastreg.augment as A
from fastreg.reference import augment as ref

BACKENDS = ("numpy", "cpu", "c", "cuda")
SEED = 0x0123456789ABCDEF
TWO32 = 2.0 ** 32


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


def images(n, h, w, c, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    return (rng.standard_normal((n, h, w, c)) * 50).astype(np.float32)


# ---- the per-sample stream ---------------------------------------------------------------------

@pytest.mark.parametrize("words", ["default", "numpy"])
def test_op_key_and_block_words_are_the_stream(words, monkeypatch):
    """op_key (Python integers) and block_words (whole Philox blocks) against the NumPy Philox
    of fastreg.reference.philox: word (i << 32) + d of the op key is draw d of sample i; with
    the C extension's Philox (the default where it is built) and with NumPy's."""
    from fastreg.reference.philox import _rounds
    if words == "numpy":
        monkeypatch.setattr(ref, "_C_PHILOX", [None])
    elif fastreg.available_backends()["c"] is None:
        assert ref._c_philox() is not None      # the default draws through the C extension
    for seed, epoch, tag in ((0, 0, 0), (SEED, 2**40 + 3, 0x80000A05), (2**64 - 1, 7, 9 << 8)):
        c = [np.array([v], np.uint64) for v in (epoch & 0xFFFFFFFF, epoch >> 32, tag, 0x41554721)]
        w = _rounds(*c, np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32))
        key = ref.op_key(seed, epoch, tag)
        assert key == int(w[0][0]) | (int(w[1][0]) << 32)
        idx = np.array([0, 1, 5, 2**32 - 1])
        for d0, nd in ((0, 1), (0, 7), (8, 16), (1 << 31, 2)):
            g = (idx.astype(np.uint64)[:, None] << np.uint64(32)) + np.uint64(d0) + np.arange(
                nd, dtype=np.uint64)
            np.testing.assert_array_equal(ref.block_words(key, idx, d0, nd), ref.words_at(key, g))


# ---- the Beta draw -----------------------------------------------------------------------------

def beta_one_by_one(seed, epoch, tag, i, alpha):
    """The definition of fastreg.reference.augment.beta read literally: one sample, its draws
    0, 1, 2, ... in order, scalar float64 arithmetic."""
    key = ref.op_key(seed, epoch, tag)
    words = iter(ref.block_words(key, [i], 0, 4096)[0].tolist())

    def gamma(a):
        boost = 1.0
        if a < 1.0:
            boost = np.power(1.0 - next(words) / TWO32, 1.0 / a)
            a += 1.0
        d = a - 1.0 / 3.0
        c = 1.0 / np.sqrt(9.0 * d)
        while True:
            u1 = (next(words) + 0.5) / TWO32
            u2 = next(words) / TWO32
            z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
            t = 1.0 + c * z
            v = t * t * t
            if v <= 0:
                continue
            u = (next(words) + 0.5) / TWO32
            if np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v):
                return d * v * boost

    g1 = gamma(alpha)
    g2 = gamma(alpha)
    return g1 / (g1 + g2) if g1 + g2 > 0 else 0.5


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 2.5])
def test_beta_is_the_sequential_definition(alpha):
    idx = np.arange(300) * 7919 % 100003
    got = ref.beta(SEED, 2, 9 << 8, idx, alpha)
    expected = np.array([beta_one_by_one(SEED, 2, 9 << 8, int(i), alpha) for i in idx])
    # the same operations, once on arrays and once on scalars: equal up to NumPy's vector and
    # scalar log/cos, which may differ in the last bit
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-300)


def test_beta_reads_past_the_first_fetch():
    """A sample with several rejections needs more than the 16 draws fetched first: the cursor
    keeps reading that sample's own stream (the result is the sequential definition)."""
    idx = np.arange(20000)
    key = ref.op_key(1, 0, 77)
    draws = ref._Draws(key, idx)
    ref._gamma(draws, 0.05)
    ref._gamma(draws, 0.05)
    assert draws.words.shape[1] > ref._Draws.STEP  # some sample needed more
    far = np.flatnonzero(draws.cursor > ref._Draws.STEP)
    assert far.size
    lam = ref.beta(1, 0, 77, idx, 0.05)[far]
    np.testing.assert_allclose(lam, [beta_one_by_one(1, 0, 77, int(i), 0.05) for i in far],
                               rtol=1e-13)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0])
def test_beta_statistics(alpha):
    """Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)), within 5 standard errors; and the
    distribution itself (Kolmogorov-Smirnov against scipy's Beta when available)."""
    n = 20000
    lam = ref.sample_params("mixup", SEED, 1, np.arange(n), alpha=alpha)["lam"]
    assert lam.dtype == np.float64 and np.all((lam >= 0) & (lam <= 1))
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))
    assert abs(lam.mean() - 0.5) < 5 * math.sqrt(var / n)
    dev2 = (lam - 0.5) ** 2
    assert abs(dev2.mean() - var) < 5 * dev2.std() / math.sqrt(n)
    stats = pytest.importorskip("scipy.stats")
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 1e-4


def test_beta_keyed_by_sample_not_by_batch():
    idx = np.arange(1000) + 12345
    whole = ref.beta(SEED, 4, 9 << 8, idx, 0.4)
    parts = np.concatenate([ref.beta(SEED, 4, 9 << 8, idx[a:b], 0.4)
                            for a, b in ((0, 1), (1, 400), (400, 999), (999, 1000))])
    np.testing.assert_array_equal(parts, whole)
    shuffled = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(ref.beta(SEED, 4, 9 << 8, idx[shuffled], 0.4), whole[shuffled])
    assert not np.array_equal(ref.beta(SEED, 5, 9 << 8, idx, 0.4), whole)  # another epoch


def own_weight(fn, x, n, **kw):
    """The weight of each sample's own class in its mixed label (every sample its own class, so
    the partner's class is another one): mixup's lambda, cutmix's kept-area weight."""
    _, soft = fn(x, np.arange(n), num_classes=n, **kw)[:2]
    return soft[np.arange(n), np.arange(n)]


def test_mixup_and_cutmix_lambdas_across_batch_splits(backend):
    n = 6
    x = images(n, 5, 7, 3)
    for fn, alpha in ((A.mixup, 0.3), (A.cutmix, 1.0)):
        whole = own_weight(fn, x, n, alpha=alpha, seed=SEED, backend=backend)
        first = own_weight(fn, x[:2], 2, alpha=alpha, seed=SEED, backend=backend)
        rest = own_weight(fn, x[2:], 4, alpha=alpha, seed=SEED, index_offset=2,
                          backend=backend)
        np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
        expected = ref.sample_params("mixup", SEED, 0, np.arange(n), alpha=alpha)["lam"]
        if fn is A.mixup:
            np.testing.assert_array_equal(whole, expected.astype(np.float32))


# ---- indices= ----------------------------------------------------------------------------------

OPS = {
    "flip": lambda x, **k: A.random_flip(x, 0.5, direction="both", **k),
    "rot90": lambda x, **k: A.random_rot90(x, **k),
    "rotate": lambda x, **k: A.random_rotate(x, 30, fill=3, **k),
    "crop": lambda x, **k: A.random_crop(x, (4, 5), padding=2, **k),
    "resized_crop": lambda x, **k: A.random_resized_crop(x, (6, 4), **k),
    "noise": lambda x, **k: A.gaussian_noise(x, (0.0, 20.0), **k),
    "erasing": lambda x, **k: A.random_erasing(x, 0.9, value=17, **k),
    "compose": lambda x, **k: A.Compose([A.RandomFlip(), A.RandomRotate(25),
                                         A.GaussianNoise(5.0), A.RandomErasing(0.7)])(x, **k),
}


def ids_case(backend):
    n = 5 if backend == "cuda" and CUDA_SIM else 9
    perm = np.random.default_rng(3).permutation(n)
    return n, perm


@pytest.mark.parametrize("op", sorted(OPS))
def test_indices_key_samples_by_id(backend, op):
    """Sample id k gets the same transform at any batch position: a shuffled batch with its ids
    gives the shuffled result; ids equal to index_offset + i give index_offset's result."""
    n, perm = ids_case(backend)
    x = images(n, 6, 6, 3)
    fn = OPS[op]
    kw = dict(seed=SEED, epoch=2, backend=backend)
    base = host(fn(x, index_offset=40, **kw))
    np.testing.assert_array_equal(
        host(fn(x, indices=np.arange(40, 40 + n), **kw)), base)
    shuffled = host(fn(x[perm], indices=40 + perm, **kw))
    np.testing.assert_array_equal(shuffled, base[perm])
    # duplicates (the same sample twice in a batch) get the same transform
    dup = host(fn(x[[2, 2, 0]], indices=[42, 42, 40], **kw))
    np.testing.assert_array_equal(dup, base[[2, 2, 0]])


def test_indices_on_target_and_nchw(backend):
    n, perm = ids_case(backend)
    x = images(n, 6, 6, 3, np.float32)
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    mask = np.arange(n * 36, dtype=np.int32).reshape(n, 6, 6)
    kw = dict(seed=SEED, backend=backend, layout="NCHW")
    base_x, base_t = A.random_rotate(xc, 40, target=mask, **kw)
    got_x, got_t = A.random_rotate(xc[perm], 40, target=mask[perm], indices=perm, **kw)
    np.testing.assert_array_equal(host(got_x), host(base_x)[perm])
    np.testing.assert_array_equal(host(got_t), host(base_t)[perm])
    noisy = A.gaussian_noise(xc, 9.0, **kw)
    np.testing.assert_array_equal(host(A.gaussian_noise(xc[perm], 9.0, indices=perm, **kw)),
                                  host(noisy)[perm])


def test_indices_mixup_cutmix(backend):
    """With ids, a sample's lambda (mixup) and kept-area weight (cutmix) follow it; partners are
    drawn among the batch's ids."""
    n, perm = ids_case(backend)
    x = images(n, 5, 7, 3)
    for fn, alpha in ((A.mixup, 0.3), (A.cutmix, 1.0)):
        kw = dict(alpha=alpha, seed=SEED, backend=backend)
        base = own_weight(fn, x, n, **kw)
        got = own_weight(fn, x[perm], n, indices=perm, **kw)
        np.testing.assert_array_equal(got, base[perm])
        ids = np.arange(100, 100 + n)
        a = fn(x, np.arange(n), num_classes=n, index_offset=100, **kw)
        b = fn(x, np.arange(n), num_classes=n, indices=ids, **kw)
        np.testing.assert_array_equal(host(a[0]), host(b[0]))
        np.testing.assert_array_equal(a[1], b[1])


def test_bad_indices():
    x = images(3, 4, 4, 3)
    y = np.arange(3)
    for fn in (lambda **k: A.random_flip(x, **k), lambda **k: A.Compose([A.RandomFlip()])(x, **k),
               lambda **k: A.mixup(x, y, num_classes=3, **k),
               lambda **k: A.gaussian_noise(x, 1.0, **k)):
        with pytest.raises(ValueError, match="either index_offset or indices"):
            fn(seed=1, index_offset=5, indices=[0, 1, 2])
        with pytest.raises(ValueError, match=r"indices must have shape \(3,\)"):
            fn(seed=1, indices=[0, 1])
        with pytest.raises(ValueError, match=r"indices must have shape \(3,\)"):
            fn(seed=1, indices=[[0, 1, 2]])
        with pytest.raises(ValueError, match="indices must be in"):
            fn(seed=1, indices=[0, -1, 2])
        with pytest.raises(ValueError, match="indices must be in"):
            fn(seed=1, indices=[0, 2**32, 2])
        with pytest.raises(TypeError, match="indices must be integers"):
            fn(seed=1, indices=[0.0, 1.0, 2.0])
        with pytest.raises(TypeError, match="indices must be integers"):
            fn(seed=1, indices=np.array([True, False, True]))
    np.testing.assert_array_equal(A.random_flip(x, seed=1, indices=[2**32 - 1, 0, 7]),
                                  A.random_flip(x, seed=1, indices=np.array([2**32 - 1, 0, 7],
                                                                            np.uint32)))
