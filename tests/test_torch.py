"""fastreg.torch: autograd Functions (gradcheck), modules against torch's and against fastreg's
functional ops, convert(), optimizers against torch.optim and fastreg.optim, state_dict round
trips both ways, and the errors for bad input. CPU only here (CUDA tensors: tests/test_interop.py
when a GPU is present)."""
import copy
import io
import subprocess
import sys

import numpy as np
import pytest

import fastreg

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import gradcheck, gradgradcheck  # noqa: E402

F64 = torch.float64


@pytest.fixture(params=["numpy", "cpu"])
def tbackend(request):
    """Host backends for the modules ("cpu" falls back per op where a kernel is missing only
    under "auto"; a named backend must implement the op)."""
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


def _bn_backend(name):
    """The batch-norm kernels of the cpu backend may be missing: use "auto" (which falls back)."""
    try:
        fastreg._registry.get("bn_forward_train", name)
    except fastreg.BackendUnavailableError:
        return "auto"
    return name


def _x(shape, dtype=F64, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


# --- import -----------------------------------------------------------------------------------------

def test_import_without_torch_says_how_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fastreg, numpy as np\n"
            "fastreg.dropout(np.ones(4, np.float32), seed=1)\n"
            "try:\n    import fastreg.torch\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "ERR" in out.stdout, out.stderr
    assert 'pip install "fastreg-kernels[torch]"' in out.stdout


def test_fastreg_never_imports_torch():
    code = ("import sys, numpy as np, fastreg\n"
            "fastreg.dropout(np.ones(4, np.float32), seed=1, backend='numpy')\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --- gradcheck of every Function --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dropout", "channel_dropout", "drop_path"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_dropout(kind, channels_last):
    # numpy backend: gradcheck makes hundreds of tiny calls; the other backends draw the same
    # masks (test_dropout_module_masks_are_fastregs)
    x = _x((3, 4, 3, 5), channels_last=channels_last).requires_grad_()
    fn = getattr(frt, kind)
    assert gradcheck(lambda a: fn(a, 0.4, seed=11, offset=5, backend="numpy"), (x,))
    assert gradcheck(lambda a: fn(a, 0.4, seed=11, mode="classic", backend="numpy"), (x,))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_batch_norm(training, relu, channels_last, tbackend):
    x = _x((4, 3, 2, 3), channels_last=channels_last).requires_grad_()
    w = (_x((3,), seed=1) + 2).requires_grad_()
    b = _x((3,), seed=2).requires_grad_()
    rm, rv = _x((3,), seed=3), _x((3,), seed=4).abs() + 0.5
    be = _bn_backend(tbackend)

    def f(a, w, b):
        return frt.batch_norm(a, rm.clone(), rv.clone(), w, b, training=training, relu=relu,
                              backend=be)
    assert gradcheck(f, (x, w, b))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_batch_norm_residual_and_no_affine(channels_last):
    x = _x((4, 3, 2, 3), channels_last=channels_last).requires_grad_()
    r = _x((4, 3, 2, 3), channels_last=channels_last, seed=5).requires_grad_()
    assert gradcheck(lambda a, r: frt.batch_norm(a, training=True, relu=True, residual=r), (x, r))
    assert gradcheck(lambda a: frt.batch_norm(a, training=True), (_x((5, 3)).requires_grad_(),))


# --- double backward (create_graph=True: gradient penalties, Hessian-vector products) ----------

@pytest.mark.parametrize("kind", ["dropout", "channel_dropout", "drop_path", "drop_block"])
def test_gradgradcheck_dropout(kind):
    from fastreg.torch import dropblock
    x = _x((2, 3, 5, 5)).requires_grad_()
    if kind == "drop_block":
        def f(a):
            return dropblock.drop_block(a, 0.3, 3, seed=11, offset=5, backend="numpy")
    else:
        def f(a):
            return getattr(frt, kind)(a, 0.4, seed=11, offset=5, backend="numpy")
    assert gradgradcheck(f, (x,))


def test_dropout_double_backward_values():
    """d/dx of the gradient of sum(y**2) + sum(x**2), y = dropout(x): 2 m**2 + 2 per element
    (m the mask times the scale); it was 2 before (the dropout term left out, silently)."""
    d = frt.Dropout(0.5, seed=0)
    x = _x((8, 3)).requires_grad_()
    y = d(x)
    m = (y / x).detach()
    g, = torch.autograd.grad((y ** 2).sum() + (x ** 2).sum(), x, create_graph=True)
    gg, = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(gg, 2 * m ** 2 + 2)
    assert set(m.unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradgradcheck_batch_norm(training, relu, channels_last):
    x = _x((4, 3, 2, 3), channels_last=channels_last).requires_grad_()
    w = (_x((3,), seed=1) + 2).requires_grad_()
    b = _x((3,), seed=2).requires_grad_()
    r = _x((4, 3, 2, 3), channels_last=channels_last, seed=5).requires_grad_()
    rm, rv = _x((3,), seed=3), _x((3,), seed=4).abs() + 0.5

    def f(a, w, b, r):
        return frt.batch_norm(a, rm.clone(), rv.clone(), w, b, training=training, relu=relu,
                              residual=r)
    assert gradgradcheck(f, (x, w, b, r))
    assert gradgradcheck(lambda a: frt.batch_norm(a, training=training, relu=relu,
                                                  running_mean=rm.clone(),
                                                  running_var=rv.clone()), (x,))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_double_backward_matches_torch(training, tbackend):
    """A gradient penalty through BatchNorm1d: the same first and second derivatives as torch's
    module, and with create_graph the first-order gradients equal the kernels'."""
    x0 = _x((8, 3), seed=7)
    results = []
    for bn in (torch.nn.BatchNorm1d(3, dtype=F64),
               frt.BatchNorm1d(3, dtype=F64, backend=_bn_backend(tbackend))):
        with torch.no_grad():
            bn.weight.copy_(_x((3,), seed=1) + 2)
            bn.running_var.copy_(_x((3,), seed=4).abs() + 0.5)
        bn.train(training)
        x = x0.clone().requires_grad_()
        loss = (bn(x) ** 3).sum() + (x ** 2).sum()
        g, gw = torch.autograd.grad(loss, (x, bn.weight), create_graph=True)
        gg, ggw = torch.autograd.grad((g ** 2).sum() + gw.sum(), (x, bn.weight))
        x = x0.clone().requires_grad_()
        plain = torch.autograd.grad((bn(x) ** 3).sum() + (x ** 2).sum(), x)[0]
        torch.testing.assert_close(g.detach(), plain, rtol=1e-10, atol=1e-12)
        results.append((g, gw, gg, ggw))
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_batch_norm_custom_op_second_derivative_raises():
    """The operator used under torch.compile has no second derivative: it raises, never leaves
    the layer's part out."""
    from fastreg.torch import ops
    x = _x((8, 3)).requires_grad_()
    w = torch.ones(3, dtype=F64, requires_grad=True)
    y = ops.batch_norm(x, w, None, None, None, None, None, True, 0.1, 1e-5, False, False,
                       "auto")[0]
    g, = torch.autograd.grad((y ** 3).sum() + (x ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        torch.autograd.grad((g ** 2).sum(), x)


# --- dropout modules: the masks of fastreg's functional ops -----------------------------------------

@pytest.mark.parametrize("cls,op", [(frt.Dropout, fastreg.dropout),
                                    (frt.Dropout2d, fastreg.channel_dropout),
                                    (frt.DropPath, fastreg.drop_path)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_module_masks_are_fastregs(cls, op, channels_last, tbackend):
    m = cls(0.3, seed=2**63 + 7, backend=tbackend)
    x = _x((4, 5, 6, 7), dtype=torch.float32, channels_last=channels_last)
    draws = {frt.Dropout: x.numel(), frt.Dropout2d: 20, frt.DropPath: 4}[cls]
    for k in range(3):
        y = m(x)
        expected = op(x.numpy(), 0.3, seed=2**63 + 7, offset=k * draws, backend="numpy")
        np.testing.assert_array_equal(y.numpy(), expected)
        assert m.offset == (k + 1) * draws
    if channels_last and cls is frt.Dropout2d:
        assert y.is_contiguous(memory_format=torch.channels_last)
    # backward regenerates the same mask
    xg = x.clone().requires_grad_()
    m.offset = 0
    m(xg).backward(torch.ones_like(x))
    expected = op(np.ones(x.shape, np.float32), 0.3, seed=2**63 + 7, offset=0, backend="numpy")
    np.testing.assert_array_equal(xg.grad.numpy(), expected)


def test_dropout_train_eval_and_modes():
    x = _x((8, 16), dtype=torch.float32)
    m = frt.Dropout(0.5, seed=1)
    m.eval()
    assert m(x) is x and m.offset == 0
    c = frt.Dropout(0.25, mode="classic", seed=1).eval()
    np.testing.assert_array_equal(c(x).numpy(), fastreg.dropout(x.numpy(), 0.25, seed=1,
                                                                 training=False, mode="classic"))
    m.train()
    y = m(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * 2, rtol=0, atol=0)
    p0 = frt.Dropout(0.0, seed=1)
    assert torch.equal(p0(x), x) and p0.offset == x.numel()  # the counter advances anyway
    # unbatched Dropout3d input (C, D, H, W)
    d3 = frt.Dropout3d(0.5, seed=3)
    u = _x((6, 2, 4, 4), dtype=torch.float32)
    np.testing.assert_array_equal(d3(u).numpy(), fastreg.channel_dropout(u[None].numpy(), 0.5,
                                                                         seed=3)[0])


def _drop_groups(y):
    """True when every (n, c) slice of a 3-D (N, C, L) dropout output is all kept or all
    zeroed (one draw per (n, c))."""
    z = (y == 0)
    return bool((z.all(dim=2) | (~z).all(dim=2)).all())


def test_dropout2d_on_3d_input_is_batched_as_in_torch():
    # torch.nn.Dropout2d reads (N, C, L) as batched (one draw per (n, c), 1-D channel
    # dropout) and warns; fastreg's module must do the same so that convert() keeps it
    x = torch.ones(64, 3, 16)
    ref = nn.Dropout2d(0.5)
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input") as rec_t:
        yt = ref(x)
    m = frt.Dropout2d(0.5, seed=3)
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input") as rec_f:
        yf = m(x)
    assert str(rec_f[0].message) == str(rec_t[0].message)
    # the granularity of the drop pattern is torch's: whole (n, c) rows of length L
    assert _drop_groups(yt) and _drop_groups(yf)
    assert m.offset == 64 * 3                   # one draw per (n, c), not per c
    # samples are not all dropped alike (an unbatched (C, H, W) reading would draw 3 words)
    assert len({tuple(row.tolist()) for row in (yf[:, :, 0] != 0)}) > 1
    np.testing.assert_array_equal(
        yf.numpy(), fastreg.channel_dropout(x.numpy(), 0.5, seed=3, offset=0))
    # the kept values carry torch's scale 1 / (1 - p)
    assert set(yf.unique().tolist()) == set(yt.unique().tolist()) == {0.0, 2.0}
    # eval mode warns too, as torch does, and is the identity
    ref.eval(), m.eval()
    with pytest.warns(UserWarning, match="dropout2d"):
        assert torch.equal(m(x), ref(x))
    # a converted model keeps the behaviour
    conv = frt.convert(nn.Sequential(nn.Dropout2d(0.5)))
    with pytest.warns(UserWarning, match="dropout2d"):
        assert _drop_groups(conv(x))


def test_dropout_seed_from_torch_generator():
    torch.manual_seed(123)
    a = frt.Dropout(0.5)
    torch.manual_seed(123)
    b = frt.Dropout(0.5)
    assert a.seed == b.seed and frt.Dropout(0.5).seed != a.seed


def test_dropout_state_dict_resumes_the_stream():
    # seed and counter travel in the state_dict's metadata, not as keys (nn.Dropout has none)
    x = _x((64,), dtype=torch.float32)
    m = frt.Dropout(0.5, seed=2**64 - 3)
    m(x)
    saved = copy.deepcopy(m.state_dict())
    assert list(saved) == []
    assert saved._metadata[""]["fastreg_seed"] == 2**64 - 3
    assert saved._metadata[""]["fastreg_offset"] == 64
    expected = m(x)
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    fresh = frt.Dropout(0.5, seed=5)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert (fresh.seed, fresh.offset) == (2**64 - 3, 64)
    assert torch.equal(fresh(x), expected)
    # a state_dict of torch's nn.Dropout (no metadata of ours) keeps the module's own stream
    fresh.load_state_dict(nn.Dropout(0.5).state_dict())
    assert (fresh.seed, fresh.offset) == (2**64 - 3, 128)
    bad = m.state_dict()
    bad._metadata[""]["fastreg_seed"] = -1
    with pytest.raises(RuntimeError, match="seed"):
        fresh.load_state_dict(bad)
    # checkpoints that kept them as "_extra_state" still load
    fresh.load_state_dict({"_extra_state": {"seed": 99, "offset": 7}})
    assert (fresh.seed, fresh.offset) == (99, 7)


# --- batch-norm modules against torch ---------------------------------------------------------------

def _compare_modules(ref, got, x, steps=2):
    """Same outputs, input and parameter gradients, and state_dict for several steps (float64)."""
    for _ in range(steps):
        xr, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
        yr, yg = ref(xr), got(xg)
        torch.testing.assert_close(yg, yr, rtol=1e-10, atol=1e-10)
        g = _x(tuple(yr.shape), seed=9)
        yr.backward(g)
        yg.backward(g)
        torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-9, atol=1e-9)
        for (n, pr), pg in zip(ref.named_parameters(), got.parameters()):
            torch.testing.assert_close(pg.grad, pr.grad, rtol=1e-9, atol=1e-9, msg=n)
        sg = got.state_dict()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(sg[k], v, rtol=1e-12, atol=1e-12, msg=k)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm2d_matches_torch(momentum, affine, track, training, channels_last):
    ref = nn.BatchNorm2d(3, momentum=momentum, affine=affine,
                         track_running_stats=track).to(F64)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2)
            ref.bias.uniform_(-1, 1)
    got = frt.convert(ref)
    assert type(got) is frt.BatchNorm2d and list(got.state_dict()) == list(ref.state_dict())
    ref.train(training)
    got.train(training)
    x = _x((4, 3, 5, 6), channels_last=channels_last) * 3 + 1
    _compare_modules(ref, got, x)
    if channels_last:
        assert got(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 5)])
def test_batchnorm1d_matches_torch(shape):
    ref = nn.BatchNorm1d(4).to(F64)
    got = frt.BatchNorm1d(4, dtype=F64)
    got.load_state_dict(ref.state_dict())
    _compare_modules(ref, got, _x(shape))
    ref.eval()
    got.eval()
    _compare_modules(ref, got, _x(shape))


def test_batchnorm_relu_and_residual_match_torch():
    bn = nn.BatchNorm2d(3).to(F64)
    fused = frt.BatchNormReLU2d(3, dtype=F64)
    fused.load_state_dict(bn.state_dict())
    x, r = _x((4, 3, 4, 4)).requires_grad_(), _x((4, 3, 4, 4), seed=3).requires_grad_()
    x2, r2 = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    yr = torch.relu(bn(x) + r)
    yg = fused(x2, r2)
    torch.testing.assert_close(yg, yr)
    yr.sum().backward()
    yg.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(r2.grad, r.grad)
    torch.testing.assert_close(fused.weight.grad, bn.weight.grad)


def test_batchnorm_bias_false_and_isinstance():
    ref = nn.BatchNorm2d(3, bias=False).to(F64)
    got = frt.convert(ref)
    assert got.bias is None and isinstance(got, nn.BatchNorm2d)
    _compare_modules(ref, got, _x((4, 3, 2, 2)))


# --- convert -------------------------------------------------------------------------------------

def _cnn(p=0.0):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout2d(p),
        nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, momentum=None), nn.ReLU(),
        nn.Flatten(), nn.Dropout(p), nn.Linear(4 * 5 * 5, 7), nn.BatchNorm1d(7))


@pytest.mark.parametrize("channels_last", [False, True])
def test_converted_model_matches_torch(channels_last):
    torch.manual_seed(0)
    ref = _cnn().to(F64)
    got = frt.convert(ref, seed=1)
    assert ref[1].__class__ is nn.BatchNorm2d  # the original is untouched
    kinds = [type(m) for m in got]
    assert frt.BatchNormReLU2d in kinds and frt.Dropout2d in kinds and frt.Dropout in kinds
    assert nn.BatchNorm2d not in kinds and nn.Dropout not in kinds
    x = _x((3, 3, 5, 5), channels_last=channels_last)
    for mode in (True, False):
        ref.train(mode)
        got.train(mode)
        _compare_modules(ref, got, x)
        ref.zero_grad()
        got.zero_grad()


def test_converted_state_dict_loads_both_ways():
    torch.manual_seed(0)
    ref = _cnn(0.5).to(F64)
    got = frt.convert(ref, seed=1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1)
        ref[1].running_mean.fill_(0.5)
    got.load_state_dict(ref.state_dict())  # strict, both ways: the same keys
    torch.testing.assert_close(got[1].running_mean, ref[1].running_mean)
    back = _cnn(0.5).to(F64)
    assert list(got.state_dict()) == list(back.state_dict())
    back.load_state_dict(got.state_dict(), strict=True)
    # the dropout streams survive a checkpoint (in the metadata), also through the torch model
    got[3].offset, got[8].offset = 2**64 - 1, 12
    again = frt.convert(_cnn(0.5).to(F64), seed=7)
    again.load_state_dict(got.state_dict(), strict=True)
    assert (again[3].seed, again[3].offset) == (got[3].seed, 2**64 - 1)
    assert (again[8].seed, again[8].offset) == (got[8].seed, 12)
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k])


