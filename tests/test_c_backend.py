"""Backend "c" (csrc/, through cffi) against the NumPy reference, bit for bit.

Both stream-kernel paths are held to the reference: AVX2 (where the CPU has it) and portable C.
Sizes cross the vector widths, the tile size (2048 words) and the OpenMP threshold; offsets cross
the 4-word block and the high counter word; views start off alignment; out may be x.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_array_equal

import fastreg.c as fc
from fastreg import reference

# the reference overflows to inf on huge inputs times scale, as it should; say nothing about it
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

if fc.unavailable_reason() is not None:
    pytest.skip(f"C backend unavailable: {fc.unavailable_reason()}", allow_module_level=True)

SIZES = [0, 1, 2, 3, 5, 7, 8, 9, 63, 64, 65, 1000, 4099, 100003]
OFFSETS = [0, 1, 2, 3, 5, 2**34 - 3]   # 2**34 - 3: the counter's high word changes inside
THRESHOLDS = [0, 1, 2**31, 2**32 - 2, 2**32 - 1]
SEED = 0x0123456789ABCDEF
FLOATS = [np.float32, np.float64]


def offsets_for(n):
    """OFFSETS plus the last possible one, 2**64 - n (the stream's end)."""
    return OFFSETS + [2**64 - n]


def bits(a):
    """The bit patterns of a float array (so -0.0 != +0.0 and NaN == NaN)."""
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def test_unavailable_reason_and_threads():
    assert fc.unavailable_reason() is None
    assert fc.omp_max_threads() >= 1
    assert fc.isa() in ("avx512", "avx2", "portable")


# ------------------------------------------------------------------ Philox core

KNOWN_ANSWERS = [  # Random123 kat_vectors, philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox4x32_known_answers():
    ctr = np.array([c for c, _, _ in KNOWN_ANSWERS], np.uint32)
    key = np.array([k for _, k, _ in KNOWN_ANSWERS], np.uint32)
    out = np.empty((3, 4), np.uint32)
    fc.philox4x32(ctr, key, out)
    assert_array_equal(out, np.array([w for _, _, w in KNOWN_ANSWERS], np.uint32))


@pytest.mark.parametrize("n", [0, 1, 7, 20000])
def test_philox4x32_matches_reference(n):
    rng = np.random.default_rng(n)
    ctr = rng.integers(0, 2**32, (n, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, (n, 2), dtype=np.uint32)
    expected, got = np.empty((n, 4), np.uint32), np.full((n, 4), 7, np.uint32)
    reference.philox4x32(ctr, key, expected)
    fc.philox4x32(ctr, key, got)
    assert_array_equal(got, expected)


def test_stream_known_answer(isa):
    # seed 0, offset 0: the first block is Philox(0, 0)
    out = np.empty(4, np.uint32)
    fc.random_bits(0, 0, out)
    assert_array_equal(out, np.array(KNOWN_ANSWERS[0][2], np.uint32))


# ------------------------------------------------------------------ random_bits, uniform

@pytest.mark.parametrize("n", SIZES)
def test_random_bits(isa, n):
    for offset in offsets_for(n):
        expected = np.empty(n, np.uint32)
        reference.random_bits(SEED, offset, expected)
        got = np.full(n + 3, 7, np.uint32)
        fc.random_bits(SEED, offset, got[3:])     # an output that starts off alignment
        assert_array_equal(got[3:], expected, err_msg=f"offset {offset}")
        assert_array_equal(got[:3], 7)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_uniform(isa, n, dtype):
    for offset in offsets_for(n):
        expected = np.empty(n, dtype)
        reference.uniform(SEED, offset, expected)
        got = np.full(n + 1, -1, dtype)
        fc.uniform(SEED, offset, got[1:])
        assert_array_equal(bits(got[1:]), bits(expected), err_msg=f"offset {offset}")
        assert got[0] == -1


# ------------------------------------------------------------------ dropout

def special_values(n, dtype, seed=0):
    """Random normals sprinkled with inf, -inf, NaN, -0.0, subnormals and huge values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    info = np.finfo(dtype)
    specials = np.array([np.inf, -np.inf, np.nan, -0.0, info.tiny / 4, -info.tiny / 3,
                         info.max, -info.max], dtype)
    if n:
        idx = rng.integers(0, n, size=min(n, 40))
        x[idx] = specials[np.arange(idx.size) % specials.size]
    return x


def check_dropout(x, seed, offset, threshold, scale, inplace=False, out_shift=0):
    expected = np.empty_like(x)
    reference.dropout(x, seed, offset, threshold, scale, expected)
    if inplace:
        got = x.copy()
        fc.dropout(got, seed, offset, threshold, scale, got)
    else:
        buf = np.full(x.size + out_shift, 3, x.dtype)
        got = buf[out_shift:]
        fc.dropout(x, seed, offset, threshold, scale, got)
        assert_array_equal(buf[:out_shift], 3)
    assert_array_equal(bits(got), bits(expected),
                       err_msg=f"n={x.size} offset={offset} threshold={threshold}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout(isa, n, dtype):
    base = special_values(n + 1, dtype, seed=n)
    scale = dtype(1 / 0.7)
    for offset in offsets_for(n):
        check_dropout(base[:n], SEED, offset, 2**31, scale)                  # aligned x
        check_dropout(base[1:], SEED, offset, 1288490188, scale, out_shift=3)  # x[1:], out[3:]
        check_dropout(base[1:], SEED, offset, 2**30, scale, inplace=True)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_dropout_thresholds(isa, threshold, dtype):
    x = special_values(4099, dtype)
    scale = dtype(1.0) if threshold == 0 else dtype(2**32 / (2**32 - threshold))
    check_dropout(x, 5, 3, threshold, scale)
    check_dropout(x, 5, 3, threshold, scale, inplace=True)


def test_dropout_threshold_extremes(isa):
    x = np.ones(10000, np.float32)
    out = np.empty_like(x)
    fc.dropout(x, 1, 0, 0, np.float32(1.0), out)        # p = 0: everything kept
    assert_array_equal(out, x)
    fc.dropout(x, 1, 0, 2**32 - 1, np.float32(1.0), out)  # only word 0xFFFFFFFF survives
    assert np.count_nonzero(out) <= 1


@pytest.mark.parametrize("dtype", FLOATS)
def test_dropped_inf_and_nan_give_positive_zero(isa, dtype):
    x = np.array([np.inf, -np.inf, np.nan, -1.0] * 64, dtype)
    out = np.empty_like(x)
    fc.dropout(x, 9, 0, 2**31, dtype(2.0), out)
    words = np.empty(x.size, np.uint32)
    reference.random_bits(9, 0, words)
    dropped = words < 2**31
    assert dropped.any() and (~dropped).any()
    assert_array_equal(bits(out[dropped]), 0)   # +0.0 exactly, not NaN, not -0.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_dropout_stream_store_modes(isa, stream_stores, dtype):
    # (1 << 20) + 5 float32 is over the 4 MiB at which "auto" streams out-of-place stores
    n = (1 << 20) + 5 if dtype == np.float32 else (1 << 19) + 5
    x = special_values(n + 1, dtype)[1:]
    check_dropout(x, 3, 2**34 - 3, 2**31, dtype(2.0), out_shift=1)
    check_dropout(x, 3, 7, 2**31, dtype(2.0), inplace=True)
    expected, got = np.empty(n, np.uint32), np.empty(n, np.uint32)
    reference.random_bits(3, 1, expected)
    fc.random_bits(3, 1, got)
    assert_array_equal(got, expected)


def test_unaligned_for_dtype(isa):
    """Views of raw buffers that are not even itemsize-aligned take an aligned detour."""
    raw = bytearray(8 * 1001 + 1)
    x = np.frombuffer(memoryview(raw)[1:1 + 8 * 1000], np.float64)
    x[...] = special_values(1000, np.float64)
    assert not x.flags.aligned
    check_dropout(x, 4, 1, 2**31, 2.0)
    expected = np.empty_like(x)
    reference.dropout(x, 4, 1, 2**31, 2.0, expected)
    fc.dropout(x, 4, 1, 2**31, 2.0, x)
    assert_array_equal(bits(x), bits(expected))
    out = np.frombuffer(memoryview(bytearray(4 * 101 + 2))[2:2 + 4 * 100], np.uint32)
    fc.random_bits(8, 3, out)
    ref = np.empty(100, np.uint32)
    reference.random_bits(8, 3, ref)
    assert_array_equal(out, ref)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1),
       n=st.integers(0, 300), threshold=st.integers(0, 2**32 - 1),
       f64=st.booleans(), shift=st.integers(0, 7))
def test_dropout_property(seed, offset, n, threshold, f64, shift):
    offset = min(offset, 2**64 - n)
    dtype = np.float64 if f64 else np.float32
    x = special_values(n + shift, dtype, seed=n)[shift:]
    check_dropout(x, seed, offset, threshold, dtype(1.5), out_shift=shift)


# ------------------------------------------------------------------ masks

@pytest.mark.parametrize("n", SIZES)
def test_dropout_mask(isa, n):
    for offset in offsets_for(n):
        for threshold in (0, 2**31 + 12345, 2**32 - 1):
            expected = np.empty(n, np.uint8)
            reference.dropout_mask(SEED, offset, threshold, expected)
            got = np.full(n + 1, 9, np.uint8)
            fc.dropout_mask(SEED, offset, threshold, got[1:])
            assert_array_equal(got[1:], expected)
            assert got[0] == 9


def test_dropout_mask_bool(isa):
    expected = np.empty(1000, bool)
    reference.dropout_mask(1, 2, 2**31, expected)
    got = np.zeros(1000, bool)
    fc.dropout_mask(1, 2, 2**31, got)
    assert_array_equal(got, expected)
    assert set(np.unique(got.view(np.uint8))) <= {0, 1}


@pytest.mark.parametrize("n", SIZES + [16384 + 13, 2**20 + 3])
def test_dropout_mask_packed(isa, n):
    nbytes = (n + 7) // 8
    for offset in offsets_for(n):
        for threshold in (0, 2**31, 3_000_000_000, 2**32 - 1):
            expected = np.empty(nbytes, np.uint8)
            reference.dropout_mask_packed(SEED, offset, threshold, n, expected)
            got = np.full(nbytes + 1, 0xAA, np.uint8)
            fc.dropout_mask_packed(SEED, offset, threshold, n, got[1:])
            assert_array_equal(got[1:], expected, err_msg=f"offset={offset} t={threshold}")
            assert got[0] == 0xAA


# ------------------------------------------------------------------ group_dropout

GROUP_SHAPES = [(2, 3, 5, 7), (4, 6, 8, 1), (1, 1, 1, 1), (3, 0, 4, 2), (0, 2, 2, 2),
                (8, 16, 32, 33), (16, 100, 64, 1), (2, 1, 3, 50000)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", GROUP_SHAPES)
def test_group_dropout(shape, dtype):
    N, M1, C, M2 = shape
    rng = np.random.default_rng(sum(shape))
    x = special_values(int(np.prod(shape)) + 1, dtype)[1:].reshape(shape)
    scale = dtype(1 / 0.6)
    for keep in (rng.random((N, C)) < 0.6, (rng.random((N, C)) < 0.5).astype(np.uint8) * 3):
        expected = np.empty_like(x)
        reference.group_dropout(x, keep, scale, expected)
        got = np.empty_like(x)
        fc.group_dropout(x, keep, scale, got)
        assert_array_equal(bits(got), bits(expected))
        inplace = x.copy()
        fc.group_dropout(inplace, keep, scale, inplace)
        assert_array_equal(bits(inplace), bits(expected))


# ------------------------------------------------------------------ C status codes

def test_bad_arguments_return_nonzero_status():
    ffi, lib = fc.ffi, fc.lib
    buf = np.zeros(16, np.float32)
    p = ffi.from_buffer("float[]", buf)
    w = ffi.from_buffer("uint32_t[]", buf)
    u8 = ffi.from_buffer("uint8_t[]", buf)
    assert lib.fr_random_bits(0, 0, ffi.NULL, 4) == lib.FR_ERR_NULL
    assert lib.fr_random_bits(0, 0, w, -1) == lib.FR_ERR_SIZE
    assert lib.fr_uniform_f32(0, 0, p, -1) == lib.FR_ERR_SIZE
    assert lib.fr_dropout_f32(ffi.NULL, 0, 0, 0, 1.0, p, 4) == lib.FR_ERR_NULL
    assert lib.fr_dropout_f32(p, 0, 0, 0, 1.0, p, -5) == lib.FR_ERR_SIZE
    assert lib.fr_dropout_mask_packed(0, 0, 0, -1, u8) == lib.FR_ERR_SIZE
    assert lib.fr_dropout_mask(0, 0, 0, ffi.NULL, 3) == lib.FR_ERR_NULL
    assert lib.fr_group_dropout_f32(p, u8, 1.0, p, 1, -1, 1, 1) == lib.FR_ERR_SIZE
    assert lib.fr_philox4x32(w, ffi.NULL, w, 1) == lib.FR_ERR_NULL
    assert lib.fr_set_isa(7) != 0
    assert lib.fr_set_stream_stores(9) != 0
    assert lib.fr_random_bits(0, 0, w, 0) == lib.FR_OK
    with pytest.raises(RuntimeError, match="status 2"):
        fc._check(lib.fr_random_bits(0, 0, w, -1), "fr_random_bits")
    with pytest.raises(ValueError):
        fc.set_isa("sse9")


# ------------------------------------------------------------------ thread count, env

_CHILD = r"""
import hashlib, numpy as np, fastreg.c as fc
h = hashlib.sha256()
isas = [i for i, ok in (("avx512", fc.has_avx512()), ("avx2", fc.has_avx2())) if ok] + ["portable"]
for isa in isas:
    fc.set_isa(isa)
    n = 100003
    w = np.empty(n, np.uint32); fc.random_bits(11, 2**34 - 3, w); h.update(w.tobytes())
    x = np.linspace(-3, 3, n + 1).astype(np.float32)[1:]
    o = np.empty_like(x); fc.dropout(x, 11, 5, 2**31, np.float32(2), o); h.update(o.tobytes())
    fc.dropout(x, 11, 5, 2**31, np.float32(2), x); h.update(x.tobytes())
    u = np.empty(n, np.float64); fc.uniform(11, 3, u); h.update(u.tobytes())
    p = np.empty((n + 7) // 8, np.uint8); fc.dropout_mask_packed(11, 1, 2**31, n, p); h.update(p.tobytes())
print(fc.omp_max_threads(), fc.isa(), h.hexdigest())
"""


def _run_child(**env):
    # the directory holding the fastreg package under test (site-packages when installed)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(fc.__file__))))
    full = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    res = subprocess.run([sys.executable, "-c", _CHILD], env=full, capture_output=True, cwd=root,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    threads, isa, digest = res.stdout.split()
    return int(threads), isa, digest


def test_results_do_not_depend_on_thread_count():
    digests = {}
    for threads in (1, 2, 3, 5):
        got_threads, _, digest = _run_child(OMP_NUM_THREADS=str(threads))
        assert got_threads == threads
        digests[threads] = digest
    assert len(set(digests.values())) == 1, digests


def test_env_forces_portable_path():
    _, isa, _ = _run_child(FASTREG_C_NO_AVX2="1")
    assert isa == "portable"
