"""fastreg.random.Generator: a seed and a 64-bit position handing out non-overlapping ranges."""
import threading

import numpy as np
import pytest

import fastreg
from fastreg.random import Generator


def test_take_hands_out_consecutive_ranges():
    g = Generator(7)
    assert g.take(10) == 0
    assert g.take(0) == 10
    assert g.take(5) == 10
    assert g.position == 15 and g.seed == 7


def test_random_bits_with_generator_equals_explicit_offsets():
    g = Generator(123, position=4)
    a = fastreg.random.random_bits((3, 5), seed=g, backend="numpy")
    b = fastreg.random.random_bits(7, seed=g, backend="numpy")
    whole = fastreg.random.random_bits(4 + 22, seed=123, backend="numpy")
    np.testing.assert_array_equal(np.concatenate([a.ravel(), b]), whole[4:])
    assert g.position == 26


def test_uniform_float64_takes_whole_word_pairs():
    g = Generator(9, position=3)  # odd position: the next float64 starts at word 4
    u = fastreg.random.uniform(4, seed=g, dtype=np.float64, backend="numpy")
    np.testing.assert_array_equal(
        u, fastreg.random.uniform(4, seed=9, offset=2, dtype=np.float64, backend="numpy"))
    assert g.position == 12
    f = fastreg.random.uniform(2, seed=g, backend="numpy")
    np.testing.assert_array_equal(f, fastreg.random.uniform(2, seed=9, offset=12, backend="numpy"))


def test_offset_with_generator_is_refused_and_position_unchanged():
    g = Generator(1)
    with pytest.raises(ValueError, match="offset must not be given"):
        fastreg.random.random_bits(4, seed=g, offset=5, backend="numpy")
    assert g.position == 0


def test_range_past_2_64_is_refused_without_moving():
    g = Generator(1, position=2**64 - 3)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        g.take(4)
    assert g.position == 2**64 - 3
    assert g.take(3) == 2**64 - 3


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True, "3", None])
def test_bad_seed_position_count(bad):
    with pytest.raises((ValueError, TypeError)):
        Generator(bad)
    with pytest.raises((ValueError, TypeError)):
        Generator(0, position=bad)
    with pytest.raises((ValueError, TypeError)):
        Generator(0).take(bad)


def test_state_dict_round_trip_through_npz(tmp_path):
    g = Generator(2**63 + 5)
    g.take(1000)
    np.savez(tmp_path / "g.npz", **{k: np.uint64(v) for k, v in g.state_dict().items()})
    with np.load(tmp_path / "g.npz") as f:
        state = {k: f[k][()] for k in f.files}
    h = Generator(0)
    h.load_state_dict(state)
    assert (h.seed, h.position) == (g.seed, g.position)
    np.testing.assert_array_equal(fastreg.random.random_bits(8, seed=g, backend="numpy"),
                                  fastreg.random.random_bits(8, seed=h, backend="numpy"))


def test_load_state_dict_refuses_bad_state_without_change():
    g = Generator(3, position=9)
    for state in ({"seed": 1}, {"seed": -1, "position": 0}, {"seed": 1, "position": 2**64}, 5):
        with pytest.raises(ValueError):
            g.load_state_dict(state)
        assert (g.seed, g.position) == (3, 9)


def test_spawn_is_deterministic_and_distinct():
    a, b = Generator(11), Generator(11)
    ka, kb = a.spawn(4), b.spawn(4)
    assert [k.seed for k in ka] == [k.seed for k in kb]
    assert len({k.seed for k in ka}) == 4
    assert a.position == 8


def test_take_is_thread_safe():
    g = Generator(0)
    starts = []

    def work():
        for _ in range(2000):
            starts.append(g.take(3))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(starts) == list(range(0, 3 * 8000, 3))
    assert g.position == 24000


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_dropout_family_with_generator_and_state(backend):
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend} unavailable")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    g = Generator(99, position=7)
    y1, s1 = fastreg.dropout(x, 0.3, seed=g, return_state=True, backend=backend)
    y2, s2 = fastreg.channel_dropout(x, 0.3, seed=g, return_state=True, backend=backend)
    y3, s3 = fastreg.drop_path(x, 0.3, seed=g, return_state=True, backend=backend)
    assert (s1.offset, s2.offset, s3.offset) == (7, 7 + 60, 7 + 60 + 12)
    assert g.position == 7 + 60 + 12 + 4
    np.testing.assert_array_equal(y1, fastreg.dropout(x, 0.3, seed=99, offset=7, backend=backend))
    np.testing.assert_array_equal(
        y2, fastreg.channel_dropout(x, 0.3, seed=99, offset=67, backend=backend))
    np.testing.assert_array_equal(y3, fastreg.drop_path(x, 0.3, seed=99, offset=79,
                                                        backend=backend))
    gy = rng.standard_normal(x.shape).astype(np.float32)
    for y, s, bwd in ((y1, s1, fastreg.dropout_backward),
                      (y2, s2, fastreg.channel_dropout_backward),
                      (y3, s3, fastreg.drop_path_backward)):
        expected = gy * (y != 0) * np.float32(1 / 0.7)
        np.testing.assert_array_equal(s.backward(gy, backend=backend), expected)
    # inference draws nothing
    before = g.position
    np.testing.assert_array_equal(fastreg.dropout(x, 0.3, seed=g, training=False), x)
    assert g.position == before


def test_backward_refuses_a_generator_and_bad_calls_leave_it_unmoved():
    g = Generator(1)
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="return_state"):
        fastreg.dropout_backward(x, 0.5, seed=g)
    with pytest.raises(ValueError, match="offset"):
        fastreg.dropout(x, 0.5, seed=g, offset=3)
    with pytest.raises(ValueError, match="p"):
        fastreg.dropout(x, 1.5, seed=g)
    with pytest.raises(TypeError):
        fastreg.dropout(x.astype(np.int32), 0.5, seed=g)
    with pytest.raises(TypeError):
        fastreg.dropout(x, 0.5, seed=g, return_state=1)
    assert g.position == 0
    m = fastreg.dropout_mask(8, 0.5, seed=g, packed=False, backend="numpy")
    np.testing.assert_array_equal(m, fastreg.dropout_mask(8, 0.5, seed=1, packed=False,
                                                          backend="numpy"))
    assert g.position == 8


def test_drop_block_with_generator_and_state():
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    g = Generator(5, position=11)
    y, state = fastreg.drop_block(x, 0.3, 3, seed=g, return_state=True, backend="numpy")
    assert state.offset == 11 and g.position == 11 + x.size
    np.testing.assert_array_equal(
        y, fastreg.drop_block(x, 0.3, 3, seed=5, offset=11, backend="numpy"))
    gy = np.ones_like(x)
    np.testing.assert_array_equal(
        state.backward(gy, backend="numpy"),
        fastreg.drop_block_backward(gy, 0.3, 3, seed=5, offset=11, backend="numpy"))
    with pytest.raises(TypeError, match="return_state"):
        fastreg.drop_block_backward(gy, 0.3, 3, seed=g)
