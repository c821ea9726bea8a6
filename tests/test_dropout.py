"""Dropout, channel dropout and drop path: every backend against the NumPy reference, exactly."""
import math

import numpy as np
import pytest
from conftest import big, bits

import fastreg
from fastreg.random import random_bits

SHAPES = [(0,), (1,), (2,), (7,), (3, 5), (2, 3, 4, 5), (1000,), (4099,), (0, 3)]
DTYPES = [np.float32, np.float64]
SEED = 0xDEADBEEFCAFEF00D


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def expected_dropout(x, p, seed, offset, training=True, mode="inverted"):
    """Straight from the definition: keep iff word >= round(p 2^32), kept = x * scale (in dtype)."""
    t = min(math.floor(p * 2**32 + 0.5), 2**32)
    words = random_bits(x.size, seed=seed, offset=offset, backend="numpy").reshape(x.shape)
    if training:
        keep = words.astype(np.uint64) >= t
        scale = 1 / (1 - p) if (mode == "inverted" and p < 1) else 1.0
    else:
        keep = np.ones(x.shape, bool)
        scale = 1.0 if mode == "inverted" else 1.0 - p
    return np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("training", [True, False])
def test_reference_matches_definition(p, mode, training):
    x = data((3, 333), np.float32)
    got = fastreg.dropout(x, p, seed=SEED, offset=5, training=training, mode=mode,
                          backend="numpy")
    np.testing.assert_array_equal(bits(got), bits(expected_dropout(x, p, SEED, 5, training, mode)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_dropout_vs_reference(kernel_backend, shape, dtype, p):
    x = data(shape, dtype)
    for offset in (0, 3, 2**34 - 2):
        expected = fastreg.dropout(x, p, seed=SEED, offset=offset, backend="numpy")
        got = host(fastreg.dropout(x, p, seed=SEED, offset=offset, backend=kernel_backend))
        assert got.shape == x.shape and got.dtype == x.dtype
        np.testing.assert_array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_modes_vs_reference(kernel_backend, mode, training, dtype):
    x = data((517,), dtype, seed=4)
    kw = dict(seed=7, offset=1, training=training, mode=mode)
    expected = fastreg.dropout(x, 0.3, backend="numpy", **kw)
    np.testing.assert_array_equal(bits(host(fastreg.dropout(x, 0.3, backend=kernel_backend, **kw))),
                                  bits(expected))
    gb = fastreg.dropout_backward(x, 0.3, backend=kernel_backend, **kw)
    np.testing.assert_array_equal(bits(host(gb)), bits(expected))


def test_end_of_counter_space(backend):
    x = data((101,), np.float32)
    off = 2**64 - 101
    got = host(fastreg.dropout(x, 0.5, seed=1, offset=off, backend=backend))
    np.testing.assert_array_equal(bits(got), bits(expected_dropout(x, 0.5, 1, off)))
    with pytest.raises(ValueError, match="2\\*\\*64"):
        fastreg.dropout(x, 0.5, seed=1, offset=off + 1, backend=backend)


def test_inference(backend):
    x = data((257,), np.float32)
    y = host(fastreg.dropout(x, 0.4, seed=1, training=False, backend=backend))
    np.testing.assert_array_equal(y, x)
    assert y is not x
    y = host(fastreg.dropout(x, 0.4, seed=1, training=False, mode="classic", backend=backend))
    np.testing.assert_array_equal(y, x * np.float32(0.6))


def test_p_zero_is_identity_and_p_one_is_zeros(backend):
    x = data((1031,), np.float64)
    x[:3] = [np.inf, -np.inf, np.nan]
    np.testing.assert_array_equal(host(fastreg.dropout(x, 0.0, seed=2, backend=backend)), x)
    z = host(fastreg.dropout(x, 1.0, seed=2, backend=backend))
    assert np.all(bits(z) == 0)  # exact +0.0, no NaN from 0 * inf
    z = host(fastreg.dropout(x, 1.0, seed=2, mode="classic", backend=backend))
    assert np.all(bits(z) == 0)


def test_dropped_inf_and_nan_give_zero(backend):
    x = np.full(2000, np.inf, np.float32)
    x[::2] = np.nan
    y = host(fastreg.dropout(x, 0.5, seed=3, backend=backend))
    keep = host(fastreg.dropout_mask(x.size, 0.5, seed=3, packed=False, backend=backend))
    assert 0 < keep.sum() < keep.size
    assert np.all(bits(y[~keep]) == 0)
    np.testing.assert_array_equal(y[keep], x[keep])  # inf * 2 = inf, NaN stays NaN


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_5_sigma(backend, p):
    n = big(backend, 1 << 20)
    kept = int(host(fastreg.dropout_mask(n, p, seed=11, packed=False, backend=backend)).sum())
    assert abs(kept - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_inverted_and_classic_agree_in_expectation(backend, p):
    """E[training output] equals the inference output in both conventions."""
    n = big(backend, 1 << 20)
    x = np.ones(n, np.float64)
    for mode in ("inverted", "classic"):
        train = host(fastreg.dropout(x, p, seed=5, mode=mode, backend=backend))
        infer = host(fastreg.dropout(x, p, seed=5, mode=mode, training=False, backend=backend))
        sd = train.std() / math.sqrt(n)
        assert abs(train.mean() - infer[0]) < 5 * sd


def test_seed_and_offset_change_the_mask(backend):
    x = np.ones(4096, np.float32)
    a = host(fastreg.dropout(x, 0.5, seed=1, backend=backend))
    np.testing.assert_array_equal(a, host(fastreg.dropout(x, 0.5, seed=1, backend=backend)))
    assert not np.array_equal(a, host(fastreg.dropout(x, 0.5, seed=2, backend=backend)))
    assert not np.array_equal(a, host(fastreg.dropout(x, 0.5, seed=1, offset=1, backend=backend)))
    assert not np.array_equal(a, host(fastreg.dropout(x, 0.5, seed=2**32 + 1, backend=backend)))


def test_halves_equal_whole(backend):
    x = data((3001,), np.float32)
    whole = host(fastreg.dropout(x, 0.5, seed=9, offset=77, backend=backend))
    for k in (1, 1000, 1500, 3000):
        a = host(fastreg.dropout(x[:k], 0.5, seed=9, offset=77, backend=backend))
        b = host(fastreg.dropout(x[k:], 0.5, seed=9, offset=77 + k, backend=backend))
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    m = host(fastreg.dropout_mask(3001, 0.5, seed=9, offset=77, packed=False, backend=backend))
    m1 = host(fastreg.dropout_mask(1234, 0.5, seed=9, offset=77, packed=False, backend=backend))
    m2 = host(fastreg.dropout_mask(1767, 0.5, seed=9, offset=77 + 1234, packed=False,
                                   backend=backend))
    np.testing.assert_array_equal(np.concatenate([m1, m2]), m)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_backward_is_grad_times_mask_times_scale(backend, mode):
    g = data((40, 50), np.float32, seed=8)
    p = 0.3
    mask = host(fastreg.dropout_mask(g.shape, p, seed=4, offset=2, packed=False, backend=backend))
    scale = np.float32(1 / (1 - p)) if mode == "inverted" else np.float32(1)
    got = host(fastreg.dropout_backward(g, p, seed=4, offset=2, mode=mode, backend=backend))
    np.testing.assert_array_equal(got, np.where(mask, g * scale, np.float32(0)))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 65, 4099])
@pytest.mark.parametrize("offset", [0, 1, 5, 2**33 + 3])
def test_packed_mask_vs_reference(backend, n, offset):
    packed = host(fastreg.dropout_mask(n, 0.37, seed=21, offset=offset, backend=backend))
    boolean = host(fastreg.dropout_mask(n, 0.37, seed=21, offset=offset, packed=False,
                                        backend=backend))
    assert packed.dtype == np.uint8 and packed.shape == ((n + 7) // 8,)
    assert boolean.dtype == np.bool_ and boolean.shape == (n,)
    np.testing.assert_array_equal(np.unpackbits(packed, count=n, bitorder="little").astype(bool),
                                  boolean)
    if n % 8:
        assert packed[-1] >> (n % 8) == 0  # pad bits are zero
    np.testing.assert_array_equal(
        packed, fastreg.dropout_mask(n, 0.37, seed=21, offset=offset, backend="numpy"))
    x = np.ones(n, np.float32)
    np.testing.assert_array_equal(boolean, fastreg.dropout(x, 0.37, seed=21, offset=offset,
                                                           backend="numpy") != 0)


def test_mask_p_extremes(backend):
    assert host(fastreg.dropout_mask(100, 0.0, seed=1, packed=False, backend=backend)).all()
    assert not host(fastreg.dropout_mask(100, 1.0, seed=1, packed=False, backend=backend)).any()
    np.testing.assert_array_equal(host(fastreg.dropout_mask(13, 0.0, seed=1, backend=backend)),
                                  [255, 31])


# ---- channel dropout and drop path -------------------------------------------------------


def expected_grouped(x, p, seed, offset, axis, mode="inverted"):
    n = x.shape[0]
    c = 1 if axis is None else x.shape[axis]
    keep = fastreg.dropout_mask((n, c), p, seed=seed, offset=offset, packed=False,
                                backend="numpy")
    shape = [1] * x.ndim
    shape[0] = n
    if axis is not None:
        shape[axis] = c
    scale = x.dtype.type(1 / (1 - p) if mode == "inverted" else 1)
    return np.where(keep.reshape(shape), x * scale, x.dtype.type(0))


@pytest.mark.parametrize("shape,axis", [((4, 6), 1), ((3, 5, 7), 1), ((2, 3, 4, 5), 1),
                                        ((2, 4, 5, 3), -1), ((2, 3, 4, 5), 2), ((0, 3, 2), 1),
                                        ((5, 1, 1), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_dropout_vs_reference(backend, shape, axis, dtype):
    x = data(shape, dtype)
    got = host(fastreg.channel_dropout(x, 0.5, seed=3, offset=9, axis=axis, backend=backend))
    np.testing.assert_array_equal(bits(got), bits(expected_grouped(x, 0.5, 3, 9, axis)))
    gb = host(fastreg.channel_dropout_backward(x, 0.5, seed=3, offset=9, axis=axis,
                                               backend=backend))
    np.testing.assert_array_equal(bits(gb), bits(got))


def test_channel_dropout_layouts_agree(backend):
    x = data((4, 8, 5, 6), np.float32)  # NCHW
    nchw = host(fastreg.channel_dropout(x, 0.5, seed=2, axis=1, backend=backend))
    nhwc = host(fastreg.channel_dropout(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), 0.5,
                                        seed=2, axis=-1, backend=backend))
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    zeroed = (nchw == 0).all(axis=(2, 3))
    assert 0 < zeroed.sum() < zeroed.size


@pytest.mark.parametrize("shape", [(6,), (5, 3), (4, 2, 3, 3), (0, 2)])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_drop_path_vs_reference(backend, shape, mode):
    x = data(shape, np.float32)
    got = host(fastreg.drop_path(x, 0.5, seed=8, offset=2, mode=mode, backend=backend))
    np.testing.assert_array_equal(bits(got), bits(expected_grouped(x, 0.5, 8, 2, None, mode)))
    gb = host(fastreg.drop_path_backward(x, 0.5, seed=8, offset=2, mode=mode, backend=backend))
    np.testing.assert_array_equal(bits(gb), bits(got))
    inf = host(fastreg.drop_path(x, 0.5, seed=8, mode=mode, training=False, backend=backend))
    np.testing.assert_array_equal(inf, x if mode == "inverted" else x * np.float32(0.5))


def test_grouped_p_one(backend):
    x = np.full((3, 4, 2), np.inf, np.float32)
    assert np.all(bits(host(fastreg.channel_dropout(x, 1.0, seed=1, backend=backend))) == 0)
    assert np.all(bits(host(fastreg.drop_path(x, 1.0, seed=1, backend=backend))) == 0)


# ---- memory: out=, strides, aliasing, input untouched --------------------------------------


def test_out_and_in_place(backend):
    x = data((1000,), np.float32)
    expected = fastreg.dropout(x, 0.5, seed=1, backend="numpy")
    out = np.empty_like(x)
    if backend == "cuda":
        pytest.skip("host out= with device compute is covered in test_cuda_backend")
    res = fastreg.dropout(x, 0.5, seed=1, out=out, backend=backend)
    assert res is out
    np.testing.assert_array_equal(out, expected)
    y = x.copy()
    assert fastreg.dropout(y, 0.5, seed=1, out=y, backend=backend) is y
    np.testing.assert_array_equal(y, expected)


def test_non_contiguous_input_and_out(backend):
    base = data((40, 60), np.float64)
    x = base[::2, 1::3].T  # neither C- nor F-contiguous
    expected = fastreg.dropout(np.ascontiguousarray(x), 0.5, seed=6, backend="numpy")
    np.testing.assert_array_equal(host(fastreg.dropout(x, 0.5, seed=6, backend=backend)),
                                  expected)
    if backend != "cuda":
        out_base = np.zeros((x.shape[0], 2 * x.shape[1]))
        out = out_base[:, ::2]
        fastreg.dropout(x, 0.5, seed=6, out=out, backend=backend)
        np.testing.assert_array_equal(out, expected)
        assert np.all(out_base[:, 1::2] == 0)


def test_input_never_modified(backend):
    x = data((2, 3, 50), np.float32)
    keep = x.copy()
    for fn in (fastreg.dropout, fastreg.dropout_backward, fastreg.channel_dropout,
               fastreg.drop_path):
        fn(x, 0.5, seed=1, backend=backend)
    np.testing.assert_array_equal(x, keep)


def test_array_like_inputs():
    import array
    buf = array.array("f", [1.0, 2.0, 3.0, 4.0])
    y = fastreg.dropout(buf, 0.0, seed=1)
    np.testing.assert_array_equal(y, [1, 2, 3, 4])
    assert fastreg.dropout(memoryview(buf), 0.0, seed=1).dtype == np.float32
    np.testing.assert_array_equal(fastreg.dropout([1.0, 2.0], 0.0, seed=1), [1.0, 2.0])


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    t = torch.randn(100, dtype=torch.float32)
    got = fastreg.dropout(t, 0.5, seed=3)
    np.testing.assert_array_equal(got, fastreg.dropout(t.numpy(), 0.5, seed=3, backend="numpy"))


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0001, float("nan"), float("inf")])
def test_bad_p(backend, p):
    with pytest.raises(ValueError, match="p must be in"):
        fastreg.dropout(np.ones(3, np.float32), p, seed=1, backend=backend)


@pytest.mark.parametrize("p", ["0.5", None, [0.5], True])
def test_p_wrong_type(p):
    with pytest.raises(TypeError, match="p must be a real number"):
        fastreg.dropout(np.ones(3, np.float32), p, seed=1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_bad_dtype(backend, dtype):  # 16-bit floats are accepted: tests/test_half.py
    with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
        fastreg.dropout(np.ones(3, dtype), 0.5, seed=1, backend=backend)


def test_bad_arguments():
    x = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="mode"):
        fastreg.dropout(x, seed=1, mode="scaled")
    with pytest.raises(ValueError, match="seed"):
        fastreg.dropout(x, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        fastreg.dropout(x, seed=1.5)
    with pytest.raises(TypeError):
        fastreg.dropout(x)  # seed is required
    with pytest.raises(ValueError, match="out must have shape"):
        fastreg.dropout(x, seed=1, out=np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match="out must have dtype"):
        fastreg.dropout(x, seed=1, out=np.empty((4, 5), np.float64))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastreg.dropout(x, seed=1, out=ro)
    big = np.ones(30, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.dropout(big[:20], seed=1, out=big[10:])
    with pytest.raises(ValueError, match="backend must be one of"):
        fastreg.dropout(x, seed=1, backend="gpu")
    with pytest.raises(ValueError, match="axis"):
        fastreg.channel_dropout(x, seed=1, axis=0)
    with pytest.raises(ValueError, match="axis"):
        fastreg.channel_dropout(x, seed=1, axis=2)
    with pytest.raises(ValueError, match="ndim >= 2"):
        fastreg.channel_dropout(np.ones(3, np.float32), seed=1)
    with pytest.raises(TypeError, match="training"):
        fastreg.dropout(x, seed=1, training="yes")
    with pytest.raises(ValueError, match="shape"):
        fastreg.dropout_mask((3, -1), 0.5, seed=1)
    with pytest.raises(ValueError, match="p must be in"):
        fastreg.dropout_mask(3, 2.0, seed=1)


def test_error_leaves_out_untouched():
    x = np.ones(10, np.float32)
    out = np.full(10, 7.0, np.float32)
    with pytest.raises(ValueError):
        fastreg.dropout(x, 1.5, seed=1, out=out)
    with pytest.raises(ValueError):
        fastreg.dropout(x, 0.5, seed=-3, out=out)
    assert np.all(out == 7.0)


def test_missing_backend_is_a_clear_error(monkeypatch):
    from fastreg import _registry
    monkeypatch.setitem(_registry._missing, "c", "not built (test)")
    monkeypatch.delitem(_registry._loaded, "c", raising=False)
    with pytest.raises(fastreg.BackendUnavailableError, match="'c' is not available: not built"):
        fastreg.dropout(np.ones(3, np.float32), seed=1, backend="c")


# ---- device arrays through the public API -------------------------------------------------


def test_device_arrays_stay_on_device(backend):
    if backend != "cuda":
        pytest.skip("device arrays are for the cuda backend")
    from numba import cuda
    x = data((3, 100), np.float32)
    dx = cuda.to_device(x)
    expected = fastreg.dropout(x, 0.5, seed=4, offset=3, backend="numpy")
    y = fastreg.dropout(dx, 0.5, seed=4, offset=3)  # auto -> cuda for device input
    assert not isinstance(y, np.ndarray) and y.shape == x.shape
    np.testing.assert_array_equal(y.copy_to_host(), expected)
    dout = cuda.device_array_like(x)
    assert fastreg.dropout(dx, 0.5, seed=4, offset=3, out=dout) is dout
    np.testing.assert_array_equal(dout.copy_to_host(), expected)
    assert fastreg.dropout(dx, 0.5, seed=4, offset=3, out=dx) is dx  # in place
    np.testing.assert_array_equal(dx.copy_to_host(), expected)
    g = fastreg.channel_dropout(cuda.to_device(x), 0.5, seed=4)
    np.testing.assert_array_equal(g.copy_to_host(),
                                  fastreg.channel_dropout(x, 0.5, seed=4, backend="numpy"))
    with pytest.raises(ValueError, match="out must be a CUDA device array"):
        fastreg.dropout(dx, 0.5, seed=4, out=np.empty_like(x))
    with pytest.raises(ValueError, match="runs on host memory"):
        fastreg.dropout(dx, 0.5, seed=4, backend="cpu")
    with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
        fastreg.dropout(cuda.to_device(np.ones(3, np.int32)), 0.5, seed=4)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ndarray_subclasses_and_views_as_out(backend):
    """np.matrix (reshape keeps it 2-D) must be viewed as a plain array, never crash."""
    if backend == "cuda":
        pytest.skip("host arrays")
    x = data((64, 100), np.float32)
    expected = fastreg.dropout(x, 0.5, seed=0, backend="numpy")
    m = np.matrix(np.zeros_like(x))
    assert fastreg.dropout(x, 0.5, seed=0, out=m, backend=backend) is m
    np.testing.assert_array_equal(np.asarray(m), expected)
    np.testing.assert_array_equal(fastreg.dropout(np.matrix(x), 0.5, seed=0, backend=backend),
                                  expected)
    buf = np.zeros(x.size, np.float32)
    mv = memoryview(buf).cast("B").cast("f")
    fastreg.dropout(x.reshape(-1), 0.5, seed=0, out=mv, backend=backend)
    np.testing.assert_array_equal(buf, expected.reshape(-1))
    with pytest.raises(TypeError, match="out must be an array"):
        fastreg.dropout(x[0], 0.5, seed=0, out=[0.0] * 100, backend=backend)
    with pytest.raises(TypeError, match="masked arrays"):
        fastreg.dropout(np.ma.masked_array(x, mask=x > 0), 0.5, seed=0, backend=backend)


def test_zero_d_arrays_are_scalars():
    x = np.ones(8, np.float32)
    np.testing.assert_array_equal(
        fastreg.dropout(x, np.array(0.5), seed=np.array(5), offset=np.uint64(2**63 + 1)),
        fastreg.dropout(x, 0.5, seed=5, offset=2**63 + 1))


def test_device_partial_overlap_refused(backend):
    if backend != "cuda":
        pytest.skip("device arrays")
    from numba import cuda
    d = cuda.to_device(np.arange(1, 65, dtype=np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.dropout(d[:-1], 0.5, seed=1, out=d[1:])


@pytest.mark.parametrize("backend", ["numpy", "cpu", "c"])
@pytest.mark.parametrize("p", [1 - 2.0 ** -53, 1 - 2.0 ** -34, 1 - 2.0 ** -32, 0.999])
def test_p_just_below_one_on_every_path(backend, p):
    """A p < 1 whose threshold rounds to 2**32 drops everything (a p within 2**-33 of 1): the
    host short paths (float32/float64 C-contiguous x, int seed) must agree with the general
    path (a NumPy-integer seed) instead of passing 2**32 to a uint32 threshold. Found by
    hypothesis (test_channel_dropout_matches_reference_or_errors)."""
    reason = fastreg.available_backends()[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")
    x = np.arange(1.0, 25.0, dtype=np.float32).reshape(2, 3, 4)
    everything = p * 2.0 ** 32 + 0.5 >= 2.0 ** 32
    for fn, kw in ((fastreg.dropout, {}), (fastreg.dropout_backward, {}),
                   (fastreg.channel_dropout, dict(axis=1)), (fastreg.drop_path, {})):
        short = fn(x, p, seed=3, backend=backend, **kw)
        general = fn(x, p, seed=np.uint64(3), backend=backend, **kw)
        np.testing.assert_array_equal(short, general)
        if everything:
            assert not short.any()


def test_huge_integer_hyper_parameters_are_value_errors():
    """An int too large for a float (10**400) is out of range: ValueError naming the argument,
    not float()'s OverflowError."""
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="p must be in"):
        fastreg.dropout(x, 10**400, seed=1)
    with pytest.raises(ValueError, match="momentum must be in"):
        fastreg.batch_norm(np.ones((3, 2), np.float32), training=True, momentum=10**400)
    with pytest.raises(ValueError, match="eps must be"):
        fastreg.batch_norm(np.ones((3, 2), np.float32), training=True, eps=10**400)
    with pytest.raises(ValueError, match="lam must be"):
        fastreg.l2_grad(x, 10**400)
    with pytest.raises(ValueError, match="max_norm must be"):
        fastreg.clip_grad_norm([x.copy()], 10**400)
    # the same conversion in the other argument checks
    import fastreg.augment as A
    from fastreg import distributed
    from fastreg.train import EarlyStopping
    with pytest.raises(ValueError, match="betas"):
        fastreg.optim.Adam([x.copy()], betas=(10**400, 0.9))
    with pytest.raises(ValueError, match="brightness must be finite"):
        A.ColorJitter(brightness=10**400)
    with pytest.raises(ValueError, match="min_delta must be finite"):
        EarlyStopping(min_delta=10**400)
    with pytest.raises(ValueError, match="timeout must be"):
        distributed._timeout(10**400)
