"""The fastreg kernels the trainer calls, in one place, with an optional timer around each.

Layers and the trainer call ``kernels.dropout(...)`` etc. (looked up on this module at each call),
so ``enable_profiling()`` can swap in timed wrappers and the trainer can report which share of a
step went to fastreg's kernels. The timer is a plain ``time.perf_counter`` pair per call: cheap
next to a kernel call, and off by default. GPU note: kernel launches are asynchronous, so on a
GPU the timer measures launch time unless the caller synchronizes (untested here).
"""
import time

import fastreg

_NAMES = ("dropout", "dropout_backward", "batch_norm", "batch_norm_backward", "l1_grad",
          "l2_grad", "elastic_net_grad", "prox_l1", "optimizer_step")

dropout = fastreg.dropout
dropout_backward = fastreg.dropout_backward
batch_norm = fastreg.batch_norm
batch_norm_backward = fastreg.batch_norm_backward
l1_grad = fastreg.l1_grad
l2_grad = fastreg.l2_grad
elastic_net_grad = fastreg.elastic_net_grad
prox_l1 = fastreg.prox_l1


def optimizer_step(optimizer, grads):
    """``optimizer.step(grads)``, routed here so that the profiler can time it.

    Parameters
    ----------
    optimizer : fastreg.optim optimizer
    grads : list of arrays

    Returns
    -------
    None
    """
    optimizer.step(grads)


_ORIGINAL = {name: globals()[name] for name in _NAMES}
timings = {}   # name -> [calls, seconds], filled while profiling is on


def _timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = timings.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
    wrapper.__wrapped__ = fn
    return wrapper


def enable_profiling():
    """Time every kernel call from now on (see ``timings``).

    Parameters
    ----------
    None

    Returns
    -------
    None
    """
    g = globals()
    for name in _NAMES:
        g[name] = _timed(name, _ORIGINAL[name])


def disable_profiling():
    """Call the kernels directly again (the timings are kept until ``reset_timings``).

    Parameters
    ----------
    None

    Returns
    -------
    None
    """
    globals().update(_ORIGINAL)


def reset_timings():
    """Forget the recorded timings.

    Parameters
    ----------
    None

    Returns
    -------
    None
    """
    timings.clear()


def total_time():
    """Seconds spent in timed kernel calls since the last ``reset_timings``.

    Parameters
    ----------
    None

    Returns
    -------
    float
    """
    return sum(v[1] for v in timings.values())


__all__ = list(_NAMES) + ["enable_profiling", "disable_profiling", "reset_timings",
                          "total_time", "timings"]
