"""The demo's three figures, one per question, drawn from the evidence in ``results.json``.

Each function takes the question's evidence (``report["questions"][key]``), the table's results
(``report["results"]``) and the path of the PNG to write. Importing this module imports
matplotlib (with the non-interactive Agg backend) and raises ImportError without it.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STYLE = {"none": ("tab:gray", "-"), "L2 coupled": ("tab:blue", "-"),
          "L2 decoupled": ("tab:cyan", "--"), "L1-prox": ("tab:red", "-")}


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def l1_vs_l2_sparsity(ev, results, path):
    """Question 1: the |w| histogram (first seed) with its exact zeros, and the penalties'
    gradients against w.

    Parameters
    ----------
    ev : dict
        ``report["questions"]["l1_vs_l2_sparsity"]``.
    results : dict
        ``report["results"]`` (unused; every question's function takes it).
    path : str
        The PNG to write.

    Returns
    -------
    None
    """
    fig = plt.figure(figsize=(14, 4.8))
    grid = fig.add_gridspec(1, 3, width_ratios=(1.1, 4, 3))
    ax0, ax1, ax2 = (fig.add_subplot(grid[0, i]) for i in range(3))
    edges = np.asarray(ev["histogram_edges"])
    names = [n for n in _STYLE if ev["configs"][n]["abs_weight_histogram_first_seed"]]
    for i, name in enumerate(names):
        c = ev["configs"][name]
        h = c["abs_weight_histogram_first_seed"]
        color, ls = _STYLE[name]
        zero = h["zero"] / h["total"]
        ax0.bar(i, 100 * zero, color=color)
        ax0.text(i, 100 * zero, f"{100 * zero:.1f}%", ha="center", va="bottom", fontsize=8)
        frac = np.asarray(h["counts"]) / h["total"]
        ax1.stairs(100 * frac, edges, color=color, linestyle=ls, linewidth=1.6,
                   label=f"{name}: exactly 0 {100 * c['zero_fraction']:.1f}%, "
                         f"< 1e-3 {100 * c['below_1e-3_fraction']:.1f}%")
    ax0.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax0.set(ylabel="% of weights", title="|w| exactly 0")
    ax0.set_ylim(0, 100)
    ax1.set_xscale("log")
    ax1.axvline(1e-3, color="k", linestyle=":", linewidth=1, label="|w| = 1e-3")
    ax1.axvline(ev["threshold_per_step"], color="tab:red", linestyle=":", linewidth=1,
                label=f"L1-prox threshold per step, lr*lam = {ev['threshold_per_step']:g}")
    ax1.set(xlabel="|w| (log scale; exact zeros in the left panel)",
            ylabel="% of weights per bin (5 bins per decade)",
            title="|w| after training (first seed; legend: mean over seeds)")
    ax1.legend(fontsize=8, loc="upper left")
    g = ev["gradient_vs_w"]
    w = np.asarray(g["w"])
    ax2.plot(w, np.asarray(g["l1"]) / ev["l1_prox"], color="tab:red",
             label="L1: d(lam |w|)/dw / lam = sign(w): constant size")
    ax2.plot(w, np.asarray(g["l2_coupled"]) / ev["l2_coupled"], color="tab:blue",
             label="L2: d(lam w^2)/dw / lam = 2w: proportional")
    ax2.axhline(0, color="k", linewidth=0.5)
    ax2.axvline(0, color="k", linewidth=0.5)
    ax2.set(xlabel="w", ylabel="penalty gradient / lam",
            title="the pull toward 0 (fastreg.l1_grad, fastreg.l2_grad)")
    ax2.annotate("L1 pulls as hard near 0 as far away:\nit reaches 0 and stays",
                 xy=(0.03, 1), xytext=(0.08, 1.5), fontsize=8, color="tab:red",
                 arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax2.annotate("L2's pull vanishes as w -> 0:\nsmall, never exactly 0",
                 xy=(0.1, 0.2), xytext=(0.25, -0.9), fontsize=8, color="tab:blue",
                 arrowprops=dict(arrowstyle="->", color="tab:blue"))
    ax2.set_ylim(-2.2, 2.4)
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle("1. Why L1 gives sparse weights and L2 does not")
    _save(fig, path)


def dropout_at_inference(ev, results, path):
    """Question 2: test accuracy, test loss and output scale of every way of predicting with a
    dropout network, against p.

    Parameters
    ----------
    ev : dict
        ``report["questions"]["dropout_at_inference"]``.
    results : dict
        ``report["results"]`` (unused).
    path : str
        The PNG to write.

    Returns
    -------
    None
    """
    ps = ev["p"]
    rows = [ev["by_p"][str(p)] for p in ps]
    styles = {"inverted": ("tab:green", "o", "-"),
              "classic, times (1-p)": ("tab:blue", "s", "-"),
              "classic, no (1-p) (the mistake)": ("tab:red", "x", "-"),
              "MC average, inverted model": ("tab:green", "^", ":"),
              "MC average, classic model": ("tab:blue", "v", ":")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for name, (color, marker, ls) in styles.items():
        kw = dict(color=color, marker=marker, linestyle=ls, label=name)
        axes[0].plot(ps, [100 * r[name]["accuracy"] for r in rows], **kw)
        axes[1].plot(ps, [r[name]["nll"] for r in rows], **kw)
        if not name.startswith("MC"):
            axes[2].plot(ps, [r[name]["output_scale"] for r in rows], **kw)
    axes[2].plot(ps, ev["predicted_unscaled_scale_two_layers"], color="k", linestyle="--",
                 marker="+", markersize=12, linewidth=0.8,
                 label="(1/(1-p))^2: two dropout layers, biases ignored")
    axes[2].axhline(1, color="k", linewidth=0.5)
    axes[0].set(xlabel="p (drop probability)", ylabel="test accuracy (%)",
                title=f"test accuracy ({ev['n_test']} images)")
    axes[1].set(xlabel="p", ylabel="test loss (mean negative log-likelihood)", yscale="log",
                title="test loss")
    axes[2].set(xlabel="p", ylabel="mean |logit| / that of the mean of MC passes",
                yscale="log", title=f"output scale vs the average of {ev['mc_passes']} "
                                    "stochastic passes")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(ps)
    fig.suptitle(f"2. Dropout at inference, whole 64-256-256-10 network (one model per p and "
                 f"convention, seed {ev['seed']})")
    _save(fig, path)


def batch_norm_vs_dropout(ev, results, path):
    """Question 3: test accuracy per seed with mean and spread, and the validation curves.

    Parameters
    ----------
    ev : dict
        ``report["questions"]["batch_norm_vs_dropout"]``.
    results : dict
        ``report["results"]``: the runs' validation curves.
    path : str
        The PNG to write.

    Returns
    -------
    None
    """
    names = list(ev["test_accuracy"])
    colors = ("tab:gray", "tab:green", "tab:purple", "tab:orange")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    n = min(len(ev["test_accuracy"][k]["per_seed"]) for k in names)
    for i, (name, color) in enumerate(zip(names, colors)):
        a = ev["test_accuracy"][name]
        v = 100 * np.asarray(a["per_seed"])
        x = i + np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.array([float(i)])
        axes[0].scatter(x, v, color=color, s=18, alpha=0.7, zorder=3)
        if a["std"] is not None:
            se = 100 * a["std"] / np.sqrt(len(v))
            axes[0].errorbar(i + 0.28, 100 * a["mean"], yerr=100 * a["std"], color=color,
                             capsize=6, marker="_", markersize=14, linewidth=1)
            axes[0].errorbar(i + 0.36, 100 * a["mean"], yerr=se, color="k", capsize=3,
                             linewidth=1)
        curves = np.array([r["curves"]["val_loss"] for r in results[name]["runs"]
                           if len(r["curves"]["val_loss"]) == len(
                               results[name]["runs"][0]["curves"]["val_loss"])])
        epochs = np.arange(1, curves.shape[1] + 1)
        axes[1].plot(epochs, curves.mean(0), color=color,
                     label=f"{name} ({'mean of ' + str(len(curves)) if len(curves) > 1 else '1'}"
                           f" seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            axes[1].fill_between(epochs, curves.min(0), curves.max(0), color=color, alpha=0.2)
    axes[0].set_xticks(range(len(names)), names)
    title = (f"test accuracy: dots = seeds; colored bar = mean +- std, black = +- standard "
             f"error ({n} seeds)" if n > 1 else "test accuracy, one seed: no spread, no claim")
    axes[0].set(ylabel="test accuracy (%)", title=title)
    axes[0].title.set_fontsize(9)
    axes[1].set(xlabel="epoch", ylabel="validation loss", yscale="log",
                title="validation loss: mean over seeds, band = min to max")
    axes[1].legend(fontsize=8)
    c = ev["comparisons"].get("batch norm - dropout", {})
    if c.get("t") is not None:
        verdict = "significant" if c["significant"] else "within seed-to-seed noise"
        fig.text(0.01, 0.01, f"batch norm - dropout: {100 * c['difference']:+.2f} +- "
                             f"{100 * c['standard_error']:.2f} points (standard error), "
                             f"Welch |t| = {abs(c['t']):.1f} vs {c['t_critical']:.2f} at 95%: "
                             f"{verdict}", fontsize=9)
    fig.suptitle("3. Can batch norm replace dropout?")
    _save(fig, path)
