"""fastreg.torch.ModelEma and the clipping functions where timm's train loop uses them: a model
with tied weights, a model wrapped by torch.compile or DDP, a training step compiled with
torch.compile, and torch's one-element tensor arguments."""
import copy

import pytest

torch = pytest.importorskip("torch")
import fastreg._multi  # noqa: E402
import fastreg.torch as frt  # noqa: E402


class Tied(torch.nn.Module):
    """An embedding shared with the output layer (a language model's tied weights)."""

    def __init__(self, tie=True):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 10, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(self.norm(self.emb(idx)))


class Wrapper(torch.nn.Module):
    """DistributedDataParallel's layout (``.module``), without a process group."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 2))


def _perturb(model, seed=1):
    """Another value for every floating-point entry (the buffers too), as training does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            else:
                t.add_(3)


def _lerped(ema_module, model, decay):
    """timm's ModelEmaV3 update written out on copies: each distinct tensor once."""
    want = {k: v.clone() for k, v in ema_module.state_dict().items()}
    for k, m in model.state_dict().items():
        if want[k].is_floating_point():
            want[k] = torch.lerp(want[k], m, 1.0 - decay)
        else:
            want[k] = m.clone()
    return want


def _assert_state(module, want):
    got = module.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ---- 1. tied weights ----------------------------------------------------------------------------

@pytest.mark.parametrize("exclude_buffers", [False, True])
def test_tied_weights_are_averaged_once(exclude_buffers):
    model = Tied()
    ema = frt.ModelEma(model, decay=0.5, exclude_buffers=exclude_buffers)
    assert ema.module.out.weight is ema.module.emb.weight   # deepcopy keeps the tie
    _perturb(model)
    want = _lerped(ema.module, model, 0.5)
    if exclude_buffers:   # the buffers copied, not averaged
        for k, v in model.state_dict().items():
            if k.startswith("norm.running") or k.endswith("num_batches_tracked"):
                want[k] = v.clone()
    assert ema.update(model) == 0.5
    _assert_state(ema.module, want)
    assert ema.module.out.weight is ema.module.emb.weight
    # AveragedModel's rule on the parameters (each distinct one once) gives the same average
    assert torch.equal(ema.module.out.weight, want["emb.weight"])


