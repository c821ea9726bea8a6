"""The CUDA backend against the NumPy reference, bit for bit.

Runs on a GPU or under Numba's simulator on tiny inputs:

    NUMBA_ENABLE_CUDASIM=1 FASTREG_CUDA_TPB=32 python -m pytest tests/test_cuda_backend.py -q

Threads per block are patched down to 32 (and other values in one test) so that even these inputs
span many blocks and the capped grid has to stride.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastreg.cuda as fcuda
from fastreg import reference

_REASON = fcuda.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"CUDA backend unavailable: {_REASON}", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: only usable when the backend is)

from fastreg.cuda import philox as cphilox  # noqa: E402

SIZES = (0, 1, 3, 4, 5, 31, 33, 257, 1000, 4099)
OFFSETS = (0, 1, 2, 3, 7, 2**34 - 3, "end")  # "end": 2**64 - n, the last n words of the stream
SEEDS = (0, 0x0123456789ABCDEF, 2**64 - 1)
U32MAX = 2**32 - 1


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setenv("FASTREG_CUDA_TPB", "32")


def _offset(offset, n):
    return 2**64 - max(n, 1) if offset == "end" else offset


def _seed(n, offset):
    # vary the seed across the sweep without multiplying the number of cases
    return SEEDS[(n + len(str(offset))) % len(SEEDS)]


def _poison(shape, dtype):
    """An array whose bytes are all 0xA5, so an element the kernel skipped shows."""
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xA5
    return a


def _bits(a):
    """Floats as their bit patterns (so +0.0 vs -0.0 and NaN payloads count)."""
    a = np.asarray(a)
    if a.dtype == np.float32:
        return a.view(np.uint32)
    if a.dtype == np.float64:
        return a.view(np.uint64)
    return a


def _on_device(op, *args, out):
    """Run op with every array argument and out on the device; the result as a host array."""
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    out_d = cuda.to_device(out)
    op(*dev, out_d)
    return out_d.copy_to_host()


def _x(n, dtype, rng):
    x = rng.standard_normal(n).astype(dtype)
    if n >= 4:  # specials: a dropped inf/NaN must give +0.0, a kept one stays inf/NaN
        x[:4] = [np.inf, -np.inf, np.nan, -0.0]
    return x


# --- Philox core -------------------------------------------------------------------------------

KNOWN = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((U32MAX,) * 4, (U32MAX,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
]


def test_philox_known_answers():
    ctr = np.array([k[0] for k in KNOWN], np.uint32)
    key = np.array([k[1] for k in KNOWN], np.uint32)
    got = _on_device(fcuda.philox4x32, ctr, key, out=_poison((2, 4), np.uint32))
    np.testing.assert_array_equal(got, np.array([k[2] for k in KNOWN], np.uint32))


@pytest.mark.parametrize("n", (0, 1, 5, 257))
def test_philox_matches_reference(n):
    rng = np.random.default_rng(n)
    ctr = rng.integers(0, 2**32, (n, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, (n, 2), dtype=np.uint32)
    expected = np.empty((n, 4), np.uint32)
    reference.philox4x32(ctr, key, expected)
    got = _on_device(fcuda.philox4x32, ctr, key, out=_poison((n, 4), np.uint32))
    np.testing.assert_array_equal(got, expected)


# --- the stream ----------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_random_bits(n, offset):
    offset, seed = _offset(offset, n), _seed(n, offset)
    expected = np.empty(n, np.uint32)
    reference.random_bits(seed, offset, expected)
    got = _on_device(fcuda.random_bits, seed, offset, out=_poison(n, np.uint32))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_uniform(n, offset, dtype):
    offset, seed = _offset(offset, n), _seed(n, offset)
    expected = np.empty(n, dtype)
    reference.uniform(seed, offset, expected)
    got = _on_device(fcuda.uniform, seed, offset, out=_poison(n, dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("tpb", ("1", "7", "32", "64"))
def test_threads_per_block_read_at_launch(monkeypatch, tpb):
    monkeypatch.setenv("FASTREG_CUDA_TPB", tpb)
    expected = np.empty(257, np.uint32)
    reference.random_bits(99, 5, expected)
    got = _on_device(fcuda.random_bits, 99, 5, out=_poison(257, np.uint32))
    np.testing.assert_array_equal(got, expected)


def test_largest_case_strides():
    """At TPB 32 the capped grid is smaller than 4099 elements need: the grid-stride loop runs."""
    assert cphilox.max_blocks(32) * 32 * 4 < 4099 or not cphilox._simulated()


# --- dropout -------------------------------------------------------------------------------------

THRESHOLDS = (0, 1, 2**31, 0xB3333333, U32MAX)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout(n, offset, dtype):
    offset, seed = _offset(offset, n), _seed(n, offset)
    threshold = THRESHOLDS[n % len(THRESHOLDS)]
    scale = dtype(1.0 / 0.7)
    x = _x(n, dtype, np.random.default_rng(n))
    expected = np.empty(n, dtype)
    reference.dropout(x, seed, offset, threshold, scale, expected)
    got = _on_device(fcuda.dropout, x, seed, offset, threshold, scale, out=_poison(n, dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_dropout_in_place_on_device(dtype):
    n, seed, offset, threshold = 1000, 7, 2**34 - 3, 2**31
    x = _x(n, dtype, np.random.default_rng(1))
    expected = np.empty(n, dtype)
    reference.dropout(x, seed, offset, threshold, dtype(2.0), expected)
    x_d = cuda.to_device(x)
    fcuda.dropout(x_d, seed, offset, threshold, 2.0, x_d)  # a Python float scale is cast
    np.testing.assert_array_equal(_bits(x_d.copy_to_host()), _bits(expected))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_dropout_host_arrays_in_place(dtype):
    """NumPy arguments work too (copied to the device and back), also with out is x."""
    n, seed, offset, threshold = 33, 3, 1, 0x80000000
    x = _x(n, dtype, np.random.default_rng(2))
    expected = np.empty(n, dtype)
    reference.dropout(x, seed, offset, threshold, dtype(1.25), expected)
    fcuda.dropout(x, seed, offset, threshold, dtype(1.25), x)
    np.testing.assert_array_equal(_bits(x), _bits(expected))


@pytest.mark.parametrize("out_dtype", (np.uint8, np.bool_))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_mask(n, offset, out_dtype):
    offset, seed = _offset(offset, n), _seed(n, offset)
    threshold = THRESHOLDS[n % len(THRESHOLDS)]
    expected = np.empty(n, out_dtype)
    reference.dropout_mask(seed, offset, threshold, expected)
    got = _on_device(fcuda.dropout_mask, seed, offset, threshold, out=np.zeros(n, out_dtype)
                     if out_dtype == np.bool_ else _poison(n, out_dtype))
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_mask_packed(n, offset):
    offset, seed = _offset(offset, n), _seed(n, offset)
    threshold = THRESHOLDS[(n + 2) % len(THRESHOLDS)]
    nbytes = (n + 7) // 8
    expected = np.empty(nbytes, np.uint8)
    reference.dropout_mask_packed(seed, offset, threshold, n, expected)
    got = _on_device(fcuda.dropout_mask_packed, seed, offset, threshold, n,
                     out=_poison(nbytes, np.uint8))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("shape", ((2, 3, 5, 7), (1, 1, 1, 1), (3, 0, 2, 2), (4, 2, 33, 1),
                                   (2, 1, 3, 40), (1, 5, 1, 3)))
def test_group_dropout(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = _x(int(np.prod(shape)), dtype, rng).reshape(shape)
    keep = (rng.random((shape[0], shape[2])) < 0.6).astype(np.uint8)
    scale = dtype(1.0 / 0.6)
    expected = np.empty(shape, dtype)
    reference.group_dropout(x, keep, scale, expected)
    got = _on_device(fcuda.group_dropout, x, keep, scale, out=_poison(shape, dtype))
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    x_d = cuda.to_device(x)  # in place
    fcuda.group_dropout(x_d, cuda.to_device(keep), scale, x_d)
    np.testing.assert_array_equal(_bits(x_d.copy_to_host()), _bits(expected))


# --- device functions from a user's own kernel ----------------------------------------------------

@cuda.jit
def _user_words_kernel(seed_lo, seed_hi, offset, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = fcuda.stream_word_device(seed_lo, seed_hi, offset + np.uint64(i))


@cuda.jit
def _user_blocks_kernel(seed_lo, seed_hi, first, out):
    # out (nblocks, 4): block first + t via stream_block_device, and via philox4x32_device
    t = cuda.grid(1)
    if t < out.shape[0]:
        b = first + np.uint64(t)
        w0, w1, w2, w3 = fcuda.stream_block_device(seed_lo, seed_hi, b)
        v0, v1, v2, v3 = fcuda.philox4x32_device(b & np.uint64(0xFFFFFFFF), b >> np.uint64(32),
                                                 0, 0, seed_lo, seed_hi)
        bad = np.uint64(0xDEAD)
        out[t, 0] = w0 if w0 == v0 else bad
        out[t, 1] = w1 if w1 == v1 else bad
        out[t, 2] = w2 if w2 == v2 else bad
        out[t, 3] = w3 if w3 == v3 else bad


@cuda.jit
def _user_dropout_kernel(x, seed_lo, seed_hi, offset, threshold, scale, out):
    i = cuda.grid(1)
    if i < x.size:
        w = fcuda.stream_word_device(seed_lo, seed_hi, offset + np.uint64(i))
        if w >= threshold:
            out[i] = x[i] * scale
        else:
            out[i] = 0


@pytest.mark.parametrize("offset", (0, 3, 2**34 - 3, 2**64 - 70))
def test_user_kernel_device_functions(offset):
    n, seed = 70, 0xFEEDFACE12345678
    lo, hi = fcuda.split_seed(seed)
    expected = np.empty(n, np.uint32)
    reference.random_bits(seed, offset, expected)

    out = cuda.to_device(_poison(n, np.uint32))
    _user_words_kernel[3, 32](lo, hi, np.uint64(offset), out)
    np.testing.assert_array_equal(out.copy_to_host(), expected)

    first = offset // 4 + 1  # whole blocks: words 4 * first ..
    nblk = (offset + n) // 4 - first
    blocks = cuda.to_device(_poison((nblk, 4), np.uint32))
    _user_blocks_kernel[1, 32](lo, hi, np.uint64(first), blocks)
    skip = 4 * first - offset
    np.testing.assert_array_equal(blocks.copy_to_host().ravel(), expected[skip:skip + 4 * nblk])

    x = _x(n, np.float32, np.random.default_rng(5))
    threshold, scale = 2**31, np.float32(2.0)
    y = cuda.to_device(_poison(n, np.float32))
    _user_dropout_kernel[3, 32](cuda.to_device(x), lo, hi, np.uint64(offset),
                                np.uint64(threshold), scale, y)
    ours = _on_device(fcuda.dropout, x, seed, offset, threshold, scale, out=_poison(n, np.float32))
    np.testing.assert_array_equal(_bits(y.copy_to_host()), _bits(ours))


# --- array helpers and import hygiene ------------------------------------------------------------

def test_array_helpers():
    a = np.arange(10, dtype=np.float32)
    d = fcuda.to_device(a)
    assert fcuda.as_device(d) is d
    np.testing.assert_array_equal(fcuda.copy_to_host(d), a)
    e = fcuda.empty((3, 2), np.uint8)
    assert tuple(e.shape) == (3, 2) and e.dtype == np.uint8


def test_import_without_simulator_never_fails():
    """Without the simulator (and here without a GPU) the import works and compiles nothing;
    unavailable_reason() is None or a string."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import fastreg.cuda as c; r = c.unavailable_reason(); "
            "assert r is None or isinstance(r, str), r; print(repr(r))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_non_contiguous_device_inputs_are_refused_by_name():
    """Named and before any work (the kernels' own refusal names no argument)."""
    import fastreg
    from fastreg.optim import SGD
    nc = cuda.to_device(np.ones((4, 12), np.float32))[:, ::2]
    calls = {"x": lambda: fastreg.dropout(nc, 0.5, seed=1),
             "w": lambda: fastreg.l2_grad(nc, 0.1),
             r"w\[1\]": lambda: fastreg.l1_penalty([cuda.to_device(np.ones(3, np.float32)), nc],
                                                  0.1),
             r"grads\[0\]": lambda: SGD([cuda.to_device(np.ones((4, 6), np.float32))],
                                        lr=0.1).step([nc]),
             "logits": lambda: fastreg.cross_entropy(nc, cuda.to_device(np.zeros(4, np.int64)))}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{name}: non-contiguous CUDA arrays"):
            call()
