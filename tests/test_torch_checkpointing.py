"""fastreg's dropout modules under activation checkpointing (torch.utils.checkpoint): the
recomputation in the backward pass draws the first run's mask, as nn.Dropout's does (torch
restores its RNG state; fastreg's modules find their first offset by a word they drew from it)."""
import copy
import pickle

import pytest

torch = pytest.importorskip("torch",
                            reason="torch is not installed (extra: fastreg-kernels[torch])")
from torch.utils.checkpoint import checkpoint  # noqa: E402

import fastreg.torch as frt  # noqa: E402
from fastreg.torch.modules import _CounterDropout  # noqa: E402


def _block(kind):
    if kind == "Dropout":
        return torch.nn.Sequential(torch.nn.Linear(8, 8), frt.Dropout(0.5, seed=1),
                                   torch.nn.Linear(8, 8), frt.Dropout(0.3, seed=2))
    if kind == "DropPath":
        return torch.nn.Sequential(torch.nn.Linear(8, 8), frt.DropPath(0.5, seed=3))
    if kind == "Dropout1d":
        return torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, padding=1), frt.Dropout1d(0.5, seed=4))
    return torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1),
                               frt.DropBlock2d(0.3, block_size=3, seed=5))


def _input(kind):
    shape = {"Dropout": (16, 8), "DropPath": (16, 8), "Dropout1d": (6, 4, 9)}.get(kind,
                                                                                (3, 4, 9, 9))
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["Dropout", "DropPath", "Dropout1d", "DropBlock2d"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_gradients_are_the_plain_ones(kind, reentrant):
    block = _block(kind)
    plain = copy.deepcopy(block)
    x = _input(kind).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    for step in range(3):                         # the counters move on as without checkpoint
        x.grad = x2.grad = None
        block.zero_grad()
        plain.zero_grad()
        y = checkpoint(block, x, use_reentrant=reentrant)
        y2 = plain(x2)
        assert torch.equal(y, y2)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        (y2 * torch.arange(y2.numel()).reshape(y2.shape)).sum().backward()
        assert torch.equal(x.grad, x2.grad), step
        for a, b in zip(block.parameters(), plain.parameters()):
            assert torch.equal(a.grad, b.grad), step
    for a, b in zip(block.modules(), plain.modules()):
        if isinstance(a, _CounterDropout):
            assert a.offset == b.offset > 0


def test_one_module_twice_in_a_checkpointed_region():
    d = frt.Dropout(0.5, seed=7)
    plain = copy.deepcopy(d)
    lin = torch.nn.Linear(8, 8)

    def region(x):
        return d(lin(d(x)))

    x = torch.randn(4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    checkpoint(region, x, use_reentrant=False).sum().backward()
    plain(lin(plain(x2))).sum().backward()
    assert torch.equal(x.grad, x2.grad) and d.offset == plain.offset == 64


def test_remembered_offsets_are_not_pickled():
    d = frt.Dropout(0.5, seed=1)
    d(torch.randn(4, 4))
    assert d.__dict__.get("_replays")
    for copied in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert "_replays" not in copied.__dict__ and copied.offset == d.offset


def test_two_calls_from_one_rng_state_are_refused_at_recomputation():
    """torch.manual_seed before each checkpointed micro-batch: the recomputation cannot tell the
    two calls apart; it raises instead of using the other call's mask."""
    m = torch.nn.Sequential(torch.nn.Linear(6, 6), frt.Dropout(0.5, seed=1), torch.nn.Linear(6, 6))
    outs = []
    for k in range(2):
        torch.manual_seed(123)
        outs.append(checkpoint(m, torch.randn(4, 6) + k, use_reentrant=False))
    with pytest.raises(RuntimeError, match="same torch RNG state"):
        sum(o.sum() for o in outs).backward()


def test_reseeding_every_step_still_recomputes():
    """The same RNG state at every step (torch.manual_seed(0) per step): each step's entry was
    recomputed before the next step draws the same word, so nothing is ambiguous."""
    block = _block("Dropout")
    plain = copy.deepcopy(block)
    for step in range(3):
        x = _input("Dropout").requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        torch.manual_seed(0)
        checkpoint(block, x, use_reentrant=False).sum().backward()
        torch.manual_seed(0)
        plain(x2).sum().backward()
        assert torch.equal(x.grad, x2.grad), step