def test_converted_dropout_masks_and_seeds():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 8), nn.Dropout(0.5))
    a, b = frt.convert(ref, seed=42), frt.convert(ref, seed=42)
    assert a[0].seed == b[0].seed != a[2].seed
    x = _x((4, 8), dtype=torch.float32)
    np.testing.assert_array_equal(a[0](x).numpy(),
                                  fastreg.dropout(x.numpy(), 0.5, seed=a[0].seed, offset=0))
    ref.eval()
    assert not frt.convert(ref)[0].training
    bare = frt.convert(nn.Dropout(0.2), seed=1)
    assert type(bare) is frt.Dropout and bare.p == 0.2


def test_convert_fuses_bn_relu_only_where_nothing_can_see_between():
    """No fusion in an nn.Sequential subclass with its own forward (it may use the BN's output)
    nor where the BN or the ReLU has hooks (they would be lost, or see fused values)."""
    class Features(nn.Sequential):
        def forward(self, x):
            outs = []
            for m in self:
                x = m(x)
                outs.append(x)
            return outs[0]                      # the batch norm's own output
    x = _x((2, 4, 3, 3), dtype=torch.float32)
    sub = Features(nn.BatchNorm2d(4), nn.ReLU())
    got = frt.convert(sub)
    assert type(got[1]) is nn.ReLU and (got(x) < 0).any()
    torch.testing.assert_close(got(x), sub(x))
    for hooked in (1, 0):
        seq = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
        seq[hooked].register_forward_hook(lambda m, i, o: o * 0)
        got = frt.convert(seq)
        assert type(got[1]) is nn.ReLU
        assert torch.equal(got(x), seq(x)) and not got(x).any()
    plain = frt.convert(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    assert type(plain[0]) is frt.BatchNormReLU2d and type(plain[1]) is nn.Identity
    # hooks of a replaced module are carried over to its replacement
    seen = []
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(4))
    model[0].register_forward_pre_hook(lambda m, i: seen.append(type(m).__name__))
    model[1].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    frt.convert(model, seed=1)(x)
    assert seen == ["Dropout", "BatchNorm2d"]


