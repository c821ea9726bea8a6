"""``fastreg demo --quick`` end to end (in-process), ``fastreg info``, and import hygiene."""
import json
import subprocess
import sys

import pytest

from fastreg.__main__ import build_parser, main


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        return json.load(f), out


def test_demo_quick_writes_sane_results(demo_report):
    report, out = demo_report
    results = report["results"]
    expected = {"none", "l2 coupled", "l2 decoupled (AdamW)", "l1 prox", "dropout inverted",
                "dropout classic", "batch norm", "batch norm + dropout", "early stopping"}
    assert expected <= set(results)
    if report["settings"]["augmentation_skipped_because"] is None:
        assert {"augmentation", "everything"} <= set(results)
    for name, r in results.items():
        m = r["mean_std"]
        assert m["test_accuracy"][0] > 0.5, name
        assert 0 < m["epochs_run"][0] <= report["settings"]["epochs"], name
        assert 1 <= m["best_epoch"][0] <= m["epochs_run"][0], name
        assert m["train_accuracy"][0] >= m["test_accuracy"][0] - 0.1, name
    zeros = report["questions"]["l1_vs_l2_sparsity"]["zero_fraction"]
    assert zeros["l1 prox"] > 0.1 > zeros["l2 coupled"]
    assert zeros["l1 prox"] > zeros["l2 decoupled"]
    d = report["questions"]["dropout_at_inference"]
    assert d["inverted"]["eval_scale"] == pytest.approx(1.0)
    assert d["classic"]["eval_scale"] == pytest.approx(1 - d["p"], rel=1e-6)
    for mode in ("inverted", "classic"):
        assert d[mode]["train_mean_over_eval"] == pytest.approx(1.0, abs=0.02)
    assert d["classic_unscaled_logit_scale"] > 1.5
    assert set(report["questions"]["batch_norm_vs_dropout"]["test_accuracy"]) >= {
        "dropout", "batch norm", "batch norm + dropout"}
    assert (out / "learning_curves.png").exists() or "matplotlib" not in sys.modules


def test_info_runs(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "backends:" in text and "numpy" in text and "numba" in text


def test_parser_keeps_bench_and_has_demo_options():
    parser = build_parser()
    args = parser.parse_args(["demo", "--quick", "--out", "x", "--epochs", "3", "--seed", "2",
                              "--backend", "numpy", "--quiet"])
    assert (args.quick, args.out, args.epochs, args.seed, args.backend, args.quiet) == (
        True, "x", 3, 2, "numpy", True)
    assert parser.parse_args(["bench", "--quick"]).command == "bench"


def test_import_fastreg_does_not_load_the_trainer_or_its_optional_deps():
    code = ("import sys, fastreg; bad = [m for m in ('fastreg.train', 'tqdm', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
