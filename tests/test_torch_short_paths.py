"""The short per-call paths of the torch modules and of the host batch-norm / dropout wrappers
give exactly what the general paths give, and keep every check (issues 12 and 14).

The general path is reached on the same data by a detail the short path declines (an axis given
as a NumPy integer, a seed given as a NumPy integer, a non-contiguous tensor), so each pair of
calls compares the two paths bit for bit."""
import copy
import io
import pickle

import numpy as np
import pytest

import fastreg
from fastreg import batchnorm as _batchnorm

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
import fastreg.torch as frt  # noqa: E402
from fastreg.torch import _bridge, ops  # noqa: E402

DTYPES = [np.float32, np.float64]


def _host_args(dtype, C=5, N=7, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C)) * 2 + 1).astype(dtype)
    return (x, np.zeros(C, dtype), np.ones(C, dtype), rng.random(C).astype(dtype) + 0.5,
            rng.standard_normal(C).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_host_batch_norm_out_short_path_equals_general(dtype, training):
    runs = []
    for axis in (1, np.int64(1)):  # an int takes the short path, a NumPy integer the general one
        x, rm, rv, w, b = _host_args(dtype)
        nbt = np.zeros(1, np.int64)
        out = np.full_like(x, np.nan)
        y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=training, axis=axis, out=out,
                                      num_batches_tracked=nbt if training else None,
                                      momentum=None if training else 0.1)
        assert y is out
        gy = np.random.default_rng(3).standard_normal(x.shape).astype(dtype)
        gout = np.full_like(x, np.nan)
        grads = fastreg.batch_norm_backward(gy, x, saved, w, out=gout)
        assert grads[0] is gout
        runs.append((y, rm, rv, nbt, saved.mean, saved.invstd) + tuple(grads))
    for a, e in zip(*runs):
        np.testing.assert_array_equal(a, e)


def test_host_batch_norm_short_path_out_is_x_and_overlaps():
    x, rm, rv, w, b = _host_args(np.float32)
    expected, _ = fastreg.batch_norm(x.copy(), rm.copy(), rv.copy(), w, b, training=True)
    y, _ = fastreg.batch_norm(x, rm, rv, w, b, training=True, out=x)  # exactly in place
    assert y is x
    np.testing.assert_array_equal(x, expected)
    buf = np.zeros(2 * x.size, np.float32)
    xs = buf[:x.size].reshape(x.shape)
    xs[...] = expected
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.batch_norm(xs, rm, rv, w, b, training=True,
                           out=buf[3:3 + x.size].reshape(x.shape))


def test_host_batch_norm_backward_out_overlapping_grad_y():
    x, rm, rv, w, b = _host_args(np.float64)
    _, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True)
    buf = np.random.default_rng(1).standard_normal(x.size + 1)
    gy = buf[:-1].reshape(x.shape)
    with pytest.raises(ValueError, match="overlaps"):
        fastreg.batch_norm_backward(gy, x, saved, w, out=buf[1:].reshape(x.shape))
    expected = fastreg.batch_norm_backward(gy.copy(), x, saved, w)
    got = fastreg.batch_norm_backward(gy, x, saved, w, out=gy)  # exactly in place: allowed
    assert got[0] is gy
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)


