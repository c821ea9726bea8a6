"""Callbacks of the Trainer, and EarlyStopping (the union of Keras's and PyTorch Lightning's).

A callback sees ``on_train_begin(trainer)`` (before any work: raise there for a bad
configuration), ``on_epoch_end(trainer, epoch, logs)`` (set ``trainer.stop_training = True`` to
stop) and ``on_train_end(trainer)``; ``state_dict`` / ``load_state_dict`` (flat dicts of NumPy
arrays) put its state in the Trainer's checkpoints.
"""
import math
import numbers

import numpy as np

from .. import _arrays
from ._xp import to_host


def _check_real(v, name, optional=False):
    """``float(v)`` for a finite real number (not a bool); None passes when ``optional``."""
    if v is None and optional:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number{' or None' if optional else ''}, got "
                        f"{type(v).__name__} {v!r}")
    v = _arrays.real_to_float(v, name, "finite")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_count(v, name):
    """``int(v)`` for an integer >= 0 (not a bool)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {type(v).__name__} {v!r}")
    if v < 0:
        raise ValueError(f"{name} must be an int >= 0, got {v}")
    return int(v)


class Callback:
    """Base class: every hook does nothing.

    Parameters
    ----------
    None

    Returns
    -------
    Callback
    """

    def on_train_begin(self, trainer):
        """Called by ``fit`` before the first epoch (also on resume, before the state is loaded)."""

    def on_epoch_end(self, trainer, epoch, logs):
        """Called after each epoch with ``logs`` (loss, accuracy, val_loss, ...)."""

    def on_train_end(self, trainer):
        """Called once when ``fit`` ends (also after an early stop)."""

    def state_dict(self):
        """The callback's state as ``{name: numpy array}`` (for checkpoints)."""
        return {}

    def state_spec(self, model):
        """What each entry of ``state_dict`` may look like, so that a checkpoint file is
        checked before its data is read: ``{name: fastreg.train.checkpoint.Spec}``, or None
        (the default) to accept any entries of plain dtypes (each up to
        ``checkpoint.MAX_FREE_BYTES``). ``model`` is the Specs of the model's ``"param/..."``
        and ``"buffer/..."`` entries (for callbacks that keep weights)."""
        return None

    def check_state_dict(self, state, prefix=""):
        """Raise ValueError (naming the entry, ``prefix`` + its name) if
        ``load_state_dict(state)`` would fail; the Trainer calls it for every callback, with
        the prefix ``"callback/<i>/"``, before it changes anything."""

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned."""


class EarlyStopping(Callback):
    """Stop training when a monitored metric stops improving; keep the best weights.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs: "val_loss", "val_accuracy", "loss", "accuracy". Its value
        may be a number or an array (NumPy, CuPy, torch) holding exactly one element, of any
        shape (squeezed, as Lightning does); a larger array raises ValueError at that epoch.
    mode : {"auto", "min", "max"}
        Direction of improvement; "auto" is "max" when the name contains "acc", else "min"
        (Keras 2's rule; Keras 3 asks the metric its direction).
    min_delta : float
        Smallest change that counts as an improvement (>= 0).
    min_delta_mode : {"abs", "rel"}
        "abs": improved if ``current + min_delta < best`` ("min"; ``current - min_delta >
        best`` for "max"), as Keras and Lightning test it; "rel": if better than
        ``best -+ min_delta * |best|``.
    patience : int
        Epochs without improvement after which training stops (0: the first one stops it).
    baseline : float, optional
        Training stops if the metric has not beaten the baseline within ``patience`` epochs
        (Keras 3): the patience counter restarts only on an epoch that beats both the best
        value and the baseline, and it stops only on an epoch that does not improve (an epoch
        that improves on the best value, below the baseline or not, never stops on patience).
    start_from_epoch : int
        Epochs (0-based indices below this) that are not monitored at all: a warm-up.
    restore_best_weights : bool
        At the end of training, whether or not this callback stopped it, restore the
        parameters and buffers of the best epoch (the behaviour of Keras versions differs
        here: some restore only when the callback fired), and the weight averages of a
        ``Trainer(ema=...)`` (which its validation metrics were measured on).
    check_finite : bool
        Stop as soon as the metric is NaN or infinite (Lightning); the best weights are still
        restored.
    stopping_threshold : float, optional
        Stop as soon as the metric is better than this (Lightning).
    divergence_threshold : float, optional
        Stop as soon as the metric is worse than this (Lightning).
    verbose : bool
        Print a line when it stops or restores.

    Returns
    -------
    EarlyStopping

    Raises
    ------
    TypeError
        monitor is not a str; a number argument of another type (bools included).
    ValueError
        A bad choice (mode, min_delta_mode), a negative min_delta, patience or
        start_from_epoch, a NaN or infinite min_delta, baseline or threshold.

    Notes
    -----
    Attributes after training: ``best`` (the best value), ``best_epoch`` (0-based, -1 if none),
    ``stopped_epoch`` (0-based epoch at which it fired, -1 if it did not), ``stop_reason``
    (a sentence, "" if it did not fire), ``wait``.

    Checks per monitored epoch, in order (Lightning's ``_evaluate_stopping_criteria``): not
    finite -> stop; better than stopping_threshold -> stop; worse than divergence_threshold ->
    stop; then improvement (record best, maybe reset the wait) or ``wait += 1`` and stop once
    ``wait >= patience``. An epoch that stops on one of the first three checks is neither
    recorded as the best (so ``best``, ``best_epoch`` and the restored weights stay those of the
    best earlier epoch, even when the value that crossed stopping_threshold is better) nor
    counted in ``wait``, as in Lightning
    (so ``patience=0`` and ``patience=1`` both stop at the first epoch without improvement, as
    in Keras and Lightning). As in Keras 3, ``wait`` counts every monitored epoch since the
    last reset (improving epochs below the baseline included), but only an epoch without
    improvement can stop on patience. Unlike Keras, epoch 0 can stop (a threshold, or a
    non-finite value with ``check_finite=False``).
    """

    def __init__(self, monitor="val_loss", mode="auto", min_delta=0.0, min_delta_mode="abs",
                 patience=0, baseline=None, start_from_epoch=0, restore_best_weights=True,
                 check_finite=True, stopping_threshold=None, divergence_threshold=None,
                 verbose=False):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a metric (a str such as 'val_loss'), "
                            f"got {type(monitor).__name__} {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if min_delta_mode not in ("abs", "rel"):
            raise ValueError(f"min_delta_mode must be 'abs' or 'rel', got {min_delta_mode!r}")
        min_delta = _check_real(min_delta, "min_delta")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        patience = _check_count(patience, "patience")
        start_from_epoch = _check_count(start_from_epoch, "start_from_epoch")
        baseline = _check_real(baseline, "baseline", optional=True)
        stopping_threshold = _check_real(stopping_threshold, "stopping_threshold",
                                         optional=True)
        divergence_threshold = _check_real(divergence_threshold, "divergence_threshold",
                                           optional=True)
        self.monitor = monitor
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.min_delta, self.min_delta_mode = min_delta, min_delta_mode
        self.patience, self.baseline = patience, baseline
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = bool(restore_best_weights)
        self.check_finite = bool(check_finite)
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.stop_reason = ""
        self.best_weights = None
        self.restored = False

    # -- comparisons ----------------------------------------------------------------------
    def _better(self, a, b):
        return a < b if self.mode == "min" else a > b

    def _is_improvement(self, current, reference):
        if not math.isfinite(reference):
            return self._better(current, reference)
        if self.min_delta_mode == "rel":
            delta = self.min_delta * abs(reference)
            if self.mode == "min":
                return current < reference - delta
            return current > reference + delta
        # Keras's and Lightning's form, current -/+ min_delta against the reference: a change of
        # exactly min_delta counts the same as there, also where the two forms round apart
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    # -- hooks ----------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        _check_monitored(trainer, self.monitor, "EarlyStopping")
        self._reset()

    def _stop(self, trainer, epoch, reason):
        self.stopped_epoch = epoch
        self.stop_reason = reason
        trainer.stop_training = True
        if self.verbose:
            print(f"EarlyStopping: epoch {epoch + 1}: {reason}")

    def _current(self, logs):
        """The monitored value as a float: a number, or an array (NumPy, CuPy, torch) holding
        exactly one element, of any shape (Lightning squeezes its metric tensors too)."""
        value = logs[self.monitor]
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            if hasattr(value, "detach"):          # a torch tensor
                value = value.detach().cpu().numpy()
            arr = to_host(value)
            if arr.size != 1:
                raise ValueError(f"EarlyStopping monitors {self.monitor!r}, whose value is an "
                                 f"array of shape {tuple(arr.shape)}: a metric must be one "
                                 "number (or an array holding exactly one element)")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"EarlyStopping monitors {self.monitor!r}, whose value has "
                                f"dtype {arr.dtype}: a metric must be a real number")
            value = arr.reshape(()).item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"EarlyStopping monitors {self.monitor!r}, whose value is "
                            f"{type(value).__name__} {value!r}: a metric must be a real number")
        return float(value)

    def on_epoch_end(self, trainer, epoch, logs):
        # an epoch trained: the weights are no longer the best ones restored (a checkpoint
        # written after a fit ended says restored; a fit resumed from it restores again)
        self.restored = False
        if epoch < self.start_from_epoch:
            return
        current = self._current(logs)
        # Lightning's order (EarlyStopping._evaluate_stopping_criteria): a value that stops on
        # a check is never recorded as the best, nor counted in the wait
        if self.check_finite and not math.isfinite(current):
            self._stop(trainer, epoch, f"{self.monitor} = {current} is not finite")
            return
        if self.stopping_threshold is not None and self._better(current,
                                                                 self.stopping_threshold):
            self._stop(trainer, epoch, f"{self.monitor} = {current:.6g} is better than "
                                       f"stopping_threshold = {self.stopping_threshold}")
            return
        if self.divergence_threshold is not None and self._better(self.divergence_threshold,
                                                                   current):
            self._stop(trainer, epoch, f"{self.monitor} = {current:.6g} is worse than "
                                       f"divergence_threshold = {self.divergence_threshold}")
            return
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                # with the EMA's averages: they are what was evaluated (eval_with_ema)
                self.best_weights = trainer.model_state(rng=False, ema=True)
            # the wait restarts only when the baseline is beaten too (Keras 3)
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
        elif self.wait >= self.patience:
            # an improving epoch never stops on patience, even below the baseline (Keras 3
            # returns before its patience check)
            if self.baseline is not None and not self._is_improvement(self.best, self.baseline):
                what = f"did not beat the baseline {self.baseline}"
            else:
                what = "did not improve"
            best = (f"best {self.best:.6g} at epoch {self.best_epoch + 1}"
                    if self.best_epoch >= 0 else "no epoch recorded as best")
            self._stop(trainer, epoch, f"{self.monitor} {what} for {self.wait} epoch(s) "
                                       f"(patience {self.patience}); {best}")

    def on_train_end(self, trainer):
        if self.restore_best_weights and self.best_weights is not None and not self.restored:
            trainer.load_model_state(self.best_weights)
            self.restored = True
            if self.verbose:
                print(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1} "
                      f"({self.monitor} = {self.best:.6g})")

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self):
        out = {"wait": np.array(self.wait, np.int64), "best": np.array(self.best, np.float64),
               "best_epoch": np.array(self.best_epoch, np.int64),
               "stopped_epoch": np.array(self.stopped_epoch, np.int64),
               "stop_reason": np.array(self.stop_reason),
               "restored": np.array(self.restored)}
        if self.best_weights is not None:
            for name, arr in self.best_weights.items():
                out["best_weights/" + name] = to_host(arr)
        return out

    _SCALARS = {"wait": "iu", "best": "f", "best_epoch": "iu", "stopped_epoch": "iu",
                "stop_reason": "U", "restored": "b"}

    def state_spec(self, model):
        from .checkpoint import Spec
        out = {k: Spec((), kinds) for k, kinds in self._SCALARS.items()}
        out.update({"best_weights/" + k: v for k, v in model.items()})
        return out

    def check_state_dict(self, state, prefix=""):
        for key, kinds in self._SCALARS.items():
            if key not in state:
                raise ValueError(f"the state has no entry {prefix + key!r}")
            arr = np.asarray(state[key])
            if arr.shape != () or arr.dtype.kind not in kinds:
                raise ValueError(f"entry {prefix + key!r} must be a scalar of kind {kinds!r}, "
                                 f"got shape {arr.shape} dtype {arr.dtype}")
        unknown = sorted(k for k in state
                         if k not in self._SCALARS and not k.startswith("best_weights/"))
        if unknown:
            raise ValueError(f"unexpected entry {prefix + unknown[0]!r}")
        for key, low in (("wait", 0), ("best_epoch", -1), ("stopped_epoch", -1)):
            v = int(np.asarray(state[key])[()])
            if not low <= v < 2**63:
                raise ValueError(f"entry {prefix + key!r} = {v} must be >= {low}")
        if math.isnan(float(np.asarray(state["best"])[()])):
            raise ValueError(f"entry {prefix + 'best'!r} is NaN")

    def load_state_dict(self, state):
        self.check_state_dict(state)
        self.wait = int(state["wait"])
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.stop_reason = str(state["stop_reason"])
        self.restored = bool(state["restored"])
        weights = {k[len("best_weights/"):]: np.array(v) for k, v in state.items()
                   if k.startswith("best_weights/")}
        self.best_weights = weights or None


def _check_monitored(trainer, monitor, who):
    """ValueError unless this fit produces the metric ``monitor`` (checked before training)."""
    names = trainer.metric_names()
    if monitor not in names:
        no_val = not any(n.startswith("val_") for n in names)
        hint = (" (pass validation=(X_val, y_val) to fit)"
                if monitor.startswith("val_") and no_val else "")
        raise ValueError(f"{who} monitors {monitor!r}, which this fit does not produce{hint}; "
                         f"available: {names}")


def _metric(logs, monitor, who):
    """The monitored value as a float: a number, or an array holding exactly one element."""
    if monitor not in logs:
        raise ValueError(f"{who} monitors {monitor!r}, which the epoch logs lack; available: "
                         f"{sorted(logs)}")
    value = logs[monitor]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if hasattr(value, "detach"):          # a torch tensor
            value = value.detach().cpu().numpy()
        arr = to_host(value)
        if arr.size != 1 or arr.dtype.kind not in "biuf":
            raise ValueError(f"{who} monitors {monitor!r}, whose value is an array of shape "
                             f"{tuple(arr.shape)} and dtype {arr.dtype}: a metric must be one "
                             "real number")
        value = arr.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who} monitors {monitor!r}, whose value is {type(value).__name__} "
                        f"{value!r}: a metric must be a real number")
    return float(value)


def _check_lr_owner(trainer, who):
    if not hasattr(trainer.optimizer, "lr"):
        raise TypeError(f"{who} sets optimizer.lr, which this trainer's "
                        f"{type(trainer.optimizer).__name__} lacks")


class ReduceLROnPlateau(Callback):
    """Divide the learning rate when a metric stops improving: the rule of
    ``torch.optim.lr_scheduler.ReduceLROnPlateau``, stepped once per epoch with the metric.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs ("val_loss", "val_accuracy", "loss", "accuracy"); a number or
        an array holding one element.
    mode : {"min", "max"}
        Whether the metric improves by decreasing or increasing.
    factor : float
        New rate = rate * factor, in [0, 1).
    patience : int
        Epochs without improvement tolerated; the rate drops at the next one.
    threshold : float
        Smallest improvement that counts (>= 0).
    threshold_mode : {"rel", "abs"}
        "rel": better than ``best * (1 -+ threshold)``; "abs": than ``best -+ threshold``.
    cooldown : int
        Epochs after a reduction during which bad epochs are not counted.
    min_lr : float
        The rate never drops below this (>= 0).
    eps : float
        A reduction smaller than this is skipped (>= 0).
    verbose : bool
        Print a line at each reduction.

    Raises
    ------
    TypeError, ValueError
        A bad choice or number (factor outside [0, 1), negative counts or thresholds); at
        ``fit``, a monitor the fit does not produce or an optimizer without ``lr``.

    Notes
    -----
    Per epoch, as torch: ``better(current, best)`` resets the count of bad epochs (and records
    the best), else counts one; during a cooldown the count is cleared; more bad epochs than
    ``patience`` set ``lr = max(lr * factor, min_lr)`` (if that lowers it by more than
    ``eps``), start the cooldown and clear the count. A NaN metric is never better. State
    (``best``, ``num_bad_epochs``, ``cooldown_counter``, ``last_epoch``) is checkpointed; the
    optimizer's rate is saved by the Trainer ("trainer/lr").
    """

    def __init__(self, monitor="val_loss", mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8, verbose=False):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a metric (a str), got "
                            f"{type(monitor).__name__} {monitor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        factor = _check_real(factor, "factor")
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"factor must be in [0, 1) (the rate is multiplied by it), got "
                             f"{factor}")
        for v, name in ((threshold, "threshold"), (min_lr, "min_lr"), (eps, "eps")):
            if _check_real(v, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.monitor, self.mode, self.factor = monitor, mode, factor
        self.patience = _check_count(patience, "patience")
        self.cooldown = _check_count(cooldown, "cooldown")
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.min_lr, self.eps = float(min_lr), float(eps)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def on_train_begin(self, trainer):
        _check_lr_owner(trainer, "ReduceLROnPlateau")
        _check_monitored(trainer, self.monitor, "ReduceLROnPlateau")
        self._reset()

    def on_epoch_end(self, trainer, epoch, logs):
        current = _metric(logs, self.monitor, "ReduceLROnPlateau")
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0      # bad epochs in a cooldown are not counted
        if self.num_bad_epochs > self.patience:
            opt = trainer.optimizer
            old = float(opt.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                opt.lr = new
                if self.verbose:
                    print(f"ReduceLROnPlateau: epoch {epoch + 1}: lr {old:.6g} -> {new:.6g}")
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    # -- checkpoints ----------------------------------------------------------------------
    _SCALARS = {"best": "f", "num_bad_epochs": "iu", "cooldown_counter": "iu",
                "last_epoch": "iu"}

    def state_dict(self):
        return {"best": np.array(self.best, np.float64),
                "num_bad_epochs": np.array(self.num_bad_epochs, np.int64),
                "cooldown_counter": np.array(self.cooldown_counter, np.int64),
                "last_epoch": np.array(self.last_epoch, np.int64)}

    def state_spec(self, model):
        from .checkpoint import Spec
        return {k: Spec((), kinds) for k, kinds in self._SCALARS.items()}

    def check_state_dict(self, state, prefix=""):
        unknown = sorted(set(state) - set(self._SCALARS))
        if unknown:
            raise ValueError(f"unexpected entry {prefix + unknown[0]!r}")
        for key, kinds in self._SCALARS.items():
            if key not in state:
                raise ValueError(f"the state has no entry {prefix + key!r}")
            arr = np.asarray(state[key])
            if arr.shape != () or arr.dtype.kind not in kinds:
                raise ValueError(f"entry {prefix + key!r} must be a scalar of kind {kinds!r}, "
                                 f"got shape {arr.shape} dtype {arr.dtype}")
            if kinds == "iu" and not 0 <= int(arr) < 2**63:
                raise ValueError(f"entry {prefix + key!r} = {int(arr)} must be >= 0")
        if math.isnan(float(np.asarray(state["best"]))):
            raise ValueError(f"entry {prefix + 'best'!r} is NaN")

    def load_state_dict(self, state):
        self.check_state_dict(state)
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])


class LRScheduler(Callback):
    """Step a ``fastreg.schedules`` schedule (``CosineWarmup``, ``StepDecay``) at the end of
    every epoch, with its position in the Trainer's checkpoints.

    Parameters
    ----------
    schedule : fastreg.schedules schedule
        Built on the trainer's optimizer; counts epochs.

    Raises
    ------
    TypeError
        Not a schedule; at ``fit``, a schedule of another optimizer.
    ValueError
        At ``fit``, beside a ``ReduceLROnPlateau``: a schedule sets the rate from its closed
        form at every step, so the plateau's reductions would be undone at the next epoch
        (torch's chainable schedulers multiply the current rate; fastreg's do not).
    """

    def __init__(self, schedule):
        if not (hasattr(schedule, "step") and hasattr(schedule, "lr_at")
                and hasattr(schedule, "optimizer")):
            raise TypeError(f"schedule must be a fastreg.schedules schedule, got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule

    def on_train_begin(self, trainer):
        if self.schedule.optimizer is not trainer.optimizer:
            raise TypeError("the schedule drives another optimizer than this trainer's")

    @staticmethod
    def check_callbacks(callbacks):
        """Refuse LRScheduler beside ReduceLROnPlateau (the Trainer asks before any callback's
        ``on_train_begin``, so a refused fit changes no callback's state)."""
        if (any(isinstance(cb, LRScheduler) for cb in callbacks)
                and any(isinstance(cb, ReduceLROnPlateau) for cb in callbacks)):
            raise ValueError("LRScheduler and ReduceLROnPlateau do not combine: the schedule "
                             "sets the rate from its closed form at every epoch, undoing the "
                             "plateau's reductions; use one of them")

    def on_epoch_end(self, trainer, epoch, logs):
        self.schedule.step()

    def state_dict(self):
        return {"last_step": np.array(self.schedule.last_step, np.int64)}

    def state_spec(self, model):
        from .checkpoint import Spec
        return {"last_step": Spec((), "iu")}

    def check_state_dict(self, state, prefix=""):
        if set(state) != {"last_step"}:
            raise ValueError(f"entries {sorted(prefix + k for k in state)}, expected "
                             f"[{prefix + 'last_step'!r}]")
        arr = np.asarray(state["last_step"])
        if arr.shape != () or arr.dtype.kind not in "iu" or not 0 <= int(arr) < 2**63:
            raise ValueError(f"entry {prefix + 'last_step'!r} must be an int >= 0")

    def load_state_dict(self, state):
        self.check_state_dict(state)
        self.schedule.load_state_dict({"last_step": int(state["last_step"]),
                                       "base_lr": self.schedule.base_lr})
