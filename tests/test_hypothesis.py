"""Hypothesis drives the public functions with random shapes, strides, dtypes and values:
the result equals the reference, or a clear error is raised before any work; never a crash."""
import numpy as np
import pytest
from conftest import CUDA_SIM, bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastreg
from fastreg._arrays import is_half

HOST_BACKENDS = [b for b in ("cpu", "c") if fastreg.available_backends()[b] is None]
if fastreg.available_backends()["cuda"] is None:
    HOST_BACKENDS.append("cuda")
pytestmark = [
    pytest.mark.skipif(not HOST_BACKENDS, reason="no kernel backend available"),
    # huge random values times a scale overflow to inf in the reference, as they should
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

SETTINGS = settings(max_examples=30 if CUDA_SIM else 150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FLOATS = st.sampled_from([np.float32, np.float64])


@st.composite
def strided_arrays(draw, dtype=FLOATS, max_dims=4):
    """Arrays of random shape viewed with random steps, transposes and reversals."""
    dt = draw(dtype)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=9))
    base = draw(hnp.arrays(dt, shape, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)
                           | st.sampled_from([np.inf, -np.inf, np.nan, 0.0, -0.0])))
    if base.ndim:
        steps = tuple(draw(st.sampled_from([1, 2, -1])) for _ in range(base.ndim))
        base = base[tuple(slice(None, None, s) for s in steps)]
        base = base.transpose(draw(st.permutations(range(base.ndim))))
    return base


@SETTINGS
@given(x=strided_arrays(), p=st.floats(0, 1), seed=st.integers(0, 2**64 - 1),
       offset=st.integers(0, 2**64 - 1), mode=st.sampled_from(["inverted", "classic"]),
       training=st.booleans(), backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_dropout_matches_reference_or_errors(x, p, seed, offset, mode, training, backend):
    kw = dict(seed=seed, offset=offset, mode=mode, training=training)
    before = x.copy()
    try:
        expected = fastreg.dropout(x, p, backend="numpy", **kw)
    except ValueError as exc:
        assert "offset" in str(exc)  # the only way these arguments can be bad
        with pytest.raises(ValueError, match="offset"):
            fastreg.dropout(x, p, backend=backend, **kw)
        return
    got = fastreg.dropout(x, p, backend=backend, **kw)
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
    np.testing.assert_array_equal(bits(got), bits(expected))
    np.testing.assert_array_equal(bits(x), bits(before))


@SETTINGS
@given(x=strided_arrays(max_dims=4), p=st.floats(0, 1), seed=st.integers(0, 2**64 - 1),
       axis=st.integers(-4, 3), backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_channel_dropout_matches_reference_or_errors(x, p, seed, axis, backend):
    try:
        expected = fastreg.channel_dropout(x, p, seed=seed, axis=axis, backend="numpy")
    except ValueError as exc:
        assert "axis" in str(exc) or "ndim" in str(exc)
        with pytest.raises(ValueError):
            fastreg.channel_dropout(x, p, seed=seed, axis=axis, backend=backend)
        return
    got = fastreg.channel_dropout(x, p, seed=seed, axis=axis, backend=backend)
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
    np.testing.assert_array_equal(bits(got), bits(expected))


@SETTINGS
@given(x=hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_side=4)),
       p=st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.none(), st.text(max_size=2)),
       seed=st.one_of(st.integers(-2**65, 2**65), st.floats(), st.none()),
       backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_arbitrary_arguments_give_result_or_clear_error(x, p, seed, backend):
    try:
        fastreg.dropout(x, p, seed=seed, backend=backend)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        assert any(word in msg for word in ("x must", "p must", "seed must")), msg
    else:   # float32, float64 and the 16-bit floats (float16, bfloat16) are accepted
        assert x.dtype in (np.float32, np.float64) or is_half(x.dtype), x.dtype


@SETTINGS
@given(n=st.integers(0, 3000), p=st.floats(0, 1), seed=st.integers(0, 2**64 - 1),
       offset=st.integers(0, 2**40), backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_masks_match_reference(n, p, seed, offset, backend):
    for packed in (True, False):
        got = fastreg.dropout_mask(n, p, seed=seed, offset=offset, packed=packed, backend=backend)
        got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
        np.testing.assert_array_equal(
            got, fastreg.dropout_mask(n, p, seed=seed, offset=offset, packed=packed,
                                      backend="numpy"))


@SETTINGS
@given(w=strided_arrays(), l1=st.floats(0, 10), l2=st.floats(0, 10), accumulate=st.booleans(),
       backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_penalty_grads_match_reference(w, l1, l2, accumulate, backend):
    before = w.copy()
    g0 = np.ones(w.shape, w.dtype)
    expected = fastreg.elastic_net_grad(w, l1, l2, out=g0.copy() if accumulate else None,
                                        accumulate=accumulate, backend="numpy")
    got = fastreg.elastic_net_grad(w, l1, l2, out=g0.copy() if accumulate else None,
                                   accumulate=accumulate, backend=backend)
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
    nan = np.isnan(expected)  # NaN payloads may differ between backends; positions may not
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(got[~nan]), bits(expected[~nan]))
    np.testing.assert_array_equal(bits(w), bits(before))
    assert fastreg.elastic_net_penalty(w, l1, l2, backend=backend) == pytest.approx(
        fastreg.elastic_net_penalty(w, l1, l2, backend="numpy"), rel=1e-9, nan_ok=True)


@SETTINGS
@given(w=strided_arrays(), t=st.floats(0, 1e3), backend=st.sampled_from(HOST_BACKENDS or ["numpy"]))
def test_prox_l1_matches_reference_in_place(w, t, backend):
    expected = fastreg.prox_l1(w.copy(), t, backend="numpy")
    got = w.copy() if backend != "cuda" else w
    if backend == "cuda":
        from numba import cuda
        d = cuda.to_device(np.ascontiguousarray(w))
        fastreg.prox_l1(d, t)
        got = d.copy_to_host()
    else:
        view = w  # strided, in place through a contiguous copy written back
        assert fastreg.prox_l1(view, t, backend=backend) is view
        got = view
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(got[~nan]), bits(expected[~nan]))
