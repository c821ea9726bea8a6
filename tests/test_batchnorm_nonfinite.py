"""Batch norm with +inf, -inf or NaN in a channel: the reference's definition (its module
docstring) agrees with torch.nn.functional.batch_norm, and every backend agrees with the
reference: the same NaN and inf positions (and signs), the finite values within tolerance.

The bad channel holds its non-finite values at a few places (also the channel's first element,
which the C and CUDA backends use to shift their sums); the other channels must stay finite and
correct. The CUDA backend runs these tiny shapes under the simulator too.
"""
import warnings

import numpy as np
import pytest

import fastreg

# (shape, axis, where): the bad channel is 1; "where" puts the non-finite values at these
# indices of the channel's elements (in the channel's own (A, B) order), 0 = its first element
CASES = [((6, 3), 1), ((4, 3, 5), 1), ((2, 3, 3, 4), -1), ((2, 3, 40), 1)]
CASE_IDS = ["nc", "ncl", "nhwc", "long-rows"]
VALUES = {"+inf": [np.inf], "-inf": [-np.inf], "nan": [np.nan], "+inf-inf": [np.inf, -np.inf],
          "two+inf": [np.inf, np.inf], "+inf,nan": [np.inf, np.nan]}
# positions (in the channel's flat order) that get the values, first element included
POSITIONS = {"first": 0, "later": 3}


def make(shape, axis, dtype, values, first, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    xc = np.moveaxis(x, axis, 0)        # a view: (C, ...) with the bad channel at 1
    flat = xc[1].reshape(-1) if xc[1].flags.c_contiguous else None
    idx = np.unravel_index([first + 2 * k for k in range(len(values))], xc[1].shape)
    xc[1][idx] = np.asarray(values, dtype)
    assert flat is None or not np.isfinite(flat).all()
    assert not np.isfinite(xc[1]).all() and np.isfinite(np.delete(xc, 1, axis=0)).all()
    C = shape[axis]
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    return x, gy, w, b


def assert_same(got, expected, what, rtol):
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaNs")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected),
                                  err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected),
                                  err_msg=f"{what}: -inf")
    fin = np.isfinite(expected)
    scale = np.abs(expected[fin]).max() if fin.any() else 1.0
    np.testing.assert_allclose(got[fin], expected[fin], rtol=rtol, atol=rtol * scale,
                               err_msg=what)


def run(backend, x, gy, w, b, axis, relu=False):
    """Training forward (running stats updated) and backward: a dict of host arrays."""
    C = x.shape[axis]
    rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    with warnings.catch_warnings():
        if backend != "cuda":  # (the simulator does its float64 math in NumPy scalars, which warn)
            warnings.simplefilter("error")   # no RuntimeWarning for the defined values
        act = "relu" if relu else None
        y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, axis=axis, activation=act,
                                      backend=backend)
        gx, gw, gb = fastreg.batch_norm_backward(gy, x, saved, w, y=y if relu else None,
                                                 backend=backend)
    host = [np.asarray(a.copy_to_host() if hasattr(a, "copy_to_host") else a)
            for a in (y, saved.mean, saved.invstd, gx, gw, gb)]
    return dict(zip(("y", "mean", "invstd", "gx", "gw", "gb"), host), rm=rm, rv=rv)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("values", list(VALUES), ids=list(VALUES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_matches_torch(case, values, dtype):
    torch = pytest.importorskip("torch")
    shape, axis = case
    x, gy, w, b = make(shape, axis, dtype, VALUES[values], POSITIONS["later"])
    ref = run("numpy", x, gy, w, b, axis)
    # torch: channels on axis 1
    xt = torch.from_numpy(np.moveaxis(x, axis, 1).copy()).requires_grad_()
    wt, bt = (torch.from_numpy(a.copy()).requires_grad_() for a in (w, b))
    C = shape[axis]
    rmt, rvt = torch.zeros(C, dtype=xt.dtype), torch.ones(C, dtype=xt.dtype)
    yt = torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training=True)
    yt.backward(torch.from_numpy(np.moveaxis(gy, axis, 1).copy()))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert_same(np.moveaxis(ref["y"], axis, 1), yt.detach().numpy(), "y", rtol)
    assert_same(ref["rm"], rmt.numpy(), "running_mean", rtol)
    assert_same(ref["rv"], rvt.numpy(), "running_var", rtol)
    assert_same(np.moveaxis(ref["gx"], axis, 1), xt.grad.numpy(), "grad_x", 1e-4 if dtype ==
                np.float32 else 1e-10)
    assert_same(ref["gw"], wt.grad.numpy(), "grad_weight", 1e-4)
    assert_same(ref["gb"], bt.grad.numpy(), "grad_bias", 1e-5)
    # the definition, spelled out for the bad channel
    has_nan = any(np.isnan(v) for v in VALUES[values])
    signs = {np.sign(v) for v in VALUES[values] if not np.isnan(v)}
    expected_mean = np.nan if has_nan or len(signs) == 2 else signs.pop() * np.inf
    assert_same(ref["mean"][1:2], [expected_mean], "mean of the bad channel", 0)
    assert np.isnan(ref["invstd"][1]) and np.isnan(ref["rv"][1])
    assert np.isnan(np.moveaxis(ref["y"], axis, 0)[1]).all()
    assert np.isnan(ref["gw"][1]) and np.isfinite(ref["gb"][1])
    assert np.isfinite(np.delete(np.moveaxis(ref["y"], axis, 0), 1, axis=0)).all()


# (values, where, relu): each kind of value once, at the first element or later, with and
# without the fused ReLU
VARIANTS = [("+inf", "first", False), ("-inf", "later", True), ("nan", "first", True),
            ("+inf-inf", "later", False), ("two+inf", "first", True), ("+inf,nan", "later", False)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backends_match_the_reference(kernel_backend, case, variant, dtype):
    values, where, relu = variant
    shape, axis = case
    x, gy, w, b = make(shape, axis, dtype, VALUES[values], POSITIONS[where])
    expected = run("numpy", x, gy, w, b, axis, relu)
    got = run(kernel_backend, x, gy, w, b, axis, relu)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for k in expected:
        assert_same(got[k], expected[k], f"{kernel_backend} {k}", 1e-3 if k in ("gx", "gw") and
                    dtype == np.float32 else rtol)
