"""fastreg.torch's dropout modules as drop-in replacements of torch's: the constructor's
positional ``inplace``, the memory format of the output, torch's errors and warnings for inputs
of other ranks (torch 2.13's rules, checked against torch itself), ``training`` as a bool, and
the stream state (counter buffer, seed) kept out of the state_dict's keys."""
import warnings

import numpy as np
import pytest

import fastreg

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from torch import nn  # noqa: E402


def _x(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [frt.Dropout, frt.Dropout1d, frt.Dropout2d, frt.Dropout3d,
                                 frt.DropPath])
def test_inplace_is_the_second_positional_argument(cls):
    shape = {frt.Dropout1d: (4, 3, 5), frt.Dropout3d: (2, 3, 2, 2, 2)}.get(cls, (4, 3, 2, 2))
    x = _x(shape)
    expected = cls(0.2, seed=9)(x)
    m = cls(0.2, True, seed=9)
    assert m.inplace is True and m.p == 0.2 and "inplace=True" in repr(m)
    xi = x.clone()
    y = m(xi)
    assert y is xi and torch.equal(xi, expected) and m.offset == cls(0.2, seed=9)._draws(x)
    # as torch: the graph goes through the in-place write (non-leaf input)
    a = x.clone().requires_grad_()
    cls(0.2, True, seed=9)(a * 1).sum().backward()
    b = x.clone().requires_grad_()
    cls(0.2, seed=9)(b).sum().backward()
    assert torch.equal(a.grad, b.grad)
    # eval, classic mode: scaled in place
    c = cls(0.2, True, mode="classic", seed=9).eval()
    xi = x.clone()
    assert c(xi) is xi and torch.equal(xi, x * 0.8)
    with pytest.raises(TypeError, match="inplace must be a bool"):
        cls(0.2, "classic")  # mode is keyword-only now: no silent misreading


@pytest.mark.parametrize("cls,shape,fmt", [
    (frt.Dropout, (3, 4, 5, 6), torch.channels_last),
    (frt.Dropout2d, (3, 4, 5, 6), torch.channels_last),
    (frt.DropPath, (3, 4, 5, 6), torch.channels_last),
    (frt.Dropout3d, (2, 3, 2, 3, 4), torch.channels_last_3d),
    (frt.Dropout, (2, 3, 2, 3, 4), torch.channels_last_3d),
])
def test_output_keeps_the_memory_format(cls, shape, fmt):
    x = _x(shape)
    xc = x.to(memory_format=fmt)
    m = cls(0.5, seed=3)
    y, yc = m(x), cls(0.5, seed=3)(xc)
    assert yc.is_contiguous(memory_format=fmt) and y.is_contiguous()
    assert torch.equal(y, yc)  # the same mask in either layout
    assert nn.functional.dropout(xc, 0.5).is_contiguous(memory_format=fmt)  # torch's rule
    g = xc.clone().requires_grad_()
    cls(0.5, seed=3)(g).backward(torch.ones_like(xc))
    assert torch.equal(g.grad, cls(0.5, seed=3)(torch.ones(shape)))