def test_convert_keeps_the_buffers_of_a_bn_whose_tracking_was_turned_off():
    """A BatchNorm given track_running_stats=False after construction keeps its running
    statistics (torch uses them in eval): convert keeps them and the flag, as torch's
    convert_sync_batchnorm does (it refused the buffers' state_dict keys before)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn(torch.randn(8, 4, 5, 5))
    bn.track_running_stats = False
    new = frt.convert(bn)
    assert new.track_running_stats is False
    assert torch.equal(new.running_mean, bn.running_mean)
    assert torch.equal(new.running_var, bn.running_var)
    x = torch.randn(6, 4, 5, 5)
    for mode in ("train", "eval"):
        getattr(bn, mode)(), getattr(new, mode)()
        torch.testing.assert_close(new(x), bn(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(new.running_mean, bn.running_mean)   # not updated in training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_converted_half_batchnorm_matches_torch(dtype, channels_last):
    """A BatchNorm made 16-bit (model.bfloat16()): its parameters and running statistics stay
    16-bit, the kernels take them widened to float32 and round the statistics back once, as
    torch's CPU kernel stores them; outputs, gradients and statistics within a few 16-bit ulps
    of torch's over three training steps and in eval."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.BatchNorm2d(4)).to(dtype)
    with torch.no_grad():
        ref[0].weight.uniform_(0.5, 1.5)
        ref[0].bias.uniform_(-0.5, 0.5)
    ours = frt.convert(copy.deepcopy(ref))
    assert type(ours[0]) is frt.BatchNorm2d and ours[0].running_mean.dtype == dtype
    ulp = torch.finfo(dtype).eps

    def close(got, want, ulps=4):
        assert got.dtype == want.dtype
        got, want = got.detach(), want.detach()
        scale = max(1.0, float(want.abs().max()))
        assert float((got.float() - want.float()).abs().max()) <= ulps * ulp * scale

    for _ in range(3):
        x = (torch.randn(6, 4, 5, 5) * 2 + 1).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), ours(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        close(yb, ya)
        close(xb.grad, xa.grad)
        for name in ("running_mean", "running_var"):
            close(getattr(ours[0], name), getattr(ref[0], name))
        close(ours[0].weight.grad, ref[0].weight.grad, 8)   # sums of 150 products
        close(ours[0].bias.grad, ref[0].bias.grad, 8)
    assert int(ours[0].num_batches_tracked) == 3
    ref.eval(), ours.eval()
    x = torch.randn(6, 4, 5, 5).to(dtype)
    version = ours[0].running_var._version
    close(ours(x), ref(x))
    assert ours[0].running_var._version == version   # eval writes no buffer (as torch)


# --- optimizers -------------------------------------------------------------------------------------

def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (4,), (3, 2, 2, 2)]
    ps = [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]
    ps[2] = ps[2].detach().to(memory_format=torch.channels_last).requires_grad_()
    return ps


