"""Learning-rate schedules (fastreg.schedules) against torch's schedulers, and the Trainer's
ReduceLROnPlateau and LRScheduler callbacks (torch's plateau rule, checkpoints, exact resume)."""
import math

import numpy as np
import pytest

import fastreg
from fastreg import schedules
from fastreg.train import LRScheduler, ReduceLROnPlateau, Trainer, mlp
from fastreg.train.data import load_digits, stratified_split


def _opt(lr=0.1):
    return fastreg.optim.SGD([np.zeros(3)], lr=lr, backend="numpy")


def _torch_opt(lr=0.1):
    torch = pytest.importorskip("torch")
    return torch, torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=lr)


# ---- functions and classes ----------------------------------------------------------------------

def test_cosine_warmup_values():
    f = schedules.cosine_warmup_lr
    assert f(0, 1.0, 10, warmup_steps=4) == 0.0
    assert f(2, 1.0, 10, warmup_steps=4) == 0.5
    assert f(2, 1.0, 10, warmup_steps=4, warmup_start_lr=0.2) == pytest.approx(0.6)
    assert f(4, 1.0, 10, warmup_steps=4) == 1.0                       # peak
    assert f(7, 1.0, 10, warmup_steps=4) == pytest.approx(0.5)        # half-way down
    assert f(10, 1.0, 10, warmup_steps=4, min_lr=0.1) == 0.1
    assert f(99, 1.0, 10, min_lr=0.1) == 0.1
    values = [f(s, 1.0, 50, warmup_steps=10) for s in range(60)]
    assert values[:11] == sorted(values[:11]) and values[10:] == sorted(values[10:],
                                                                       reverse=True)


def test_cosine_warmup_equals_torch_linear_then_cosine():
    torch, topt = _torch_opt(0.5)
    sched = torch.optim.lr_scheduler.SequentialLR(topt, [
        torch.optim.lr_scheduler.LinearLR(topt, start_factor=0.1, end_factor=1.0,
                                          total_iters=5),
        torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=15, eta_min=0.01)],
        milestones=[5])
    opt = _opt(0.5)
    ours = schedules.CosineWarmup(opt, total_steps=20, warmup_steps=5, min_lr=0.01,
                                  warmup_start_lr=0.05)
    assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
    for _ in range(20):   # torch's cosine rises again past T_max; fastreg's stays at min_lr
        topt.step()
        sched.step()
        assert ours.step() == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        assert opt.lr == ours.get_last_lr()
    assert ours.step() == 0.01


@pytest.mark.parametrize("kwargs, torch_cls, torch_kwargs", [
    (dict(step_size=3, gamma=0.5), "StepLR", dict(step_size=3, gamma=0.5)),
    (dict(milestones=[2, 5, 5, 9], gamma=0.3), "MultiStepLR",
     dict(milestones=[2, 5, 5, 9], gamma=0.3)),
])
def test_step_decay_equals_torch(kwargs, torch_cls, torch_kwargs):
    torch, topt = _torch_opt(0.2)
    sched = getattr(torch.optim.lr_scheduler, torch_cls)(topt, **torch_kwargs)
    opt = _opt(0.2)
    ours = schedules.StepDecay(opt, **kwargs)
    for step in range(1, 14):
        topt.step()
        sched.step()
        ours.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12), step
        assert opt.lr == pytest.approx(schedules.step_decay_lr(step, 0.2, **kwargs),
                                       rel=1e-15)


def test_schedule_state_round_trip():
    opt = _opt(0.3)
    s = schedules.CosineWarmup(opt, total_steps=10, warmup_steps=2)
    for _ in range(4):
        s.step()
    state = s.state_dict()
    opt2 = _opt(0.3)
    s2 = schedules.CosineWarmup(opt2, total_steps=10, warmup_steps=2)
    s2.load_state_dict(state)
    assert opt2.lr == opt.lr and s2.last_step == 4
    assert s2.step() == s.step()