def test_host_batch_norm_running_stats_as_views():
    """Running statistics that are views (of tensors, of one buffer): accepted when disjoint,
    refused when they share memory, on the short path as on the general one."""
    x, _, _, w, b = _host_args(np.float32, C=4)
    buf = np.zeros(8, np.float32)
    rm, rv = buf[:4], buf[4:]
    rv[...] = 1
    ref_m, ref_v = np.zeros(4, np.float32), np.ones(4, np.float32)
    y, _ = fastreg.batch_norm(x, rm, rv, w, b, training=True)
    e, _ = fastreg.batch_norm(x, ref_m, ref_v, w, b, training=True)
    np.testing.assert_array_equal(y, e)
    np.testing.assert_array_equal(rm, ref_m)
    np.testing.assert_array_equal(rv, ref_v)
    with pytest.raises(ValueError, match="share memory"):
        fastreg.batch_norm(x, buf[:4], buf[2:6], w, b, training=True)
    t = torch.zeros(8)
    with pytest.raises(ValueError, match="share memory"):
        fastreg.batch_norm(x, t[:4].numpy(), t[3:7].numpy(), w, b, training=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backward", [False, True])
def test_host_dropout_short_path_equals_general(dtype, training, backward):
    fn = fastreg.dropout_backward if backward else fastreg.dropout
    x = np.random.default_rng(2).standard_normal((6, 9)).astype(dtype)
    for mode in ("inverted", "classic"):
        for out in (None, np.full_like(x, np.nan)):
            kw = dict(offset=5, training=training, mode=mode, out=out)
            got = fn(x, 0.3, seed=11, **kw)  # short path
            general = fn(x, 0.3, seed=np.uint64(11), **dict(kw, out=None))
            np.testing.assert_array_equal(got, general)
            if out is not None:
                assert got is out


def test_host_dropout_short_path_keeps_the_checks():
    x = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="exceeds 2\\*\\*64"):
        fastreg.dropout(x, 0.5, seed=1, offset=2 ** 64 - 3)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        fastreg.dropout(x, 1.5, seed=1)
    with pytest.raises(ValueError, match="mode"):
        fastreg.dropout(x, 0.5, seed=1, mode="other")
    with pytest.raises(TypeError, match="training"):
        fastreg.dropout(x, 0.5, seed=1, training=1)
    with pytest.raises(ValueError, match="seed"):
        fastreg.dropout(x, 0.5, seed=-1)
    y, state = fastreg.dropout(x, 0.5, seed=3, offset=7, return_state=True)
    assert (state.seed, state.offset, state.p) == (3, 7, 0.5)
    np.testing.assert_array_equal(state.backward(np.ones_like(x)), y)


# ---- torch modules -----------------------------------------------------------------------------

def _bn_pair(cls=frt.BatchNorm1d, C=6, **kw):
    a = cls(C, **kw).double()
    with torch.no_grad():
        if a.weight is not None:
            a.weight.uniform_(0.5, 1.5)
            a.bias.uniform_(-1, 1)
    return a, copy.deepcopy(a)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_module_contiguous_equals_strided_input(momentum):
    """A C-contiguous input (short path) and the same values as a strided view (general path):
    the same outputs, gradients and running statistics, bit for bit."""
    a, b = _bn_pair(momentum=momentum)
    x = torch.randn(9, 6, dtype=torch.float64)
    gy = torch.randn(9, 6, dtype=torch.float64)
    xa = x.clone().requires_grad_()
    xb = x.t().contiguous().t().requires_grad_()   # same values, column-major
    assert xa.is_contiguous() and not xb.is_contiguous()
    for _ in range(2):
        ya, yb = a(xa), b(xb)
        assert torch.equal(ya, yb)
        ya.backward(gy)
        yb.backward(gy)
    assert torch.equal(xa.grad, xb.grad)
    for name in ("weight", "bias"):
        assert torch.equal(getattr(a, name).grad, getattr(b, name).grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert int(a.num_batches_tracked) == 2
    a.eval()
    b.eval()
    assert torch.equal(a(xa), b(xb))


def test_bn_module_checks_on_the_short_path():
    m = frt.BatchNorm1d(4)
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="BatchNorm1d.weight has dtype torch.float64"):
        m.weight.data = m.weight.data.double()
        m(x)
    m = frt.BatchNorm1d(4)
    with pytest.raises(TypeError, match="BatchNorm1d.running_mean has dtype"):
        m.running_mean = torch.zeros(4, dtype=torch.float64)
        m(x)
    m = frt.BatchNorm1d(4)
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        m(torch.randn(3, 4, 2, 2))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        m(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="must be float32, float64"):
        m(torch.ones(3, 4, dtype=torch.int64))
    r = frt.BatchNormReLU2d(4)
    with pytest.raises(ValueError, match="residual has shape"):
        r(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 2))
    with pytest.raises(TypeError, match="residual has dtype"):
        r(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, dtype=torch.float64))


def test_bn_module_weight_set_as_a_plain_attribute():
    """A weight that is no longer a registered parameter (deleted, then set as an attribute)
    is still the one used."""
    a, b = _bn_pair()
    w = a.weight.detach().clone() * 2
    del a.weight
    a.weight = w
    with torch.no_grad():
        b.weight.mul_(2)
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.equal(a(x), b(x))


