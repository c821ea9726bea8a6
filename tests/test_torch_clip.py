"""fastreg.torch.clip_grad_norm_ / adaptive_clip_grad_ against torch.nn.utils.clip_grad_norm_
and timm's adaptive_clip_grad rule (written here in torch operations)."""
import math

import pytest

torch = pytest.importorskip("torch")
import fastreg.torch as frt  # noqa: E402


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 4 * 4, 5), torch.nn.Linear(5, 2, bias=False))
    m = m.to(dtype)
    m(torch.randn(2, 3, 6, 6, dtype=dtype)).square().sum().backward()
    m[2].bias.grad = None   # a parameter without a gradient is skipped
    return m


def _grads(m):
    return [None if p.grad is None else p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [1e-3, 1e9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    a, b = _model(dtype), _model(dtype)
    want = torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm, norm_type)
    got = frt.clip_grad_norm_(b.parameters(), max_norm, norm_type)   # a one-pass generator
    assert got.dtype == want.dtype and got.shape == ()
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=4 * rtol, atol=0)


_F64 = torch.float64
# gradients whose norm overflows torch's float32 sums (or just does not), as lists of
# (shape, value, dtype), and the norm order
OVERFLOW_CASES = [
    ([((4,), 1e20, torch.float32)], 2.0),                              # one array: inf
    ([((1,), 1.5e19, torch.float32)] * 2, 2.0),                        # the norm of norms: inf
    ([((1,), 1.5e19, torch.float32), ((1,), 1.5e19, _F64)], 2.0),     # float64 stack: finite
    ([((1,), 2e20, torch.float32), ((1,), 1.0, _F64)], 2.0),          # one element: finite
    ([((1,), 2e20, torch.float32)], 2.0),                              # finite
    ([((1,), 2e20, torch.float32), ((0,), 0.0, torch.float32)], 2.0),  # stacked with a 0: inf
    ([((2,), 1.5e19, torch.float32), ((1,), 1.0, _F64)], 2.0),        # its own sum: inf
    ([((2,), 1.5e19, torch.float32), ((0,), 0.0, _F64)], 2.0),
    ([((4,), 1e38, torch.float32)], 1.0),
    ([((4,), 1e38, torch.float32), ((3,), 1.0, _F64)], 0.5),
    ([((5,), 1e13, torch.float32), ((3,), 1.0, _F64)], 3.0),
    ([((5,), 3e38, torch.float32), ((3,), 1.0, torch.float32)], math.inf),  # a max: exact
    # float32's largest value plus a little: rounds to it, not to inf (half an ulp is 1e31)
    ([((1,), 3.4028234663852886e38, torch.float32), ((1,), 1e30, torch.float32)], 1.0),
    ([((1,), 3.4028234663852886e38, torch.float32), ((1,), 1e19, torch.float32)], 0.5),
]


@pytest.mark.parametrize("case", range(len(OVERFLOW_CASES)))
def test_clip_grad_norm_overflows_as_torch(case):
    """Where torch's float32 sums overflow, its total is inf and the gradients are zeroed
    (error_if_nonfinite raises): fastreg, whose float64 sum is finite, follows it; where they
    do not (a single element, a float64 stack of norms), both clip by the finite norm."""
    spec, norm_type = OVERFLOW_CASES[case]
    results = []
    for clip in (torch.nn.utils.clip_grad_norm_, frt.clip_grad_norm_):
        params = []
        for shape, value, dtype in spec:
            p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
            p.grad = torch.full(shape, value, dtype=dtype)
            params.append(p)
        total = clip(params, 1.0, norm_type)
        results.append((total, [p.grad for p in params]))
    (want, want_grads), (got, got_grads) = results
    assert got.dtype == want.dtype and math.isinf(got) == math.isinf(want)
    if not math.isinf(want):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=0)
    for clip, error in ((torch.nn.utils.clip_grad_norm_, RuntimeError),
                        (frt.clip_grad_norm_, RuntimeError)):
        params = []
        for shape, value, dtype in spec:
            p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
            p.grad = torch.full(shape, value, dtype=dtype)
            params.append(p)
        if math.isinf(want):
            with pytest.raises(error):
                clip(params, 1.0, norm_type, error_if_nonfinite=True)
            assert all(torch.equal(p.grad, torch.full_like(p.grad, v))
                       for p, (_, v, _) in zip(params, spec))
        else:
            clip(params, 1.0, norm_type, error_if_nonfinite=True)


