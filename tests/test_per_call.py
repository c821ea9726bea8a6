"""The short per-call paths (issue 12): cached kernel scalars and the penalty gradients' host
path give exactly what the full path and the reference give, and raise the same errors."""
import numpy as np
import pytest

import fastreg
from fastreg import _arrays, _scalars
from fastreg.reference.penalty import penalty_grad


HOST = [b for b in ("numpy", "cpu", "c") if fastreg.available_backends().get(b) is None]


def _ref(w, l1, c2, acc=None):
    """The reference kernel on a contiguous copy: l1 * sgn(w) + c2 * w (+ acc)."""
    t = w.dtype.type
    out = np.empty(w.size, w.dtype) if acc is None else np.array(acc, w.dtype).ravel()
    penalty_grad(np.ascontiguousarray(w).ravel(), t(l1), t(c2), out, acc is not None)
    return out.reshape(w.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_typed_scalars_are_exact(dtype):
    dt = np.dtype(dtype)
    values = [0.0, -0.0, 1e-4, 2e-4, -3.5, 1.0 / 3.0, 5e-324, 1e-46, 3.4e38, float("inf")]
    for _ in range(2):   # the second pass reads the cache
        for v in values:
            got = _scalars.typed(dt, v)
            want = dt.type(v)
            assert type(got) is dt.type
            assert got.tobytes() == want.tobytes(), v
    # -0.0 is not served from +0.0's entry (they are equal as dict keys)
    assert np.signbit(_scalars.typed(dt, 0.0)) == False   # noqa: E712
    assert np.signbit(_scalars.typed(dt, -0.0)) == True   # noqa: E712
    # not floats: converted as dtype.type does; a full cache starts afresh
    assert _scalars.typed(dt, 3) == dt.type(3) and type(_scalars.typed(dt, 3)) is dt.type
    assert _scalars.typed(dt, np.float64(0.1)).tobytes() == dt.type(np.float64(0.1)).tobytes()
    for k in range(3 * _scalars._LIMIT):
        v = k * 0.001
        assert _scalars.typed(dt, v).tobytes() == dt.type(v).tobytes()
    assert len(_scalars._cache[dt]) <= _scalars._LIMIT


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_penalty_grad_short_path_matches_the_reference(backend, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.standard_normal(1001).astype(dtype)
    w[:4] = [0.0, -0.0, np.nan, np.inf]
    calls = []
    real_describe = _arrays.describe

    def describe(a, name):   # the full path's first step: the short path never asks
        calls.append(name)
        return real_describe(a, name)

    monkeypatch.setattr(_arrays, "describe", describe)
    for lam in (1e-4, 0.0, -0.0, 2.5):
        expected = _ref(w, 0.0, 2.0 * lam)
        got = fastreg.l2_grad(w, lam, backend=backend)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))
        np.testing.assert_array_equal(got, expected)
        out = np.empty_like(w)
        assert fastreg.l2_grad(w, lam, out=out, backend=backend) is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))
    # elastic net, accumulate, non-contiguous w and out
    expected = _ref(w[::2], 1e-3, 2e-4)
    np.testing.assert_array_equal(
        fastreg.elastic_net_grad(w[::2], 1e-3, 1e-4, backend=backend), expected)
    base = rng.standard_normal(1002).astype(dtype)
    acc = base[::2].copy()
    want = _ref(w[::2], 1e-3, 0.0, acc)
    strided = base.copy()
    got = fastreg.l1_grad(w[::2], 1e-3, out=strided[::2], accumulate=True, backend=backend)
    assert got is not None and np.shares_memory(got, strided)
    np.testing.assert_array_equal(strided[::2], want)
    np.testing.assert_array_equal(strided[1::2], base[1::2])
    assert calls == []
    # the errors of the full path, in its order
    with pytest.raises(ValueError, match="accumulate=True"):
        fastreg.l2_grad(w, 1e-4, accumulate=True, backend=backend)
    with pytest.raises(ValueError, match="shape"):
        fastreg.l2_grad(w, 1e-4, out=np.empty(3, dtype), backend=backend)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.l2_grad(w[1:], 1e-4, out=w[:-1], backend=backend)
    ro = np.empty_like(w)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastreg.l2_grad(w, 1e-4, out=ro, backend=backend)
    if dtype == np.float32:
        with pytest.raises(ValueError, match="overflows"):
            fastreg.l2_grad(w, 1e300, backend=backend)
    with pytest.raises(ValueError, match="lam"):
        fastreg.l2_grad(w, -1.0, backend=backend)
    with pytest.raises(Exception, match="backend"):
        fastreg.l2_grad(w, 1e-4, backend="nope")
    same = w.copy()
    np.testing.assert_array_equal(fastreg.l2_grad(same, 0.5, out=same, backend=backend),
                                  _ref(w, 0.0, 1.0))   # exactly in place is allowed


