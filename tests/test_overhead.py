"""The cheap common path of the public wrappers decides exactly as the general path, and flags
such as ``training`` follow one rule everywhere.

The wrappers start each check with an exact-type test for the common case (a Python float or
int, a plain ndarray) and remember backend resolution for host arrays (fastreg._dispatch); these
tests hold the fast paths to the general rules at their edges. No timing here (timings live in
``fastreg bench``).
"""
import math

import numpy as np
import pytest

import fastreg
from fastreg import _arrays, _dispatch, _registry
from fastreg.penalty import _OVERFLOW

# ---- training (and packed): True/False or a NumPy bool, nothing else ----------------------------

BAD_BOOLS = [1, 0, 2, -1, 1.0, "yes", None, np.int64(1), np.array([True])]
GOOD_BOOLS = [True, False, np.bool_(True), np.bool_(False)]


def _x():
    return np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 3, 2)


def _bn(training, backend="numpy"):
    x = _x()
    C = x.shape[1]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    return fastreg.batch_norm(x, rm, rv, training=training, backend=backend)


def _bn_backward(training, backend="numpy"):
    x = _x()
    y, saved = _bn(True, backend)
    return fastreg.batch_norm_backward(x, x, saved._replace(training=training), backend=backend)


NP = dict(seed=1, backend="numpy")
FLAG_CALLS = {
    "dropout": lambda t: fastreg.dropout(_x(), training=t, **NP),
    "dropout_backward": lambda t: fastreg.dropout_backward(_x(), training=t, **NP),
    "channel_dropout": lambda t: fastreg.channel_dropout(_x(), training=t, **NP),
    "channel_dropout_backward": lambda t: fastreg.channel_dropout_backward(_x(), training=t,
                                                                           **NP),
    "drop_path": lambda t: fastreg.drop_path(_x(), training=t, **NP),
    "drop_path_backward": lambda t: fastreg.drop_path_backward(_x(), training=t, **NP),
    "batch_norm": _bn,
    "batch_norm_backward": _bn_backward,
}


@pytest.mark.parametrize("name", FLAG_CALLS)
@pytest.mark.parametrize("bad", BAD_BOOLS, ids=repr)
def test_training_must_be_a_bool_everywhere(name, bad):
    with pytest.raises(TypeError, match="training must be a bool"):
        FLAG_CALLS[name](bad)


@pytest.mark.parametrize("name", FLAG_CALLS)
def test_numpy_bools_act_as_python_bools(name):
    for flag in (True, False):
        a, b = FLAG_CALLS[name](flag), FLAG_CALLS[name](np.bool_(flag))
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        for u, v in zip(a, b):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_packed_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="packed must be a bool"):
        fastreg.dropout_mask(8, packed=bad, **NP)


def test_bad_training_changes_nothing():
    x = _x()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(TypeError):
        fastreg.batch_norm(x, rm, rv, training=1, out=out)
    with pytest.raises(TypeError):
        fastreg.dropout(x, training=1, out=out, **NP)
    assert np.all(out == 7.0) and np.all(rm == 0) and np.all(rv == 1)


# ---- the scalar checks: fast path and general path agree ---------------------------------------

def _outcome(fn, *args):
    try:
        v = fn(*args)
        return ("ok", type(v), v)
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


def _general(check, v, *args):
    """The same check through its general path: the value wrapped in a 0-d array (which the
    fast path never takes)."""
    return _outcome(check, np.array(v), *args) if not isinstance(v, (str, type(None))) else None


PROBABILITIES = [0.0, -0.0, 0.5, 1.0, 1.0000000000000002, -1e-300, math.nan, math.inf, -math.inf,
                 5e-324]
INTEGERS = [0, 1, 2**63, 2**64 - 1, 2**64, -1, -2**70]
NONNEGATIVES = [0.0, -0.0, 1e-300, 1e308, math.inf, math.nan, -1e-300, -1.0]


@pytest.mark.parametrize("p", PROBABILITIES)
def test_check_probability_fast_path(p):
    got = _outcome(_arrays.check_probability, p)
    assert got == _general(_arrays.check_probability, p)
    if got[0] == "ok":
        assert got[1] is float


@pytest.mark.parametrize("v", INTEGERS)
def test_check_uint64_fast_path(v):
    got = _outcome(_arrays.check_uint64, v, "seed")
    assert got[0] == ("ok" if 0 <= v < 2**64 else ValueError)
    if 0 <= v < 2**64:
        assert got[1] is int and got[2] == v
        assert _outcome(_arrays.check_uint64, np.uint64(v), "seed") == got
    else:
        assert "seed must be an integer in [0, 2**64)" in got[1]


@pytest.mark.parametrize("v", [True, False, np.bool_(True), 1.0, "1"])
def test_check_uint64_refuses_bools_and_floats(v):
    with pytest.raises(ValueError, match="seed"):
        _arrays.check_uint64(v, "seed")


@pytest.mark.parametrize("v", NONNEGATIVES)
def test_check_nonneg_fast_path(v):
    got = _outcome(_arrays.check_nonneg, v, "lr")
    assert got == _general(_arrays.check_nonneg, v, "lr")
    assert got[0] == ("ok" if math.isfinite(v) and v >= 0 else ValueError)


@pytest.mark.parametrize("v, expected", [(3, 3), (-2, -2), (np.int64(5), 5), (np.uint8(1), 1)])
def test_check_int(v, expected):
    got = _arrays.check_int(v, "axis")
    assert got == expected and type(got) is int


@pytest.mark.parametrize("v", [True, np.bool_(False), 1.0, "1", None])
def test_check_int_refuses(v):
    with pytest.raises(TypeError, match="axis must be an int"):
        _arrays.check_int(v, "axis")