@pytest.mark.parametrize("make, exc", [
    (lambda o: schedules.CosineWarmup(o, total_steps=0), ValueError),
    (lambda o: schedules.CosineWarmup(o, total_steps=5, warmup_steps=5), ValueError),
    (lambda o: schedules.CosineWarmup(o, total_steps=5, min_lr=-1.0), ValueError),
    (lambda o: schedules.CosineWarmup(o, total_steps=5.5), ValueError),
    (lambda o: schedules.StepDecay(o), ValueError),
    (lambda o: schedules.StepDecay(o, step_size=2, milestones=[3]), ValueError),
    (lambda o: schedules.StepDecay(o, step_size=0), ValueError),
    (lambda o: schedules.StepDecay(o, milestones=[-1]), ValueError),
    (lambda o: schedules.StepDecay(o, step_size=2, gamma=math.nan), ValueError),
    (lambda o: schedules.StepDecay(object(), step_size=2), TypeError),
])
def test_schedule_bad_input_leaves_the_optimizer_alone(make, exc):
    opt = _opt(0.3)
    with pytest.raises(exc):
        make(opt)
    assert opt.lr == 0.3
    with pytest.raises(ValueError, match="step"):
        schedules.step_decay_lr(-1, 0.1, step_size=2)


# ---- ReduceLROnPlateau: torch's rule ------------------------------------------------------------

class _FakeTrainer:
    def __init__(self, opt):
        self.optimizer = opt

    def metric_names(self):
        return ["loss", "accuracy", "time", "val_loss", "val_accuracy"]


METRICS = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.5, 0.6, 0.7, 0.8, 0.9, math.nan, 0.4, 0.4,
           0.45, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(mode="min", factor=0.5, patience=1, threshold=0.05, threshold_mode="abs"),
    dict(mode="max", factor=0.3, patience=0, threshold=0.01),
    dict(mode="max", patience=2, threshold=0.1, threshold_mode="abs", cooldown=2),
    dict(factor=0.5, patience=0, cooldown=1, min_lr=0.02, eps=1e-3),
    dict(factor=0.0, patience=1),
])
def test_reduce_lr_on_plateau_equals_torch(kwargs):
    torch, topt = _torch_opt(0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    opt = _opt(0.1)
    cb = ReduceLROnPlateau(monitor="val_loss", **kwargs)
    trainer = _FakeTrainer(opt)
    cb.on_train_begin(trainer)
    for epoch, m in enumerate(METRICS):
        value = np.float32(m) if epoch % 2 else m     # NumPy scalars are metrics too
        tsched.step(float(value))
        cb.on_epoch_end(trainer, epoch, {"val_loss": value})
        assert opt.lr == topt.param_groups[0]["lr"], epoch
        assert (cb.num_bad_epochs, cb.cooldown_counter, cb.last_epoch) == (
            tsched.num_bad_epochs, tsched.cooldown_counter, tsched.last_epoch)
        assert cb.best == tsched.best


def test_reduce_lr_on_plateau_state_and_checks():
    opt = _opt(0.1)
    cb = ReduceLROnPlateau(patience=0)
    trainer = _FakeTrainer(opt)
    cb.on_train_begin(trainer)
    for e, m in enumerate([1.0, 2.0, 0.5]):
        cb.on_epoch_end(trainer, e, {"val_loss": m})
    state = cb.state_dict()
    other = ReduceLROnPlateau(patience=0)
    other.load_state_dict(state)
    assert other.state_dict().keys() == state.keys()
    assert all(other.state_dict()[k] == state[k] for k in state)
    for key, bad in (("best", np.array(math.nan)), ("num_bad_epochs", np.array(-1)),
                     ("last_epoch", np.array(1.5)), ("extra", np.array(0))):
        with pytest.raises(ValueError, match=key):
            other.check_state_dict({**state, key: bad})
    with pytest.raises(ValueError, match="cooldown_counter"):
        other.check_state_dict({k: v for k, v in state.items() if k != "cooldown_counter"})
    with pytest.raises(ValueError, match="monitors 'val_acc'"):
        ReduceLROnPlateau(monitor="val_acc").on_train_begin(trainer)
    with pytest.raises(ValueError, match="one real number"):
        cb.on_epoch_end(trainer, 3, {"val_loss": np.ones(2)})


@pytest.mark.parametrize("kwargs, exc", [
    (dict(factor=1.0), ValueError), (dict(factor=-0.1), ValueError),
    (dict(factor=math.nan), ValueError), (dict(mode="auto"), ValueError),
    (dict(threshold_mode="pct"), ValueError), (dict(patience=-1), ValueError),
    (dict(patience=1.5), TypeError), (dict(cooldown=True), TypeError),
    (dict(min_lr=-1e-3), ValueError), (dict(eps=math.inf), ValueError),
    (dict(threshold=-0.1), ValueError), (dict(monitor=3), TypeError),
])
def test_reduce_lr_on_plateau_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        ReduceLROnPlateau(**kwargs)


# ---- in the Trainer: exact resume ---------------------------------------------------------------

def _digits(n=300):
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    idx = stratified_split(labels, [n, 150], seed=0)
    return X[idx[0]], labels[idx[0]], X[idx[1]], labels[idx[1]]


def _trainer(kind):
    model = mlp((64, 16, 10), dropout=0.1)
    opt = fastreg.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, backend="numpy")
    if kind == "plateau":
        cb = ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, threshold=0.5)
    else:
        cb = LRScheduler(schedules.StepDecay(opt, step_size=1, gamma=0.7))
    return Trainer(model, opt, callbacks=[cb], seed=3, verbose=0, backend="numpy")


