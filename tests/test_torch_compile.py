"""fastreg.torch under torch.compile and torch.export: the custom operators (torch.ops.fastreg.*)
checked by torch.library.opcheck, a converted model compiled with fullgraph=True giving the same
bits as eager mode (outputs, gradients, running statistics, dropout counters, optimizer steps)
without recompiling from one step to the next, and exported programs.

Compiling is slow on a small machine: one test uses inductor (the default backend), the others
"aot_eager", which runs the same tracing (dynamo, fake tensors, AOTAutograd's functionalization
and joint forward/backward graph) without generating code."""
import copy

import pytest

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from fastreg.torch import ops  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile") or not hasattr(torch, "export"),
                                reason="torch.compile / torch.export need torch >= 2.1")


class _Net(nn.Module):
    """Every fastreg module in two small layers; seeds >= 2**63 included. No convolution or
    linear layer: inductor may sum those in another order than eager mode (not fastreg's
    business), while everything here must match bit for bit."""

    def __init__(self, C=4, HW=6):
        super().__init__()
        self.bn = frt.BatchNorm2d(C)
        self.d2 = frt.Dropout2d(0.3, seed=2**64 - 5)
        self.bnr = frt.BatchNormReLU2d(C)
        self.db = frt.DropBlock2d(0.2, 3, seed=3)
        self.dp = frt.DropPath(0.3, seed=11)
        self.d = frt.Dropout(0.4, seed=2**63 + 1)
        self.dc = frt.Dropout(0.2, mode="classic", seed=5)
        self.bn1 = frt.BatchNorm1d(C * HW * HW, momentum=None)

    def forward(self, x):
        h = self.bn(x)
        h = self.bnr(h, self.d2(h))           # BN + residual + ReLU, channel dropout
        h = h + self.dp(self.db(h))           # drop block, drop path
        return self.bn1(self.dc(self.d(h.flatten(1))))


