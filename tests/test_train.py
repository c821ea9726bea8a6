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
    with pytest.raises(ValueError, match="does not match this trainer"):
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


# --- batches of one row with batch norm --------------------------------------------------------

def _batch_sizes(trainer, X, y, **kw):
    """Fit and return the training batch sizes of the first epoch (through the augment hook)."""
    sizes = []

    def augment(batch, seed, epoch, index_offset):
        if epoch == 0:
            sizes.append((len(batch), index_offset))
        return batch

    trainer.augment = augment
    trainer.fit(X, y, **kw)
    return sizes


@pytest.mark.parametrize("n", [65, 33])
def test_batch_norm_last_batch_of_one_row_joins_the_previous(n):
    # len(X) % batch_size == 1 used to crash mid-epoch ("Expected more than 1 value per
    # channel") after weights and running statistics had changed
    X, y = _digits(n)
    trainer = _trainer()
    sizes = _batch_sizes(trainer, X, y, epochs=2, batch_size=32)
    assert sizes == ([(32, 0), (33, 32)] if n == 65 else [(33, 0)])
    assert trainer.epoch == 2 and len(trainer.history["loss"]) == 2
    assert all(np.isfinite(p).all() for p in trainer.model.parameters())
    # without batch norm nothing changes: a last batch of one row is trained as such
    model = mlp((64, 24, 10), dropout=0.2, seed=0)
    plain = Trainer(model, optim.AdamW(model.parameters(), lr=2e-3), seed=0, verbose=0)
    assert _batch_sizes(plain, X, y, epochs=1, batch_size=32)[-1] == (1, n - 1)


def test_batch_norm_merge_keeps_other_batches_bit_identical():
    # the merged epoch trains on the same rows in the same order, only the last step is larger
    X, y = _digits(65)
    a = _trainer()
    a.fit(X, y, epochs=1, batch_size=32, shuffle=False)
    b = _trainer()
    b.train_epoch(*b._check_data(X[:32], y[:32], "X", "y"), batch_size=32, shuffle=False)
    b.epoch = 0
    b._bufs.clear()
    b.model.train()
    xb, yb = b._check_data(X[32:], y[32:], "X", "y")
    b._train_step(xb, yb)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p, q)


def test_batch_norm_single_row_is_refused_before_any_work():
    X, y = _digits(64)
    trainer = _trainer()
    state = {k: v.copy() for k, v in trainer.model_state().items()}
    with pytest.raises(ValueError, match="BatchNorm.*X has a single sample"):
        trainer.fit(X[:1], y[:1], epochs=1)
    with pytest.raises(ValueError, match="BatchNorm.*batch_size=1"):
        trainer.fit(X, y, epochs=1, batch_size=1)
    for k, v in trainer.model_state().items():
        np.testing.assert_array_equal(v, state[k])
    assert trainer.epoch == 0 and trainer.history["loss"] == []
    for bad in (True, np.bool_(True), 0, 2.0, "32"):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            trainer.fit(X, y, epochs=1, batch_size=bad)
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        trainer.fit(X, y, epochs=True)
    # without batch norm one row is a valid batch
    model = mlp((64, 8, 10), seed=0)
    Trainer(model, optim.Adam(model.parameters()), verbose=0).fit(X[:1], y[:1], batch_size=1)


def test_a_local_trainer_takes_the_model_off_an_earlier_communicator():
    """A model trained data-parallel keeps set_comm's communicator in its batch-norm layers; a
    Trainer without comm (or with one rank) that trains it makes its batch norm local again
    (it kept synchronizing over the old communicator); building a trainer changes nothing
    (another trainer may share the model)."""
    X, y = _digits(64)
    tr = _trainer()
    marker = object()
    tr.model.set_comm(marker)   # as a 2-rank Trainer leaves it

    def walk(m):
        yield m
        for child in m.children():
            yield from walk(child)

    layers = [m for m in walk(tr.model) if hasattr(m, "comm")]
    local = Trainer(tr.model, optim.Adam(tr.model.parameters(), lr=1e-3), seed=0, verbose=0)
    assert layers and all(m.comm is marker for m in layers)
    local.fit(X, y, epochs=1, batch_size=32)   # with the marker, a training forward would fail
    assert all(m.comm is None for m in layers)