@pytest.mark.parametrize("kind", ["plateau", "steps"])
def test_lr_callbacks_resume_exactly(kind, tmp_path):
    X, y, Xv, yv = _digits()
    full = _trainer(kind)
    full.fit(X, y, validation=(Xv, yv), epochs=4, batch_size=64)
    assert full.optimizer.lr < 0.5                  # the rate did drop
    path = tmp_path / "ckpt.npz"
    first = _trainer(kind)
    first.fit(X, y, validation=(Xv, yv), epochs=2, batch_size=64, checkpoint=path)
    resumed = _trainer(kind)
    resumed.fit(X, y, validation=(Xv, yv), epochs=4, batch_size=64, checkpoint=path,
                resume=True)
    assert resumed.optimizer.lr == full.optimizer.lr
    assert resumed.history["loss"] == full.history["loss"]
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        np.testing.assert_array_equal(a, b)


def test_lr_scheduler_callback_checks():
    with pytest.raises(TypeError, match="schedule"):
        LRScheduler(object())
    other = schedules.StepDecay(_opt(), step_size=2)
    t = _trainer("plateau")
    t.callbacks = [LRScheduler(other)]
    X, y, _, _ = _digits(100)
    with pytest.raises(TypeError, match="another optimizer"):
        t.fit(X, y, epochs=1)
    cb = LRScheduler(schedules.StepDecay(_opt(), step_size=2))
    with pytest.raises(ValueError, match="last_step"):
        cb.check_state_dict({"last_step": np.array(-3)})


def test_step_decay_growing_past_float_range_is_inf_as_torch():
    """gamma > 1 over many steps: inf (torch's repeated products), not an OverflowError; a zero
    base rate stays 0; the class advances only when the rate is computed."""
    assert schedules.step_decay_lr(1100, 1.0, step_size=1, gamma=2.0) == math.inf
    assert schedules.step_decay_lr(1100, 0.0, step_size=1, gamma=2.0) == 0.0
    assert schedules.step_decay_lr(3, 1.0, milestones=[1, 2], gamma=2.0) == 4.0
    opt = fastreg.optim.SGD([np.zeros(3, np.float32)], lr=1.0)
    sched = schedules.StepDecay(opt, step_size=1, gamma=2.0)
    for _ in range(1100):
        lr = sched.step()
    assert lr == math.inf and opt.lr == math.inf and sched.last_step == 1100


def test_cosine_near_the_float_range():
    """No overflow from the formula's intermediate products (inf before): the warm-up and the
    cosine stay within [min_lr, base_lr]."""
    big = 1.7e308
    assert schedules.cosine_warmup_lr(0, big, 10) == big
    assert schedules.cosine_warmup_lr(5, big, 20, warmup_steps=10) == big / 2
    for step in range(0, 21):
        assert 0.0 <= schedules.cosine_warmup_lr(step, big, 20, warmup_steps=4) <= big


def test_milestones_must_be_a_sequence():
    for bad in (5, "12"):
        with pytest.raises(TypeError, match="milestones must be a sequence"):
            schedules.step_decay_lr(3, 1.0, milestones=bad)


def test_downward_warmup_near_the_float_range():
    """A warm-up from a start rate above base_lr (allowed) near the float range: no -inf."""
    big = 1.7e308
    lr = schedules.cosine_warmup_lr(5, 0.0, 100, warmup_steps=10, warmup_start_lr=big)
    assert lr == big / 2
