"""fastreg.torch.optim's batched steps: the small float32/float64 CPU parameters of a group are
updated in one C call (csrc/optim.c fr_*_multi_*) with the bits of the per-parameter path."""
import numpy as np
import pytest

import fastreg
from fastreg import _threads

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from fastreg.torch import optim as frt_optim  # noqa: E402

pytestmark = pytest.mark.skipif(fastreg.available_backends()["c"] is not None,
                                reason="backend 'c' unavailable")

SHAPES = [(5, 4), (4,), (0,), (3, 2, 2), (1,), (40, 30), (7,)]

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05, decoupled=True,
                 l1=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, l1=0.02)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.3, 0.9))),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    # the options that read every gradient first: batched too, the same bits
    ("AdamW", dict(lr=0.01, weight_decay=0.1, max_grad_norm=0.5, check_finite=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, max_grad_norm=0.3, maximize=True)),
]


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def _groups(ps):
    """Two groups, the second with a tensor lr, and a decay mask that skips some."""
    return [{"params": ps[:4], "decay_mask": [True, False, True, True]},
            {"params": ps[4:], "lr": torch.tensor(0.02)}]


def _run(opt, ps, steps):
    for k in range(steps):
        g = torch.Generator().manual_seed(100 + k)
        for i, p in enumerate(ps):
            # parameter 1 has no gradient at step 1; a fresh gradient tensor every step
            p.grad = None if (i, k) == (1, 1) else torch.randn(p.shape, generator=g,
                                                                dtype=p.dtype)
        opt.step()


def _counting(monkeypatch):
    """Counts the batched C calls (fastreg.c.optim.sgd_multi / adam_multi)."""
    from fastreg.c import optim as c_optim
    calls = []
    for name in ("sgd_multi", "adam_multi"):
        real = getattr(c_optim, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, args[1].size))
            return _real(*args)
        monkeypatch.setattr(c_optim, name, spy)
    return calls


def _state(opt, ps):
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "c"])
def test_batched_steps_are_the_per_parameter_bits(name, kw, dtype, backend, monkeypatch):
    # a small grain: (40, 30) takes the per-parameter path (two threads), the rest are batched
    monkeypatch.setitem(_threads.SPIN_GRAIN, "elementwise", 600)
    pa, pb = _params(dtype), _params(dtype)
    batched = getattr(frt.optim, name)(_groups(pa), backend=backend, **kw)
    single = getattr(frt.optim, name)(_groups(pb), backend=backend, **kw)
    calls = _counting(monkeypatch)
    _run(batched, pa, 4)
    assert calls and all(n <= 5 for _, n in calls)   # 6 non-empty small ones, in 2 groups
    monkeypatch.setattr(frt_optim._FastregOptimizer, "_multi_limit", lambda self: 0)
    calls.clear()
    _run(single, pb, 4)
    assert not calls
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    for sa, sb in zip(_state(batched, pa), _state(single, pb)):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert batched.state_dict()["state"].keys() == single.state_dict()["state"].keys()


def test_batched_path_matches_torch():
    pr = _params(torch.float64)
    pg = _params(torch.float64)
    ref = torch.optim.AdamW(pr, lr=0.01, weight_decay=0.1)
    got = frt.optim.AdamW(pg, lr=0.01, weight_decay=0.1, decay_mask=True)
    _run(ref, pr, 5)
    _run(got, pg, 5)
    for a, b in zip(pg, pr):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kw", [dict(backend="cpu"), dict(backend="numpy")])
def test_not_batched_on_other_backends(kw, monkeypatch):
    calls = _counting(monkeypatch)
    ps = _params(torch.float32)
    _run(frt.optim.AdamW(ps, lr=0.01, **kw), ps, 2)
    assert not calls


