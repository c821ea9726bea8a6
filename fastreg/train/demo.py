"""``fastreg demo``: one MLP on the embedded digits, trained under every regularizer fastreg has,
and three questions answered with measurements.

The same 64-256-256-10 MLP is trained on a small stratified subset of the digits (so that it
overfits visibly), validated on a second subset (early stopping) and tested on the rest, under:
no regularization, L2 coupled, L2 decoupled (AdamW), L1 with the proximal step, dropout
(inverted and classic), batch norm, batch norm + dropout, early stopping, augmentation, label
smoothing 0.1, mixup and CutMix (soft targets), and everything together; each over several
seeds. It prints a table and answers three questions, each with a figure named after it next to
``results.json`` (which holds the numbers behind every printed sentence):

1. ``q1_l1_vs_l2_sparsity.png``: why L1 gives exactly-zero weights and L2 does not (histogram of
   |w|, and each penalty's gradient against w).
2. ``q2_dropout_at_inference.png``: how dropout must be handled at inference, measured on the
   whole network at several p (inverted, classic with and without its (1-p) scaling, and the
   average of many stochastic forward passes).
3. ``q3_batch_norm_vs_dropout.png``: whether batch norm replaces dropout, over 5 seeds, with a
   claim only where the difference of means exceeds its seed-to-seed uncertainty (Welch's t).

The runs are independent and seeded, so they are spread over worker processes (``--jobs``).
Nothing is downloaded and scikit-learn is not needed (the digits ship with fastreg); matplotlib
(the figures) and tqdm (the progress bar) are optional: ``pip install "fastreg-kernels[demo]"``.

``fastreg demo --distributed`` (under ``mpiexec -n N``; needs ``pip install
"fastreg-kernels[mpi]"``) trains the "batch norm + dropout" and "everything" configurations
data-parallel over the N ranks (``Trainer(..., comm=MPI.COMM_WORLD)``: the same global batches,
hence the same model as one process up to rounding) and prints, on rank 0, samples per second and
the final accuracies.
"""
import argparse
import contextlib
import json
import math
import os
import queue as _queue
import sys
import textwrap
import time

import numpy as np

import fastreg
from fastreg import _registry, _threads, optim
from fastreg._cli import SEED_LIMIT, positive_int, seed_int

from . import augment as _augment
from .callbacks import Callback, EarlyStopping
from .data import load_digits, stratified_split
from .layers import mlp
from .trainer import Trainer

SIZES = (64, 256, 256, 10)
N_TRAIN, N_VAL = 400, 300
LR = 1e-3
BATCH = 32
DROPOUT = 0.5
L2_COUPLED = 5e-4       # loss + l2 * sum w^2 (gradient 2 * l2 * w), with Adam
WD_DECOUPLED = 0.5      # AdamW: w <- w * (1 - lr * wd) per step
L1_PROX = 0.2           # Adam step, then w <- soft(w, lr * l1)
PATIENCE = 10
N_CLASSES = SIZES[-1]
LABEL_SMOOTHING = 0.1   # torchvision's and timm's recipes
MIXUP_ALPHA = 0.2       # lambda ~ Beta(0.2, 0.2) per sample (the mixup paper's ImageNet value)
CUTMIX_ALPHA = 1.0      # box area ~ Beta(1, 1) (timm's default)
# Work. Measured on the digits at lr 1e-3 (3 seeds, test accuracy): dropout's benefit appears
# after about 40 epochs (none 0.954 / dropout 0.953 at 30 epochs, 0.952 / 0.959 at 40,
# 0.954 / 0.963 at 60); 40 epochs is the shortest budget that still shows it.
EPOCHS, EPOCHS_QUICK = 40, 15
SEEDS, SEEDS_QUICK = 2, 1     # every row of the table (question 3's rows: Q3_SEEDS)
Q3_CONFIGS = ("none", "dropout inverted", "batch norm", "batch norm + dropout")
Q3_SEEDS = 5            # question 3 compares means: at least 5 seeds per configuration
Q2_PS = (0.2, 0.5, 0.8)
MC_PASSES, MC_PASSES_QUICK = 20, 10
HIST_EDGES = np.logspace(-9, 1, 51)     # |w| histogram of question 1: 5 bins per decade
WIDTH = 100             # printed text is wrapped to this many columns
FIGURES = {"l1_vs_l2_sparsity": "q1_l1_vs_l2_sparsity.png",
           "dropout_at_inference": "q2_dropout_at_inference.png",
           "batch_norm_vs_dropout": "q3_batch_norm_vs_dropout.png"}
DEMO_HINT = 'pip install "fastreg-kernels[demo]"'
# two-sided 95% critical values of Student's t for 1..30 degrees of freedom
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060,
       2.056, 2.052, 2.048, 2.045, 2.042)


def _configs():
    """name -> how to build the run: model kwargs, optimizer, trainer kwargs, callbacks."""
    base = dict(model={}, opt="adam", opt_kw={}, trainer={}, early=False, augment=False,
                mix=None)
    table = {
        "none": {},
        "l2 coupled": dict(trainer={"l2": L2_COUPLED}),
        "l2 decoupled (AdamW)": dict(opt="adamw", opt_kw={"weight_decay": WD_DECOUPLED}),
        "l1 prox": dict(trainer={"prox_l1": L1_PROX}),
        "dropout inverted": dict(model={"dropout": DROPOUT, "dropout_mode": "inverted"}),
        "dropout classic": dict(model={"dropout": DROPOUT, "dropout_mode": "classic"}),
        "batch norm": dict(model={"batch_norm": True}),
        "batch norm + dropout": dict(model={"batch_norm": True, "dropout": DROPOUT}),
        "early stopping": dict(early=True),
        "augmentation": dict(augment=True),
        f"label smoothing {LABEL_SMOOTHING}": dict(trainer={"label_smoothing": LABEL_SMOOTHING}),
        "mixup": dict(mix=("mixup", MIXUP_ALPHA)),
        "cutmix": dict(mix=("cutmix", CUTMIX_ALPHA)),
        "everything": dict(model={"batch_norm": True, "dropout": DROPOUT}, opt="adamw",
                           opt_kw={"weight_decay": WD_DECOUPLED}, early=True, augment=True),
    }
    return {name: {**base, **cfg} for name, cfg in table.items()}