def test_penalty_overflow_limit_is_the_float32_rounding_edge():
    limit = _OVERFLOW[np.dtype(np.float32)]
    below = np.nextafter(limit, 0.0)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(limit)) and np.isfinite(np.float32(below))
    w = np.ones(3, np.float32)
    fastreg.l1_grad(w, below, backend="numpy")  # rounds to float32's largest value: accepted
    with pytest.raises(ValueError, match="overflows float32"):
        fastreg.l1_grad(w, limit, backend="numpy")
    with pytest.raises(ValueError, match="overflows float32"):
        fastreg.l2_grad(w, below, backend="numpy")  # 2 * lam overflows
    with pytest.raises(ValueError, match="overflows float64"):
        fastreg.l2_grad(w.astype(np.float64), 1e308, backend="numpy")  # 2 * lam is inf


# ---- out= and running statistics: overlap rules on the fast path ------------------------------

def test_out_overlap_rules_on_plain_arrays():
    def drop(x, out):
        return fastreg.dropout(x, out=out, **NP)
    buf = np.zeros(40, np.float32)
    x = buf[:20]
    drop(x, out=x)                    # exactly in place
    drop(x, out=buf[20:])             # same buffer, disjoint
    drop(buf[0::2], out=buf[1::2])    # interleaved, no shared byte
    with pytest.raises(ValueError, match="overlaps"):
        drop(x, out=buf[10:30])
    with pytest.raises(ValueError, match="overlaps"):
        drop(buf[0:20], out=buf[0:40:2])  # same start, other strides
    with pytest.raises(ValueError, match="shape"):
        drop(x, out=np.zeros(21, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        drop(x, out=np.zeros(20, np.float64))
    ro = np.zeros(20, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        drop(x, out=ro)


def test_running_stats_overlap_rules():
    x = _x()
    with pytest.raises(ValueError, match="share memory"):
        rm = np.zeros(3, np.float32)
        fastreg.batch_norm(x, rm, rm, training=True, backend="numpy")
    buf = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        fastreg.batch_norm(x, buf[:3], buf[2:5], training=True, backend="numpy")
    rm, rv = buf[0::2], buf[1::2]   # interleaved: one buffer, no shared element
    rv[...] = 1
    fastreg.batch_norm(x, rm, rv, training=True, backend="numpy")
    assert np.all(np.isfinite(buf))


# ---- backend resolution is remembered, and still follows FASTREG_BACKEND and availability --------

def test_resolution_is_cached_for_host_arrays(monkeypatch):
    calls = []
    real = _registry.resolve

    def counting(*args):
        calls.append(args[0])
        return real(*args)
    monkeypatch.setattr(_registry, "resolve", counting)
    monkeypatch.setattr(_dispatch, "_resolved", {})
    x = np.ones(8, np.float32)
    fastreg.dropout(x, seed=1, backend="numpy")
    fastreg.dropout(x, seed=1, backend="numpy")
    fastreg.l2_grad(x, 0.1, backend="numpy")
    assert calls == ["numpy"]
    fastreg.dropout([1.0, 2.0], seed=1, backend="numpy")   # not an ndarray: asks the registry
    assert calls == ["numpy", "numpy"]


def test_cached_auto_follows_the_environment(monkeypatch):
    x = np.ones(8, np.float32)
    monkeypatch.delenv("FASTREG_BACKEND", raising=False)
    first = _dispatch.resolve("auto", x)
    assert first == _registry.resolve("auto", x)
    monkeypatch.setenv("FASTREG_BACKEND", "numpy")
    assert _dispatch.resolve("auto", x) == "numpy"
    monkeypatch.setenv("FASTREG_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FASTREG_BACKEND"):
        _dispatch.resolve("auto", x)
    monkeypatch.delenv("FASTREG_BACKEND")
    assert _dispatch.resolve("auto", x) == first


def test_cached_backend_that_disappears_raises(monkeypatch):
    x = np.ones(8, np.float32)
    assert _dispatch.resolve("numpy", x) == "numpy"
    monkeypatch.setitem(_registry._missing, "numpy", "gone (test)")
    monkeypatch.delitem(_registry._loaded, "numpy")
    with pytest.raises(fastreg.BackendUnavailableError, match="gone"):
        fastreg.dropout(x, seed=1, backend="numpy")


@pytest.mark.parametrize("bad", [3, None, ["cpu"]])
def test_backend_argument_type_checked(bad):
    with pytest.raises(TypeError, match="backend must be a string"):
        fastreg.dropout(np.ones(3, np.float32), seed=1, backend=bad)


def test_host_jobs_are_shared_and_stateless():
    assert _dispatch.job("numpy", True) is _dispatch.job("numpy", True)
    assert _dispatch.job("numpy", True).like is None


# ---- the optimizer's per-step checks on the fast path -------------------------------------------

def test_optimizer_step_checks_gradients():
    p = np.zeros((3, 2), np.float32)
    opt = fastreg.optim.AdamW([p], backend="numpy")
    with pytest.raises(ValueError, match=r"grads\[0\] has shape"):
        opt.step([np.zeros(6, np.float32)])
    with pytest.raises(ValueError, match=r"grads\[0\] has dtype"):
        opt.step([np.zeros((3, 2), np.float64)])
    g = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # non-contiguous: copied
    opt.step([g])
    ref = fastreg.optim.AdamW([np.zeros((3, 2), np.float32)], backend="numpy")
    ref.step([np.ascontiguousarray(g)])
    np.testing.assert_array_equal(p, ref.params[0])
    opt.betas = (0.9, 1.0)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        opt.step([g])