def test_check_finite_refuses_a_batched_gradient_before_any_change(monkeypatch):
    calls = _counting(monkeypatch)
    ps = _params(torch.float32)
    opt = frt.optim.AdamW(ps, lr=0.1, check_finite=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    ps[4].grad[0] = float("nan")                   # (1,): a batched one
    before = [p.detach().clone() for p in ps]
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[4\]\.grad"):
        opt.step()
    assert not calls and all(torch.equal(p.detach(), b) for p, b in zip(ps, before))


def test_clipping_norm_is_the_per_parameter_paths(monkeypatch):
    pa, pb = _params(torch.float64), _params(torch.float64)
    a = frt.optim.AdamW(pa, lr=0.01, max_grad_norm=0.5)
    b = frt.optim.AdamW(pb, lr=0.01, max_grad_norm=0.5)
    _run(a, pa, 2)
    monkeypatch.setattr(frt_optim._FastregOptimizer, "_multi_limit", lambda self: 0)
    _run(b, pb, 2)
    assert a.last_grad_norm == b.last_grad_norm > 0.5


def test_unusual_layouts_take_the_per_parameter_path(monkeypatch):
    calls = _counting(monkeypatch)
    p = torch.randn(4, 6, requires_grad=True)
    q = torch.randn(4, 6, requires_grad=True)
    opt = frt.optim.SGD([p, q], lr=0.1, momentum=0.9)
    p.grad = torch.randn(6, 4).t()                 # a transposed gradient
    q.grad = torch.randn(4, 6, dtype=torch.float32)
    before = p.detach().clone()
    opt.step()
    assert calls == [("sgd_multi", 1)]             # q only
    assert not torch.equal(p.detach(), before)


def test_a_bad_parameter_anywhere_changes_nothing(monkeypatch):
    # the last parameter is a view with gaps: refused, after the batch was gathered
    ps = _params(torch.float32) + [torch.randn(4, 6)[:, ::2].detach().requires_grad_()]
    opt = frt.optim.AdamW(ps, lr=0.1)
    for p in ps:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[7\] is not dense"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    assert not any(opt.state[p] for p in ps)


def test_batched_step_bumps_versions():
    """As torch's in-place update: a backward through a graph that saved p before the step
    raises instead of using the new values."""
    p = torch.randn(5, requires_grad=True)
    opt = frt.optim.SGD([p], lr=0.1)
    loss = (p * p).sum()           # saves p
    p.grad = torch.ones(5)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["c-float32", "c-float64"])
def test_c_multi_kernels_check_every_parameter_first(dtype):
    from fastreg.c import optim as c_optim
    p0, g0 = np.ones(3, dtype), np.ones(3, dtype)
    m0, v0 = np.zeros(3, dtype), np.zeros(3, dtype)
    p1 = np.ones(2, dtype)
    ok = [p0.ctypes.data, g0.ctypes.data, m0.ctypes.data, v0.ctypes.data, 0]
    bad = [p1.ctypes.data, 0, m0.ctypes.data, v0.ctypes.data, 0]        # a NULL gradient
    n = np.array([3, 2], np.int64)
    s = np.array([[0, 1, 0.1, 1]] * 2, dtype)
    with pytest.raises(RuntimeError, match="fr_adam_multi"):
        c_optim.adam_multi(np.array(ok + bad, np.uintp), n, s, 0.1, 0.9, 0.1, 1e-8, 1.0)
    with pytest.raises(RuntimeError, match="fr_adam_multi"):
        c_optim.adam_multi(np.array(ok + ok, np.uintp), np.array([3, -1], np.int64), s, 0.1,
                           0.9, 0.1, 1e-8, 1.0)
    with pytest.raises(RuntimeError, match="fr_sgd_multi"):
        c_optim.sgd_multi(np.array(ok[:3] + [0, 0, 0], np.uintp), n, s, 0.1, 0.0, 1.0, False,
                          1.0)
    assert (p0 == 1).all() and (m0 == 0).all()     # nothing ran
    c_optim.adam_multi(np.array(ok, np.uintp), n[:1], s[:1], 0.1, 0.9, 0.1, 1e-8, 1.0)
    assert (p0 != 1).all()


def test_a_parameter_listed_twice_keeps_its_order(monkeypatch):
    """A parameter listed twice (torch warns) is updated twice in list order, as without
    batching, also when one listing would be batched and the other not."""
    def run(batched):
        g = torch.Generator().manual_seed(3)
        a, b = (torch.randn(5, generator=g).requires_grad_() for _ in range(2))
        with pytest.warns(UserWarning):
            opt = frt.optim.Adam([a, b, a], lr=0.1, weight_decay=0.1, l1=0.01,
                                 decay_mask=[True, False, False])
        if not batched:
            monkeypatch.setattr(frt_optim._FastregOptimizer, "_multi_limit", lambda self: 0)
        for _ in range(4):
            a.grad, b.grad = torch.ones(5), torch.full((5,), 0.5)
            opt.step()
        return a.detach().clone(), b.detach().clone()
    got, want = run(True), run(False)
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_a_negated_view_gradient_is_not_read_raw(monkeypatch):
    calls = _counting(monkeypatch)
    p = torch.ones(4, requires_grad=True)
    opt = frt.optim.SGD([p], lr=0.1)
    p.grad = torch._neg_view(torch.ones(4))
    try:
        opt.step()
    except (TypeError, RuntimeError, ValueError):
        pass                                   # the per-parameter path's own answer
    else:
        assert torch.equal(p.detach(), torch.full((4,), 1.1))   # p - lr * (-1)
    assert not calls