def _weight_matrices(model):
    return [p for n, p in model.named_parameters() if p.ndim > 1]


def _zero_fraction(model):
    """Fraction of exactly-zero entries of the weight matrices (biases excluded)."""
    ws = _weight_matrices(model)
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws))


def _small_fraction(model, tol=1e-3):
    """Fraction of weight-matrix entries with |w| < tol (exact zeros included)."""
    ws = _weight_matrices(model)
    return float(sum(int((np.abs(w) < tol).sum()) for w in ws) / sum(w.size for w in ws))


def _abs_weight_histogram(model):
    """Counts of |w| over the weight matrices: exact zeros, below HIST_EDGES[0], then per bin."""
    a = np.abs(np.concatenate([w.ravel() for w in _weight_matrices(model)]).astype(np.float64))
    nonzero = a[a > 0]
    return {"zero": int((a == 0).sum()), "below_first_edge": int((nonzero < HIST_EDGES[0]).sum()),
            "counts": np.histogram(nonzero, HIST_EDGES)[0].tolist(), "total": int(a.size)}


class _EpochTick(Callback):
    """Counts finished epochs for the progress bar (through a queue in worker processes)."""

    def __init__(self, tick):
        self.tick = tick

    def on_epoch_end(self, trainer, epoch, logs):
        self.tick(1)


def _run(cfg, data, seed, epochs, backend, augment_fn, comm=None, tick=None):
    """Train one configuration with one seed; returns (result dict, trainer)."""
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    model = mlp(SIZES, seed=seed, **cfg["model"])
    cls = optim.AdamW if cfg["opt"] == "adamw" else optim.Adam
    opt = cls(model.parameters(), lr=LR, backend=backend,
              **({"weight_decay": 0.0} if cls is optim.AdamW and not cfg["opt_kw"] else {}),
              **cfg["opt_kw"])
    callbacks = [EarlyStopping("val_loss", patience=PATIENCE)] if cfg["early"] else []
    if tick is not None:
        callbacks.append(_EpochTick(tick))
    mix = None
    if cfg["mix"] is not None:   # (kind, alpha): mixup or cutmix of the 8x8 images, soft labels
        kind, alpha = cfg["mix"]
        make = _augment.image_mixup if kind == "mixup" else _augment.image_cutmix
        mix = make((8, 8), N_CLASSES, alpha, backend=backend)
    trainer = Trainer(model, opt, callbacks=callbacks, seed=seed, backend=backend, verbose=0,
                      augment=augment_fn if cfg["augment"] else None, mix=mix, comm=comm,
                      **cfg["trainer"])
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, validation=(Xva, yva), epochs=epochs, batch_size=BATCH)
    elapsed = time.perf_counter() - t0
    es = callbacks[0] if cfg["early"] else None
    best = es.best_epoch if es is not None else int(np.argmin(hist["val_loss"]))
    result = {
        "seed": seed,
        "train_accuracy": trainer.evaluate(Xtr, ytr)["accuracy"],
        "val_accuracy": trainer.evaluate(Xva, yva)["accuracy"],
        "test_accuracy": trainer.evaluate(Xte, yte)["accuracy"],
        "epochs_run": len(hist["loss"]),
        "best_epoch": best + 1,
        "zero_fraction": _zero_fraction(model),
        "small_fraction": _small_fraction(model),
        "weight_l2_norm": float(math.sqrt(sum(float((w.astype(np.float64) ** 2).sum())
                                              for w in _weight_matrices(model)))),
        "time_s": elapsed,
        "curves": {k: [float(v) for v in hist[k]] for k in ("loss", "val_loss",
                                                              "accuracy", "val_accuracy")},
    }
    result["gap"] = result["train_accuracy"] - result["test_accuracy"]
    return result, trainer


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(probs, logits, y):
    """Accuracy, mean negative log-likelihood and mean |logit| of one way of predicting."""
    nll = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-30))
    return {"accuracy": float((probs.argmax(1) == y).mean()), "nll": float(nll.mean()),
            "mean_abs_logit": float(np.abs(logits).mean())}


def _dropout_inference(trainer, X, y, passes):
    """Question 2 on one trained dropout model: every way to predict with it, on the test set.

    "eval": the model's own inference rule (inverted: identity; classic: times (1-p)).
    "unscaled" (classic only): classic dropout evaluated without its (1-p), the mistake.
    "mc": the average of the softmax of ``passes`` stochastic forward passes (dropout active,
    fresh masks each pass); its mean logits are the reference for the output scale.
    """
    model = trainer.model
    drops = model.dropout_layers()
    mode = drops[0].mode
    logits = trainer.predict(X)
    out = {"eval": _scores(_softmax(logits.astype(np.float64)), logits, y)}
    if mode == "classic":
        for layer in drops:
            layer.mode = "inverted"         # inverted at inference is the identity: no (1-p)
        try:
            wrong = trainer.predict(X)
        finally:
            for layer in drops:
                layer.mode = "classic"
        out["unscaled"] = _scores(_softmax(wrong.astype(np.float64)), wrong, y)
    model.eval()
    for layer in drops:
        layer.training = True               # dropout on, everything else in inference mode
    X = np.ascontiguousarray(X, dtype=np.float32)
    prob_sum = np.zeros((len(X), model.out_features))
    logit_sum = np.zeros((len(X), model.out_features))
    for _ in range(passes):
        z = model.forward(X).astype(np.float64)
        prob_sum += _softmax(z)
        logit_sum += z
    model.eval()
    mc = _scores(prob_sum / passes, logit_sum / passes, y)
    mc["passes"] = passes
    out["mc"] = mc
    for name in ("eval", "unscaled"):
        if name in out:   # output scale: mean |logit| over that of the mean stochastic logits
            out[name]["output_scale"] = out[name]["mean_abs_logit"] / mc["mean_abs_logit"]
    out["mc"]["output_scale"] = 1.0
    return out


