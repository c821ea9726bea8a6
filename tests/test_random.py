"""Philox4x32-10 and the counter stream: known answers, every backend vs the reference."""
import subprocess
import sys

import numpy as np
import pytest

import fastreg
from fastreg import reference
from fastreg.random import philox4x32, random_bits, uniform

# Random123's kat_vectors for philox4x32_10 (Salmon et al., SC'11).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers(backend, ctr, key, expected):
    got = philox4x32(np.array(ctr, np.uint32), np.array(key, np.uint32), backend=backend)
    np.testing.assert_array_equal(got, np.array(expected, np.uint32))


def test_known_answers_batched(backend):
    ctr = np.array([k[0] for k in KAT], np.uint32)
    key = np.array([k[1] for k in KAT], np.uint32)
    got = philox4x32(ctr, key, backend=backend)
    np.testing.assert_array_equal(got, np.array([k[2] for k in KAT], np.uint32))


def test_philox_random_inputs_vs_reference(kernel_backend):
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**32, size=(3, 5, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, size=(5, 2), dtype=np.uint32)  # broadcasts over the leading 3
    got = philox4x32(ctr, key, backend=kernel_backend)
    expected = philox4x32(ctr, key, backend="numpy")
    assert got.shape == (3, 5, 4) and got.dtype == np.uint32
    np.testing.assert_array_equal(got, expected)
    # broadcasting means each row used its own key
    row = np.empty((1, 4), np.uint32)
    reference.philox4x32(ctr[2, 3][None], key[3][None], row)
    np.testing.assert_array_equal(expected[2, 3], row[0])


def test_stream_definition():
    """Word g of the stream is word g & 3 of philox((g >> 2) as 64 bits, 0, 0; seed as 2 words)."""
    seed = 0x0123456789ABCDEF
    for g in (0, 1, 5, 2**34 + 2, 2**64 - 1):
        b = g >> 2
        block = philox4x32(np.array([b & 0xFFFFFFFF, b >> 32, 0, 0], np.uint32),
                           np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32), backend="numpy")
        assert random_bits(1, seed=seed, offset=g, backend="numpy")[0] == block[g & 3]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000, 4099])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 7, 2**34 - 3])
def test_random_bits_vs_reference(kernel_backend, n, offset):
    got = random_bits(n, seed=987654321987654321, offset=offset, backend=kernel_backend)
    expected = random_bits(n, seed=987654321987654321, offset=offset, backend="numpy")
    np.testing.assert_array_equal(np.asarray(_host(got)), expected)


def test_random_bits_end_of_counter_space(backend):
    n = 37
    got = _host(random_bits(n, seed=5, offset=2**64 - n, backend=backend))
    np.testing.assert_array_equal(got, random_bits(n, seed=5, offset=2**64 - n, backend="numpy"))
    with pytest.raises(ValueError, match="offset"):
        random_bits(n, seed=5, offset=2**64 - n + 1, backend=backend)


def test_split_equals_whole(backend):
    whole = _host(random_bits(1001, seed=3, offset=10, backend=backend))
    for k in (0, 1, 3, 500, 1001):
        a = _host(random_bits(k, seed=3, offset=10, backend=backend))
        b = _host(random_bits(1001 - k, seed=3, offset=10 + k, backend=backend))
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)


def test_multidimensional_shape_is_flat_c_order(backend):
    got = _host(random_bits((3, 4, 5), seed=11, offset=6, backend=backend))
    np.testing.assert_array_equal(got.reshape(-1), random_bits(60, seed=11, offset=6,
                                                               backend="numpy"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 3, 2**33 + 1])
def test_uniform_vs_reference(kernel_backend, dtype, offset):
    got = _host(uniform(2051, seed=42, offset=offset, dtype=dtype, backend=kernel_backend))
    expected = uniform(2051, seed=42, offset=offset, dtype=dtype, backend="numpy")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_definition_and_range(dtype):
    u = uniform(100_000, seed=9, offset=4, dtype=dtype, backend="numpy")
    assert u.min() >= 0.0 and u.max() < 1.0
    # mean of U(0,1): 0.5, sd of the mean sqrt(1/12/n); 5 sigma
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)
    w = random_bits(8, seed=9, offset=4 if dtype == np.float32 else 8, backend="numpy")
    if dtype == np.float32:
        np.testing.assert_array_equal(u[:8], (w >> 8).astype(np.float32) * np.float32(2**-24))
    else:
        v = (w[0::2].astype(np.uint64) | (w[1::2].astype(np.uint64) << np.uint64(32)))
        np.testing.assert_array_equal(u[:4], (v >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def test_bits_are_balanced(backend):
    from conftest import big
    n = big(backend, 1 << 20)
    w = _host(random_bits(n, seed=1, backend=backend))
    ones = np.unpackbits(w.view(np.uint8)).sum()
    total = 32 * n
    assert abs(ones - total / 2) < 5 * np.sqrt(total / 4)


def test_cpu_result_independent_of_thread_count():
    if fastreg.available_backends()["cpu"] is not None:
        pytest.skip("cpu backend unavailable")
    import numba
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = random_bits(300_001, seed=8, offset=3, backend="cpu")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = random_bits(300_001, seed=8, offset=3, backend="cpu")
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True, "1", None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        random_bits(4, seed=seed)


@pytest.mark.parametrize("offset", [-1, 2**64, 0.5, False])
def test_bad_offset(offset):
    with pytest.raises(ValueError, match="offset"):
        uniform(4, seed=1, offset=offset)


def test_bad_philox_inputs():
    with pytest.raises(ValueError, match=r"counter must have shape \(\.\.\., 4\)"):
        philox4x32(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match=r"key must have shape \(\.\.\., 2\)"):
        philox4x32(np.zeros(4, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(TypeError, match="counter"):
        philox4x32(np.zeros(4, np.float32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="key values"):
        philox4x32(np.zeros(4, np.uint32), np.array([-1, 0]))
    with pytest.raises(ValueError, match="broadcast"):
        philox4x32(np.zeros((3, 4), np.uint32), np.zeros((2, 2), np.uint32))
    with pytest.raises(TypeError, match="dtype"):
        uniform(4, seed=1, dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        uniform((2, -1), seed=1)


def test_python_int_inputs_accepted():
    got = philox4x32([0, 0, 0, 0], [0, 0])
    assert got.tolist() == list(KAT[0][2])


def test_import_is_light():
    code = ("import sys, fastreg; fastreg.dropout; "
            "bad = [m for m in ('numba', 'cffi', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
