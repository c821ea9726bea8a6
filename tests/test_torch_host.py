"""Torch CPU tensors passed to fastreg's NumPy-level functions come back as torch tensors
(fastreg._dispatch.torch_host): the same values as the NumPy call, zero-copy, ``out=`` and
in-place list updates land in the caller's tensors, and gradient-carrying tensors are refused."""
import numpy as np
import pytest

import fastreg

torch = pytest.importorskip("torch")


def _x(shape=(6, 5), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CASES = {
    "dropout": lambda x: fastreg.dropout(x, 0.3, seed=7, offset=2),
    "channel_dropout": lambda x: fastreg.channel_dropout(x, 0.3, seed=7),
    "drop_path": lambda x: fastreg.drop_path(x, 0.3, seed=7),
    "l1_grad": lambda x: fastreg.l1_grad(x, 0.1),
    "l2_grad": lambda x: fastreg.l2_grad(x, 0.1),
    "prox_l1": lambda x: fastreg.prox_l1(x, 0.2),
    "l2_penalty": lambda x: fastreg.l2_penalty(x, 0.1),
    "bn": lambda x: fastreg.batch_norm(x, None, None, training=True)[0],
    "cross_entropy": lambda x: fastreg.cross_entropy(x, np.arange(6) % 5)[1],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensor_in_tensor_out_same_values(case):
    x = _x()
    want = CASES[case](x.copy())
    got = CASES[case](torch.from_numpy(x.copy()))
    if isinstance(want, float):
        assert isinstance(got, float) and got == want
    else:
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)


def test_numpy_in_numpy_out_with_torch_imported():
    assert type(fastreg.dropout(_x(), 0.5, seed=1)) is np.ndarray


def test_out_and_in_place_updates_land_in_the_callers_tensors():
    t = torch.from_numpy(_x())
    out = torch.empty_like(t)
    assert fastreg.l2_grad(t, 0.5, out=out) is out
    np.testing.assert_array_equal(out.numpy(), fastreg.l2_grad(t.numpy(), 0.5))
    ema, p = [torch.zeros(3), torch.zeros(2, 2)], [torch.ones(3), torch.ones(2, 2)]
    fastreg.ema_update(ema, p, 0.75)
    assert all(torch.all(e == 0.25) for e in ema)
    grads = [torch.full((3,), 3.0), torch.full((2,), 4.0)]
    total = fastreg.clip_grad_norm(grads, 1.0)
    assert total == pytest.approx(np.sqrt(3 * 9.0 + 2 * 16.0))
    assert float(sum((g.double() ** 2).sum() for g in grads)) == pytest.approx(1.0, rel=1e-6)


def test_saved_statistics_round_trip_through_backward():
    x, gy = torch.from_numpy(_x()), torch.from_numpy(_x(seed=1))
    y, saved = fastreg.batch_norm(x, None, None, training=True)
    assert isinstance(saved.mean, torch.Tensor)
    gx = fastreg.batch_norm_backward(gy, x, saved, None)[0]
    y_np, saved_np = fastreg.batch_norm(x.numpy(), None, None, training=True)
    want = fastreg.batch_norm_backward(gy.numpy(), x.numpy(), saved_np, None)[0]
    assert isinstance(gx, torch.Tensor)
    np.testing.assert_array_equal(gx.numpy(), want)
    np.testing.assert_array_equal(y.numpy(), y_np)


def test_bfloat16_tensor():
    pytest.importorskip("ml_dtypes")
    t = torch.from_numpy(_x()).bfloat16()
    y = fastreg.dropout(t, 0.5, seed=3)
    assert y.dtype == torch.bfloat16
    want = fastreg.dropout(t.float().numpy(), 0.5, seed=3)
    np.testing.assert_array_equal(y.float().numpy(), torch.from_numpy(want).bfloat16().float())


def test_a_tensor_that_requires_grad_is_refused():
    with pytest.raises(TypeError, match="requires grad.*fastreg.torch"):
        fastreg.dropout(torch.ones(3, requires_grad=True), 0.5, seed=1)


def test_list_ops_take_one_pass_iterables_of_tensors():
    """torch.nn.utils.clip_grad_norm_(model.parameters(), ...) takes a generator: so do the list
    ops, with tensors inside (a generator used to hide them from the torch check: TypeError)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model(torch.randn(3, 4)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    want = [g.clone() for g in grads]
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in want]))
    want = [g * torch.clamp(0.1 / (total + 1e-6), max=1.0) for g in want]
    norm = fastreg.grad_norm(p.grad for p in model.parameters())
    assert norm == pytest.approx(float(total), rel=1e-6)
    got = fastreg.clip_grad_norm((p.grad for p in model.parameters()), 0.1)
    assert got == pytest.approx(float(total), rel=1e-6)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=0)
    fastreg.clip_grads_with_norm(iter(grads), 0.1, 1.0)
    shadow = {k: v.detach().clone() * 0 for k, v in model.state_dict().items()}
    params = [p.detach() for p in model.parameters()]
    fastreg.ema_update(shadow.values(), (p for p in params), 0.0)   # decay 0: a copy
    for s, p in zip(shadow.values(), params):
        torch.testing.assert_close(s, p, rtol=0, atol=0)
    want = [g.numpy().copy() for g in grads]
    fastreg.adaptive_clip_grad([p.numpy() for p in params], want, 0.01)
    fastreg.adaptive_clip_grad((p for p in params), iter(grads), 0.01)
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g.numpy(), w)
    with pytest.raises(TypeError, match=r"takes the gradients \(\[p.grad"):
        fastreg.clip_grad_norm(model.parameters(), 0.1)   # torch's signature: the parameters
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    before = frozen.weight.clone()
    with pytest.raises(TypeError, match="got a parameter"):
        fastreg.grad_norm(list(frozen.parameters()))
    assert torch.equal(frozen.weight, before)


def _saved_by_a_graph(t):
    """A backward that needs ``t``'s values as they are now (t is saved by the product)."""
    w = torch.ones(t.shape, requires_grad=True)
    return (w * t).sum()


@pytest.mark.parametrize("write", [
    lambda t: fastreg.prox_l1(t, 0.4),
    lambda t: fastreg.prox_elastic_net(t, 0.1, 0.2),
    lambda t: fastreg.l2_grad(torch.ones(t.shape), 0.5, out=t),
    lambda t: fastreg.dropout(torch.ones(t.shape), 0.5, seed=1, out=t),
    lambda t: fastreg.clip_grad_norm([t], 0.1),
    lambda t: fastreg.ema_update([t], [torch.zeros(t.shape)], 0.5),
    lambda t: fastreg.batch_norm(torch.randn(4, 3), t, torch.ones(3), training=True),
])
def test_writes_through_views_count_as_in_place(write):
    """fastreg writes a caller's tensor through a NumPy view, which torch does not see: the
    version counter is bumped as torch's own in-place ops do, so a backward through a graph that
    saved the tensor raises instead of silently using the new values."""
    t = torch.tensor([1.0, -2.0, 0.5])
    loss = _saved_by_a_graph(t)
    write(t)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_reads_do_not_bump_versions():
    """Inputs that are only read keep their version (no false "modified" error); so do the
    running statistics of an inference-mode batch norm."""
    t = torch.tensor([1.0, -2.0, 0.5])
    rm, rv = torch.zeros(3), torch.ones(3)
    fastreg.dropout(t, 0.5, seed=1)
    fastreg.l2_grad(t, 0.5)
    fastreg.batch_norm(torch.randn(4, 3), rm, rv, training=False)
    assert t._version == rm._version == rv._version == 0


def _neg(values):
    """A float32 tensor with the neg bit set: its memory holds -values."""
    return torch.tensor([complex(0, -v) for v in values]).conj().imag


def test_lazily_negated_tensors_read_with_their_sign():
    """A neg-bit tensor beside NumPy arrays went through DLPack, which exports its memory (the
    other sign): an SGD step moved the wrong way and batch norm's bias flipped."""
    g = _neg([1.0, 2.0])
    assert g.is_neg() and g.tolist() == [1.0, 2.0]
    p = np.zeros(2, np.float32)
    fastreg.optim.SGD([p], lr=1.0).step([g])
    np.testing.assert_array_equal(p, [-1.0, -2.0])
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    y, _ = fastreg.batch_norm(x, training=True, bias=_neg([1.0, 2.0]))
    np.testing.assert_allclose(y.mean(axis=0), [1.0, 2.0], atol=1e-6)
    assert fastreg.l2_penalty(_neg([3.0]), 1.0) == 9.0          # the torch path
    with pytest.raises(TypeError, match="w is a lazily negated"):
        fastreg.prox_l1(_neg([3.0]), 1.0)                       # written in place: refused


def test_an_out_tensor_written_by_the_numpy_path_counts_the_write():
    """dropout(ndarray, out=tensor): the tensor's version counter moves, so a graph that saved
    it raises at backward instead of using the new values."""
    o = torch.zeros(4, 6)
    a = torch.ones(4, 6, requires_grad=True)
    loss = (a * o).sum()
    fastreg.l2_grad(np.ones((4, 6), np.float32), 0.5, out=o)
    assert o[0, 0].item() == 1.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_refusals_name_the_argument():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="bias is a torch tensor that requires grad"):
        fastreg.fold_batch_norm(lin.weight.detach(), lin.bias, np.zeros(2, np.float32),
                                np.ones(2, np.float32))
    with pytest.raises(TypeError, match="x is a torch.sparse_coo tensor"):
        fastreg.dropout(torch.ones(3).to_sparse(), 0.5, seed=1)
