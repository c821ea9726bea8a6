"""fastreg.torch.optim and torch.optim's group options: maximize, decoupled_weight_decay,
foreach / fused / capturable / differentiable, tensor lr, plain-number steps in state_dicts."""
import copy

import pytest

import fastreg

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402

F64 = torch.float64


@pytest.fixture(params=["numpy", "cpu", "c"])
def tbackend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


def _params(dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
            for s in [(5, 4), (4,), (3, 2, 2)]]


def _run(opt, ps, steps, first=0):
    for k in range(first, first + steps):
        g = torch.Generator().manual_seed(100 + k)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


def _close(a_list, b_list, dtype=F64):
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(a_list, b_list):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


CASES = [
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_options_match_torch(name, kw, dtype, tbackend):
    pr, pg = _params(dtype), _params(dtype)
    ref = getattr(torch.optim, name)(pr, **kw)
    got = getattr(frt.optim, name)(pg, decay_mask=True, backend=tbackend, **kw)
    _run(ref, pr, 3)
    _run(got, pg, 3)
    _close(pg, pr, dtype)


@pytest.mark.parametrize("name,kw", CASES)
def test_torch_state_dict_options_are_honoured(name, kw):
    """A torch state_dict with maximize / decoupled_weight_decay, loaded into a fastreg
    optimizer built with the defaults, trains the way torch does (it went the wrong way)."""
    pr = _params()
    ref = getattr(torch.optim, name)(pr, **kw)
    _run(ref, pr, 2)
    pg = [p.detach().clone().requires_grad_() for p in pr]
    plain = {k: v for k, v in kw.items() if k not in ("maximize", "decoupled_weight_decay")}
    got = getattr(frt.optim, name)(pg, decay_mask=True, **plain)
    got.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch shares tensors
    assert got.param_groups[0]["maximize"] == kw.get("maximize", False)
    _run(ref, pr, 2, first=2)
    _run(got, pg, 2, first=2)
    _close(pg, pr)
    # and back into torch
    back = getattr(torch.optim, name)(pr, **plain)
    back.load_state_dict(copy.deepcopy(got.state_dict()))
    assert back.param_groups[0]["maximize"] == kw.get("maximize", False)


def test_adamw_state_dict_into_adam_is_decoupled():
    pr = _params()
    ref = torch.optim.AdamW(pr, lr=0.01, weight_decay=0.1)
    _run(ref, pr, 2)
    pg = [p.detach().clone().requires_grad_() for p in pr]
    got = frt.optim.Adam(pg, lr=0.01, weight_decay=0.1, decay_mask=True)
    got.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch shares tensors
    assert got.param_groups[0]["decoupled_weight_decay"] is True
    _run(ref, pr, 2, first=2)
    _run(got, pg, 2, first=2)
    _close(pg, pr)


def test_maximize_with_clipping_matches_torch():
    pr, pg = _params(), _params()
    ref = torch.optim.SGD(pr, lr=0.1, momentum=0.5, maximize=True)
    got = frt.optim.SGD(pg, lr=0.1, momentum=0.5, maximize=True, max_grad_norm=0.5,
                        decay_mask=True)
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        for a, b in zip(pr, pg):
            a.grad = torch.randn(a.shape, generator=g, dtype=F64)
            b.grad = a.grad.clone()
        torch.nn.utils.clip_grad_norm_(pr, 0.5)
        ref.step()
        got.step()
    _close(pg, pr)


@pytest.mark.parametrize("key,value", [("differentiable", True), ("capturable", True)])
def test_unsupported_options_refused_everywhere(key, value):
    p = _params()
    if key == "capturable":
        with pytest.raises(ValueError, match="capturable=True is not supported"):
            frt.optim.Adam(p, **{key: value})
        with pytest.raises(ValueError, match="capturable"):
            frt.optim.AdamW(p, **{key: value})
        torch_opt = torch.optim.Adam(_params())
        opt = frt.optim.Adam(p)
    else:
        with pytest.raises(ValueError, match="differentiable=True is not supported"):
            frt.optim.SGD(p, **{key: value})
        torch_opt = torch.optim.SGD(_params(), lr=0.1)
        opt = frt.optim.SGD(p, lr=0.1)
    extra = _params(seed=1)[:1]
    with pytest.raises(ValueError, match=key):
        opt.add_param_group({"params": extra, key: value})
    assert len(opt.param_groups) == 1
    sd = torch_opt.state_dict()
    sd["param_groups"][0][key] = value
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(sd)
    assert opt.state_dict() == before  # nothing was loaded


def test_option_types_checked():
    with pytest.raises(TypeError, match="maximize"):
        frt.optim.SGD(_params(), lr=0.1, maximize=1)
    with pytest.raises(TypeError, match="foreach"):
        frt.optim.Adam(_params(), foreach="yes")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict(fused=True),
                                   dict(fused=False)])