def test_clip_grad_norm_edges():
    m = _model()
    before = _grads(m)
    assert float(frt.clip_grad_norm_([], 1.0)) == 0.0
    one = m[0].weight
    total = frt.clip_grad_norm_(one, 1e9)   # a single tensor
    torch.testing.assert_close(total, torch.linalg.vector_norm(before[0]), rtol=1e-6, atol=0)
    m[0].weight.grad[0, 0, 0, 0] = float("nan")
    snapshot = _grads(m)
    with pytest.raises(RuntimeError, match="non-finite|NaN|nan"):
        frt.clip_grad_norm_(m.parameters(), 1.0, error_if_nonfinite=True)
    for g, s in zip(_grads(m), snapshot):   # nothing changed
        assert (g is None and s is None) or torch.equal(g.nan_to_num(0.5), s.nan_to_num(0.5))
    with pytest.raises(ValueError, match="max_norm"):
        frt.clip_grad_norm_(m.parameters(), -1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_gradients_go_through_torch(dtype):
    a, b = _model(dtype), _model(dtype)
    want = torch.nn.utils.clip_grad_norm_(a.parameters(), 0.01)
    got = frt.clip_grad_norm_(b.parameters(), 0.01)
    assert torch.equal(got, want)
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None:
            assert torch.equal(pa.grad, pb.grad)


def _timm_agc(parameters, clip_factor, eps, norm_type):
    """timm.utils.agc.adaptive_clip_grad, restated."""
    for p in parameters:
        if p.grad is None:
            continue
        d = tuple(range(1, p.ndim)) if p.ndim > 1 else None
        limit = torch.linalg.vector_norm(p.detach(), norm_type, dim=d, keepdim=True)
        limit = limit.clamp(min=eps) * clip_factor
        gn = torch.linalg.vector_norm(p.grad, norm_type, dim=d, keepdim=True)
        clipped = p.grad * (limit / gn.clamp(min=1e-6))
        p.grad.copy_(torch.where(gn < limit, p.grad, clipped))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip_factor", [0.01, 10.0])
def test_adaptive_clip_grad_matches_timms_rule(dtype, clip_factor):
    a, b = _model(dtype), _model(dtype)
    with torch.no_grad():
        _timm_agc(a.parameters(), clip_factor, 1e-3, 2.0)
    frt.adaptive_clip_grad_(b.parameters(), clip_factor)
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 0}[dtype]
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=rtol, atol=rtol * 1e-3)


def test_arguments_checked_whatever_the_gradients():
    """max_norm, norm_type, clip_factor and eps are checked before torch's code can run (16-bit
    gradients) and without gradients, as on fastreg's path."""
    bf = _model(torch.bfloat16)
    before = _grads(bf)
    for call in (lambda ps: frt.clip_grad_norm_(ps, -1.0),
                 lambda ps: frt.clip_grad_norm_(ps, 1.0, norm_type=-3),
                 lambda ps: frt.adaptive_clip_grad_(ps, -1.0),
                 lambda ps: frt.adaptive_clip_grad_(ps, 0.01, eps=float("nan"))):
        for params in (bf.parameters(), []):
            with pytest.raises(ValueError):
                call(params)
    with pytest.raises(TypeError, match="error_if_nonfinite"):
        frt.clip_grad_norm_(bf.parameters(), 1.0, error_if_nonfinite="yes")
    for g, b in zip(_grads(bf), before):
        assert (g is None and b is None) or torch.equal(g, b)


@pytest.mark.parametrize("clip", [lambda ps: frt.clip_grad_norm_(ps, 0.1),
                                  lambda ps: frt.adaptive_clip_grad_(ps, 0.01)])
def test_clipping_bumps_the_gradients_versions(clip):
    """The gradients are scaled through NumPy views: their version counters move, as under
    torch's clip_grad_norm_ (mul_)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    m(torch.randn(2, 4)).sum().backward()
    grads = [p.grad for p in m.parameters()]
    before = [g._version for g in grads]
    clip(m.parameters())
    assert all(g._version > v for g, v in zip(grads, before))
