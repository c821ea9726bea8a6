"""fastreg.train: layer gradients against float64 finite differences, training, backends,
checkpoints and exact resume, input errors."""
import os

import numpy as np
import pytest

import fastreg
from fastreg import optim
from fastreg.train import (BatchNorm, Dropout, EarlyStopping, Linear, ReLU, Sequential, Trainer,
                           kernels, mlp, softmax_cross_entropy)
from fastreg.train import checkpoint as ckpt
from fastreg.train.data import load_digits, stratified_split

HOST_BACKENDS = [b for b in ("numpy", "cpu", "c") if fastreg.available_backends()[b] is None]


def _fd_check(layer, x, *, eps=1e-6, rtol=1e-5, atol=1e-7, n_checks=12, reset=None):
    """Compare layer.backward with central finite differences of sum(forward(x) * r)."""
    rng = np.random.default_rng(1)
    if reset:
        reset()
    y = layer.forward(x).copy()
    r = rng.standard_normal(y.shape)

    def f():
        if reset:
            reset()
        return float((layer.forward(x) * r).sum())

    if reset:
        reset()
    layer.forward(x)
    gx = layer.backward(r.copy())
    gx = None if gx is None else gx.copy()
    grads = [g.copy() for g in layer.grads]
    targets = ([("x", x, gx)] if gx is not None else []) + [
        (f"p{i}", p, g) for i, (p, g) in enumerate(zip(layer.params, grads))]
    for name, arr, grad in targets:
        flat = arr.reshape(-1)
        for j in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + eps
            fp = f()
            flat[j] = old - eps
            fm = f()
            flat[j] = old
            num = (fp - fm) / (2 * eps)
            assert abs(grad.reshape(-1)[j] - num) <= atol + rtol * abs(num), (name, j)


def test_linear_gradients():
    x = np.random.default_rng(0).standard_normal((5, 7))
    _fd_check(Linear(7, 4, dtype=np.float64, rng=np.random.default_rng(2)), x)


def test_relu_gradients():
    x = np.random.default_rng(0).standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5        # keep finite differences away from the kink
    _fd_check(ReLU(), x)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_gradients(mode):
    x = np.random.default_rng(0).standard_normal((6, 9))
    layer = Dropout(0.3, mode, seed=5)

    def reset():
        layer.offset = 40            # the same mask for every forward call
    _fd_check(layer, x, reset=reset)
    assert layer.offset == 40 + x.size


@pytest.mark.parametrize("activation", [None, "relu"])
def test_batch_norm_gradients(activation):
    x = np.random.default_rng(0).standard_normal((8, 5)) * 2 + 1
    layer = BatchNorm(5, activation=activation, dtype=np.float64)
    layer.weight[:] = np.linspace(0.5, 1.5, 5)
    layer.bias[:] = np.linspace(-0.3, 0.3, 5)
    _fd_check(layer, x, rtol=1e-4, atol=1e-6)


def test_cross_entropy_gradient_and_value():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 4))
    labels = rng.integers(0, 4, 7)
    grad = np.empty_like(logits)
    loss, correct, _ = softmax_cross_entropy(logits, labels, grad)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(7), labels].mean(), rel=1e-12)
    assert correct == int((logits.argmax(1) == labels).sum())
    eps = 1e-6
    for i, k in [(0, 0), (3, 2), (6, 3)]:
        lp, lm = logits.copy(), logits.copy()
        lp[i, k] += eps
        lm[i, k] -= eps
        num = (softmax_cross_entropy(lp, labels)[0] - softmax_cross_entropy(lm, labels)[0]) / (
            2 * eps)
        assert grad[i, k] == pytest.approx(num, rel=1e-5, abs=1e-8)


def test_whole_mlp_gradients():
    """Every parameter of an MLP with batch norm and dropout, through the loss."""
    model = mlp((6, 8, 5, 3), dropout=0.2, batch_norm=True, dtype=np.float64, seed=3)
    for i, d in enumerate(model.dropout_layers()):
        d.seed = 10 + i
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 6))
    y = rng.integers(0, 3, 10)

    def loss():
        for d in model.dropout_layers():
            d.offset = 0
        return softmax_cross_entropy(model.forward(x), y)[0]

    loss()
    for d in model.dropout_layers():
        d.offset = 0
    logits = model.forward(x)
    _, _, g = softmax_cross_entropy(logits, y, np.empty_like(logits))
    model.backward(g)
    for (name, p), grad in zip(model.named_parameters(), model.gradients()):
        flat = p.reshape(-1)
        for j in rng.choice(flat.size, size=min(5, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + 1e-6
            fp = loss()
            flat[j] = old - 1e-6
            fm = loss()
            flat[j] = old
            num = (fp - fm) / 2e-6
            assert abs(grad.reshape(-1)[j] - num) <= 1e-7 + 1e-4 * abs(num), (name, j)


def _digits(n=200, seed=0):
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    idx = stratified_split(labels, [n], seed=seed)[0]
    return X[idx], labels[idx]


def test_load_digits_and_split():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert labels.shape == (1797,) and labels.dtype == np.int64
    a, b, c = stratified_split(labels, [300, 200], seed=0)
    assert len(a) == 300 and len(b) == 200 and len(a) + len(b) + len(c) == 1797
    assert len(np.intersect1d(a, b)) == 0
    counts = np.bincount(labels[a], minlength=10)
    assert counts.min() >= 28 and counts.max() <= 32


def test_tiny_model_loss_goes_down():
    X, y = _digits(200)
    model = mlp((64, 32, 10), dropout=0.1, batch_norm=True, seed=0)
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=3e-3), seed=0, verbose=0)
    hist = trainer.fit(X, y, epochs=8, batch_size=32)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert trainer.evaluate(X, y)["accuracy"] > 0.9
    assert set(hist) >= {"loss", "accuracy", "val_loss", "val_accuracy", "time"}