def test_batch_norm_global_batch_of_one_row_with_comm():
    MPI = pytest.importorskip("mpi4py.MPI")
    X, y = _digits(65)
    ref = _trainer()
    ref.fit(X, y, epochs=1, batch_size=32)
    dp = _trainer(comm=MPI.COMM_SELF)
    sizes = _batch_sizes(dp, X, y, epochs=1, batch_size=32)
    assert sizes == [(32, 0), (33, 32)]
    for p, q in zip(ref.model.parameters(), dp.model.parameters()):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="BatchNorm.*single sample"):
        _trainer(comm=MPI.COMM_SELF).fit(X[:1], y[:1])


# --- argument checks ------------------------------------------------------------------------------

def test_batch_norm_layer_checks_momentum_and_eps_at_construction():
    for bad in (True, "0.1", [0.1]):
        with pytest.raises(TypeError, match="momentum"):
            BatchNorm(4, momentum=bad)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            BatchNorm(4, momentum=bad)
    for bad in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            BatchNorm(4, eps=bad)
    with pytest.raises(TypeError, match="eps"):
        BatchNorm(4, eps=None)
    assert BatchNorm(4, momentum=np.float32(0.5)).momentum == 0.5


def test_batch_norm_momentum_none_is_the_cumulative_average(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 4)) for _ in range(3)]
    ours = BatchNorm(4, momentum=None, dtype=np.float64)
    ref = torch.nn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    for xb in batches:
        ours.forward(xb)
        ref(torch.from_numpy(xb))
    assert int(ours.num_batches_tracked[0]) == int(ref.num_batches_tracked) == 3
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
    # in a model: trained, checkpointed and resumed with its counter
    X, y = _digits(64)

    def make():
        model = Sequential(Linear(64, 16, bias=False), BatchNorm(16, momentum=None,
                                                                   activation="relu"),
                           Linear(16, 10))
        return Trainer(model, optim.Adam(model.parameters(), lr=1e-3), verbose=0)
    path = tmp_path / "bn.npz"
    t = make()
    t.fit(X, y, epochs=1, batch_size=16, checkpoint=path)
    assert int(np.load(path)["buffer/1.num_batches_tracked"][0]) == 4
    t2 = make()
    t2.load_checkpoint(path)
    assert int(t2.model.layers[1].num_batches_tracked[0]) == 4
    np.testing.assert_array_equal(t2.model.layers[1].running_mean,
                                  t.model.layers[1].running_mean)


