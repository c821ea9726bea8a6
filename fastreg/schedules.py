"""Learning-rate schedules for the fastreg.optim optimizers: cosine with linear warm-up, and step
decay. (torch's own schedulers already drive ``fastreg.torch.optim``; ``ReduceLROnPlateau`` for
the Trainer is in fastreg.train.callbacks.)

Each schedule is a pure function of the step count, ``lr_at(step)``, and a class that sets an
optimizer's ``lr`` from it, the way torch's ``LRScheduler`` does: construction sets
``lr_at(0)``, and each ``step()`` (called after the optimizer's step, once per batch or once per
epoch, as you choose) advances the count and sets the next rate::

    opt = fastreg.optim.AdamW(params, lr=1e-3)
    sched = fastreg.schedules.CosineWarmup(opt, total_steps=10_000, warmup_steps=500)
    for batch in batches:
        opt.step(grads(batch))
        sched.step()

A schedule owns the rate: each ``step()`` sets ``lr_at(step)``, whatever else changed the
optimizer's ``lr`` meanwhile (a manual change, ``ReduceLROnPlateau``). torch's chainable
``StepLR`` / ``MultiStepLR`` multiply the current rate instead, so there such changes carry
over; here they last until the next ``step()``. The Trainer refuses ``LRScheduler`` together
with ``ReduceLROnPlateau`` for that reason.

Definitions (``step`` counts completed steps, from 0):

* ``cosine_warmup_lr``: ``warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps``
  while ``step < warmup_steps``; then ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2``
  with ``t = (step - warmup_steps) / (total_steps - warmup_steps)``; ``min_lr`` from
  ``total_steps`` on (torch's ``LinearLR`` then ``CosineAnnealingLR`` in closed form).
* ``step_decay_lr``: ``base_lr * gamma ** (step // step_size)`` (torch's ``StepLR``), or with
  ``milestones`` ``base_lr * gamma ** (number of milestones <= step)`` (``MultiStepLR``).
"""
import bisect
import math
import numbers

import numpy as np

from . import _arrays

__all__ = ["cosine_warmup_lr", "step_decay_lr", "CosineWarmup", "StepDecay"]


def _check_step(step, name="step"):
    step = _arrays._scalar(step)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"{name} must be an int >= 0, got {step!r}")
    return int(step)


def _check_positive_int(v, name):
    v = _check_step(v, name)
    if v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v}")
    return v


def _cosine_args(base_lr, total_steps, warmup_steps, min_lr, warmup_start_lr):
    base_lr = _arrays.check_nonneg(base_lr, "base_lr")
    total_steps = _check_positive_int(total_steps, "total_steps")
    warmup_steps = _check_step(warmup_steps, "warmup_steps")
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps "
                         f"({total_steps})")
    min_lr = _arrays.check_nonneg(min_lr, "min_lr")
    warmup_start_lr = _arrays.check_nonneg(warmup_start_lr, "warmup_start_lr")
    return base_lr, total_steps, warmup_steps, min_lr, warmup_start_lr


def _cosine(step, base_lr, total_steps, warmup_steps, min_lr, warmup_start_lr):
    if step < warmup_steps:
        try:
            rise = (base_lr - warmup_start_lr) * step
            if not math.isinf(rise):
                return warmup_start_lr + rise / warmup_steps
        except OverflowError:   # a step count beyond the float range
            pass
        # rates near the float range, or huge step counts: the same line, without overflow
        # (int / int is correctly rounded for ints of any size)
        return warmup_start_lr + (base_lr - warmup_start_lr) * (step / warmup_steps)
    if step >= total_steps:
        return min_lr
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    # ((1 + cos) / 2) first: the same bits as (x * (1 + cos)) / 2 (halving is exact), and no
    # overflow for a rate near the float range
    return min_lr + (base_lr - min_lr) * ((1.0 + math.cos(math.pi * t)) / 2.0)


def cosine_warmup_lr(step, base_lr, total_steps, warmup_steps=0, min_lr=0.0,
                     warmup_start_lr=0.0):
    """The learning rate after ``step`` steps of linear warm-up then cosine decay.

    Parameters
    ----------
    step : int
        Completed steps (>= 0).
    base_lr : float
        The rate at the end of the warm-up (>= 0).
    total_steps : int
        Length of the schedule (>= 1): ``min_lr`` from there on.
    warmup_steps : int
        Steps of linear warm-up (0 <= warmup_steps < total_steps).
    min_lr : float
        The rate the cosine reaches at ``total_steps``.
    warmup_start_lr : float
        The rate at step 0 of the warm-up.

    Returns
    -------
    float

    Raises
    ------
    ValueError, TypeError
        A negative, non-finite or non-integer argument; warmup_steps >= total_steps.
    """
    step = _check_step(step)
    return _cosine(step, *_cosine_args(base_lr, total_steps, warmup_steps, min_lr,
                                       warmup_start_lr))


def _decay_args(base_lr, step_size, gamma, milestones):
    base_lr = _arrays.check_nonneg(base_lr, "base_lr")
    gamma = _arrays.check_nonneg(gamma, "gamma")
    if (step_size is None) == (milestones is None):
        raise ValueError("give exactly one of step_size (StepLR) and milestones (MultiStepLR)")
    if step_size is not None:
        step_size = _check_positive_int(step_size, "step_size")
    else:
        try:
            items = None if isinstance(milestones, (str, bytes)) else list(milestones)
        except TypeError:
            items = None
        if items is None:
            raise TypeError(f"milestones must be a sequence of step numbers, got "
                            f"{type(milestones).__name__}") from None
        milestones = sorted(_check_step(m, "milestones[]") for m in items)
    return base_lr, step_size, gamma, milestones


