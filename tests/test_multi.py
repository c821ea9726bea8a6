"""Plans of the list ops (fastreg/_multi.py): a list checked once is reused only while its arrays
are the same objects with the same shape, dtype and flags. Each test makes a plan with one call,
changes the list or an array behind its back, and expects the result of a fresh call (the
reference's bits) or the error the checks raise, with nothing changed."""
import gc
import warnings
import weakref

import numpy as np
import pytest

import fastreg
from fastreg import _multi

HOST_BACKENDS = ("numpy", "cpu", "c")


@pytest.fixture(params=HOST_BACKENDS)
def host_backend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture(autouse=True)
def no_plans():
    _multi.forget()
    yield
    _multi.forget()


def make(shapes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


SHAPES = [(5,), (3, 4), (0,), (1,), (17,)]


def expected_ema(ema, params, decay, times=1):
    out = [e.copy() for e in ema]
    for _ in range(times):
        fastreg.ema_update(out, [p.copy() for p in params], decay, backend="numpy")
    return out


def assert_same(got, expected):
    assert len(got) == len(expected)
    for g, x in zip(got, expected):
        assert g.dtype == x.dtype and g.shape == x.shape
        np.testing.assert_array_equal(g, x)


def test_same_lists_reuse_one_plan_and_other_lists_do_not():
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    first = _multi.plan(ema, p)
    assert first is not None
    assert _multi.plan(list(ema), list(p)) is first        # a new list of the same arrays
    assert _multi.plan(ema, p[::-1]) is not first          # other pairs
    assert _multi.plan(None, ema) is not first             # read only: another plan
    assert _multi.plan(ema, None) is not first             # targets only: another plan
    middle = list(p)
    middle[1] = middle[1].copy()                           # same ends, another middle array
    assert _multi.plan(ema, middle) is not first


def test_plan_groups_and_dtypes():
    arrays = [np.ones(3, np.float32), np.ones(0), np.ones(4), np.ones(2, np.float32)]
    plan = _multi.plan(arrays, None)
    assert plan.groups == {np.dtype(np.float32): [0, 3], np.dtype(np.float64): [2]}
    assert plan.dtypes == [np.dtype(np.float32), np.dtype(np.float64)]


@pytest.mark.parametrize("make_bad", [
    lambda: [np.ones(4)[::2]],                             # not contiguous
    lambda: [np.ones(3, np.int32)],
    lambda: [np.ones(3, ">f4")],                           # not native order
    lambda: [np.ones(3).view(np.matrix)],                  # a subclass
    lambda: [np.frombuffer(bytearray(8 * 3 + 1), np.float64, 3, offset=1)],  # unaligned
])
def test_lists_that_do_not_qualify_get_no_plan(make_bad):
    assert _multi.plan(make_bad(), None) is None


def test_checks_that_fail_give_no_plan():
    ro = np.ones(3)
    ro.flags.writeable = False
    big = np.zeros(10)
    assert _multi.plan([ro], None) is None                        # a read-only target
    assert _multi.plan(None, [ro]) is not None                    # read only: fine
    assert _multi.plan([big[:6], big[4:]], None) is None          # targets sharing memory
    assert _multi.plan([big[:5]], [big[4:9]]) is None             # a source overlapping
    assert _multi.plan([big[:5]], [big[:5]]) is not None          # itself at its index: fine
    assert _multi.plan([big[:5], big[5:]], [big[5:], big[:5]]) is None   # at another index
    assert _multi.plan([np.ones(3)], [np.ones(4)]) is None        # shapes differ
    assert _multi.plan([np.ones(3)], [np.ones(3, np.float32)]) is None   # dtypes differ
    assert _multi.plan([np.ones(3)], []) is None                  # lengths differ


def test_repeated_updates_equal_the_reference(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    expected = expected_ema(ema, p, 0.9, times=3)
    for _ in range(3):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    assert_same(ema, expected)


def test_replaced_element_is_updated_and_the_old_one_is_not(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    old = ema[1]
    kept = old.copy()
    ema[1] = old.copy() + 1
    expected = expected_ema(ema, p, 0.5)
    fastreg.ema_update(ema, p, 0.5, backend=host_backend)
    assert_same(ema, expected)
    np.testing.assert_array_equal(old, kept)


def test_new_objects_of_another_dtype(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[0], p[0] = ema[0].astype(np.float64), p[0].astype(np.float64)
    expected = expected_ema(ema, p, 0.7)
    fastreg.ema_update(ema, p, 0.7, backend=host_backend)
    assert_same(ema, expected)
    p[4] = p[4].astype(np.float64)                         # now a dtype mismatch
    before = [e.copy() for e in ema]
    with pytest.raises(ValueError, match=r"params\[4\] has dtype float64, ema\[4\] has float32"):
        fastreg.ema_update(ema, p, 0.7, backend=host_backend)
    assert_same(ema, before)


def test_non_contiguous_view_replacing_an_element(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    base = make([(5, 2)], seed=3)[0]
    ema[0] = base[:, 0]                                    # through a copy, written back
    expected = expected_ema(ema, p, 0.9)
    other = base[:, 1].copy()
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    assert_same(ema, expected)
    np.testing.assert_array_equal(base[:, 1], other)


def test_overlapping_arrays_after_a_cached_call(host_backend):
    big = np.zeros(20, np.float32)
    ema, p = [big[:5], big[10:15]], make([(5,), (5,)], seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[1] = big[3:8]
    before = big.copy()
    with pytest.raises(ValueError, match=r"ema\[0\] and ema\[1\] share memory"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[1], p[1] = big[10:15], big[2:7]
    with pytest.raises(ValueError, match=r"params\[1\] overlaps ema\[0\]"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    np.testing.assert_array_equal(big, before)


def test_read_only_after_writeable(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[3].flags.writeable = False                         # the same object, now read-only
    before = [e.copy() for e in ema]
    with pytest.raises(ValueError, match=r"ema\[3\].*read-only"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    assert_same(ema, before)
    g = make(SHAPES, seed=2)
    fastreg.clip_grad_norm(g, 1.0, backend=host_backend)
    g[4].flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[4\].*read-only"):
        fastreg.clip_grad_norm(g, 0.0, backend=host_backend)
    # a read-only list is fine for the norm alone, and a source may turn read-only
    assert fastreg.grad_norm(g, backend=host_backend) == pytest.approx(
        fastreg.grad_norm([x.copy() for x in g], backend="numpy"), rel=1e-12)
    ema[3].flags.writeable = True
    p[2].flags.writeable = False
    expected = expected_ema(ema, p, 0.9)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    assert_same(ema, expected)


def test_shape_and_dtype_changed_in_place(host_backend):
    ema, p = make([(12,), (6,)]), make([(12,), (6,)], seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    p[0].shape = (3, 4)                                    # same object, same memory
    with pytest.raises(ValueError, match=r"params\[0\] has shape \(3, 4\), ema\[0\] has"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[0].shape = (3, 4)
    expected = expected_ema(ema, p, 0.9)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    assert_same(ema, expected)
    ema[1].dtype = np.int32                                # same memory read as int32
    with pytest.raises(TypeError, match=r"ema\[1\]"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    ema[1].dtype = np.float32
    ema[1].dtype = np.float64                              # 6 float32 -> 3 float64
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(6,\), ema\[1\] has \(3,\)"):
        fastreg.ema_update(ema, p, 0.9, backend=host_backend)


def test_strides_changed_in_place(host_backend):
    base = np.zeros(16, np.float32)
    a = base[:8]
    g = [a, np.ones(3, np.float32)]
    fastreg.clip_grad_norm(g, np.inf, backend=host_backend)   # measures only: a plan
    base[:] = np.arange(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a.strides = (8,)                                   # every other element of base
    assert not a.flags.c_contiguous
    norm = fastreg.clip_grad_norm(g, np.inf, backend=host_backend)
    assert norm == pytest.approx(float(np.linalg.norm(np.r_[np.arange(0, 16, 2), 1, 1, 1])))
    fastreg.clip_grad_norm(g, 0.0, backend=host_backend)   # scales the strided view only
    np.testing.assert_array_equal(base, np.where(np.arange(16) % 2, np.arange(16), 0))


def test_fresh_arrays_every_call_and_a_bounded_cache(host_backend):
    for i in range(3 * _multi._CACHE_SIZE):
        ema, p = make(SHAPES, seed=i), make(SHAPES, seed=i + 100)
        expected = [e.copy() for e in ema]
        fastreg.ema_update(expected, p, 0.8, backend="numpy")
        fastreg.ema_update(ema, p, 0.8, backend=host_backend)
        assert_same(ema, expected)
        assert len(_multi._plans) <= _multi._CACHE_SIZE
        del ema, p                                         # ids free for the next round


def test_plans_hold_no_array_and_pin_memory(host_backend):
    ema, p = make(SHAPES), make(SHAPES, seed=1)
    fastreg.ema_update(ema, p, 0.9, backend=host_backend)
    fastreg.clip_grad_norm(p, 1.0, backend=host_backend)
    # NumPy moves an array's memory only in resize, which it refuses while a weak reference
    # exists: what keeps a plan's addresses valid
    with pytest.raises(ValueError, match="cannot resize"):
        ema[0].resize(50, refcheck=False)
    refs = [weakref.ref(a) for a in ema + p]
    del ema, p
    gc.collect()
    assert all(r() is None for r in refs)                  # no plan kept them alive
    _multi.forget()
    a = np.ones(5)
    _multi.plan([a], None)
    _multi.forget()
    a.resize(50, refcheck=False)                           # no plan: resize works again


def test_ema_class_reuses_and_rechecks(host_backend):
    params = make(SHAPES, seed=4)
    ema = fastreg.EMA(params, decay=0.9, backend=host_backend)
    expected = [a.copy() for a in params]
    for step in range(1, 4):
        params = [x + 1 for x in params] if step == 2 else params
        d = ema.update(params, step)
        fastreg.ema_update(expected, params, d, backend="numpy")
        assert_same(ema.arrays, expected)
    params[2] = np.ones(4, np.float32)                     # (0,) before
    before = [a.copy() for a in ema.arrays]
    with pytest.raises(ValueError, match=r"params\[2\] has shape"):
        ema.update(params, 5)
    assert_same(ema.arrays, before)
    assert ema.num_updates == 3


def test_clip_and_norm_repeat_and_follow_changes(host_backend):
    g = make(SHAPES, seed=5) + make([(4,)], np.float64, seed=6)
    ref = [x.copy() for x in g]
    for _ in range(2):
        total = fastreg.clip_grad_norm(g, 1.0, backend=host_backend)
        expected_total = fastreg.clip_grad_norm(ref, 1.0, backend="numpy")
        assert total == pytest.approx(expected_total, rel=1e-12)
        assert_same(g, ref)
    g[0] = g[0] * 100                                       # a new object: a new plan
    ref[0] = g[0].copy()
    assert fastreg.grad_norm(g, 1.0, backend=host_backend) == pytest.approx(
        fastreg.grad_norm(ref, 1.0, backend="numpy"), rel=1e-12)
    coef = fastreg.clip_grads_with_norm(g, 1.0, 50.0, backend=host_backend)
    assert coef == fastreg.clip_grads_with_norm(ref, 1.0, 50.0, backend="numpy")
    assert_same(g, ref)


def test_long_lists_fresh_and_repeated(host_backend):
    shapes = [(int(n),) for n in np.random.default_rng(7).integers(0, 40, 300)]
    for seed in range(3):                                   # fresh arrays, then the same again
        ema, p = make(shapes, seed=seed), make(shapes, seed=seed + 10)
        plan = _multi.plan(ema, p)
        assert plan.addrs == [a.__array_interface__["data"][0] if a.size else plan.addrs[i]
                              for i, a in enumerate(ema + p)]
        expected = expected_ema(ema, p, 0.6, times=2)
        for _ in range(2):
            fastreg.ema_update(ema, p, 0.6, backend=host_backend)
        assert_same(ema, expected)
        g = make(shapes, np.float64, seed=seed + 20)
        assert fastreg.grad_norm(g, backend=host_backend) == pytest.approx(
            float(np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g))),
            rel=1e-12)


def test_adaptive_clip_grad_repeats_and_follows_changes(host_backend):
    shapes = [(4, 3), (5,), (0, 2), (2, 0), (3, 2, 2), ()]
    w = make(shapes, seed=8) + make([(6, 2)], np.float64, seed=9)
    g = [np.array(x * 50) for x in make(shapes, seed=10)] + make([(6, 2)], np.float64, seed=11)
    ref = [x.copy() for x in g]
    for _ in range(2):                                     # a plan, then the same again
        fastreg.adaptive_clip_grad(w, g, 0.05, backend=host_backend)
        fastreg.adaptive_clip_grad([x.copy() for x in w], ref, 0.05, backend="numpy")
        assert_same(g, ref)
    g[0] = g[0] * 3                                        # a new object
    ref[0] = g[0].copy()
    fastreg.adaptive_clip_grad(w, g, 0.05, backend=host_backend)
    fastreg.adaptive_clip_grad([x.copy() for x in w], ref, 0.05, backend="numpy")
    assert_same(g, ref)
    g[1].flags.writeable = False
    before = [x.copy() for x in g]
    with pytest.raises(ValueError, match=r"grads\[1\].*read-only"):
        fastreg.adaptive_clip_grad(w, g, 0.05, backend=host_backend)
    assert_same(g, before)
    g[1].flags.writeable = True
    w[2] = np.zeros((2, 2), np.float32)                    # (0, 2) before
    with pytest.raises(ValueError, match=r"params\[2\] has shape"):
        fastreg.adaptive_clip_grad(w, g, 0.05, backend=host_backend)


def _strided(a):
    """The values of a in a non-contiguous view (so no plan: the per-array kernels)."""
    s = np.empty(a.shape + (2,), a.dtype)
    s[..., 0] = a
    return s[..., 0]


@pytest.mark.parametrize("threads", [1, 2])
def test_plan_kernels_equal_the_per_array_kernels(host_backend, threads, monkeypatch):
    """Same bits with and without a plan (where C and Numba run one launch over the tiles of
    the whole list), serially and in parallel; sizes across TASK (65536) boundaries."""
    from fastreg import _threads
    monkeypatch.setitem(_threads.GRAIN, "elementwise", 16)   # small lists take both paths
    sizes = [(70000,), (1,), (0,), (65536,), (131073,), (300,), (2, 3)]
    for dt in (np.float32, np.float64):
        ema, p = make(sizes, dt, seed=12), make(sizes, dt, seed=13)
        views = [_strided(e) for e in ema]
        with fastreg.threads(threads):
            fastreg.ema_update(ema, p, 0.7, backend=host_backend)
            fastreg.ema_update(views, p, 0.7, backend=host_backend)
            assert_same(ema, [np.ascontiguousarray(v) for v in views])
            for order in (2.0, 1.0, np.inf, 3.0):
                planned = fastreg.grad_norm(ema, order, backend=host_backend)
                assert planned == fastreg.grad_norm(views, order, backend=host_backend)
            total = fastreg.clip_grad_norm(ema, 1.0, backend=host_backend)
            assert total == fastreg.clip_grad_norm(views, 1.0, backend=host_backend)
            assert_same(ema, [np.ascontiguousarray(v) for v in views])