def test_auto_reads_fastreg_backend_at_every_call(monkeypatch):
    """backend="auto" answers FASTREG_BACKEND as it is at the call (the unset case is read from
    os.environ's own dict, without the KeyError that os.environ.get raises inside)."""
    from fastreg import _dispatch
    w = np.arange(5, dtype=np.float32)
    monkeypatch.delenv("FASTREG_BACKEND", raising=False)
    assert _dispatch._env_backend() is None
    default = _dispatch.resolve("auto", w)
    for name in HOST:
        monkeypatch.setenv("FASTREG_BACKEND", name)
        assert _dispatch._env_backend() == name
        assert _dispatch.resolve("auto", w) == name
        np.testing.assert_array_equal(fastreg.l2_grad(w, 0.5), w)
    monkeypatch.delenv("FASTREG_BACKEND")
    assert _dispatch._env_backend() is None and _dispatch.resolve("auto", w) == default
    os_environ = __import__("os").environ
    os_environ["FASTREG_BACKEND"] = "numpy"   # set directly, not through monkeypatch
    try:
        assert _dispatch.resolve("auto", w) == "numpy"
    finally:
        del os_environ["FASTREG_BACKEND"]
    assert _dispatch.resolve("auto", w) == default


def test_resolve_host_spellings_follow_the_registry(monkeypatch):
    """Only "auto" and the exact backend names are remembered; "AUTO" or "Numpy" (which the
    registry accepts) are asked every time, so "AUTO" follows FASTREG_BACKEND too."""
    from fastreg import _dispatch, _registry
    w = np.arange(5, dtype=np.float32)
    monkeypatch.delenv("FASTREG_BACKEND", raising=False)
    default = _registry.resolve("auto", w)
    assert _dispatch.resolve("AUTO", w) == default
    monkeypatch.setenv("FASTREG_BACKEND", "numpy")
    assert _dispatch.resolve("AUTO", w) == "numpy"
    assert _dispatch.resolve_host("AUTO") == "numpy"
    assert _dispatch.resolve("Numpy", w) == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.resolve_host("nope")


@pytest.mark.parametrize("backend", HOST)
def test_out_overlap_with_one_owning_array(backend):
    """Two arrays that own their memory never overlap (the short test); a view of one still
    goes through the full overlap check, in either role."""
    w = np.linspace(-1, 1, 16).astype(np.float32)
    out = np.empty_like(w)
    assert fastreg.l2_grad(w, 0.5, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, w)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.l2_grad(w, 0.5, out=w[::-1], backend=backend)   # out a view of w
    buf = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.l2_grad(buf[::-1], 0.5, out=buf, backend=backend)   # w a view of out
    np.testing.assert_array_equal(buf, 0)
    assert fastreg.l2_grad(w, 0.5, out=w, backend=backend) is w   # exactly in place


@pytest.mark.skipif("c" not in HOST, reason="C backend not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_penalty_grad_takes_scalars_as_given(dtype):
    """The C backend passes l1 and c2 to cffi as they come: a Python float gives the bits of
    the dtype's scalar (C's conversion rounds as NumPy's does)."""
    from fastreg import c as fc
    w = np.random.default_rng(4).standard_normal(257).astype(dtype)
    w[:3] = [0.0, -0.0, np.nan]
    for l1, c2 in ((0.1, 1.0 / 3.0), (-0.0, 0.3), (1e-40, 7e-46), (0.0, 2.5)):
        want = np.empty_like(w)
        fc.penalty_grad(w, dtype(l1), dtype(c2), want, False)
        np.testing.assert_array_equal(want, _ref(w, l1, c2))
        got = np.empty_like(w)
        fc.penalty_grad(w, l1, c2, got, False)
        assert got.tobytes() == want.tobytes()


def test_flat_keeps_a_1d_array():
    from fastreg._dispatch import flat
    a = np.arange(6.0)
    assert flat(a) is a
    b = flat(a.reshape(2, 3))
    assert b.shape == (6,) and np.shares_memory(a, b)
