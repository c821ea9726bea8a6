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

    def model_state(self, rng=True, ema=False):
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
    t, run = drive(es, [0.9, 0.8, 0.85, 0.82, 0.4])
    assert run == 3 and es.stopped_epoch == 2 and "baseline" in es.stop_reason
    assert es.best == 0.8 and t.loaded == 1.0     # best weights are still the best seen
    es = EarlyStopping(patience=2, baseline=0.5)
    _, run = drive(es, [0.9, 0.45, 0.44, 0.43])
    assert run == 4 and es.stopped_epoch == -1


def test_baseline_does_not_stop_an_improving_epoch():
    # Keras 3 returns on any improvement before its patience check: a metric still improving
    # (but above the baseline) runs on
    es = EarlyStopping(patience=2, baseline=0.5)
    t, run = drive(es, [1.0, 0.9, 0.8, 0.7, 0.6])
    assert run == 5 and es.stopped_epoch == -1 and es.best == 0.6 and t.loaded == 4.0
    assert es.wait == 5                # the wait still counts the epochs below the baseline
    # ... and the first epoch without improvement then stops at once
    es = EarlyStopping(patience=2, baseline=0.5)
    _, run = drive(es, [1.0, 0.9, 0.8, 0.85])
    assert run == 4 and es.stopped_epoch == 3 and "baseline" in es.stop_reason


def keras3_stopped_epoch(values, patience, baseline, min_delta=0.0):
    """Keras 3's EarlyStopping.on_epoch_end (mode "min", start_from_epoch 0), transcribed:
    the epoch it stops at, or -1."""
    best, wait = math.inf, 0
    for epoch, current in enumerate(values):
        wait += 1
        if current - min_delta < best:
            best = current
            if baseline is None or current - min_delta < baseline:
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch
    return -1


@pytest.mark.parametrize("baseline", [None, 0.5, 0.2])
@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_matches_keras3_on_random_sequences(baseline, patience):
    rng = np.random.default_rng(patience)
    for _ in range(200):
        values = [float(v) for v in np.round(rng.uniform(0.0, 1.0, 8), 1)]
        es = EarlyStopping(patience=patience, baseline=baseline)
        _, run = drive(es, values)
        expected = keras3_stopped_epoch(values, patience, baseline)
        assert es.stopped_epoch == expected, values
        assert run == (len(values) if expected < 0 else expected + 1)


def lightning_stopped(values, patience, mode="min", stopping_threshold=None,
                      divergence_threshold=None, check_finite=True):
    """Lightning's EarlyStopping._evaluate_stopping_criteria (min_delta 0), transcribed:
    (epoch it stops at or -1, best score, wait count)."""
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    best, wait = (math.inf if mode == "min" else -math.inf), 0
    for epoch, current in enumerate(values):
        if check_finite and not math.isfinite(current):
            return epoch, best, wait
        if stopping_threshold is not None and better(current, stopping_threshold):
            return epoch, best, wait
        if divergence_threshold is not None and better(divergence_threshold, current):
            return epoch, best, wait
        if better(current, best):
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch, best, wait
    return -1, best, wait


def test_stopping_threshold():
    es = EarlyStopping(monitor="val_accuracy", patience=10, stopping_threshold=0.95)
    t, run = drive(es, [0.5, 0.9, 0.96, 0.97], monitor="val_accuracy")
    assert run == 3 and "stopping_threshold" in es.stop_reason
    # the value that crossed the threshold is not recorded as the best (Lightning's order)
    assert es.best_epoch == 1 and es.best == 0.9 and t.loaded == 1.0 and es.wait == 0