def _grads(ps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps]


OPT_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


def _run(opt, ps, steps, first=0, skip=None):
    for k in range(first, first + steps):
        for i, (p, g) in enumerate(zip(ps, _grads(ps, k))):
            p.grad = None if (k, i) == skip else g
        opt.step()


@pytest.mark.parametrize("name,kw", OPT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimizer_matches_torch(name, kw, dtype, tbackend):
    pr, pg = _params(dtype), _params(dtype)
    ref = getattr(torch.optim, name)(pr, **kw)
    got = getattr(frt.optim, name)(pg, decay_mask=True, backend=tbackend, **kw)
    _run(ref, pr, 4, skip=(2, 1))  # a parameter without a gradient is skipped, as in torch
    _run(got, pg, 4, skip=(2, 1))
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for a, b in zip(pg, pr):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert pg[2].is_contiguous(memory_format=torch.channels_last)
    # state_dicts load either way, and the runs continue in step
    ref2 = getattr(torch.optim, name)(pg, **kw)
    ref2.load_state_dict(got.state_dict())
    got2 = getattr(frt.optim, name)(pr, decay_mask=True, backend=tbackend, **kw)
    got2.load_state_dict(ref.state_dict())
    _run(ref2, pg, 2, first=4)
    _run(got2, pr, 2, first=4)
    for a, b in zip(pg, pr):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,kw", OPT_CASES)
def test_optimizer_is_fastreg_optim_bit_for_bit(name, kw):
    pt = _params(torch.float64)
    pn = [p.detach().numpy().copy(order="C") for p in pt]
    got = getattr(frt.optim, name)(pt, backend="numpy", **kw)
    kw_np = dict(kw)
    ref = getattr(fastreg.optim, name)(pn, backend="numpy", **kw_np)
    for k in range(3):
        gs = _grads(pt, k)
        for p, g in zip(pt, gs):
            p.grad = g
        got.step()
        ref.step([np.ascontiguousarray(g.numpy()) for g in gs])
    for a, b in zip(pt, pn):
        np.testing.assert_array_equal(np.ascontiguousarray(a.detach().numpy()), b)


def test_optimizer_state_dict_round_trip_and_groups():
    ps = _params(torch.float32)
    groups = [{"params": ps[:2], "lr": 0.05}, {"params": ps[2:], "weight_decay": 0.0}]
    a = frt.optim.AdamW(groups, lr=0.01, weight_decay=0.1)
    _run(a, ps, 3)
    assert a.param_groups[0]["decay_mask"] == [True, False]  # 1-D exempt by default
    saved = copy.deepcopy(a.state_dict())
    twin = [p.detach().clone().requires_grad_() for p in ps]
    twin[2] = twin[2].detach().to(memory_format=torch.channels_last).requires_grad_()
    b = frt.optim.AdamW([{"params": twin[:2]}, {"params": twin[2:]}])
    b.load_state_dict(saved)
    assert b.param_groups[0]["lr"] == 0.05 and b.param_groups[1]["weight_decay"] == 0.0
    _run(a, ps, 2, first=3)
    _run(b, twin, 2, first=3)
    for x, y in zip(ps, twin):
        assert torch.equal(x, y)


def test_decay_mask_and_l1():
    w, bias = torch.full((4, 4), 0.05).requires_grad_(), torch.full((4,), 0.05).requires_grad_()
    opt = frt.optim.SGD([w, bias], lr=1.0, l1=0.1)
    w.grad, bias.grad = torch.zeros(4, 4), torch.zeros(4)
    opt.step()
    assert torch.equal(w, torch.zeros(4, 4))        # soft(0.05, 0.1) = exact zero
    assert torch.equal(bias, torch.full((4,), 0.05))  # 1-D: exempt
    w2 = torch.full((4, 4), 0.05).requires_grad_()
    adam = frt.optim.AdamW([w2], lr=1e-3, l1=100.0, decay_mask=lambda p: True)
    w2.grad = torch.ones(4, 4)
    adam.step()
    assert torch.equal(w2, torch.zeros(4, 4))


def test_check_finite_changes_nothing():
    ps = _params(torch.float32)
    before = [p.detach().clone() for p in ps]
    opt = frt.optim.Adam(ps, lr=0.1, check_finite=True)
    for p, g in zip(ps, _grads(ps, 0)):
        p.grad = g
    ps[2].grad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"\['params'\]\[2\]"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, before)) and not opt.state