def test_tied_weights_must_be_tied_on_both_sides():
    ema = frt.ModelEma(Tied(), decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    untied = Tied(tie=False)
    with pytest.raises(ValueError, match=r"EMA's copy ties 'emb.weight' and 'out.weight'"):
        ema.update(untied)
    _assert_state(ema.module, before)   # nothing changed
    plain = frt.ModelEma(Tied(tie=False), decay=0.5)
    with pytest.raises(ValueError, match=r"model ties 'emb.weight' and 'out.weight'"):
        plain.update(Tied())
    with pytest.raises(ValueError, match=r"model ties 'module.emb.weight' and "
                                         r"'module.out.weight'"):
        plain.update(Wrapper(Tied()))


# ---- 2. wrapped models --------------------------------------------------------------------------

def _wrappers():
    return {
        "compile": lambda m: torch.compile(m, backend="eager"),
        "ddp": Wrapper,
        "ddp+compile": lambda m: torch.compile(Wrapper(m), backend="eager"),
        "compiled submodule": _compile_first,
    }


def _compile_first(m):
    """The same tensors, the first layer compiled: keys '0._orig_mod.weight', ..."""
    return torch.nn.Sequential(torch.compile(m[0], backend="eager"), *m[1:])


@pytest.mark.parametrize("wrap", list(_wrappers()))
@pytest.mark.parametrize("exclude_buffers", [False, True])
def test_update_takes_a_wrapped_model(wrap, exclude_buffers):
    model = _net()
    ema = frt.ModelEma(model, decay=0.75, exclude_buffers=exclude_buffers)
    twin = copy.deepcopy(ema)
    _perturb(model)
    twin.update(model)                      # the bare model: the expected result
    wrapped = _wrappers()[wrap](model)
    assert list(wrapped.state_dict()) != list(model.state_dict())
    ema.update(wrapped)
    _assert_state(ema.module, twin.module.state_dict())


def test_ema_of_a_wrapped_model_takes_the_bare_model():
    model = _net()
    ema = frt.ModelEma(Wrapper(torch.compile(model, backend="eager")), decay=0.75)
    twin = frt.ModelEma(model, decay=0.75)
    _perturb(model)
    ema.update(model)
    twin.update(Wrapper(model))
    for a, b in zip(ema.module.state_dict().values(), twin.module.state_dict().values()):
        assert torch.equal(a, b)


def test_a_model_whose_entries_all_start_with_module_matches_itself():
    model = Wrapper(Wrapper(_net()))     # entries 'module.module.0.weight', ...
    ema = frt.ModelEma(model, decay=0.5)
    twin = copy.deepcopy(ema)
    _perturb(model)
    twin.update(model)
    ema.update(Wrapper(model))           # one 'module.' more
    _assert_state(ema.module, twin.module.state_dict())


def test_another_architecture_is_still_refused_naming_the_entry():
    model = _net()
    ema = frt.ModelEma(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"differ.*entry 2 is '_orig_mod.2.weight' in the "
                                         r"model, '1.weight' in the copy"):
        ema.update(torch.compile(other, backend="eager"))
    with pytest.raises(ValueError, match=r"state_dict entries differ.*the model has 2 entries, "
                                         r"the copy 9 \(first extra: '1.weight'\)"):
        ema.update(Wrapper(model[:1]))
    longer = torch.nn.Sequential(*_net(), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"the model has 11 entries, the copy 9 \(first extra: "
                                         r"'4.weight'\)"):
        ema.update(longer)
    wide = _net()
    wide[3] = torch.nn.Linear(4, 5)
    with pytest.raises(ValueError, match=r"'module.3.weight' has shape \(5, 4\)"):
        ema.update(Wrapper(wide))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(4, 3\) and dtype torch.float64"):
        ema.update(_net().double())
    with pytest.raises(ValueError, match="parameters and buffers differ"):
        frt.ModelEma(model, exclude_buffers=True).update(other)
    _assert_state(ema.module, before)   # nothing changed


# ---- 3. inside torch.compile --------------------------------------------------------------------

def _train(step, model, ema, steps=3):
    norms = []
    for i in range(steps):
        g = torch.Generator().manual_seed(10 + i)
        x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
        norms.append(step(model, ema, x, y, i + 1))
    return norms


def _step(model, ema, x, y, i):
    loss = (model(x) - y).square().mean()
    loss.backward()
    norm = frt.clip_grad_norm_(model.parameters(), 0.05)
    frt.adaptive_clip_grad_(model.parameters(), clip_factor=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
            p.grad = None
    ema.update(model, step=i)
    return norm


def _cold():
    """Dynamo failed where the kernels' list checks ran inside the compiled frame (reading the
    C extension's ``lib``, which it cannot guard), i.e. on a list without a cached plan
    (fastreg/_multi.py): forget the plans so that the first compiled call is such a call."""
    torch._dynamo.reset()
    fastreg._multi.forget()


def test_compiled_training_step_equals_eager():
    _cold()
    eager_model, compiled_model = _net(), _net()
    eager_ema = frt.ModelEma(eager_model, decay=0.9)
    compiled_ema = frt.ModelEma(compiled_model, decay=0.9)
    got = _train(torch.compile(_step, backend="aot_eager"), compiled_model, compiled_ema)
    want = _train(_step, eager_model, eager_ema)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    for a, b in ((compiled_model, eager_model), (compiled_ema.module, eager_ema.module)):
        for k, v in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[k], v, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", ["update", "clip_grad_norm_", "adaptive_clip_grad_"])
def test_compiled_calls_of_the_public_functions(name):
    """Each alone, its first call in a compiled frame (adaptive_clip_grad_ got through before
    ``torch.compiler.disable``, tracing into fastreg with graph breaks; the others failed)."""
    model = _net()
    ema = frt.ModelEma(model, decay=0.5)
    _perturb(model)
    want = _lerped(ema.module, model, 0.5)
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    calls = {"update": lambda: ema.update(model),
             "clip_grad_norm_": lambda: frt.clip_grad_norm_([p], 1.0),
             "adaptive_clip_grad_": lambda: frt.adaptive_clip_grad_([p], 0.1)}
    _cold()
    out = torch.compile(calls[name], backend="aot_eager")()
    if name == "update":
        assert out == 0.5
        _assert_state(ema.module, want)
    elif name == "clip_grad_norm_":
        assert out.item() == 4.0
        torch.testing.assert_close(p.grad, torch.full((4,), 0.5), rtol=1e-6, atol=0)
    else:   # a vector is one unit: its gradient's norm (4) limited to 0.1 * its norm (2)
        torch.testing.assert_close(p.grad, torch.full((4,), 0.1), rtol=1e-6, atol=0)


# ---- 4. one-element tensor arguments ------------------------------------------------------------

def _grad_params(seed=0):
    model = _net(seed)
    model(torch.randn(5, 3)).square().sum().backward()
    return list(model.parameters())


@pytest.mark.parametrize("max_norm, norm_type", [
    (torch.tensor(0.1), 2.0), (torch.tensor([0.1]), torch.tensor(1.0)),
    (0.1, torch.tensor(float("inf"))), (torch.tensor(0.1, dtype=torch.float64), "inf"),
    (torch.tensor(0.1, requires_grad=True), torch.tensor([[3.0]]))])
def test_clip_grad_norm_takes_one_element_tensors(max_norm, norm_type):
    as_float = [v.item() if isinstance(v, torch.Tensor) else v for v in (max_norm, norm_type)]
    a, b, c = _grad_params(), _grad_params(), _grad_params()
    got = frt.clip_grad_norm_(a, max_norm, norm_type)
    want = frt.clip_grad_norm_(b, *as_float)
    assert got.dtype == want.dtype and torch.equal(got, want)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.grad, pb.grad)
    torch_total = torch.nn.utils.clip_grad_norm_(c, max_norm, norm_type)   # torch takes them
    torch.testing.assert_close(got, torch_total, rtol=1e-6, atol=0)


def test_adaptive_clip_grad_takes_one_element_tensors():
    a, b = _grad_params(), _grad_params()
    frt.adaptive_clip_grad_(a, torch.tensor(0.01), torch.tensor([1e-3]), torch.tensor(2.0))
    frt.adaptive_clip_grad_(b, 0.01, 1e-3, 2.0)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.grad, pb.grad)


def test_tensor_arguments_are_still_checked():
    params = _grad_params()
    with pytest.raises(ValueError, match="max_norm must be a number or a one-element tensor"):
        frt.clip_grad_norm_(params, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="norm_type must be a number or a one-element tensor"):
        frt.clip_grad_norm_(params, 1.0, torch.zeros(0))
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        frt.clip_grad_norm_(params, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        frt.clip_grad_norm_(params, 1.0, torch.tensor(0.0))
    with pytest.raises(ValueError, match="clip_factor must be a number or a one-element"):
        frt.adaptive_clip_grad_(params, torch.ones(2))


def test_update_takes_a_one_element_tensor_step():
    """update(model, step=t) with a 0-d integer tensor (an optimizer's step count) takes its
    value, as timm's arithmetic on it does; a fractional step is still refused."""
    m = torch.nn.Linear(3, 2)
    ema = frt.ModelEma(m, decay=0.9, use_warmup=True)
    assert ema.get_decay(torch.tensor(5)) == ema.get_decay(5)
    ema.update(m, step=torch.tensor(5))
    with pytest.raises(ValueError, match="step"):
        ema.get_decay(torch.tensor(1.5))