def test_threshold_stops_do_not_touch_best_or_wait():
    es = EarlyStopping(patience=5, divergence_threshold=5.0)
    drive(es, [1.0, 2.0, 7.0])
    assert es.stopped_epoch == 2 and es.best == 1.0 and es.best_epoch == 0 and es.wait == 1
    es = EarlyStopping(patience=5, stopping_threshold=0.1)
    drive(es, [1.0, 2.0, 0.05])
    assert es.stopped_epoch == 2 and es.best == 1.0 and es.wait == 1


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("patience", [0, 1, 3])
def test_matches_lightning_on_random_sequences(mode, patience):
    rng = np.random.default_rng(10 + patience)
    for _ in range(200):
        values = [float(v) for v in np.round(rng.uniform(0.0, 1.0, 8), 1)]
        if rng.random() < 0.2:
            values[int(rng.integers(8))] = math.nan
        stop, div = (0.15, 0.85) if mode == "min" else (0.85, 0.15)
        es = EarlyStopping(monitor="m", mode=mode, patience=patience, stopping_threshold=stop,
                           divergence_threshold=div)
        drive(es, values, monitor="m")
        epoch, best, wait = lightning_stopped(values, patience, mode, stop, div)
        assert (es.stopped_epoch, es.best, es.wait) == (epoch, best, wait), values


@pytest.mark.parametrize("make", [
    lambda v: np.full((1, 1, 1), v), lambda v: np.full((1,), v, np.float32),
    lambda v: np.float32(v), lambda v: np.array(v)])
def test_metric_arrays_of_one_element(make):
    es = EarlyStopping(patience=1)
    _, run = drive(es, [make(v) for v in (3.0, 2.0, 2.5, 1.0)])
    assert run == 3 and es.best == 2.0 and isinstance(es.best, float)


def test_metric_torch_tensor_of_one_element():
    torch = pytest.importorskip("torch")
    es = EarlyStopping(patience=1)
    _, run = drive(es, [torch.full((1, 1), v) for v in (3.0, 2.0, 2.5)])
    assert run == 3 and es.best == 2.0


def test_metric_arrays_of_several_elements_are_refused():
    es = EarlyStopping(patience=1)
    with pytest.raises(ValueError, match=r"val_loss.*shape \(2, 1\).*one number"):
        drive(es, [np.ones((2, 1))])
    with pytest.raises(ValueError, match=r"shape \(0,\)"):
        drive(es, [np.ones(0)])
    with pytest.raises(TypeError, match="real number"):
        drive(es, ["0.5"])
    with pytest.raises(TypeError, match="real number"):
        drive(es, [np.array([1 + 2j])])


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


@pytest.mark.parametrize("name", ["min_delta", "baseline", "stopping_threshold",
                                  "divergence_threshold"])
def test_real_arguments_are_checked_up_front(name):
    for bad in ("0.5", True, [0.5], 1j):
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            EarlyStopping(**{name: bad})
    for bad in (math.nan, math.inf, -math.inf, np.float64("nan")):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            EarlyStopping(**{name: bad})
    es = EarlyStopping(**{name: np.float32(0.25)})     # NumPy scalars are numbers too
    assert getattr(es, name) == 0.25 and type(getattr(es, name)) is float


@pytest.mark.parametrize("name", ["patience", "start_from_epoch"])
def test_count_arguments_are_checked_up_front(name):
    for bad in (True, 1.0, "2", np.float32(2)):
        with pytest.raises(TypeError, match=f"{name} must be an int >= 0"):
            EarlyStopping(**{name: bad})
    with pytest.raises(ValueError, match=f"{name} must be an int >= 0"):
        EarlyStopping(**{name: np.int64(-1)})
    es = EarlyStopping(**{name: np.int64(2)})
    assert getattr(es, name) == 2 and type(getattr(es, name)) is int


def test_monitor_must_be_a_str():
    for bad in (None, 3, ("val_loss",)):
        with pytest.raises(TypeError, match="monitor must be the name of a metric"):
            EarlyStopping(monitor=bad)
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        EarlyStopping(min_delta=-0.1)


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


def _ema_trainer(es, tmp_path=None):
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    model = mlp((64, 32, 10), seed=0)
    opt = optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    trainer = Trainer(model, opt, callbacks=[es], seed=0, verbose=0, ema=0.9)
    return trainer, (X[:300], labels[:300]), (X[1200:], labels[1200:])


