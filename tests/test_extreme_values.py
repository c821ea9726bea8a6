"""Results at the ends of the float and int ranges: huge strengths and step counts, inf in the
data, counts near int64's limit (found by fault injection)."""
import math

import numpy as np
import pytest

import fastreg
from fastreg import schedules

HOST = [b for b in ("numpy", "cpu", "c") if fastreg.available_backends()[b] is None]


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t2", [1e38, 1e200, 1e300, 1.7e308])
def test_prox_elastic_net_huge_l2_keeps_infinities_and_digits(backend, dtype, t2):
    big = np.finfo(dtype).max
    w = np.array([np.inf, -np.inf, 1.0, big, -big, np.nan, -0.0, 0.5], dtype)
    t1 = 0.25
    soft = np.where(w > t1, w - dtype(t1), np.where(w < -t1, w + dtype(t1),
                                                    np.where(np.isnan(w), w, dtype(0))))
    scale = 1.0 / (1.0 + 2.0 * t2)
    if scale >= np.finfo(dtype).tiny:   # the kernels' product with the scale in w's dtype
        want = soft * dtype(scale)
    else:   # a scale below the normal range: the quotient in float64 (1 + 2 t2 == 2 t2 here)
        want = ((soft.astype(np.float64) / 2.0) / t2).astype(dtype)
    got = fastreg.prox_elastic_net(w.copy(), t1, t2, backend=backend)
    np.testing.assert_array_equal(got, want)
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[5])
    if dtype is np.float32 and t2 == 1e38:
        assert got[3] > 0   # 3.4e38 / 2e38: not flushed to 0 by a subnormal factor


@pytest.mark.parametrize("backend", HOST)
def test_prox_elastic_net_ordinary_l2_unchanged(backend):
    w = np.linspace(-3, 3, 13).astype(np.float32)
    want = fastreg.prox_l1(w.copy(), 0.5, backend="numpy") * np.float32(1 / (1 + 2 * 0.3))
    np.testing.assert_array_equal(fastreg.prox_elastic_net(w.copy(), 0.5, 0.3, backend=backend),
                                  want)


def test_elastic_net_penalty_zero_strength_drops_an_overflowed_sum():
    w = np.array([1e200, 1.0])
    assert fastreg.elastic_net_penalty(w, 1.0, 0.0) == fastreg.l1_penalty(w, 1.0)
    wf = np.array([np.inf], np.float32)
    assert fastreg.elastic_net_penalty(wf, 0.0, 1.0) == math.inf
    assert math.isnan(fastreg.elastic_net_penalty(np.array([np.nan]), 0.0, 1.0))


def test_merge_stats_one_part_with_per_channel_counts():
    m, m2 = np.array([0.0, 1.0, 2.0]), np.ones(3)
    count, mean, merged = fastreg.merge_stats(([2, 2, 2], m, m2))
    assert list(count) == [2, 2, 2]
    np.testing.assert_array_equal(mean, m)
    count, _, _ = fastreg.merge_stats(([2, 2, 2], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]))
    assert list(count) == [2, 2, 2]
    # a list of parts is still a list of parts, as one argument or several
    for args in ([[(2, m, m2), (3, m, m2)]], [(2, m, m2), (3, m, m2)],
                 [[([2, 2, 2], m, m2), ([3, 3, 3], m, m2)]]):
        count, _, merged = fastreg.merge_stats(*args)
        assert np.all(np.asarray(count) == 5)
        np.testing.assert_array_equal(merged, 2 * m2)


def test_merge_stats_counts_beyond_int64_are_refused():
    a = (2 ** 62, np.array([0.0]), np.array([0.0]))
    with pytest.raises(ValueError, match=r"overflows int64 at stats\[1\]"):
        fastreg.merge_stats(a, a)
    with pytest.raises(ValueError, match=r"stats\[0\]: count must fit in int64"):
        fastreg.merge_stats((np.uint64(2 ** 63), np.array([0.0]), np.array([0.0])))
    count, mean, _ = fastreg.merge_stats(a, (2 ** 62 - 1, np.array([1.0]), np.array([0.0])))
    assert count == 2 ** 63 - 1 and 0.49 < mean[0] < 0.51


@pytest.mark.parametrize("gamma,want", [(0.5, 0.0), (1.0, 1.0), (0.0, 0.0), (2.0, math.inf)])
def test_step_decay_beyond_the_float_range_of_steps(gamma, want):
    assert schedules.step_decay_lr(10 ** 400, 1.0, step_size=1, gamma=gamma) == want


def test_cosine_warmup_and_ema_decay_beyond_the_float_range_of_steps():
    assert schedules.cosine_warmup_lr(10 ** 399, 1.0, 10 ** 401, warmup_steps=10 ** 400) == 0.1
    assert schedules.cosine_warmup_lr(10 ** 401, 1.0, 10 ** 401, warmup_steps=10 ** 400,
                                      min_lr=0.01) == 0.01
    assert fastreg.ema_decay(10 ** 400, use_warmup=True) == 0.9999
    assert fastreg.ema_decay(10 ** 400, decay=1.0, use_warmup=True) == 1.0
