"""``fastreg demo``: one MLP on the embedded digits, trained under every regularizer fastreg has.

The same 64-256-256-10 MLP is trained on a small stratified subset of the digits (so that it
overfits visibly), validated on a second subset (early stopping) and tested on the rest, under:
no regularization, L2 coupled, L2 decoupled (AdamW), L1 with the proximal step, dropout
(inverted and classic), batch norm, batch norm + dropout, early stopping, augmentation, and
everything together; each over several seeds. It prints a table and answers three questions
with the measured numbers, and writes ``results.json`` and ``learning_curves.png`` to ``--out``.

Nothing is downloaded and scikit-learn is not needed (the digits ship with fastreg);
matplotlib (the plot) and tqdm are optional.

``fastreg demo --distributed`` (under ``mpiexec -n N``; needs ``pip install fastreg[mpi]``)
trains the "batch norm + dropout" and "everything" configurations data-parallel over the N ranks
(``Trainer(..., comm=MPI.COMM_WORLD)``: the same global batches, hence the same model as one
process up to rounding) and prints, on rank 0, samples per second and the final accuracies.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

import fastreg
from fastreg import optim

from . import augment as _augment
from .callbacks import EarlyStopping
from .data import load_digits, stratified_split
from .layers import Dropout, mlp
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


def _configs(epochs):
    """name -> how to build the run: model kwargs, optimizer, trainer kwargs, callbacks."""
    base = dict(model={}, opt="adam", opt_kw={}, trainer={}, early=False, augment=False)
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
        "everything": dict(model={"batch_norm": True, "dropout": DROPOUT}, opt="adamw",
                           opt_kw={"weight_decay": WD_DECOUPLED}, early=True, augment=True),
    }
    return {name: {**base, **cfg} for name, cfg in table.items()}


def _zero_fraction(model):
    """Fraction of exactly-zero entries of the weight matrices (biases excluded)."""
    ws = [p for n, p in model.named_parameters() if p.ndim > 1]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws))


def _small_fraction(model, tol=1e-3):
    ws = [p for n, p in model.named_parameters() if p.ndim > 1]
    return float(sum(int((np.abs(w) < tol).sum()) for w in ws) / sum(w.size for w in ws))


def _run(cfg, data, seed, epochs, backend, augment_fn, comm=None):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    model = mlp(SIZES, seed=seed, **cfg["model"])
    cls = optim.AdamW if cfg["opt"] == "adamw" else optim.Adam
    opt = cls(model.parameters(), lr=LR, backend=backend,
              **({"weight_decay": 0.0} if cls is optim.AdamW and not cfg["opt_kw"] else {}),
              **cfg["opt_kw"])
    callbacks = [EarlyStopping("val_loss", patience=PATIENCE)] if cfg["early"] else []
    trainer = Trainer(model, opt, callbacks=callbacks, seed=seed, backend=backend, verbose=0,
                      augment=augment_fn if cfg["augment"] else None, comm=comm,
                      **cfg["trainer"])
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, validation=(Xva, yva), epochs=epochs, batch_size=BATCH)
    elapsed = time.perf_counter() - t0
    es = callbacks[0] if callbacks else None
    best = es.best_epoch if es is not None else int(np.argmin(hist["val_loss"]))
    result = {
        "train_accuracy": trainer.evaluate(Xtr, ytr)["accuracy"],
        "val_accuracy": trainer.evaluate(Xva, yva)["accuracy"],
        "test_accuracy": trainer.evaluate(Xte, yte)["accuracy"],
        "epochs_run": len(hist["loss"]),
        "best_epoch": best + 1,
        "zero_fraction": _zero_fraction(model),
        "small_fraction": _small_fraction(model),
        "weight_l2_norm": float(math.sqrt(sum(float((p.astype(np.float64) ** 2).sum())
                                              for n, p in model.named_parameters()
                                              if p.ndim > 1))),
        "time_s": elapsed,
        "curves": {k: [float(v) for v in hist[k]] for k in ("loss", "val_loss",
                                                              "accuracy", "val_accuracy")},
    }
    result["gap"] = result["train_accuracy"] - result["test_accuracy"]
    return result, trainer


def _mean_std(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _dropout_inference(trainers, Xte, yte, n_masks):
    """Evidence for how dropout is handled at inference (seed 0's classic and inverted runs)."""
    out = {"p": DROPOUT}
    for mode, tr in trainers.items():
        model = tr.model
        # the activation entering the first dropout layer, for the test inputs
        model.eval()
        h = Xte.astype(np.float32)
        for layer in model.layers:
            if isinstance(layer, Dropout):
                break
            h = layer.forward(h).copy()
        drop = model.dropout_layers()[0]
        eval_out = fastreg.dropout(h, drop.p, seed=0, training=False, mode=mode)
        mean = np.zeros(h.shape, np.float64)
        for k in range(n_masks):   # Monte Carlo average of the training-mode outputs
            mean += fastreg.dropout(h, drop.p, seed=12345, offset=k * h.size, training=True,
                                    mode=mode)
        mean /= n_masks
        active = h > 0
        out[mode] = {
            "eval_scale": float(np.median(eval_out[active] / h[active])),
            "train_mean_over_eval": float(mean[active].sum() / eval_out[active].sum()),
            "n_masks": n_masks,
            "test_accuracy": tr.evaluate(Xte, yte)["accuracy"],
        }
    li = trainers["inverted"].predict(Xte)
    lc = trainers["classic"].predict(Xte)
    out["eval_logits_mean_abs_diff"] = float(np.abs(li - lc).mean())
    out["eval_logits_mean_abs"] = float(np.abs(li).mean())
    out["eval_prediction_agreement"] = float((li.argmax(1) == lc.argmax(1)).mean())
    # what goes wrong if the classic model is evaluated without its (1 - p) scaling
    classic = trainers["classic"]
    for layer in classic.model.dropout_layers():
        layer.mode = "inverted"          # inverted at eval = identity = "forgot to scale"
    wrong = classic.predict(Xte)
    out["classic_unscaled_test_accuracy"] = float((wrong.argmax(1) == yte).mean())
    out["classic_unscaled_logit_scale"] = float(np.abs(wrong).mean() / np.abs(lc).mean())
    for layer in classic.model.dropout_layers():
        layer.mode = "classic"
    return out


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install fastreg[demo])"
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, (name, r) in enumerate(results.items()):
        c = r["runs"][0]["curves"]
        epochs = np.arange(1, len(c["val_loss"]) + 1)
        style = dict(color=colors[(2 * i) % 20 + (2 * i) // 20], label=name,
                     linestyle="-" if i < 6 else "--")
        axes[0].plot(epochs, c["val_loss"], **style)
        axes[1].plot(epochs, c["val_accuracy"], **style)
    axes[0].set(xlabel="epoch", ylabel="validation loss", yscale="log",
                title="validation loss (first seed)")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
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
    if getattr(args, "distributed", False):
        return run_distributed(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    epochs = args.epochs or (20 if args.quick else 100)
    seeds = [args.seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()

    images, labels = load_digits()
    X = (images.reshape(len(images), -1) / np.float32(16.0)).astype(np.float32)
    itr, iva, ite = stratified_split(labels, [N_TRAIN, N_VAL], seed=args.seed)
    data = ((X[itr], labels[itr]), (X[iva], labels[iva]), (X[ite], labels[ite]))
    say(f"fastreg demo: digits 8x8, {len(itr)} train / {len(iva)} validation / {len(ite)} test, "
        f"MLP {'-'.join(map(str, SIZES))}, Adam lr {LR}, batch {BATCH}, {epochs} epochs, "
        f"seeds {seeds}, backend {args.backend}")

    why = _augment.unavailable_reason()
    augment_fn = None
    if why is None:
        try:
            augment_fn = _augment.image_augment((8, 8), backend=args.backend)
            augment_fn(data[0][0][:2].copy(), 0, 0, 0)   # smoke test: skip if it cannot run
        except Exception as exc:
            why, augment_fn = f"{type(exc).__name__}: {exc}", None
    configs = _configs(epochs)
    if augment_fn is None:
        say(f"note: skipping the augmentation rows ({why})")
        configs = {k: v for k, v in configs.items() if not v["augment"]}

    results, seed0 = {}, {}
    for name, cfg in configs.items():
        runs = []
        for s in seeds:
            r, trainer = _run(cfg, data, s, epochs, args.backend, augment_fn)
            runs.append(r)
            if s == seeds[0] and name in ("dropout inverted", "dropout classic"):
                seed0[name.split()[1]] = trainer
        summary = {k: _mean_std([r[k] for r in runs]) for k in (
            "train_accuracy", "test_accuracy", "gap", "epochs_run", "best_epoch",
            "zero_fraction", "small_fraction", "weight_l2_norm", "time_s")}
        results[name] = {"runs": runs, "mean_std": summary}
        m = summary
        say(f"  {name:<22} test {m['test_accuracy'][0]:.3f}  ({m['time_s'][0]:.1f} s/run)")

    # ---- the table ----
    lines = [f"{'regularizer':<22} {'train acc':>9} {'test acc':>14} {'gap':>7} "
             f"{'epochs':>6} {'best':>5} {'zeros':>7} {'time s':>6}"]
    for name, r in results.items():
        m = r["mean_std"]
        lines.append(f"{name:<22} {m['train_accuracy'][0]:>9.3f} "
                     f"{m['test_accuracy'][0]:>7.3f}+-{m['test_accuracy'][1]:.3f} "
                     f"{m['gap'][0]:>7.3f} {m['epochs_run'][0]:>6.0f} {m['best_epoch'][0]:>5.0f} "
                     f"{m['zero_fraction'][0]:>7.1%} {m['time_s'][0]:>6.2f}")
    table = "\n".join(lines)

    # ---- the three questions ----
    q = {}
    l1, l2c, l2d = (results[k]["mean_std"] for k in ("l1 prox", "l2 coupled",
                                                       "l2 decoupled (AdamW)"))
    q["l1_vs_l2_sparsity"] = {
        "zero_fraction": {"l1 prox": l1["zero_fraction"][0], "l2 coupled": l2c["zero_fraction"][0],
                          "l2 decoupled": l2d["zero_fraction"][0],
                          "none": results["none"]["mean_std"]["zero_fraction"][0]},
        "below_1e-3_fraction": {"l1 prox": l1["small_fraction"][0],
                                "l2 coupled": l2c["small_fraction"][0],
                                "l2 decoupled": l2d["small_fraction"][0]},
        "answer": ("The proximal L1 step soft-thresholds: every weight with |w| <= lr * lam after "
                   "a step becomes exactly 0.0 and stays there unless its gradient pushes it out "
                   "by more than the threshold. L2 (coupled gradient 2*lam*w, or decoupled "
                   "w *= 1 - lr*wd) shrinks each weight in proportion to its size, so weights "
                   "get small but never exactly zero."),
    }
    if len(seed0) == 2:
        q["dropout_at_inference"] = _dropout_inference(seed0, data[2][0], data[2][1],
                                                       n_masks=50 if args.quick else 400)
        q["dropout_at_inference"]["answer"] = (
            "Inverted dropout scales kept units by 1/(1-p) during training and is the identity "
            "at inference; classic dropout does not scale in training and multiplies by (1-p) "
            "at inference. Either way the expected training-mode activation equals the "
            "inference activation (train_mean_over_eval ~ 1 for both). Trained with the same "
            "seed (same masks), the two models give different but equally good eval logits; "
            "evaluating the classic model without its (1-p) factors inflates its logits by "
            "about 1/(1-p) per dropout layer (two here).")
    bn, do, both = (results[k]["mean_std"]["test_accuracy"] for k in (
        "batch norm", "dropout inverted", "batch norm + dropout"))
    noise = max(bn[1], do[1], both[1])
    q["batch_norm_vs_dropout"] = {
        "test_accuracy": {"dropout": do, "batch norm": bn, "batch norm + dropout": both,
                          "none": results["none"]["mean_std"]["test_accuracy"]},
        "answer": (
            f"Test accuracy (mean +- std over {len(seeds)} seed(s)): dropout {do[0]:.3f}, batch "
            f"norm {bn[0]:.3f}, both {both[0]:.3f}. "
            + ("Differences within the seed-to-seed noise: no replacement claim either way. "
               if abs(bn[0] - do[0]) <= 2 * noise or len(seeds) < 2 else
               ("Batch norm alone beats dropout alone here. " if bn[0] > do[0] else
                "Batch norm alone does not match dropout here: its batch-noise is a weaker "
                "regularizer on this small MLP. "))
            + "Batch norm mostly speeds up and stabilizes optimization; its regularizing "
              "noise comes from batch statistics and shrinks with larger batches."),
    }

    total = time.perf_counter() - t_start
    report = {
        "settings": {"sizes": SIZES, "n_train": len(itr), "n_val": len(iva), "n_test": len(ite),
                     "lr": LR, "batch_size": BATCH, "epochs": epochs, "seeds": seeds,
                     "dropout_p": DROPOUT, "l2_coupled": L2_COUPLED,
                     "weight_decay_decoupled": WD_DECOUPLED, "l1_prox": L1_PROX,
                     "patience": PATIENCE, "backend": args.backend, "quick": bool(args.quick),
                     "fastreg_version": fastreg.__version__,
                     "augmentation": None if augment_fn is None else
                     "translate +-1 px, rotate +-10 deg, gaussian noise std 0.05",
                     "augmentation_skipped_because": why},
        "results": results,
        "questions": q,
        "total_time_s": total,
    }
    json_path = os.path.join(args.out, "results.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    plot_note = _plot(results, os.path.join(args.out, "learning_curves.png"))

    say("")
    say(table)
    say("")
    z = q["l1_vs_l2_sparsity"]["zero_fraction"]
    say(f"1. Why L1 gives sparse weights and L2 does not: exactly-zero weights: L1-prox "
        f"{z['l1 prox']:.1%}, L2 coupled {z['l2 coupled']:.1%}, L2 decoupled "
        f"{z['l2 decoupled']:.1%}, none {z['none']:.1%}.")
    say("   " + q["l1_vs_l2_sparsity"]["answer"])
    if "dropout_at_inference" in q:
        d = q["dropout_at_inference"]
        say(f"2. Dropout at inference (p = {d['p']}): eval scale inverted "
            f"{d['inverted']['eval_scale']:.3f}, classic {d['classic']['eval_scale']:.3f}; "
            f"mean of {d['inverted']['n_masks']} training-mode outputs / eval output: inverted "
            f"{d['inverted']['train_mean_over_eval']:.4f}, classic "
            f"{d['classic']['train_mean_over_eval']:.4f}. Same-seed models: eval logits differ "
            f"by {d['eval_logits_mean_abs_diff']:.3f} on average (|logit| ~ "
            f"{d['eval_logits_mean_abs']:.2f}), predictions agree on "
            f"{d['eval_prediction_agreement']:.1%}; the classic model evaluated without its "
            f"(1-p): logits x{d['classic_unscaled_logit_scale']:.2f}, test accuracy "
            f"{d['classic_unscaled_test_accuracy']:.3f} (vs {d['classic']['test_accuracy']:.3f}).")
        say("   " + d["answer"])
    say("3. Can batch norm replace dropout? " + q["batch_norm_vs_dropout"]["answer"])
    say("")
    say(f"wrote {json_path}" + ("" if plot_note else
                               f" and {os.path.join(args.out, 'learning_curves.png')}"))
    if plot_note:
        say("note: " + plot_note)
    say(f"total {total:.1f} s")
    return 0


DISTRIBUTED_CONFIGS = ("batch norm + dropout", "everything")
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
LAUNCH_HINT = ("mpiexec -n 2 python -m mpi4py -m fastreg demo --distributed --quick "
               "(the mpiexec of the virtualenv: pip install fastreg[mpi] ships one)")


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
              "fastreg[mpi]", file=sys.stderr)
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
    epochs = args.epochs or (20 if args.quick else 100)
    seeds = [args.seed + i for i in range(args.seeds or 1)]
    data = _data(args.seed)
    why = _augment.unavailable_reason()
    augment_fn = None
    if why is None:
        augment_fn = _augment.image_augment((8, 8), backend=args.backend)
    configs = {k: v for k, v in _configs(epochs).items() if k in DISTRIBUTED_CONFIGS
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
                        help="1 seed, 20 epochs (for CI: about 10 s)")
    parser.add_argument("--out", default="fastreg-demo",
                        help="folder for results.json and learning_curves.png (default "
                             "./fastreg-demo/)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default 100, --quick 20)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (split, init, dropout)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="how many seeds per configuration (default 3, --quick 1)")
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