def test_restores_the_ema_weights_that_were_evaluated():
    """With Trainer(ema=...) the validation metrics are measured on the averages: restoring
    the best epoch restores them too, so evaluate() gives the best value again (before, it gave
    the last epoch's averages). The raw weights come back too."""
    es = EarlyStopping("val_loss", patience=100)
    trainer, train, val = _ema_trainer(es)
    raw = {}

    class Snap(EarlyStopping.__mro__[1]):
        def on_epoch_end(self, trainer, epoch, logs):
            raw[epoch] = trainer.model_state(rng=False)

    trainer.callbacks.append(Snap())
    hist = trainer.fit(*train, validation=val, epochs=12, batch_size=32)
    best = int(np.argmin(hist["val_loss"]))
    assert es.best_epoch == best and best != 11     # this run's best is not its last epoch
    assert trainer.evaluate(*val)["loss"] == es.best == hist["val_loss"][best]
    for k, v in raw[best].items():
        np.testing.assert_array_equal(trainer.model_state(rng=False)[k], v)


def test_ema_best_weights_survive_a_checkpoint(tmp_path):
    es = EarlyStopping("val_loss", patience=100)
    trainer, train, val = _ema_trainer(es)
    trainer.fit(*train, validation=val, epochs=4, batch_size=32)
    assert any(k.startswith("ema/") for k in es.best_weights)
    path = tmp_path / "run.npz"
    trainer.save_checkpoint(path)
    es2 = EarlyStopping("val_loss", patience=100)
    trainer2, _, _ = _ema_trainer(es2)
    trainer2.load_checkpoint(path)
    assert es2.best_weights.keys() == es.best_weights.keys()
    es2.on_train_end(trainer2)
    assert trainer2.evaluate(*val)["loss"] == es.best
    # incomplete averages in a checkpoint are refused before anything changes
    state = trainer.state_dict()
    state.pop("callback/0/best_weights/ema/num_updates")
    with pytest.raises(ValueError, match="EMA entries missing"):
        trainer2.load_state_dict(state)


def test_load_model_state_with_averages_needs_an_ema():
    es = EarlyStopping("val_loss", patience=100)
    trainer, train, val = _ema_trainer(es)
    state = trainer.model_state(rng=False, ema=True)
    assert "ema/num_updates" in state
    model = mlp((64, 32, 10), seed=0)
    plain = Trainer(model, optim.AdamW(model.parameters(), lr=1e-2), verbose=0)
    with pytest.raises(ValueError, match="keeps no EMA"):
        plain.load_model_state(state)
    trainer.fit(*train, validation=val, epochs=1, batch_size=32)
    before = trainer.model_state(rng=False, ema=True)
    bad = dict(state)          # the state before fit, without its update count
    bad.pop("ema/num_updates")
    with pytest.raises(ValueError, match="EMA entries missing"):
        trainer.load_model_state(bad)
    for k, v in before.items():    # nothing changed
        np.testing.assert_array_equal(trainer.model_state(rng=False, ema=True)[k], v)
    trainer.load_model_state(state)
    assert trainer.ema.num_updates == 0


def test_stop_reason_without_a_best_epoch():
    """patience=0, check_finite=False and NaN at the first epoch: nothing was recorded as best,
    and the reason says so (not "best inf at epoch 0")."""
    es = EarlyStopping(patience=0, check_finite=False)
    t, run = drive(es, [math.nan, 1.0])
    assert run == 1 and es.best_epoch == -1
    assert "no epoch recorded as best" in es.stop_reason and "epoch 0" not in es.stop_reason


def test_monitor_typo_hint_only_without_validation():
    """A val_ metric that this fit lacks: the hint to pass validation= only when there is none."""
    from fastreg.train.callbacks import _check_monitored
    with pytest.raises(ValueError, match=r"pass validation=") as info:
        _check_monitored(FakeTrainer(names=["loss", "accuracy"]), "val_acc", "EarlyStopping")
    with pytest.raises(ValueError, match=r"val_accuracy") as info:
        _check_monitored(FakeTrainer(), "val_acc", "EarlyStopping")
    assert "pass validation=" not in str(info.value)


def test_trainer_refuses_a_callback_class():
    model = mlp((4, 3), seed=0)
    with pytest.raises(TypeError, match=r"callbacks\[0\] is the class EarlyStopping.*"
                                        r"EarlyStopping\(\.\.\.\)"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[EarlyStopping])


