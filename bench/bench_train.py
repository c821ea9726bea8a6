"""One training epoch of the MLP 64-256-256-10 (BatchNorm + ReLU + dropout 0.2, AdamW) on all
1797 digits, batch 64 and 256: the fastreg trainer against the same model in PyTorch eager mode
(CPU), in the same run.

    pytest bench/bench_train.py --benchmark-only          ms per epoch, fastreg vs torch
    pytest bench/bench_train.py --benchmark-disable       CI smoke: each epoch once

``extra_info`` of the fastreg cases records ``kernel_share``: the fraction of a (separately
profiled) epoch spent inside fastreg's kernels (dropout, batch norm, optimizer step), the rest
being NumPy matmuls, the loss and Python. The fastreg trainer runs with its default
``threads=1``; torch runs with 1 thread and with its default (numba's thread count, as in the
other suites).
"""
import numpy as np
import pytest

from fastreg import optim
from fastreg.train import Trainer, mlp
from fastreg.train.data import load_digits
from fastreg.train.trainer import _thread_limits

SIZES = (64, 256, 256, 10)
P = 0.2


def _digits():
    images, labels = load_digits()
    return (images.reshape(len(images), -1) / 16.0).astype(np.float32), labels


def _fastreg_trainer(profile=False):
    model = mlp(SIZES, dropout=P, batch_norm=True, seed=0)
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    return Trainer(model, opt, seed=0, verbose=0, profile=profile)


def _kernel_share(X, y, batch_size):
    """Fraction of an epoch spent in fastreg kernels (profiled epoch, after a warm-up)."""
    trainer = _fastreg_trainer(profile=True)
    trainer.fit(X, y, epochs=2, batch_size=batch_size)
    return trainer.history["kernel_time"][-1] / trainer.history["time"][-1]


@pytest.mark.parametrize("batch_size", [64, 256])
def test_fastreg_epoch(benchmark, batch_size):
    X, y = _digits()
    trainer = _fastreg_trainer()
    trainer.fit(X, y, epochs=1, batch_size=batch_size)     # warm-up: JIT, buffers
    benchmark.group = f"train epoch, batch {batch_size}"
    benchmark.extra_info["kernel_share"] = round(_kernel_share(X, y, batch_size), 3)
    with _thread_limits(trainer.threads, trainer.backend):
        benchmark(trainer.train_epoch, X, y, batch_size)
    assert np.isfinite(trainer.predict(X[:10])).all()


@pytest.mark.parametrize("torch_threads", ["1", "default"])
@pytest.mark.parametrize("batch_size", [64, 256])
def test_torch_epoch(benchmark, threads, batch_size, torch_threads):
    torch = pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")
    from torch import nn
    X, y = _digits()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
                          nn.Dropout(P), nn.Linear(256, 256, bias=False), nn.BatchNorm1d(256),
                          nn.ReLU(), nn.Dropout(P), nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        model.train()
        perm = torch.randperm(len(Xt))
        for start in range(0, len(Xt), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()

    before = torch.get_num_threads()
    torch.set_num_threads(1 if torch_threads == "1" else threads)
    try:
        epoch()                                            # warm-up
        benchmark.group = f"train epoch, batch {batch_size}"
        benchmark(epoch)
    finally:
        torch.set_num_threads(before)
