"""EarlyStopping: Keras's and Lightning's options, driven by metric sequences, and in a Trainer."""
import math

import numpy as np
import pytest

from fastreg import optim
from fastreg.train import EarlyStopping, Trainer, mlp
from fastreg.train.data import load_digits, stratified_split


class FakeTrainer:
    """What EarlyStopping needs from a Trainer; the "weights" are the epoch number."""

    def __init__(self, names=("loss", "accuracy", "val_loss", "val_accuracy")):
        self.names = list(names)
        self.stop_training = False
        self.epoch = 0
        self.loaded = None

    def metric_names(self):
        return self.names

    def model_state(self, rng=True):
        return {"param/w": np.array(float(self.epoch))}

    def load_model_state(self, state):
        self.loaded = float(state["param/w"])


def drive(es, values, monitor="val_loss"):
    """Feed values epoch by epoch until the callback stops; returns (trainer, epochs run)."""
    t = FakeTrainer(names=["loss", "accuracy", monitor])
    es.on_train_begin(t)
    run = 0
    for epoch, v in enumerate(values):
        t.epoch = epoch
        es.on_epoch_end(t, epoch, {monitor: v})
        run += 1
        if t.stop_training:
            break
    es.on_train_end(t)
    return t, run


def test_improving_never_stops():
    es = EarlyStopping(patience=0)
    t, run = drive(es, [5, 4, 3, 2, 1])
    assert run == 5 and es.stopped_epoch == -1 and es.best_epoch == 4
    assert t.loaded == 4.0                 # restored although it never fired (Keras does not)


def test_plateau_stops_after_patience():
    es = EarlyStopping(patience=2)
    t, run = drive(es, [3, 2, 2.5, 2.1, 2.0, 1.0])
    assert run == 4 and es.stopped_epoch == 3 and es.best_epoch == 1
    assert t.loaded == 1.0 and "did not improve" in es.stop_reason
    es0 = EarlyStopping(patience=0)
    _, run0 = drive(es0, [3, 2, 2.5, 1])
    assert run0 == 3 and es0.stopped_epoch == 2


def test_divergence_threshold_stops_at_once():
    es = EarlyStopping(patience=10, divergence_threshold=5.0)
    t, run = drive(es, [1.0, 0.9, 7.0, 0.5])
    assert run == 3 and es.stopped_epoch == 2 and "divergence_threshold" in es.stop_reason
    assert t.loaded == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_stops(bad):
    es = EarlyStopping(patience=10)
    t, run = drive(es, [1.0, 0.5, bad, 0.1])
    assert run == 3 and "not finite" in es.stop_reason and t.loaded == 1.0
    es = EarlyStopping(patience=1, check_finite=False)
    _, run = drive(es, [1.0, 0.5, bad, 0.4, 0.45])
    assert run == 3                      # NaN is just "no improvement": wait 1 >= patience 1


def test_baseline_never_reached():
    es = EarlyStopping(patience=2, baseline=0.5)
    t, run = drive(es, [0.9, 0.8, 0.7, 0.6, 0.4])
    assert run == 2 and "baseline" in es.stop_reason
    assert es.best == 0.8 and t.loaded == 1.0     # best weights are still the best seen
    es = EarlyStopping(patience=2, baseline=0.5)
    _, run = drive(es, [0.9, 0.45, 0.44, 0.43])
    assert run == 4 and es.stopped_epoch == -1


def test_stopping_threshold():
    es = EarlyStopping(monitor="val_accuracy", patience=10, stopping_threshold=0.95)
    _, run = drive(es, [0.5, 0.9, 0.96, 0.97], monitor="val_accuracy")
    assert run == 3 and "stopping_threshold" in es.stop_reason and es.best_epoch == 2


def test_mode_auto_and_max():
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="acc").mode == "max"
    assert EarlyStopping(monitor="val_loss").mode == "min"
    es = EarlyStopping(monitor="val_accuracy", patience=1)
    _, run = drive(es, [0.5, 0.7, 0.6, 0.8], monitor="val_accuracy")
    assert run == 3 and es.best == 0.7
    es = EarlyStopping(monitor="val_loss", mode="max", patience=0)
    _, run = drive(es, [1.0, 2.0, 1.5])
    assert run == 3 and es.best == 2.0


def test_min_delta_abs_and_rel():
    es = EarlyStopping(patience=0, min_delta=0.1)
    _, run = drive(es, [1.0, 0.95])                  # 0.05 < 0.1: no improvement
    assert run == 2 and es.stopped_epoch == 1
    es = EarlyStopping(patience=0, min_delta=0.1, min_delta_mode="rel")
    _, run = drive(es, [100.0, 89.0, 80.0, 75.0])    # needs < 90% of the best each time
    assert run == 4 and es.stopped_epoch == 3 and es.best == 80.0
    es = EarlyStopping(monitor="acc", patience=0, min_delta=0.5, min_delta_mode="rel")
    _, run = drive(es, [0.2, 0.31, 0.29], monitor="acc")
    assert run == 3 and es.best == 0.31              # 0.31 > 0.2 * 1.5; 0.29 is not better


def test_start_from_epoch():
    es = EarlyStopping(patience=0, start_from_epoch=3)
    _, run = drive(es, [1.0, 2.0, 3.0, 2.5, 2.6])
    assert run == 5 and es.best_epoch == 3 and es.stopped_epoch == 4


def test_state_dict_round_trip():
    es = EarlyStopping(patience=3)
    drive(es, [3.0, 2.0, 2.5])
    other = EarlyStopping(patience=3)
    other.load_state_dict({k: np.asarray(v) for k, v in es.state_dict().items()})
    assert (other.wait, other.best, other.best_epoch) == (es.wait, es.best, es.best_epoch)
    assert float(other.best_weights["param/w"]) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="min_delta_mode"):
        EarlyStopping(min_delta_mode="pct")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="monitors 'val_lss'"):
        EarlyStopping(monitor="val_lss").on_train_begin(FakeTrainer())


def test_trainer_restores_best_weights_without_firing():
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    a, b = stratified_split(labels, [60, 60], seed=0)[:2]
    model = mlp((64, 16, 10), seed=0)
    es = EarlyStopping(patience=100, monitor="val_accuracy")
    snapshots = []

    class Snap(EarlyStopping.__mro__[1]):      # a plain Callback recording every epoch's weights
        def on_epoch_end(self, trainer, epoch, logs):
            snapshots.append(model.layers[0].weight.copy())

    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.02), callbacks=[es, Snap()],
                      verbose=0)
    hist = trainer.fit(X[a], labels[a], validation=(X[b], labels[b]), epochs=6, batch_size=16)
    assert es.stopped_epoch == -1 and len(hist["loss"]) == 6
    best = int(np.argmax(hist["val_accuracy"]))     # first maximum: later ties do not improve
    assert es.best_epoch == best
    np.testing.assert_array_equal(model.layers[0].weight, snapshots[best])