def test_min_delta_is_tested_as_keras_and_lightning_do():
    """current + min_delta < best ("min"), current - min_delta > best ("max"): where that and
    current < best - min_delta round apart (0.3 + 0.1 > 0.4, 0.3 < 0.4 - 0.1), Keras's form."""
    es = EarlyStopping(patience=0, min_delta=0.1)
    _, run = drive(es, [0.4, 0.3])
    assert run == 2 and es.best_epoch == 0 and es.stopped_epoch == 1
    es = EarlyStopping(monitor="val_accuracy", patience=0, min_delta=0.1)
    _, run = drive(es, [0.3, 0.4], monitor="val_accuracy")
    assert es.best_epoch == 1 and es.stopped_epoch == -1


def test_a_fit_resumed_from_a_finished_fits_checkpoint_restores_its_own_best(tmp_path):
    """A checkpoint written after a fit ended holds restored=True; a new fit from it that
    records a later best must restore that best at its end (it kept the last epoch's
    weights: the flag was never cleared)."""
    def fresh():
        es = EarlyStopping("val_loss", patience=100)
        return es, _ema_trainer(es)

    es, (trainer, train, val) = fresh()
    trainer.fit(*train, validation=val, epochs=3, batch_size=32)
    assert es.restored
    trainer.save_checkpoint(tmp_path / "done.npz")
    es2, (again, _, _) = fresh()
    again.load_checkpoint(tmp_path / "done.npz")
    hist = again.fit(*train, validation=val, epochs=12, batch_size=32)
    best = int(np.argmin(hist["val_loss"]))
    assert best >= 3 and es2.best_epoch == best        # a later best than the first fit's
    assert es2.restored and again.evaluate(*val)["loss"] == es2.best == hist["val_loss"][best]


def test_a_resumed_fit_without_a_new_best_restores_the_earlier_best(tmp_path):
    """The same with no new best in the resumed epochs (min_delta too large to improve): the
    first fit's best weights come back at the end, not the last epoch's."""
    def fresh():
        es = EarlyStopping("val_loss", patience=100, min_delta=10.0)
        return es, _ema_trainer(es)

    es, (trainer, train, val) = fresh()
    trainer.fit(*train, validation=val, epochs=3, batch_size=32)
    assert es.restored and es.best_epoch == 0
    trainer.save_checkpoint(tmp_path / "done.npz")
    es2, (again, _, _) = fresh()
    again.load_checkpoint(tmp_path / "done.npz")
    hist = again.fit(*train, validation=val, epochs=6, batch_size=32)
    assert es2.best_epoch == 0 and es2.restored
    assert again.evaluate(*val)["loss"] == es2.best == hist["val_loss"][0]


def test_lr_scheduler_and_reduce_on_plateau_are_refused_together():
    """A fastreg schedule sets the rate from its closed form at every step, so the plateau's
    reductions would last one epoch (torch chains them): fit refuses the pair before training."""
    from fastreg import schedules
    from fastreg.train import LRScheduler, ReduceLROnPlateau
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    model = mlp((64, 8, 10), seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = [p.copy() for p in model.parameters()]
    trainer = Trainer(model, opt, verbose=0, callbacks=[
        ReduceLROnPlateau("loss"), LRScheduler(schedules.StepDecay(opt, step_size=100))])
    with pytest.raises(ValueError, match="do not combine"):
        trainer.fit(X[:64], labels[:64], epochs=2, batch_size=32)
    assert all(np.array_equal(p, q) for p, q in zip(model.parameters(), before))
    # refused before any callback's on_train_begin: an EarlyStopping's state survives
    es = EarlyStopping("loss", patience=100)
    trainer.callbacks = [es]
    trainer.fit(X[:64], labels[:64], epochs=2, batch_size=32)
    state = {k: v.copy() for k, v in es.state_dict().items()}
    trainer.callbacks = [es, ReduceLROnPlateau("loss"),
                         LRScheduler(schedules.StepDecay(opt, step_size=100))]
    with pytest.raises(ValueError, match="do not combine"):
        trainer.fit(X[:64], labels[:64], epochs=4, batch_size=32)
    after = es.state_dict()
    assert set(after) == set(state) and all(np.array_equal(after[k], state[k]) for k in state)