def test_trainer_checks_seed_penalties_and_batch_sizes():
    model = mlp((64, 8, 10), seed=0)            # no Dropout: the seed used to pass unchecked
    opt = optim.Adam(model.parameters())
    for bad in (-1, 2**64, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            Trainer(model, opt, seed=bad, verbose=0)
    big = Trainer(model, opt, seed=2**64 - 1, verbose=0)
    assert int(big.state_dict()["trainer/seed"]) == 2**64 - 1
    for name in ("l1", "l2", "prox_l1"):
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            Trainer(model, opt, verbose=0, **{name: True})
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            Trainer(model, opt, verbose=0, **{name: -1.0})
    assert Trainer(model, opt, l2=np.float32(0.5), verbose=0).l2 == 0.5
    X, y = _digits(40)
    trainer = Trainer(model, opt, verbose=0)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            trainer.predict(X, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            trainer.evaluate(X, y, batch_size=bad)
    with pytest.raises(ValueError, match="shape"):
        trainer.predict(X[:, :5])


def test_trainer_checks_backend_and_threads_at_construction():
    model = mlp((64, 8, 10), seed=0)
    opt = optim.Adam(model.parameters())
    for bad in ("gpu", "", "torch"):
        with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'numpy'"):
            Trainer(model, opt, backend=bad, verbose=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        Trainer(model, opt, backend=None, verbose=0)
    for name, reason in fastreg.available_backends().items():
        if reason is not None:             # named but unable to run here: refused now, with why
            with pytest.raises(fastreg.BackendUnavailableError, match=name):
                Trainer(model, opt, backend=name, verbose=0)
    assert Trainer(model, opt, backend="NumPy", verbose=0).backend == "numpy"
    for bad in (0, -2):
        with pytest.raises(ValueError, match=r"threads must be a positive integer \(>= 1\)"):
            Trainer(model, opt, threads=bad, verbose=0)
    for bad in (1.0, "2", True):
        with pytest.raises(TypeError, match="threads must be a positive integer"):
            Trainer(model, opt, threads=bad, verbose=0)
    assert Trainer(model, opt, threads=np.int64(2), verbose=0).threads == 2
    assert Trainer(model, opt, threads=None, verbose=0).threads is None


def test_trainer_accepts_array_likes():
    X, y = _digits(48)
    a, b = _trainer(), _trainer()
    a.fit(X, y, epochs=1, batch_size=16, validation=(X, y))
    b.fit(X.tolist(), y.tolist(), epochs=1, batch_size=16, validation=(X.tolist(), y.tolist()))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a.predict(X), b.predict(X.tolist()))
    assert a.evaluate(X, y) == b.evaluate(X.tolist(), tuple(y))
    with pytest.raises(TypeError, match="integer class labels"):
        b.fit(X.tolist(), [0.5] * len(X))
    with pytest.raises(TypeError, match="X must be an array or an array-like"):
        b.fit([[1.0, 2.0], [3.0]], [0, 1])
    with pytest.raises(TypeError, match="X must hold real numbers"):
        b.fit([["a"] * 64] * 2, [0, 1])


def test_profiling_history_survives_resume(tmp_path):
    X, y = _digits(64)
    path = tmp_path / "p.npz"
    _trainer(profile=True).fit(X, y, epochs=2, batch_size=32, checkpoint=path)
    resumed = _trainer(profile=True)
    hist = resumed.fit(X, y, epochs=3, batch_size=32, checkpoint=path, resume=True)
    assert len(hist["kernel_time"]) == 3 and len(hist["loss"]) == 3


def test_checkpoint_permissions_follow_the_umask(tmp_path):
    X, y = _digits(32)
    old = os.umask(0o022)
    try:
        path = tmp_path / "c.npz"
        _trainer().fit(X, y, epochs=1, batch_size=16, checkpoint=path)
        assert (os.stat(path).st_mode & 0o777) == 0o644
        os.umask(0o077)
        other = tmp_path / "d.npz"
        ckpt.save(other, {"a": np.ones(2)})
        assert (os.stat(other).st_mode & 0o777) == 0o600
        os.chmod(path, 0o640)                   # an existing file keeps its permissions
        ckpt.save(path, {"a": np.ones(2)})
        assert (os.stat(path).st_mode & 0o777) == 0o640
    finally:
        os.umask(old)


def test_global_indices_names_start():
    from fastreg import distributed as dist
    with pytest.raises(ValueError, match="start must be a non-negative int"):
        dist.global_indices(10, 0, 2, start=-1)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        dist.global_indices(-1, 0, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_trainer_takes_torch_tensors(dtype):
    """fit, evaluate and predict take CPU torch tensors (NumPy views; bfloat16 widened), with
    the same results as the NumPy arrays."""
    torch = pytest.importorskip("torch")
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0)[:200].astype(np.float32)
    y = labels[:200].astype(np.int64)
    tX = torch.from_numpy(X).to(getattr(torch, dtype))
    Xn = tX.float().numpy()                     # the same values the trainer sees
    results = []
    for data, labels_ in ((Xn, y), (tX, torch.from_numpy(y))):
        model = mlp((64, 16, 10), seed=0)
        tr = Trainer(model, optim.SGD(model.parameters(), lr=0.1), verbose=0, seed=1)
        hist = tr.fit(data, labels_, epochs=2, batch_size=32, validation=(data, labels_))
        results.append((hist, tr.evaluate(data, labels_), tr.predict(data)))
    (h0, e0, p0), (h1, e1, p1) = results
    h0.pop("time"), h1.pop("time")
    assert h0 == h1 and e0 == e1
    np.testing.assert_array_equal(p0, p1)


def test_trainer_tensor_errors():
    torch = pytest.importorskip("torch")
    model = mlp((4, 3), seed=0)
    tr = Trainer(model, optim.SGD(model.parameters(), lr=0.1), verbose=0)
    with pytest.raises(TypeError, match="complex|X"):
        tr.fit(torch.zeros(4, 4, dtype=torch.complex64), np.zeros(4, np.int64), epochs=1)
    t = torch.zeros(4, 4, requires_grad=True)     # detached, not refused
    assert tr.predict(t).shape == (4, 3)


def test_failed_fit_after_load_checkpoint_keeps_the_loaded_callbacks(tmp_path):
    """A fit whose on_train_begin raises (no validation for val_loss) must not lose the state
    that load_checkpoint brought: the next fit resumes it."""
    X, y = _digits(64)
    Xv, yv = _digits(32, seed=1)
    path = tmp_path / "es.npz"

    def es():
        return EarlyStopping(patience=10, min_delta=100.0)   # nothing improves after epoch 1
    _trainer(callbacks=[es()]).fit(X, y, validation=(Xv, yv), epochs=3, checkpoint=path)
    want = _trainer(callbacks=[es()])
    want.load_checkpoint(path)
    want.fit(X, y, validation=(Xv, yv), epochs=4)
    got = _trainer(callbacks=[es()])
    got.load_checkpoint(path)
    with pytest.raises(ValueError, match="val_loss"):
        got.fit(X, y, epochs=4)                             # refused: no validation
    got.fit(X, y, validation=(Xv, yv), epochs=4)
    assert (got.callbacks[0].best_epoch, got.callbacks[0].wait) == \
        (want.callbacks[0].best_epoch, want.callbacks[0].wait) == (0, 3)


def test_interrupted_epoch_warns_at_the_next_fit(tmp_path):
    X, y = _digits(64)
    t = _trainer()

    class Stop(Exception):
        pass

    calls = []
    real = t.train_epoch

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Stop
        return real(*args, **kwargs)
    t.train_epoch = train_epoch
    with pytest.raises(Stop):
        t.fit(X, y, epochs=3)
    assert t.epoch == 1 and len(t.history["loss"]) == 1
    with pytest.warns(RuntimeWarning, match="interrupted in epoch 2"):
        t.fit(X, y, epochs=3)
    assert t.epoch == 3
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(X, y, epochs=4)                               # a complete fit: no warning


def test_kernel_time_can_be_monitored():
    X, y = _digits(64)
    t = _trainer(callbacks=[EarlyStopping(monitor="kernel_time", patience=5)], profile=True)
    assert "kernel_time" in t.fit(X, y, epochs=2)


def test_image_augment_takes_a_float64_models_rows():
    from fastreg.train.augment import image_augment
    aug = image_augment((8, 8))
    rows = np.random.default_rng(0).random((4, 64))
    y64 = aug(rows, 1, 0, 0)
    y32 = aug(rows.astype(np.float32), 1, 0, 0)
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_array_equal(y64.astype(np.float32), y32)


def test_no_interrupted_epoch_warning_after_a_complete_epoch():
    """An exception from on_epoch_end (or the checkpoint write) comes after the epoch's history
    entry: count, weights and history agree, and the next fit does not warn."""
    from fastreg.train import Callback

    class StopOnce(Callback):
        fired = False

        def on_epoch_end(self, trainer, epoch, logs):
            if not self.fired:
                self.fired = True
                raise KeyboardInterrupt
    X, y = _digits(64)
    t = _trainer(callbacks=[StopOnce()])
    with pytest.raises(KeyboardInterrupt):
        t.fit(X, y, epochs=3)
    assert t.epoch == 1 and len(t.history["loss"]) == 1
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(X, y, epochs=3)
    assert t.epoch == 3