def _x(shape=(4, 4, 6, 6), seed=0, channels_last=True):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _reset():
    """A fresh dynamo cache and fresh counters (reset() does not clear the counters)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def _assert_same_state(a, b):
    pb, bb = dict(b.named_parameters()), dict(b.named_buffers())
    assert set(pb) == set(dict(a.named_parameters())) and set(bb) == set(dict(a.named_buffers()))
    for n, p in a.named_parameters():
        assert torch.equal(p, pb[n]), n
        assert (p.grad is None) == (pb[n].grad is None), n
        if p.grad is not None:
            assert torch.equal(p.grad, pb[n].grad), n
    for n, t in a.named_buffers():
        assert torch.equal(t, bb[n]), n


def _step(model, x, opt=None):
    x = x.clone().requires_grad_()
    y = model(x)
    g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y * g).sum().backward()
    if opt is not None:
        opt.step()
        opt.zero_grad()
    return y, x.grad


def test_opcheck_every_operator():
    """torch's own checks of a custom operator: schema and aliasing, fake function against the
    real one (shapes, strides, dtypes), autograd registration, AOT dispatch."""
    x = _x((3, 4, 5, 5))
    off = torch.tensor(ops.to_int64(2**64 - 1000))
    seed = ops.to_int64(2**64 - 7)
    for kind, mode in (("element", "inverted"), ("channel", "classic"), ("path", "inverted")):
        torch.library.opcheck(torch.ops.fastreg.dropout.default,
                              (x.clone().requires_grad_(), off, seed, 0.3, True, mode, kind,
                               False, "auto"))
    torch.library.opcheck(torch.ops.fastreg.drop_block.default,
                          (x.clone().requires_grad_(), off, seed, 0.2, 3, 1.0, False, "auto"))
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    for training, relu, res in ((True, True, True), (False, False, False)):
        r = _x((3, 4, 5, 5), seed=1).requires_grad_() if res else None
        args = (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone(), r,
                torch.zeros(4), torch.ones(4), torch.zeros((), dtype=torch.int64), training,
                0.1, 1e-5, relu, training, "auto")
        torch.library.opcheck(torch.ops.fastreg.batch_norm.default, args)


def test_compiled_converted_model_fullgraph_same_bits_no_recompile():
    """Inductor, fullgraph=True, training and eval, channels-last input, fastreg's optimizer:
    the compiled model and its eager twin stay identical step after step, and the second and
    third steps reuse the two graphs (training, eval) compiled at the first."""
    _reset()
    eager = _Net()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True)
    opt_e = frt.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt_c = frt.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = _x()
    for step in range(3):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            for training in (True, False):
                eager.train(training)
                twin.train(training)
                ye, ge = _step(eager, x, opt_e if training else None)
                yc, gc = _step(compiled, x, opt_c if training else None)
                assert torch.equal(ye, yc) and torch.equal(ge, gc), (step, training)
                _assert_same_state(eager, twin)
        assert twin.d.offset == eager.d.offset == (step + 1) * x.numel()
        assert twin.d2.offset == (step + 1) * 16 and twin.dp.offset == (step + 1) * 4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_converted_torch_model_compiles():
    """A converted torch model (convolutions, BN + ReLU fused, dropout): fullgraph in both modes;
    the fastreg layers agree with eager mode (convolutions may round differently)."""
    _reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout2d(0.5), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4 * 5 * 5, 3))
    conv = frt.convert(model, seed=0)  # seeds >= 2**63 among them
    assert any(m.seed >= 2**63 for m in conv if isinstance(m, frt.Dropout))
    twin = copy.deepcopy(conv)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = _x((2, 3, 5, 5), channels_last=False)
    for step in range(2):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            for training in (True, False):
                conv.train(training)
                twin.train(training)
                ye, ge = _step(conv, x)
                yc, gc = _step(compiled, x)
                torch.testing.assert_close(yc, ye)
                torch.testing.assert_close(gc, ge)
    assert twin[5].offset == conv[5].offset == 2 * x.shape[0] * 4 * 5 * 5


def test_functional_forms_compile():
    _reset()
    x = _x((3, 4, 5, 5))
    seed, offset = 2**64 - 2, 2**63 + 5

    def f(x):
        a = frt.dropout(x, 0.3, seed=seed, offset=offset)
        b = frt.channel_dropout(x, 0.3, seed=seed, offset=offset, mode="classic")
        c = frt.drop_path(x, 0.3, seed=seed, offset=offset)
        d = frt.functions.dropout(x, 0.3, seed=seed, training=False, mode="classic")
        e = frt.dropblock.drop_block(x, 0.2, 3, seed=seed, offset=offset)
        f = frt.batch_norm(x, training=True, relu=True, residual=a)
        return a + b + c + d + e + f

    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye = f(xe)
    yc = torch.compile(f, fullgraph=True, backend="aot_eager")(xc)
    assert torch.equal(ye, yc)
    ye.sum().backward()
    yc.sum().backward()
    assert torch.equal(xe.grad, xc.grad)


def test_export_train_and_eval():
    """torch.export: the counter is a (non-persistent) buffer mutated by the program, so the
    exported module draws the stream as the eager one does; eval programs are pure."""
    for training in (True, False):
        eager = _Net().train(training)
        program = torch.export.export(copy.deepcopy(eager), (_x(),))
        # the functional form of the program lists the buffers it updates
        mutated = program.run_decompositions({}).graph_signature.buffers_to_mutate.values()
        exported = program.module()
        for k in range(2):
            x = _x(seed=k)
            assert torch.equal(exported(x), eager(x)), (training, k)
        _assert_same_state(eager, exported)
        names = {"d._offset", "d2._offset", "dp._offset", "db._offset", "bn.running_mean"}
        assert names <= set(mutated) if training else not (names & set(mutated))


def test_batch_size_changes_inplace_and_seed_change():
    """A new batch size recompiles once (dynamic shapes), then no more; inplace=True works in
    the graph; setting the counter does not recompile, a new seed recompiles once."""
    _reset()
    model = nn.Sequential(frt.BatchNorm1d(8), frt.Dropout(0.3, True, seed=2**64 - 1),
                          frt.DropPath(0.2, seed=1), frt.Dropout1d(0.2, seed=3))
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for k, n in enumerate((4, 6, 8, 10)):
        with torch._dynamo.config.patch(error_on_recompile=k > 1):
            x = _x((n, 8, 3), seed=k, channels_last=False)
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = eager(a * 1), compiled(b * 1)
            assert torch.equal(ya, yb), n
            ya.sum().backward()
            yb.sum().backward()
            assert torch.equal(a.grad, b.grad), n
    assert model[1].offset == eager[1].offset == (4 + 6 + 8 + 10) * 24
    x = x.requires_grad_()  # the graphs were traced with inputs requiring grad
    with torch._dynamo.config.patch(error_on_recompile=True):
        model[1].offset = eager[1].offset = 0
        assert torch.equal(compiled(x * 1), eager(x * 1))
    model[1].seed = eager[1].seed = 7
    assert torch.equal(compiled(x * 1), eager(x * 1))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