def test_foreach_and_fused_are_accepted_and_change_nothing(name, flags):
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    pa, pb = _params(), _params()
    a = getattr(frt.optim, name)(pa, **kw)
    b = getattr(frt.optim, name)(pb, **kw, **flags)
    _run(a, pa, 3)
    _run(b, pb, 3)
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)
    for key, v in flags.items():
        assert b.param_groups[0][key] == v
        assert b.state_dict()["param_groups"][0][key] == v


def test_adam_plain_number_step_loads_and_works():
    """Older checkpoints stored ``step`` as a plain number; torch converts it, so must we."""
    pr = _params()
    ref = torch.optim.Adam(pr, lr=0.01)
    _run(ref, pr, 2)
    sd = copy.deepcopy(ref.state_dict())
    for st in sd["state"].values():
        st["step"] = float(st["step"])
    ref.load_state_dict(copy.deepcopy(sd))
    pg = [p.detach().clone().requires_grad_() for p in pr]
    got = frt.optim.Adam(pg, lr=0.01, decay_mask=True)
    got.load_state_dict(sd)
    for st in got.state.values():
        assert torch.is_tensor(st["step"]) and st["step"].dtype == torch.float32
        assert float(st["step"]) == 2.0
    _run(ref, pr, 2, first=2)
    _run(got, pg, 2, first=2)
    _close(pg, pr)
    for st in got.state.values():
        assert float(st["step"]) == 4.0


@pytest.mark.parametrize("name,kw", [("SGD", dict(momentum=0.9)), ("Adam", {}), ("AdamW", {})])
def test_tensor_lr_works_and_schedulers_update_it(name, kw):
    pr, pg = _params(), _params()
    lr = torch.tensor(0.05, dtype=F64)
    ref = getattr(torch.optim, name)(pr, lr=0.05, **kw)
    got = getattr(frt.optim, name)(pg, lr=lr, decay_mask=True, **kw)
    assert got.param_groups[0]["lr"] is lr
    sched_r = torch.optim.lr_scheduler.StepLR(ref, step_size=1, gamma=0.5)
    sched_g = torch.optim.lr_scheduler.StepLR(got, step_size=1, gamma=0.5)
    for k in range(3):
        _run(ref, pr, 1, first=k)
        _run(got, pg, 1, first=k)
        sched_r.step()
        sched_g.step()
    assert torch.is_tensor(got.param_groups[0]["lr"])
    assert float(got.param_groups[0]["lr"]) == pytest.approx(0.05 / 8)
    _close(pg, pr)
    with pytest.raises(ValueError, match="one-element tensor"):
        getattr(frt.optim, name)(_params(), lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="lr"):
        getattr(frt.optim, name)(_params(), lr=torch.tensor(-1.0))


# --- 16-bit parameters and gradients: float32 math, rounded to nearest even -----------------------

HALF_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, l1=1e-3)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("name,kw", HALF_CASES)
@pytest.mark.parametrize("pdtype,gdtype", [(torch.float16, torch.float16),
                                           (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32),
                                           (torch.float32, torch.float16)])
def test_16bit_is_float32_math_rounded(name, kw, pdtype, gdtype, tbackend):
    """The oracle: the same optimizer on float32 copies (the 16-bit values widened, exactly),
    each parameter rounded to the 16-bit dtype after every step; bit for bit."""
    ps = [p.detach().to(pdtype).requires_grad_() for p in _params(torch.float32)]
    ref = [p.detach().float().requires_grad_() for p in ps]
    got_opt = getattr(frt.optim, name)(ps, decay_mask=True, backend=tbackend, **kw)
    ref_opt = getattr(frt.optim, name)(ref, decay_mask=True, backend=tbackend, **kw)
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        for p, r in zip(ps, ref):
            grad = torch.randn(p.shape, generator=g).to(gdtype)
            p.grad_dtype = None  # torch 2.13: a gradient of another dtype must be allowed
            p.grad = grad
            r.grad = grad.float()
        got_opt.step()
        ref_opt.step()
        with torch.no_grad():
            for r in ref:
                r.copy_(r.to(pdtype).float())
        for p, r in zip(ps, ref):
            assert p.dtype == pdtype
            assert torch.equal(p.float(), r)
    for st in got_opt.state.values():
        for key, v in st.items():
            if key != "step":
                assert v.dtype == torch.float32