def _decay(step, base_lr, step_size, gamma, milestones):
    k = step // step_size if step_size is not None else bisect.bisect_right(milestones, step)
    try:
        factor = gamma ** k
    except OverflowError:   # the result beyond the float range, or k itself (a huge step)
        # the limit of torch's repeated products: inf for gamma > 1, 1 for 1, else 0
        factor = math.inf if gamma > 1 else 1.0 if gamma == 1 else 0.0
    return base_lr * factor if base_lr else 0.0


def step_decay_lr(step, base_lr, step_size=None, gamma=0.1, milestones=None):
    """The learning rate after ``step`` steps of step decay.

    Parameters
    ----------
    step : int
        Completed steps or epochs (>= 0).
    base_lr : float
        The initial rate (>= 0).
    step_size : int, optional
        Multiply by ``gamma`` every ``step_size`` steps (torch's ``StepLR``).
    gamma : float
        The factor (>= 0).
    milestones : sequence of int, optional
        Instead of step_size: multiply by ``gamma`` at each of these steps (``MultiStepLR``;
        a milestone listed twice counts twice).

    Returns
    -------
    float

    Raises
    ------
    ValueError, TypeError
        Bad numbers; neither or both of step_size and milestones.
    """
    step = _check_step(step)
    return _decay(step, *_decay_args(base_lr, step_size, gamma, milestones))


class _Schedule:
    """Sets ``optimizer.lr`` from ``lr_at(step)``; subclasses define ``lr_at``."""

    def __init__(self, optimizer, base_lr):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr attribute (a fastreg.optim optimizer), "
                            f"got {type(optimizer).__name__}; for torch optimizers use "
                            "torch.optim.lr_scheduler")
        self.optimizer = optimizer
        self.base_lr = _arrays.check_nonneg(optimizer.lr if base_lr is None else base_lr,
                                            "base_lr")
        self.last_step = 0

    def _start(self):
        self.lr_at(0)   # checks the arguments before the optimizer is touched
        self.optimizer.lr = self.lr_at(0)

    def step(self):
        """Advance one step (or epoch) and set the optimizer's learning rate.

        Returns
        -------
        float
            The new learning rate.
        """
        lr = self.lr_at(self.last_step + 1)
        self.last_step += 1
        self.optimizer.lr = lr
        return lr

    def get_last_lr(self):
        """The rate set by the last ``step`` (or by construction).

        Returns
        -------
        float
        """
        return self.lr_at(self.last_step)

    def state_dict(self):
        """``{"last_step": int, "base_lr": float}``.

        Returns
        -------
        dict
        """
        return {"last_step": self.last_step, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        """Restore ``state_dict()`` and set the optimizer's rate for that step.

        Parameters
        ----------
        state : mapping

        Returns
        -------
        None
        """
        last = _check_step(state["last_step"], "last_step")
        base = _arrays.check_nonneg(state["base_lr"], "base_lr")
        self.last_step, self.base_lr = last, base
        self.optimizer.lr = self.lr_at(last)


class CosineWarmup(_Schedule):
    """Linear warm-up then cosine decay of ``optimizer.lr`` (see ``cosine_warmup_lr``).

    Parameters
    ----------
    optimizer : fastreg.optim optimizer
        Its ``lr`` is set at construction (``lr_at(0)``) and by every ``step()``.
    total_steps, warmup_steps, min_lr, warmup_start_lr
        As in ``cosine_warmup_lr``.
    base_lr : float, optional
        Default: the optimizer's ``lr`` at construction.

    Raises
    ------
    TypeError, ValueError
        An optimizer without ``lr``; bad numbers (as ``cosine_warmup_lr``).
    """

    def __init__(self, optimizer, total_steps, warmup_steps=0, min_lr=0.0, warmup_start_lr=0.0,
                 base_lr=None):
        super().__init__(optimizer, base_lr)
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_lr, self.warmup_start_lr = min_lr, warmup_start_lr
        self._args = _cosine_args(self.base_lr, total_steps, warmup_steps, min_lr,
                                  warmup_start_lr)
        self._start()

    def lr_at(self, step):
        """The rate after ``step`` steps.

        Parameters
        ----------
        step : int

        Returns
        -------
        float
        """
        return _cosine(_check_step(step), self.base_lr, *self._args[1:])


class StepDecay(_Schedule):
    """Step decay of ``optimizer.lr`` (see ``step_decay_lr``; torch's ``StepLR`` /
    ``MultiStepLR``).

    Parameters
    ----------
    optimizer : fastreg.optim optimizer
    step_size, gamma, milestones
        As in ``step_decay_lr``.
    base_lr : float, optional
        Default: the optimizer's ``lr`` at construction.

    Raises
    ------
    TypeError, ValueError
        As in ``CosineWarmup`` and ``step_decay_lr``.
    """

    def __init__(self, optimizer, step_size=None, gamma=0.1, milestones=None, base_lr=None):
        super().__init__(optimizer, base_lr)
        self._args = _decay_args(self.base_lr, step_size, gamma, milestones)
        self.step_size, self.gamma, self.milestones = self._args[1:]
        self._start()

    def lr_at(self, step):
        """The rate after ``step`` steps.

        Parameters
        ----------
        step : int

        Returns
        -------
        float
        """
        return _decay(_check_step(step), self.base_lr, *self._args[1:])