@pytest.mark.parametrize("backend", [b for b in HOST_BACKENDS if b != "numpy"])
def test_backends_train_to_the_same_weights(backend):
    """Float64, 6 Adam steps with batch norm, dropout and L1/L2: every backend ends within
    rtol 1e-9 / atol 1e-12 of the numpy reference (batch-norm sums and optimizer arithmetic may
    round differently); dropout outputs are bit-identical."""
    X, y = _digits(96)
    X = X.astype(np.float64)
    weights = {}
    for b in ("numpy", backend):
        model = mlp((64, 16, 10), dropout=0.3, batch_norm=True, dtype=np.float64, seed=1)
        opt = optim.Adam(model.parameters(), lr=1e-3, backend=b)
        trainer = Trainer(model, opt, l1=1e-4, l2=1e-4, seed=4, backend=b, verbose=0)
        trainer.fit(X, y, epochs=1, batch_size=16)
        weights[b] = [p.copy() for p in model.parameters()]
    for a, c in zip(weights["numpy"], weights[backend]):
        np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-12)
    x = np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32)
    outs = []
    for b in ("numpy", backend):
        layer = Dropout(0.4, seed=9)
        layer.set_backend(b)
        outs.append(layer.forward(x).copy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_prox_l1_gives_exact_zeros_and_l2_does_not():
    X, y = _digits(160)
    zeros = {}
    for name, kw in (("l1", {"prox_l1": 0.5}), ("l2", {"l2": 1e-2})):
        model = mlp((64, 32, 10), seed=0)
        trainer = Trainer(model, optim.Adam(model.parameters(), lr=3e-3), seed=0, verbose=0,
                          **kw)
        trainer.fit(X, y, epochs=5, batch_size=32)
        zeros[name] = float((model.layers[0].weight == 0).mean())
        assert np.all(model.layers[0].bias != 0)      # biases are not penalized
    assert zeros["l1"] > 0.1 and zeros["l2"] == 0.0


def test_dropout_modes_at_inference():
    x = np.random.default_rng(0).random((50, 40)).astype(np.float32)
    inv, cla = Dropout(0.25, "inverted", seed=1), Dropout(0.25, "classic", seed=1)
    inv.eval()
    cla.eval()
    assert inv.forward(x) is x
    np.testing.assert_allclose(cla.forward(x), x * np.float32(0.75), rtol=1e-7)
    inv.train()
    cla.train()
    a, b = inv.forward(x).copy(), cla.forward(x).copy()   # same seed and offset: same mask
    np.testing.assert_array_equal(a == 0, b == 0)
    np.testing.assert_allclose(a[a != 0], b[b != 0] / np.float32(0.75), rtol=1e-6)


def _trainer(seed=0, callbacks=(), **kw):
    model = mlp((64, 24, 10), dropout=0.2, batch_norm=True, seed=seed)
    opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    return Trainer(model, opt, callbacks=list(callbacks), seed=seed, verbose=0, **kw)


def test_resume_is_bit_identical(tmp_path):
    X, y = _digits(128)
    Xv, yv = _digits(64, seed=1)
    path = tmp_path / "run.npz"
    straight = _trainer(callbacks=[EarlyStopping(patience=50)])
    straight.fit(X, y, validation=(Xv, yv), epochs=6, batch_size=32)

    first = _trainer(callbacks=[EarlyStopping(patience=50)])
    first.fit(X, y, validation=(Xv, yv), epochs=3, batch_size=32, checkpoint=path)
    del first                                               # "kill": only the file survives
    second = _trainer(callbacks=[EarlyStopping(patience=50)])
    hist = second.fit(X, y, validation=(Xv, yv), epochs=6, batch_size=32, checkpoint=path,
                      resume=True)
    assert len(hist["loss"]) == 6
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        np.testing.assert_array_equal(a, b)
    for (_, a), (_, b) in zip(straight.model.named_buffers(), second.model.named_buffers()):
        np.testing.assert_array_equal(a, b)
    assert straight.model.rng_state() == second.model.rng_state()
    assert straight.history["val_loss"] == second.history["val_loss"]
    assert straight.callbacks[0].best_epoch == second.callbacks[0].best_epoch


def test_checkpoint_is_npz_without_pickle(tmp_path):
    X, y = _digits(64)
    path = tmp_path / "c.npz"
    _trainer().fit(X, y, epochs=1, batch_size=32, checkpoint=path)
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
    assert {"param/0.weight", "buffer/1.running_mean", "rng/2.offset", "optim/step",
            "trainer/epoch", "format"} <= keys
    assert not [f for f in os.listdir(tmp_path) if f != "c.npz"]   # no temporary file left


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    X, y = _digits(64)
    path = tmp_path / "c.npz"
    trainer = _trainer()
    trainer.fit(X, y, epochs=1, batch_size=32, checkpoint=path)
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="simulated"):
        trainer.fit(X, y, epochs=2, batch_size=32, checkpoint=path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    X, y = _digits(64)
    path = tmp_path / "c.npz"
    _trainer().fit(X, y, epochs=1, batch_size=32, checkpoint=path)
    model = mlp((64, 32, 10), seed=0)        # other widths, no batch norm
    other = Trainer(model, optim.AdamW(model.parameters()), verbose=0)
    w0 = model.layers[0].weight.copy()
    with pytest.raises(ValueError, match="does not match this model"):
        other.fit(X, y, epochs=2, checkpoint=path, resume=True)
    np.testing.assert_array_equal(model.layers[0].weight, w0)     # nothing changed
    with pytest.raises(ValueError, match="not a fastreg.train checkpoint"):
        np.savez(tmp_path / "x.npz", a=np.ones(2))
        other.load_checkpoint(tmp_path / "x.npz")


def test_unwritable_checkpoint_folder_fails_before_training(tmp_path, monkeypatch):
    X, y = _digits(64)
    trainer = _trainer()
    w0 = trainer.model.layers[0].weight.copy()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.fit(X, y, epochs=1, checkpoint=tmp_path / "missing" / "c.npz")
    with pytest.raises(IsADirectoryError):
        trainer.fit(X, y, epochs=1, checkpoint=tmp_path)

    def denied(*a, **k):
        raise PermissionError("read-only file system (simulated)")
    monkeypatch.setattr(ckpt.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match="not writable"):
        trainer.fit(X, y, epochs=1, checkpoint=tmp_path / "c.npz")
    np.testing.assert_array_equal(trainer.model.layers[0].weight, w0)
    assert trainer.epoch == 0


def test_bad_inputs_fail_before_training():
    X, y = _digits(64)
    trainer = _trainer()
    w0 = trainer.model.layers[0].weight.copy()
    bad = y.copy()
    bad[5] = 10
    with pytest.raises(ValueError, match=r"y\[5\] = 10 is not a class label"):
        trainer.fit(X, bad)
    with pytest.raises(ValueError, match="64 samples but y"):
        trainer.fit(X, y[:-1])
    Xn = X.copy()
    Xn[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"X\[7\] holds NaN"):
        trainer.fit(Xn, y)
    with pytest.raises(ValueError, match=r"X_val\[7\] holds NaN"):
        trainer.fit(X, y, validation=(Xn, y))
    with pytest.raises(TypeError, match="integer class labels"):
        trainer.fit(X, y.astype(np.float32))
    with pytest.raises(ValueError, match="features"):
        trainer.fit(X[:, :10], y)
    with pytest.raises(ValueError, match="monitors 'val_loss'"):
        Trainer(trainer.model, trainer.optimizer, callbacks=[EarlyStopping()],
                verbose=0).fit(X, y)
    np.testing.assert_array_equal(trainer.model.layers[0].weight, w0)
    other = mlp((64, 24, 10))
    with pytest.raises(ValueError, match="model.parameters"):
        Trainer(trainer.model, optim.Adam(other.parameters()))


def test_augment_hook_and_profiling():
    X, y = _digits(70)
    calls = []

    def augment(batch, seed, epoch, index_offset):
        calls.append((len(batch), seed, epoch, index_offset))
        return batch

    trainer = _trainer(seed=3, augment=augment, profile=True)
    hist = trainer.fit(X, y, epochs=2, batch_size=32)
    assert calls == [(32, 3, 0, 0), (32, 3, 0, 32), (6, 3, 0, 64),
                     (32, 3, 1, 0), (32, 3, 1, 32), (6, 3, 1, 64)]
    assert len(hist["kernel_time"]) == 2 and 0 < hist["kernel_time"][0] < hist["time"][0]
    assert kernels.dropout is kernels._ORIGINAL["dropout"]      # profiling switched off again


def test_predict_restores_mode_and_copies():
    X, y = _digits(40)
    trainer = _trainer()
    trainer.model.train()
    a = trainer.predict(X)
    b = trainer.predict(X)
    assert trainer.model.training
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 10)


def test_sequential_names():
    model = Sequential(Linear(3, 4), ReLU(), Dropout(0.5, seed=1), Linear(4, 2))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert model.rng_state() == {"2.offset": 0, "2.seed": 1}
    assert model.layers[0].needs_input_grad is False