def _outcome(fn, x):
    """(error class or None, the warnings' categories and first words, output shape)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            y = fn(x)
        except Exception as exc:  # noqa: BLE001 - the class is what is compared
            return type(exc), [], None
    return None, [(w.category, str(w.message)[:60]) for w in rec], tuple(y.shape)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_channel_dropout_ranks_as_torch(n):
    """Every rank 0..6, training and eval: the same error class, warnings (category and
    message) and output shape as torch's Dropout{n}d; where torch computes, one draw per
    (sample, channel) of the tensor torch reads (Dropout3d adds a batch axis below 5-D)."""
    ref_cls = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}[n]
    cls = {1: frt.Dropout1d, 2: frt.Dropout2d, 3: frt.Dropout3d}[n]
    for ndim in range(7):
        x = torch.ones([3] * ndim)
        for training in (True, False):
            ref, got = ref_cls(0.5).train(training), cls(0.5, seed=4).train(training)
            expected = _outcome(ref, x)
            assert _outcome(got, x) == expected, (n, ndim, training)
            if training and expected[0] is None:
                got = cls(0.5, seed=4)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    y = got(x)
                batched = x if (n != 1 or ndim == 3) and (n != 3 or ndim == 5) else x[None]
                draws = batched.shape[0] * batched.shape[1]
                assert got.offset == draws
                np.testing.assert_array_equal(
                    y.reshape(batched.shape).numpy(),
                    fastreg.channel_dropout(batched.numpy(), 0.5, seed=4, axis=1))


def test_training_must_be_a_bool():
    x = _x((4, 3))
    for fn in (frt.dropout, frt.channel_dropout, frt.drop_path):
        with pytest.raises(TypeError, match="training must be a bool"):
            fn(x, 0.5, seed=1, training=1)
        assert torch.equal(fn(x, 0.5, seed=1, training=np.bool_(True)),
                           fn(x, 0.5, seed=1, training=True))
    with pytest.raises(TypeError, match="training must be a bool"):
        frt.batch_norm(x, training=1)
    with pytest.raises(TypeError, match="relu must be a bool"):
        frt.batch_norm(x, training=True, relu=0)


def test_functions_return_torch_tensors():
    x = _x((4, 3, 2))
    for y in (frt.dropout(x, 0.5, seed=1), frt.channel_dropout(x, 0.5, seed=1),
              frt.drop_path(x, 0.5, seed=1), frt.batch_norm(x, training=True),
              frt.dropblock.drop_block(_x((2, 3, 4, 4)), 0.2, 3, seed=1)):
        assert isinstance(y, torch.Tensor) and y.device == x.device


def test_stream_state_is_a_buffer_outside_the_keys():
    m = frt.Dropout(0.5, seed=2**64 - 1)
    assert dict(m.named_buffers()).keys() == {"_offset"} and list(m.state_dict()) == []
    m.offset = 2**64 - 10
    assert m.offset == 2**64 - 10 and m._offset.item() == -10  # uint64 bits in int64
    m(_x((5,)))
    assert m.offset == 2**64 - 5
    for n in (6, 5):  # 5: the counter would read 2**64, i.e. wrap to 0 and repeat the stream
        with pytest.raises(ValueError, match="reaches 2\\*\\*64"):
            m(_x((n,)))
    assert m.offset == 2**64 - 5  # a refused call leaves the counter
    m(_x((4,)))
    assert m.offset == 2**64 - 1
    with pytest.raises(ValueError, match="offset"):
        m.offset = -1


def test_convert_keeps_inplace():
    """nn.Dropout(inplace=True) converts to an in-place fastreg Dropout (torch semantics kept)."""
    model = torch.nn.Sequential(torch.nn.Dropout(0.5, inplace=True), torch.nn.Dropout2d(0.2))
    c = frt.convert(model, seed=1)
    assert c[0].inplace and not c[1].inplace
    x = torch.ones(2, 3, 4, 4)
    assert c[0](x) is x and c[1](x) is not x


@pytest.mark.parametrize("cls", ["Dropout2d"])
def test_feature_dropout_of_too_few_dims_at_p_0_and_1_as_torch(cls):
    """torch returns the input at p = 0 and zeros at p = 1 before it needs a channel axis;
    it raises only for 0 < p < 1. (Dropout1d checks the rank first, and Dropout3d adds a batch
    axis to such input, in torch and here.)"""
    x = torch.randn(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert getattr(frt, cls)(0.0)(x) is x
        assert torch.equal(getattr(frt, cls)(1.0)(x), torch.zeros(5))
        y = x.clone()
        assert getattr(frt, cls)(1.0, inplace=True)(y) is y and torch.equal(y, torch.zeros(5))
        with pytest.raises(RuntimeError, match="at least 2 dimensions"):
            getattr(frt, cls)(0.5)(x)
        with pytest.raises(RuntimeError, match="at least 2 dimensions"):
            getattr(getattr(torch.nn, cls)(0.5), "forward")(x)


def test_refused_in_place_call_leaves_the_counter():
    """torch refuses in-place dropout of a leaf that requires grad (or a view of one): the
    module raises the same before any work, and its stream counter stays."""
    d = frt.Dropout(0.5, inplace=True, seed=1)
    leaf = torch.randn(10, requires_grad=True)
    for x, what in ((leaf, "a leaf Variable"), (leaf[:5], "a view of a leaf Variable")):
        with pytest.raises(RuntimeError, match=what):
            d(x)
        with pytest.raises(RuntimeError, match=what):
            nn.Dropout(0.5, inplace=True)(x)
        assert d.offset == 0
    d(leaf * 1)    # not a leaf: allowed, the counter moves
    assert d.offset == 10


@pytest.mark.parametrize("cls", [frt.Dropout, frt.Dropout1d, frt.Dropout2d, frt.Dropout3d,
                                 frt.DropPath])
def test_eval_is_the_identity_for_any_dtype(cls):
    """In eval, the inverted modules return their input itself, integer tensors included (as
    torch.nn.Dropout*); in training an integer tensor is still refused with a clear error."""
    shape = {frt.Dropout1d: (2, 3, 4), frt.Dropout3d: (2, 3, 2, 2, 2)}.get(cls, (2, 3, 2, 2))
    x = torch.arange(int(np.prod(shape))).reshape(shape)
    m = cls(0.5, seed=1).eval()
    assert m(x) is x
    m.train()
    with pytest.raises(TypeError, match="input must be float32"):
        m(x)