# --- bad input: clear errors naming the tensor, never a silent copy ---------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_input_as_under_autocast(dtype):
    """16-bit input with float32 parameters and statistics (torch.autocast's convention): the
    layers answer in the input's dtype, batch norm as torch's own within one 16-bit rounding,
    dropout with the float32 mask."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    bn, ref = frt.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    y, want = bn(x.to(dtype)), ref(x.to(dtype))
    assert y.dtype == dtype
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    torch.testing.assert_close(y.float(), want.float(), atol=4 * ulp, rtol=2 * ulp)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    d = frt.Dropout(0.5, seed=3)
    y16, y32 = d(x.to(dtype)), frt.Dropout(0.5, seed=3)(x)
    assert y16.dtype == dtype and torch.equal(y16 == 0, y32 == 0)


def test_dtype_mismatch_errors():
    bn = frt.BatchNorm2d(3)
    with pytest.raises(TypeError, match="BatchNorm2d.weight has dtype torch.float32"):
        bn(torch.randn(2, 3, 2, 2, dtype=F64))
    with pytest.raises(TypeError, match="Dropout input must be float32, float64, float16 or "
                                        "bfloat16"):
        frt.Dropout(0.5)(torch.ones(4, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\].*int64"):
        frt.optim.SGD([torch.zeros(3, dtype=torch.int64)], lr=0.1)  # 16-bit: test_torch_optim
    p = torch.zeros(3, requires_grad=True)
    opt = frt.optim.SGD([p], lr=0.1)
    p.grad_dtype = None  # torch 2.13 refuses a grad of another dtype unless told to allow it
    p.grad = torch.zeros(3, dtype=F64)
    with pytest.raises(TypeError, match=r"\['params'\]\[0\]\.grad has dtype torch.float64"):
        opt.step()


def test_device_mismatch_errors():
    bn = frt.BatchNorm2d(3).to("meta")
    with pytest.raises(ValueError, match="BatchNorm2d.weight is on meta but the input is on cpu"):
        bn(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="CPU and CUDA tensors only"):
        frt.Dropout(0.5)(torch.ones(4, device="meta"))
    p = torch.zeros(3, requires_grad=True)
    opt = frt.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match="exp_avg is on meta"):
        opt.step()


def test_optimizer_refuses_non_dense_param_before_changing_anything():
    big = torch.arange(12.0).reshape(3, 4)
    p1 = nn.Parameter(torch.ones(3))
    p2 = nn.Parameter(big[:, ::2])                 # a view with gaps
    for opt in (frt.optim.SGD([p1, p2], lr=0.5), frt.optim.Adam([p1, p2], lr=0.5)):
        p1.grad, p2.grad = torch.ones(3), torch.ones_like(p2)
        before1, before2 = p1.detach().clone(), p2.detach().clone()
        with pytest.raises(ValueError, match=r"\[1\] is not dense.*no parameter was changed"):
            opt.step()
        assert torch.equal(p1.detach(), before1) and torch.equal(p2.detach(), before2)
        assert not opt.state.get(p1)               # no state created either


def test_bad_arguments():
    with pytest.raises(ValueError, match="p must be in"):
        frt.Dropout(1.5)
    with pytest.raises(ValueError, match="mode"):
        frt.Dropout(0.5, mode="other")
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input"):
        frt.Dropout1d(0.5)(torch.ones(2, 3, 4, 5))  # torch's error (other ranks: tests/test_torch_dropout.py)
    with pytest.raises(ValueError, match="nesterov"):
        frt.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        frt.BatchNorm1d(3)(torch.ones(1, 3))


def test_convert_keeps_shared_modules_shared():
    """A module used twice (tied) stays one module: in two parents, and twice in one parent
    (named_children lists it once; the second use was left unconverted). A shared batch norm
    is not fused with a ReLU (that would untie it); a shared ReLU may be."""
    bn = nn.BatchNorm1d(4)
    m = nn.Module()
    m.a = nn.Sequential(nn.Linear(4, 4), bn)
    m.b = nn.Sequential(nn.Linear(4, 4), bn)
    c = frt.convert(m)
    assert c.a[1] is c.b[1] and isinstance(c.a[1], frt.BatchNorm1d)
    assert len(list(c.parameters())) == len(list(m.parameters())) == 6
    m2 = nn.Module()
    m2.x = m2.y = bn
    c2 = frt.convert(m2)
    assert c2.x is c2.y and isinstance(c2.y, frt.BatchNorm1d)
    d = nn.Dropout(0.5)
    c3 = frt.convert(nn.Sequential(nn.Linear(4, 4), d, nn.Linear(4, 4), d), seed=0)
    assert c3[1] is c3[3] and isinstance(c3[3], frt.Dropout)
    bn2, relu = nn.BatchNorm2d(3), nn.ReLU()
    c4 = frt.convert(nn.Sequential(nn.Sequential(bn2, nn.ReLU()),
                                   nn.Sequential(bn2, nn.Sigmoid())))
    assert c4[0][0] is c4[1][0] and type(c4[0][0]) is frt.BatchNorm2d
    c5 = frt.convert(nn.Sequential(nn.Sequential(nn.BatchNorm2d(3), relu),
                                   nn.Sequential(nn.BatchNorm2d(3), relu)))
    assert all(type(s[0]) is frt.BatchNormReLU2d for s in c5)


def test_optimizer_step_counts_as_an_inplace_update_of_its_parameters():
    """torch.optim's in-place step bumps a parameter's version, so a backward through a graph
    that saved it before the step raises; fastreg's kernels write through a view, and the
    version is bumped for them."""
    for cls in (frt.optim.SGD, frt.optim.Adam, frt.optim.AdamW):
        m = nn.Linear(3, 1)
        opt = cls(m.parameters(), lr=0.5)
        before = m.weight._version
        out = m(torch.randn(4, 3, requires_grad=True))
        out.sum().backward(retain_graph=True)
        opt.step()
        assert m.weight._version > before
        with pytest.raises(RuntimeError, match="inplace operation"):
            out.sum().backward()