# ---- running the configurations, in this process or in worker processes --------------------
_WORKER = {}


def _init_worker(split_seed, backend, augment, ticks=None):
    """Load the data (and the augmentation) once per process; ``ticks`` is the progress queue."""
    _WORKER["data"] = _data(split_seed)
    _WORKER["backend"] = backend
    _WORKER["augment"] = _augment.image_augment((8, 8), backend=backend) if augment else None
    _WORKER["tick"] = None if ticks is None else ticks.put


def _task(spec):
    """One run: train ``spec["cfg"]`` with ``spec["seed"]``, plus the evidence it is asked for."""
    data = _WORKER["data"]
    with _one_thread_each():
        r, trainer = _run(spec["cfg"], data, spec["seed"], spec["epochs"], _WORKER["backend"],
                          _WORKER["augment"], tick=_WORKER["tick"])
        if spec.get("histogram"):
            r["abs_weight_histogram"] = _abs_weight_histogram(trainer.model)
        if spec.get("mc_passes"):
            r["inference"] = _dropout_inference(trainer, data[2][0], data[2][1],
                                                spec["mc_passes"])
    return r


@contextlib.contextmanager
def _one_thread_each():
    """fastreg, BLAS and OpenMP on one thread (as ``Trainer`` does during ``fit``): also the
    evaluations outside ``fit`` then give the same bits in this process and in a worker."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    with _threads.threads(1), (threadpool_limits(limits=1) if threadpool_limits is not None
                               else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(specs, jobs, init_args, bar):
    """Run every spec, in this process (jobs=1) or over ``jobs`` spawned worker processes.

    Each run is seeded and single-threaded, so where it runs does not change its result. Workers
    are started with "spawn" (GNU OpenMP's threads do not survive fork) and with one thread per
    library, so that ``jobs`` processes use ``jobs`` cores.
    """
    results = [None] * len(specs)

    def finished(i, r):
        results[i] = r
        if bar is not None:   # early stopping: count the epochs that were not run
            # the count first: the update may print a line
            bar.set_postfix_str(f"{sum(x is not None for x in results)}/{len(specs)} runs")
            bar.update(specs[i]["epochs"] - r["epochs_run"])

    if jobs <= 1:
        _init_worker(*init_args)
        _WORKER["tick"] = None if bar is None else bar.update
        for i, spec in enumerate(specs):
            finished(i, _task(spec))
        return results
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    one = {k: "1" for k in ("FASTREG_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    with _environ(**one):                   # the workers' environment, read at their start
        pool = ctx.Pool(jobs, initializer=_init_worker, initargs=(*init_args, ticks))
    with pool:   # the longest runs first, so that no worker is left with one at the end
        order = sorted(range(len(specs)), key=lambda i: -_cost(specs[i]))
        pending = {i: pool.apply_async(_task, (specs[i],)) for i in order}
        while pending:
            try:
                n = ticks.get(timeout=0.1)
                if bar is not None:
                    bar.update(n)
            except _queue.Empty:
                pass
            for i in [i for i, a in pending.items() if a.ready()]:
                finished(i, pending.pop(i).get())    # re-raises a worker's exception
    return results


def _cost(spec):
    """Rough relative cost of a run (measured s/run of the table, per epoch): augmentation about
    doubles an epoch, mixup/cutmix and batch norm add about a third, dropout a tenth."""
    cfg = spec["cfg"]
    model = cfg["model"]
    return spec["epochs"] * (1.0 + 1.0 * cfg["augment"] + 0.3 * bool(cfg["mix"])
                             + 0.3 * bool(model.get("batch_norm"))
                             + 0.1 * bool(model.get("dropout")))


class _Lines:
    """Progress as a plain line per tenth of the work (not a terminal, or no tqdm); the 100%
    line when the bar closes, so that it counts every finished run (with worker processes the
    last epochs arrive before the last run's result)."""

    def __init__(self, total):
        self.total, self.n, self.shown, self.postfix = total, 0, 0, ""
        self.t0 = time.perf_counter()

    def _line(self, tenth):
        print(f"training: {10 * tenth}% ({self.n}/{self.total} epochs, {self.postfix}, "
              f"{time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def update(self, n=1):
        self.n += n
        tenth = 10 * self.n // max(self.total, 1)
        if self.shown < tenth < 10:
            self.shown = tenth
            self._line(tenth)

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        if self.n >= self.total and self.shown < 10:
            self.shown = 10
            self._line(10)


def _progress(total, enabled):
    """A progress bar over epochs: tqdm on a terminal, else a line per 10%; None if quiet."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr,
                        ncols=WIDTH, mininterval=0.5)
        except ImportError:
            pass
    return _Lines(total)


def _numba_cache_cold():
    """True if none of the cpu backend's Numba kernels has a valid on-disk cache entry (they
    will be compiled now), False if some have, None if it cannot be told."""
    try:
        import numba.core.dispatcher as nd

        from fastreg.cpu import batchnorm, dropout, optim as cpu_optim, penalty
        dispatchers = []
        for module in (batchnorm, dropout, cpu_optim, penalty):
            for obj in vars(module).values():
                dispatchers += [d for d in (obj, getattr(obj, "serial", None),
                                            getattr(obj, "parallel", None))
                                if isinstance(d, nd.Dispatcher)]
        cached = [bool(d._cache._cache_file._load_index()) for d in dispatchers
                  if d._cache is not None and hasattr(d._cache, "_cache_file")]
        return None if not cached else not any(cached)
    except Exception:
        return None


# ---- statistics and sentences ----------------------------------------------------------------
def _mean_std(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def _welch(a, b):
    """Difference of means a - b against its standard error (Welch's t, 95% two-sided)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = {"difference": float(a.mean() - b.mean()), "n": [len(a), len(b)]}
    if len(a) < 2 or len(b) < 2:
        out.update(standard_error=None, t=None, df=None, t_critical=None, significant=None)
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        t = 0.0 if out["difference"] == 0 else math.copysign(math.inf, out["difference"])
        df = len(a) + len(b) - 2
    else:
        t = out["difference"] / se
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    crit = T95[min(int(df), len(T95)) - 1]     # df rounded down: conservative
    out.update(standard_error=se, t=t, df=df, t_critical=crit, significant=abs(t) > crit)
    return out


def _say_wrapped(say, text, indent="   "):
    say(textwrap.fill(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False))


def _pct(x):
    return f"{100 * x:.1f}%"


def _question1(results, seeds_used):
    names = {"none": "none", "l2 coupled": "L2 coupled", "l2 decoupled (AdamW)": "L2 decoupled",
             "l1 prox": "L1-prox"}
    ev = {"configs": {}, "l1_prox": L1_PROX, "l2_coupled": L2_COUPLED,
          "weight_decay_decoupled": WD_DECOUPLED, "lr": LR, "threshold_per_step": LR * L1_PROX,
          "histogram_edges": HIST_EDGES.tolist()}
    for key, label in names.items():
        runs = results[key]["runs"]
        ev["configs"][label] = {
            "zero_fraction": _mean_std([r["zero_fraction"] for r in runs])[0],
            "below_1e-3_fraction": _mean_std([r["small_fraction"] for r in runs])[0],
            "weight_l2_norm": _mean_std([r["weight_l2_norm"] for r in runs])[0],
            "seeds": len(runs),
            "abs_weight_histogram_first_seed": runs[0].get("abs_weight_histogram")}
    # the penalties' gradients against w, computed with fastreg's own kernels
    w = np.linspace(-1, 1, 201)
    ev["gradient_vs_w"] = {"w": w.tolist(),
                           "l1": fastreg.l1_grad(w, L1_PROX).tolist(),
                           "l2_coupled": fastreg.l2_grad(w, L2_COUPLED).tolist(),
                           "l2_decoupled_per_lr": (WD_DECOUPLED * w).tolist()}
    c = ev["configs"]
    l2_shrinks = all(c[k]["weight_l2_norm"] < c["none"]["weight_l2_norm"]
                     for k in ("L2 coupled", "L2 decoupled"))
    l2_zero = max(c["L2 coupled"]["zero_fraction"], c["L2 decoupled"]["zero_fraction"])
    counts = [seeds_used[k] for k in ("l1 prox", "l2 coupled", "l2 decoupled (AdamW)", "none")]
    over = (f"mean of {counts[0]} seed(s)" if len(set(counts)) == 1 else
            "means of {} / {} / {} / {} seeds, same order".format(*counts))
    text = (
        f"1. Why L1 gives sparse weights and L2 does not. Weights exactly 0 after training "
        f"({over}): L1-prox "
        f"{_pct(c['L1-prox']['zero_fraction'])}, "
        f"L2 coupled {_pct(c['L2 coupled']['zero_fraction'])}, L2 decoupled "
        f"{_pct(c['L2 decoupled']['zero_fraction'])}, none {_pct(c['none']['zero_fraction'])}; "
        f"below 1e-3 (same order): {_pct(c['L1-prox']['below_1e-3_fraction'])}, "
        f"{_pct(c['L2 coupled']['below_1e-3_fraction'])}, "
        f"{_pct(c['L2 decoupled']['below_1e-3_fraction'])}, "
        f"{_pct(c['none']['below_1e-3_fraction'])}. L1's gradient lam*sign(w) has the same "
        f"size however small w is, so the proximal step (soft-thresholding by lr*lam = "
        f"{LR * L1_PROX:g} per step) carries every weight it reaches to exactly 0.0 and holds it "
        f"there while the data's gradient is weaker. L2's gradient 2*lam*w shrinks with w: its "
        f"pull fades as w gets small, so ")
    tiny = max(("L2 coupled", "L2 decoupled"), key=lambda k: c[k]["below_1e-3_fraction"])
    if l2_shrinks and l2_zero == 0:
        text += (f"the weights get smaller (norm {c['L2 coupled']['weight_l2_norm']:.1f} coupled, "
                 f"{c['L2 decoupled']['weight_l2_norm']:.1f} decoupled, vs "
                 f"{c['none']['weight_l2_norm']:.1f} without)"
                 + (f", {_pct(c[tiny]['below_1e-3_fraction'])} of them below 1e-3 with "
                    f"{tiny}," if c[tiny]["below_1e-3_fraction"]
                    > 2 * c["none"]["below_1e-3_fraction"] else "")
                 + " but not one is exactly 0.")
    elif l2_zero == 0:
        text += "no weight reaches exactly 0."
    else:
        text += (f"a weight reaches exactly 0 only by rounding ({_pct(l2_zero)} here, in "
                 "float32).")
    ev["answer"] = text
    return ev


def _question2(q2_runs, passes, seed):
    """q2_runs: {(p, mode): result with "inference"}."""
    ps = sorted({p for p, _ in q2_runs})
    ev = {"p": ps, "seed": seed, "mc_passes": passes, "n_test": None, "by_p": {},
          "predicted_unscaled_scale_two_layers": [1 / (1 - p) ** 2 for p in ps],
          "harm_rule": "the mistake harms at p when it costs more than 1 point of test accuracy "
                       "or raises the test loss by more than 10%"}
    for p in ps:
        inv, cla = q2_runs[(p, "inverted")]["inference"], q2_runs[(p, "classic")]["inference"]
        ev["by_p"][str(p)] = {"inverted": inv["eval"], "classic, times (1-p)": cla["eval"],
                              "classic, no (1-p) (the mistake)": cla["unscaled"],
                              "MC average, inverted model": inv["mc"],
                              "MC average, classic model": cla["mc"]}
    rows = [ev["by_p"][str(p)] for p in ps]
    pairs = [(r[rule], r[mc]) for r in rows for rule, mc in (
        ("inverted", "MC average, inverted model"),
        ("classic, times (1-p)", "MC average, classic model"))]
    scale_lo = min(rule["output_scale"] for rule, _ in pairs)
    scale_hi = max(rule["output_scale"] for rule, _ in pairs)
    gap_mc = max(abs(rule["accuracy"] - mc["accuracy"]) for rule, mc in pairs)
    wrong = [r["classic, no (1-p) (the mistake)"] for r in rows]
    right = [r["classic, times (1-p)"] for r in rows]
    acc_change = [w["accuracy"] - c["accuracy"] for w, c in zip(wrong, right)]
    harmed = [p for p, w, c, a in zip(ps, wrong, right, acc_change)
              if a < -0.01 or w["nll"] > 1.1 * c["nll"]]
    ev["mistake_harms_at_p"] = harmed

    def fmt(xs, spec):
        return "/".join(format(x, spec) for x in xs)

    if not harmed:
        verdict = "no harm at these p by that measure (more than 1 point or 10% more loss)"
    elif len(harmed) == len(ps):
        verdict = "harmful at every p tried (more than 1 point of accuracy or 10% more loss)"
    else:
        verdict = (f"harmful at p = {fmt(harmed, 'g')} (more than 1 point of accuracy or 10% "
                   f"more loss), not at p = {fmt([p for p in ps if p not in harmed], 'g')}")
    ev["answer"] = (
        f"2. Dropout at inference, on the whole network (p = {fmt(ps, 'g')}; one model per p and "
        f"convention, seed {seed}): inverted dropout is the identity at inference, classic "
        f"dropout multiplies by (1-p). Both rules give logits at {scale_lo:.2f}-{scale_hi:.2f} "
        f"times the scale of the mean of {passes} stochastic forward passes (the expectation "
        f"they stand in for), and each model's accuracy with its rule is within "
        f"{100 * gap_mc:.1f} points of that average's. Evaluating the classic model without its "
        f"(1-p) multiplies its logits by "
        f"{fmt([w['output_scale'] / c['output_scale'] for w, c in zip(wrong, right)], '.1f')} "
        f"(up to (1/(1-p))^2 = {fmt(ev['predicted_unscaled_scale_two_layers'], '.1f')} for two "
        f"dropout layers), changes its test accuracy by "
        f"{fmt([100 * a for a in acc_change], '+.1f')} points and its test loss from "
        f"{fmt([c['nll'] for c in right], '.2f')} to {fmt([w['nll'] for w in wrong], '.2f')}: "
        f"{verdict}.")
    if harmed and max(abs(a) for a in acc_change) < 0.01:
        ev["answer"] += (" The argmax barely moves (a uniform scale leaves it alone): the damage "
                         "is in the probabilities, which become overconfident.")
    return ev


def _question3(results):
    acc = {k: [r["test_accuracy"] for r in results[k]["runs"]] for k in Q3_CONFIGS}
    ev = {"test_accuracy": {k: {"mean": _mean_std(v)[0], "std": _mean_std(v)[1],
                                "per_seed": v} for k, v in acc.items()},
          "method": "difference of means against its standard error sqrt(s1^2/n1 + s2^2/n2) "
                    "over seeds (Welch's t, two-sided 95%, degrees of freedom rounded down); "
                    "seeds vary initialization, shuffling and dropout masks on one data split",
          "comparisons": {}}
    pairs = {"batch norm - dropout": ("batch norm", "dropout inverted"),
             "batch norm + dropout - batch norm": ("batch norm + dropout", "batch norm"),
             "dropout - none": ("dropout inverted", "none"),
             "batch norm - none": ("batch norm", "none")}
    for label, (a, b) in pairs.items():
        ev["comparisons"][label] = _welch(acc[a], acc[b])
    m = {k: v["mean"] for k, v in ev["test_accuracy"].items()}
    n = min(len(v) for v in acc.values())
    head = (f"3. Can batch norm replace dropout? Test accuracy, mean of {n} seed(s): none "
            f"{m['none']:.3f}, dropout {m['dropout inverted']:.3f}, batch norm "
            f"{m['batch norm']:.3f}, both {m['batch norm + dropout']:.3f}. ")
    if n < 2:
        ev["answer"] = head + ("One seed supports no claim: the seed-to-seed spread is unknown, "
                               "so no difference here can be told from noise. Run with "
                               f"more seeds (the default, without --quick: {Q3_SEEDS}) to "
                               "compare.")
        return ev

    def verdict(label, better, worse):
        c = ev["comparisons"][label]
        num = (f"{100 * c['difference']:+.1f} +- {100 * c['standard_error']:.1f} points, "
               f"|t| = {abs(c['t']):.1f} vs {c['t_critical']:.2f}")
        if not c["significant"]:
            return f"{label}: {num}, within seed-to-seed noise"
        return f"{label}: {num}, {better if c['difference'] > 0 else worse}"

    bn_do = ev["comparisons"]["batch norm - dropout"]
    if not bn_do["significant"]:
        claim = ("These runs cannot tell batch norm alone from dropout alone; that does not "
                 "show they are equivalent.")
    elif bn_do["difference"] > 0:
        claim = ("Here batch norm alone beat dropout alone: on this task, network and budget "
                 "it can replace it.")
    else:
        claim = ("Here batch norm alone did worse than dropout alone: on this task, network and "
                 "budget it does not replace it.")
    ev["answer"] = (head + "Differences (Welch's t over seeds, 95%): "
                    + "; ".join([verdict("batch norm - dropout", "batch norm better",
                                         "dropout better"),
                                 verdict("batch norm + dropout - batch norm",
                                         "adding dropout to batch norm helped",
                                         "adding dropout to batch norm hurt"),
                                 verdict("dropout - none", "dropout helped", "dropout hurt"),
                                 verdict("batch norm - none", "batch norm helped",
                                         "batch norm hurt")])
                    + ". " + claim)
    return ev


def _table(results):
    lines = [f"{'regularizer':<21} {'seeds':>5} {'train':>6} {'test acc':>13} {'gap':>6} "
             f"{'epochs':>6} {'best':>4} {'zeros':>6} {'<1e-3':>6} {'s/run':>5}"]
    for name, r in results.items():
        m = r["mean_std"]
        std = m["test_accuracy"][1]
        lines.append(
            f"{name:<21} {len(r['runs']):>5} {m['train_accuracy'][0]:>6.3f} "
            f"{m['test_accuracy'][0]:>7.3f}" + (f"±{std:.3f}" if std is not None else " " * 6)
            + f" {m['gap'][0]:>6.3f} {m['epochs_run'][0]:>6.0f} {m['best_epoch'][0]:>4.0f} "
            f"{_pct(m['zero_fraction'][0]):>6} {_pct(m['small_fraction'][0]):>6} "
            f"{m['time_s'][0]:>5.2f}")
    return "\n".join(lines)


def _default_jobs():
    return max(1, min(_threads.available_cpus(), 8))


def _check_setup(args):
    """What stops the demo before any work, as a message (None if nothing): an --out folder
    that cannot be created or written, a --backend that cannot run here, a seed range beyond
    2**32 (checked for the --seed given programmatically too)."""
    if getattr(args, "distributed", False):
        n = args.seeds or 1
    else:
        n = args.seeds or (SEEDS_QUICK if args.quick else max(SEEDS, Q3_SEEDS))
    last = args.seed + n - 1
    if not 0 <= args.seed or last >= SEED_LIMIT:
        return f"the seeds ({args.seed} to {last}) must lie in [0, 2**32)"
    try:
        _registry.resolve(args.backend)
    except fastreg.BackendUnavailableError as exc:
        return f"--backend {args.backend}: {exc}"
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        return f"cannot create the --out folder {args.out!r}: {exc.strerror or exc}"
    if not os.access(args.out, os.W_OK | os.X_OK):
        return f"cannot write to the --out folder {args.out!r}"
    return None


def run(argv=None, *, args=None):
    """Run the demo (``fastreg demo``); returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``--quick``, ``--out DIR``, ...); ignored when ``args`` given.
    args : argparse.Namespace, optional
        Already parsed arguments (from ``fastreg demo``).

    Returns
    -------
    int
        0 on success.
    """
    if args is None:
        parser = argparse.ArgumentParser(prog="fastreg demo")
        add_arguments(parser)
        args = parser.parse_args(argv)
    problem = _check_setup(args)
    if problem:
        print(f"fastreg demo: error: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "distributed", False):
        return run_distributed(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    epochs = args.epochs or (EPOCHS_QUICK if args.quick else EPOCHS)
    if args.seeds:
        n_seeds = {name: args.seeds for name in _configs()}
    else:
        n_seeds = {name: SEEDS_QUICK if args.quick else (Q3_SEEDS if name in Q3_CONFIGS
                                                          else SEEDS)
                   for name in _configs()}
    passes = MC_PASSES_QUICK if args.quick else MC_PASSES
    jobs = args.jobs or _default_jobs()
    resolved = _registry.resolve(args.backend)
    data = _data(args.seed)
    (Xtr, _), (Xva, _), (Xte, _) = data
    say(textwrap.fill(
        f"fastreg demo: digits 8x8, {len(Xtr)} train / {len(Xva)} validation / {len(Xte)} test, "
        f"MLP {'-'.join(map(str, SIZES))}, Adam lr {LR}, batch {BATCH}, {epochs} epochs, "
        f"{max(n_seeds.values())} seed(s) from {args.seed}, backend {args.backend}"
        + (f" ({resolved})" if args.backend == "auto" else "")
        + f", {jobs} process(es)", WIDTH))

    why = _augment.unavailable_reason()
    if why is None:
        try:
            _augment.image_augment((8, 8), backend=args.backend)(Xtr[:2].copy(), 0, 0, 0)
        except Exception as exc:   # smoke test: skip the augmentation rows if it cannot run
            why = f"{type(exc).__name__}: {exc}"
    configs = _configs()
    if why is not None:
        _say_wrapped(say, f"note: skipping the augmentation rows ({why})", "      ")
        configs = {k: v for k, v in configs.items() if not (v["augment"] or v["mix"])}

    if resolved == "cpu" and _numba_cache_cold():
        _say_wrapped(say, "note: compiling the cpu backend's Numba kernels for their first use "
                          "(about 12-15 s of CPU, once: they are cached on disk; --backend c "
                          "compiles nothing)", "      ")
        t0 = time.perf_counter()
        # compile once here rather than in every worker: one short run of each kernel family
        _init_worker(args.seed, args.backend, why is None)
        for name in ("l2 coupled", "l1 prox", "dropout classic", "everything"):
            if name in configs:
                _task({"cfg": configs[name], "seed": args.seed, "epochs": 1})
        say(f"      compiled in {time.perf_counter() - t0:.0f} s")

    # ---- what to run: every row of the table, then question 2's extra dropout rates ----
    specs = []
    for name, cfg in configs.items():
        for s in range(args.seed, args.seed + n_seeds[name]):
            spec = {"cfg": cfg, "seed": s, "epochs": epochs, "row": name}
            if name in ("none", "l2 coupled", "l2 decoupled (AdamW)", "l1 prox"):
                spec["histogram"] = True
            if s == args.seed and name in ("dropout inverted", "dropout classic"):
                spec["mc_passes"] = passes
            specs.append(spec)
    for p in Q2_PS:
        for mode in ("inverted", "classic"):
            if p != DROPOUT:
                specs.append({"cfg": {**configs["none"], "model": {"dropout": p,
                                                                   "dropout_mode": mode}},
                              "seed": args.seed, "epochs": epochs, "q2": (p, mode),
                              "mc_passes": passes})
    bar = _progress(sum(s["epochs"] for s in specs), not args.quiet)
    try:
        runs = _execute(specs, min(jobs, len(specs)), (args.seed, args.backend, why is None),
                        bar)
    finally:
        if bar is not None:
            bar.close()

    results, q2_runs = {}, {}
    for spec, r in zip(specs, runs):
        if "row" in spec:
            results.setdefault(spec["row"], {"runs": []})["runs"].append(r)
            if "mc_passes" in spec:
                q2_runs[(DROPOUT, spec["cfg"]["model"]["dropout_mode"])] = r
        else:
            q2_runs[spec["q2"]] = r
    for r in results.values():
        r["mean_std"] = {k: _mean_std([x[k] for x in r["runs"]]) for k in (
            "train_accuracy", "test_accuracy", "gap", "epochs_run", "best_epoch",
            "zero_fraction", "small_fraction", "weight_l2_norm", "time_s")}
    q2_results = {f"p={p} {mode}": r for (p, mode), r in sorted(q2_runs.items())
                  if p != DROPOUT}

    q = {"l1_vs_l2_sparsity": _question1(results, n_seeds),
         "dropout_at_inference": _question2(q2_runs, passes, args.seed),
         "batch_norm_vs_dropout": _question3(results)}
    q["dropout_at_inference"]["n_test"] = len(Xte)
    figure_note = _figures(q, results, args.out)
    for key, name in FIGURES.items():
        q[key]["figure"] = None if figure_note else name

    total = time.perf_counter() - t_start
    report = {
        "settings": {"sizes": SIZES, "n_train": len(Xtr), "n_val": len(Xva), "n_test": len(Xte),
                     "lr": LR, "batch_size": BATCH, "epochs": epochs, "seeds": n_seeds,
                     "first_seed": args.seed, "dropout_p": DROPOUT, "l2_coupled": L2_COUPLED,
                     "weight_decay_decoupled": WD_DECOUPLED, "l1_prox": L1_PROX,
                     "patience": PATIENCE, "backend": args.backend, "resolved_backend": resolved,
                     "jobs": jobs, "quick": bool(args.quick), "mc_passes": passes,
                     "q2_dropout_p": list(Q2_PS), "fastreg_version": fastreg.__version__,
                     "augmentation": None if why is not None else
                     "translate +-1 px, rotate +-10 deg, gaussian noise std 0.05",
                     "augmentation_skipped_because": why,
                     "label_smoothing": LABEL_SMOOTHING, "mixup_alpha": MIXUP_ALPHA,
                     "cutmix_alpha": CUTMIX_ALPHA},
        "results": results,
        "q2_extra_runs": q2_results,
        "questions": q,
        "total_time_s": total,
    }
    json_path = os.path.join(args.out, "results.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)

    say("")
    say(_table(results))
    say("")
    for key in FIGURES:
        _say_wrapped(say, q[key]["answer"])
    say("")
    if figure_note:
        _say_wrapped(say, f"wrote {json_path}; no figures: {figure_note}", "      ")
    else:
        _say_wrapped(say, f"wrote {json_path} and, beside it, " + ", ".join(FIGURES.values()),
                     "      ")
    say(f"total {total:.1f} s")
    return 0


def _figures(q, results, out):
    """Write the three figures; returns None, or why they could not be drawn."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        return f"matplotlib is not installed ({DEMO_HINT})"
    from . import demo_figures
    for key, name in FIGURES.items():
        getattr(demo_figures, key)(q[key], results, os.path.join(out, name))
    return None


DISTRIBUTED_CONFIGS = ("batch norm + dropout", "everything")
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
LAUNCH_HINT = ("mpiexec -n 2 python -m mpi4py -m fastreg demo --distributed --quick "
               "(the mpiexec of the virtualenv: pip install \"fastreg-kernels[mpi]\" ships one)")


def _data(seed):
    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / np.float32(16.0)).astype(np.float32)
    itr, iva, ite = stratified_split(labels, [N_TRAIN, N_VAL], seed=seed)
    return (X[itr], labels[itr]), (X[iva], labels[iva]), (X[ite], labels[ite])


def run_distributed(args):
    """``fastreg demo --distributed``: data-parallel training over MPI; returns the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        The demo's options (``--quick``, ``--epochs``, ``--seed``, ``--seeds``, ``--backend``,
        ``--out``, ``--quiet``).

    Returns
    -------
    int
        0 on success; 2 (with a message on stderr) when mpi4py is missing or the process was
        not started by ``mpiexec`` (``mpiexec -n 1`` works: one rank).

    Notes
    -----
    Every rank loads the same data and builds the same model; each configuration of
    ``DISTRIBUTED_CONFIGS`` is trained with ``Trainer(..., comm=MPI.COMM_WORLD)`` over the same
    global batches (batch 32) as the single-process demo. Rank 0 prints per configuration the
    test accuracy and the training throughput (training samples processed per second of
    ``fit``, validation included), and writes ``distributed.json`` to ``--out``. An error on
    any rank aborts the whole job (``MPI_Abort``), so no rank is left waiting.
    """
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:
        print("fastreg demo --distributed needs mpi4py and an MPI library: pip install "
              "\"fastreg-kernels[mpi]\" (mpi4py and the mpich wheel)", file=sys.stderr)
        return 2
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        print("fastreg demo --distributed must be started by mpiexec, one process per rank, "
              "e.g.\n    " + LAUNCH_HINT, file=sys.stderr)
        return 2
    from fastreg import distributed as dist
    MPI = dist.mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        return _run_distributed(args, comm, rank, size)
    except BaseException:
        if size > 1:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)        # end every rank of the job, not only this one
        raise


def _run_distributed(args, comm, rank, size):
    from fastreg.distributed import shard_sizes
    say = (lambda *a: None) if (args.quiet or rank) else (lambda *a: print(*a, flush=True))
    epochs = args.epochs or (EPOCHS_QUICK if args.quick else EPOCHS)
    seeds = [args.seed + i for i in range(args.seeds or 1)]
    data = _data(args.seed)
    why = _augment.unavailable_reason()
    augment_fn = None
    if why is None:
        augment_fn = _augment.image_augment((8, 8), backend=args.backend)
    configs = {k: v for k, v in _configs().items() if k in DISTRIBUTED_CONFIGS
               and (augment_fn is not None or not v["augment"])}
    n_train = len(data[0][0])
    say(f"fastreg demo --distributed: {size} rank(s), digits {n_train} train / "
        f"{len(data[1][0])} validation / {len(data[2][0])} test, MLP "
        f"{'-'.join(map(str, SIZES))}, global batch {BATCH} (per rank "
        f"{'-'.join(map(str, sorted(set(shard_sizes(BATCH, size)))))}), "
        f"{epochs} epochs, seeds {seeds}, backend {args.backend}")
    if augment_fn is None:
        say(f"note: augmentation off ({why})")
    # warm-up (not timed): JIT compilation of the synchronized kernels, first touch
    first = next(iter(configs.values()))
    _run({**first, "early": False}, data, seeds[0], 1, args.backend, augment_fn, comm=comm)
    results = {}
    for name, cfg in configs.items():
        runs = []
        for s in seeds:
            comm.Barrier()
            r, _ = _run(cfg, data, s, epochs, args.backend, augment_fn, comm=comm)
            r["samples_per_s"] = r["epochs_run"] * n_train / r["time_s"]
            runs.append(r)
        m = {k: _mean_std([r[k] for r in runs]) for k in (
            "train_accuracy", "test_accuracy", "epochs_run", "time_s", "samples_per_s")}
        results[name] = {"runs": runs, "mean_std": m}
        say(f"  {name:<22} test acc {m['test_accuracy'][0]:.3f}  train acc "
            f"{m['train_accuracy'][0]:.3f}  epochs {m['epochs_run'][0]:.0f}  "
            f"{m['samples_per_s'][0]:,.0f} samples/s  ({m['time_s'][0]:.1f} s/run)")
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "distributed.json")
        with open(path, "w") as f:
            json.dump({"ranks": size, "epochs": epochs, "seeds": seeds, "batch_size": BATCH,
                       "backend": args.backend, "results": results}, f, indent=1)
        say(f"wrote {path}")
    return 0


def add_arguments(parser):
    """The demo's command-line options, added to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    None
    """
    parser.add_argument("--quick", action="store_true",
                        help=f"{SEEDS_QUICK} seed, {EPOCHS_QUICK} epochs: checks that "
                             "everything runs; one seed supports no comparison")
    parser.add_argument("--out", default="fastreg-demo",
                        help="folder for results.json and the three figures (default "
                             "./fastreg-demo/)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"epochs per run (default {EPOCHS}, --quick {EPOCHS_QUICK})")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="first seed (data split, initialization, dropout, shuffling)")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help=f"seeds per configuration (default {Q3_SEEDS} for the four that "
                             f"question 3 compares, {SEEDS} for the others; --quick "
                             f"{SEEDS_QUICK})")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="worker processes (default: the CPUs this process may use, at "
                             "most 8; 1 runs everything in this process); results do not "
                             "depend on it")
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "numpy", "cpu", "c", "cuda"),
                        help="fastreg backend of every kernel call")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over MPI: run under mpiexec -n N (e.g. "
                             "mpiexec -n 2 python -m mpi4py -m fastreg demo --distributed "
                             "--quick); trains two configurations and prints samples/s and "
                             "the accuracy on rank 0")


if __name__ == "__main__":
    sys.exit(run())