def test_bn_module_16_bit_input_with_float32_parameters():
    m = frt.BatchNorm1d(4)
    x = torch.randn(6, 4).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.batch_norm(x.float(), None, None, training=True).to(torch.bfloat16)
    torch.testing.assert_close(y.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_bn_module_follows_fastreg_backend(monkeypatch):
    """backend="auto" on CPU follows FASTREG_BACKEND at each call (the resolution is
    remembered per value, not frozen)."""
    seen = []
    real = _bridge._dispatch.resolve_host

    def spy(backend):
        name = real(backend)
        seen.append(name)
        return name
    monkeypatch.setattr(_bridge._dispatch, "resolve_host", spy)
    m = frt.BatchNorm1d(3)
    x = torch.randn(4, 3)
    monkeypatch.setenv("FASTREG_BACKEND", "numpy")
    m(x)
    assert seen[-1] == "numpy"
    monkeypatch.delenv("FASTREG_BACKEND")
    m(x)
    assert seen[-1] == fastreg._registry.resolve("auto")


def _drop_pair(cls=frt.Dropout, **kw):
    return cls(0.4, seed=123, **kw), cls(0.4, seed=123, **kw)


@pytest.mark.parametrize("cls", [frt.Dropout, frt.Dropout2d, frt.DropPath])
def test_dropout_module_contiguous_equals_strided(cls):
    a, b = _drop_pair(cls)
    x = torch.randn(4, 3, 5, 6)
    xb = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last, same values
    for _ in range(2):
        assert torch.equal(a(x), b(xb))
    assert a.offset == b.offset > 0


def test_dropout_module_counter_after_copy_pickle_and_move():
    a = frt.Dropout(0.5, seed=9)
    x = torch.randn(8, 8)
    a(x)
    c = copy.deepcopy(a)
    assert c.offset == a.offset == 64
    a(x)
    assert (a.offset, c.offset) == (128, 64)   # independent counters
    c(x)
    assert (a.offset, c.offset) == (128, 128)
    d = pickle.loads(pickle.dumps(a))
    assert "_counter_cache" not in d.__dict__ and d.offset == 128
    d(x)
    assert (a.offset, d.offset) == (128, 192)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    e = frt.Dropout(0.5, seed=1)
    e.load_state_dict(torch.load(buf, weights_only=True))
    assert (e.seed, e.offset) == (9, 128)
    assert torch.equal(e(x), a(x))
    a.offset = 5                      # the setter writes the buffer: the next call sees it
    y5 = a(x)
    assert a.offset == 69
    a._offset.fill_(5)                # so does an in-place write to the buffer itself
    assert torch.equal(a(x), y5)
    a.to(torch.float64)               # the counter stays int64 and keeps its value
    assert a.offset == 69
    a._offset = torch.tensor(5)       # a new buffer tensor: read afresh
    assert torch.equal(a(x), y5) and a.offset == 69


def test_dropout_module_without_grad_equals_with_grad():
    a, b = _drop_pair()
    x = torch.randn(5, 7)
    y_nograd = a(x)                   # x does not require grad: no autograd node
    y_grad = b(x.clone().requires_grad_())
    assert y_nograd.grad_fn is None and y_grad.grad_fn is not None
    assert torch.equal(y_nograd, y_grad.detach())
    with torch.no_grad():
        assert torch.equal(a(x), b(x.clone().requires_grad_()))
    assert torch.equal(frt.dropout(x, 0.3, seed=4, offset=2),
                       frt.dropout(x.clone().requires_grad_(), 0.3, seed=4, offset=2).detach())


def test_dropout_run_short_path_equals_general():
    x = torch.randn(6, 10, dtype=torch.float64)
    for backward in (False, True):
        got = ops.dropout_run(x, 3, 17, 0.25, True, "inverted", "element", backward, "auto")
        ref = fastreg.dropout_backward if backward else fastreg.dropout
        e = ref(x.numpy(), 0.25, seed=3, offset=17)
        np.testing.assert_array_equal(got.numpy(), e)


def test_backend_for_explicit_and_unknown():
    x = torch.ones(2)
    assert _bridge.backend_for("dropout", "numpy", x) == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        _bridge.backend_for("dropout", "gpu", x)
    with pytest.raises(TypeError, match="backend must be a string"):
        _bridge.backend_for("dropout", 3, x)


def test_geometry_cache_shapes_are_reused_safely():
    """The short host path starts from geometry remembered per (shape, axis): another axis for
    the same shape is computed afresh."""
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    for axis in (1, -1, 1):
        C = x.shape[axis]
        y, saved = fastreg.batch_norm(x, training=True, axis=axis)
        e, _ = fastreg.batch_norm(x, training=True, axis=np.int64(axis))
        np.testing.assert_array_equal(y, e)
        assert saved.mean.shape == (C,)
    assert _batchnorm._GEOMETRY


def test_bn_module_host_views_follow_the_tensors():
    """The NumPy views a batch-norm module keeps between calls follow its tensors: new memory
    (``.data``), a new tensor, a load, a copy, a dtype change."""
    a, b = _bn_pair()
    x = torch.randn(5, 6, dtype=torch.float64)

    def same():
        assert torch.equal(a(x), b(x))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    same()
    a.weight.data = a.weight.data * 2          # same Parameter object, other memory
    with torch.no_grad():
        b.weight.mul_(2)
    same()
    a.running_mean = torch.full((6,), 0.5, dtype=torch.float64)   # another buffer tensor
    b.running_mean = torch.full((6,), 0.5, dtype=torch.float64)
    same()
    state = copy.deepcopy(a.state_dict())
    same()
    a.load_state_dict(state)                    # copied into the same memory
    b.load_state_dict(state)
    same()
    c = copy.deepcopy(a)                        # its own memory: a's statistics stay
    before = a.running_mean.clone()
    c(x + 3)
    assert torch.equal(a.running_mean, before) and not torch.equal(c.running_mean, before)
    d = pickle.loads(pickle.dumps(a))
    assert "_host_cache" not in d.__dict__
    assert torch.equal(d(x), a(x))
    b(x)                                        # b takes the same step as a
    a.float()
    b.float()
    x = x.float()
    same()
    with torch.no_grad():                      # in-place updates are seen through the views
        a.bias.add_(1)
        b.bias.add_(1)
    same()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("axis", [1, 2, -1, None])
def test_host_grouped_dropout_short_path_equals_general(dtype, training, backward, axis):
    if axis is None:
        fn = fastreg.drop_path_backward if backward else fastreg.drop_path
        kw0 = {}
    else:
        fn = fastreg.channel_dropout_backward if backward else fastreg.channel_dropout
        kw0 = dict(axis=axis)
    x = np.random.default_rng(4).standard_normal((5, 3, 4, 2)).astype(dtype)
    for mode in ("inverted", "classic"):
        for out in (None, np.full_like(x, np.nan)):
            kw = dict(kw0, offset=9, training=training, mode=mode, out=out)
            got = fn(x, 0.5, seed=21, **kw)  # short path
            general = fn(x, 0.5, seed=np.uint64(21), **dict(kw, out=None))
            np.testing.assert_array_equal(got, general)
            if out is not None:
                assert got is out
    with pytest.raises(ValueError, match="exceeds 2\\*\\*64"):
        fn(x, 0.5, seed=1, offset=2 ** 64 - 4, **kw0)   # 5 or 5 * C draws do not fit
    if axis is not None:
        with pytest.raises(ValueError, match="axis must name a channel axis"):
            fn(x, 0.5, seed=1, axis=0)


def test_bn_relu_residual_contiguous_equals_strided():
    a, b = _bn_pair(frt.BatchNormReLU2d, C=3)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    r = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    gy = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    xa, ra = x.clone().requires_grad_(), r.clone().requires_grad_()

    def strided(t):  # the same values, every other element of a wider tensor (general path)
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2].requires_grad_()
    xb, rb = strided(x), strided(r)
    assert not (xb.is_contiguous() or xb.is_contiguous(memory_format=torch.channels_last))
    ya, yb = a(xa, ra), b(xb, rb)
    assert torch.equal(ya, yb) and bool((ya == 0).any())
    ya.backward(gy)
    yb.backward(gy)
    for ta, tb in ((xa.grad, xb.grad), (ra.grad, rb.grad), (a.weight.grad, b.weight.grad),
                   (a.bias.grad, b.bias.grad)):
        assert torch.equal(ta, tb)


@pytest.mark.parametrize("start", [0, 41, 2 ** 63 - 1])
def test_host_batch_norm_counter_short_path_equals_general(start):
    """num_batches_tracked: +1 in place on either path, int64 wrap included."""
    x = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)
    counts = []
    for axis in (1, np.int64(1)):
        nbt = np.array([start], np.int64)
        with np.errstate(over="ignore"):
            fastreg.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32),
                               training=True, num_batches_tracked=nbt, axis=axis)
        counts.append(int(nbt[0]))
    assert counts[0] == counts[1] == (start + 1 if start < 2 ** 63 - 1 else -2 ** 63)