def test_16bit_torch_state_dict_loads_widened():
    """torch keeps a bf16 parameter's moments in bf16: they load and are widened (exactly)."""
    pr = [p.detach().to(torch.bfloat16).requires_grad_() for p in _params(torch.float32)]
    ref = torch.optim.AdamW(pr, lr=0.01)
    _run(ref, pr, 2)
    ps = [p.detach().clone().requires_grad_() for p in pr]
    opt = frt.optim.AdamW(ps, lr=0.01, decay_mask=True)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    moments = [opt.state[p]["exp_avg"].float().clone() for p in ps]
    _run(opt, ps, 1, first=2)
    for p, m in zip(ps, moments):
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        assert not torch.equal(opt.state[p]["exp_avg"], m)  # the step ran on the loaded state


def test_torch_optim_fused_path_is_taken(monkeypatch):
    """frt.optim's 16-bit steps on backend c run the fused kernels (tests/test_half_fused.py),
    with no conversion pass."""
    if fastreg.available_backends()["c"] is not None:
        pytest.skip("backend 'c' unavailable")
    from fastreg import _half

    def no_pass(*args):
        raise AssertionError("a conversion pass ran")
    monkeypatch.setattr(_half, "widen", no_pass)
    monkeypatch.setattr(_half, "store", no_pass)
    for pdt, gdt in [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                     (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]:
        for make in (lambda ps: frt.optim.SGD(ps, lr=0.1, momentum=0.9, backend="c"),
                     lambda ps: frt.optim.AdamW(ps, lr=0.1, backend="c")):
            p = torch.randn(33).to(pdt).requires_grad_()
            p.grad_dtype = None   # torch 2.13: a gradient of another dtype must be allowed
            p.grad = torch.randn(33).to(gdt)
            before = p.detach().clone()
            make([p]).step()
            assert not torch.equal(p.detach(), before)


def test_refused_param_group_is_not_kept():
    """add_param_group that raises (a negative lr, an integer parameter) leaves the optimizer
    as it was, as torch's refusals do: its next step runs."""
    p, q = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4, 2))
    opt = frt.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        opt.add_param_group({"params": [q], "lr": -1.0})
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [torch.zeros(3, dtype=torch.int64)]})
    assert len(opt.param_groups) == 1
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.1)


def test_adamw_state_without_decoupled_key_stays_decoupled():
    """An AdamW state dict without 'decoupled_weight_decay' (older torch), or an Adam one,
    loads into frt's AdamW with decoupled decay, as torch.optim.AdamW forces it."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    ref = torch.optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.ones(2, 2)
    ref.step()
    sd = ref.state_dict()
    for g in sd["param_groups"]:
        g.pop("decoupled_weight_decay")
    q = torch.nn.Parameter(p.detach().clone())
    opt = frt.optim.AdamW([q], lr=0.1, weight_decay=0.5, decay_mask=True)
    opt.load_state_dict(copy.deepcopy(sd))
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    ref.load_state_dict(sd)
    q.grad = p.grad.clone()
    ref.step()
    opt.step()
    torch.testing.assert_close(q.detach(), p.detach())


def test_max_grad_norm_errors_name_it():
    p = torch.nn.Parameter(torch.ones(2))
    for cls in (frt.optim.SGD, frt.optim.Adam, frt.optim.AdamW):
        with pytest.raises(ValueError, match="max_grad_norm"):
            cls([p], lr=0.1, max_grad_norm=-1.0)
        with pytest.raises(TypeError, match="max_grad_norm"):
            cls([p], lr=0.1, max_grad_norm="x")


def test_lazily_negated_gradient():
    """A gradient with the neg bit set (torch._neg_view): its values, as torch.optim reads
    them (NumPy cannot view it)."""
    p, q = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(5))
    g = torch._neg_view(torch.arange(5.0))
    p.grad, q.grad = g, g.clone()
    torch.optim.SGD([q], lr=0.5, momentum=0.9).step()
    frt.optim.SGD([p], lr=0.5, momentum=0.9).step()
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [lambda ps: frt.optim.AdamW(ps, lr=1e-2),
                                  lambda ps: frt.optim.SGD(ps, lr=1e-2, momentum=0.9)])
def test_16bit_parameters_resume_exactly_from_a_state_dict(dtype, make):
    """A 16-bit parameter's state is float32 (fastreg's rule); load_state_dict keeps it
    float32 (torch's loader casts state to the parameter's dtype): the resumed run's next steps
    equal the uninterrupted run's, bit for bit."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000, generator=g).to(dtype))
    opt = make([p])
    for _ in range(3):
        p.grad = torch.randn(1000, generator=g).to(dtype)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = make([q])
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for k, v in opt.state[p].items():
        assert resumed.state[q][k].dtype == v.dtype and torch.equal(resumed.state[q][k], v)
    for _ in range(2):
        grad = torch.randn(1000, generator=g).to(dtype)
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        resumed.step()
    assert torch.equal(p, q)
