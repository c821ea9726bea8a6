"""``fastreg demo --quick`` end to end (in-process), its statistics and sentences, worker
processes, the compile notice, ``fastreg info``, the install hints, and import hygiene."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from fastreg.__main__ import build_parser, main
from fastreg.train import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # in-process (--jobs 1): the worker processes have a test of their own below; 10 epochs
    # instead of --quick's 15 (a third less training; every property below holds with margin:
    # L1-prox 18% zeros, the unscaled classic model's logits x1.56/4.0/25 at p = 0.2/0.5/0.8)
    proc = subprocess.run([sys.executable, "-m", "fastreg", "demo", "--quick", "--jobs", "1",
                           "--epochs", "10", "--out", str(out)], capture_output=True, text=True,
                          cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.json") as f:
        return json.load(f), out, proc.stdout, proc.stderr


def test_demo_quick_writes_sane_results(demo_report):
    report, out, _, _ = demo_report
    results = report["results"]
    expected = {"none", "l2 coupled", "l2 decoupled (AdamW)", "l1 prox", "dropout inverted",
                "dropout classic", "batch norm", "batch norm + dropout", "early stopping"}
    assert expected <= set(results)
    assert f"label smoothing {report['settings']['label_smoothing']}" in results
    if report["settings"]["augmentation_skipped_because"] is None:
        assert {"augmentation", "mixup", "cutmix", "everything"} <= set(results)
    for name, r in results.items():
        m = r["mean_std"]
        assert len(r["runs"]) == 1, name                      # --quick: one seed
        assert m["test_accuracy"][1] is None, name            # so no spread is claimed
        assert m["test_accuracy"][0] > 0.5, name
        assert 0 < m["epochs_run"][0] <= report["settings"]["epochs"], name
        assert 1 <= m["best_epoch"][0] <= m["epochs_run"][0], name


def test_question1_evidence(demo_report):
    q = demo_report[0]["questions"]["l1_vs_l2_sparsity"]
    c = q["configs"]
    assert c["L1-prox"]["zero_fraction"] > 0.1
    for name in ("none", "L2 coupled", "L2 decoupled"):
        assert c[name]["zero_fraction"] < 0.01, name
        assert c["L1-prox"]["zero_fraction"] > c[name]["zero_fraction"]
    for name, v in c.items():   # the histogram accounts for every weight
        h = v["abs_weight_histogram_first_seed"]
        assert h["zero"] + h["below_first_edge"] + sum(h["counts"]) == h["total"], name
        assert v["below_1e-3_fraction"] >= v["zero_fraction"], name
    g = q["gradient_vs_w"]
    w, l1, l2 = (np.asarray(g[k]) for k in ("w", "l1", "l2_coupled"))
    np.testing.assert_allclose(np.abs(l1[w != 0]), q["l1_prox"], rtol=1e-12)   # constant
    np.testing.assert_allclose(l2, 2 * q["l2_coupled"] * w, rtol=1e-12)     # proportional


def test_question2_evidence(demo_report):
    q = demo_report[0]["questions"]["dropout_at_inference"]
    assert q["p"] == sorted(q["p"]) and len(q["p"]) >= 3
    ratios = []
    for p in q["p"]:
        row = q["by_p"][str(p)]
        for rule in ("inverted", "classic, times (1-p)"):
            # the inference rules stand in for the mean of the stochastic passes
            assert abs(row[rule]["output_scale"] - 1) < 0.2, (p, rule)
        ratios.append(row["classic, no (1-p) (the mistake)"]["output_scale"]
                      / row["classic, times (1-p)"]["output_scale"])
        for v in row.values():
            assert 0 <= v["accuracy"] <= 1 and v["nll"] > 0
    # forgetting (1-p) inflates the logits, more at larger p, about (1/(1-p))^2 for two layers
    assert ratios == sorted(ratios) and ratios[0] > 1.1
    for p, r in zip(q["p"], ratios):
        assert 1 / (1 - p) < r < 1.2 / (1 - p) ** 2, (p, r)


def test_question3_quick_claims_nothing(demo_report):
    report, _, stdout, _ = demo_report
    q = report["questions"]["batch_norm_vs_dropout"]
    assert "One seed supports no claim" in q["answer"]
    assert all(c["significant"] is None for c in q["comparisons"].values())
    assert "One seed supports no claim" in " ".join(stdout.split())


def test_figures_and_printed_text(demo_report):
    report, out, stdout, stderr = demo_report
    pytest.importorskip("matplotlib")
    for key, name in demo.FIGURES.items():
        assert report["questions"][key]["figure"] == name
        assert (out / name).stat().st_size > 10_000, name
    assert not (out / "learning_curves.png").exists()
    assert max(len(line) for line in stdout.splitlines()) <= demo.WIDTH
    for key in demo.FIGURES:   # every answer is printed, as results.json has it
        assert " ".join(report["questions"][key]["answer"].split()) in " ".join(stdout.split())
    assert "training: 100%" in stderr          # progress, as lines when not on a terminal


def test_without_matplotlib_the_demo_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    note = demo._figures({}, {}, str(tmp_path))
    assert "matplotlib is not installed" in note and "fastreg-kernels[demo]" in note
    assert not list(tmp_path.iterdir())


def _fake_results(per_seed):
    return {name: {"runs": [{"test_accuracy": a} for a in accs]}
            for name, accs in per_seed.items()}


def test_welch_against_hand_computed_values():
    c = demo._welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])
    assert c["difference"] == -1 and c["standard_error"] == pytest.approx(1.0)
    assert c["t"] == pytest.approx(-1.0) and c["df"] == pytest.approx(8.0)
    assert c["t_critical"] == 2.306 and c["significant"] is False
    c = demo._welch([10.0, 10.1, 9.9, 10.0, 10.05], [9.0, 9.1, 8.9, 9.0, 9.05])
    assert c["significant"] is True and c["t"] > 10
    assert demo._welch([1.0], [2.0, 3.0])["significant"] is None
    assert demo._welch([1.0, 1.0], [1.0, 1.0])["significant"] is False


def test_question3_claims_only_what_the_spread_supports():
    base = {"none": [0.95, 0.951, 0.949, 0.952, 0.948],
            "batch norm + dropout": [0.97, 0.968, 0.972, 0.969, 0.971]}
    noisy = demo._question3(_fake_results({
        **base, "dropout inverted": [0.96, 0.95, 0.97, 0.955, 0.965],
        "batch norm": [0.962, 0.958, 0.952, 0.97, 0.968]}))
    assert not noisy["comparisons"]["batch norm - dropout"]["significant"]
    assert "cannot tell batch norm alone from dropout alone" in noisy["answer"]
    clear = demo._question3(_fake_results({
        **base, "dropout inverted": [0.955, 0.956, 0.954, 0.957, 0.953],
        "batch norm": [0.972, 0.973, 0.971, 0.974, 0.970]}))
    assert clear["comparisons"]["batch norm - dropout"]["significant"]
    assert "batch norm alone beat dropout alone" in clear["answer"]
    assert "Welch" in clear["answer"] and "Welch" in clear["method"]


def test_worker_processes_give_the_same_runs_as_one_process():
    cfgs = demo._configs()
    specs = [{"cfg": cfgs["dropout classic"], "seed": 3, "epochs": 2, "mc_passes": 2},
             {"cfg": cfgs["l1 prox"], "seed": 4, "epochs": 2, "histogram": True}]
    serial = demo._execute(specs, 1, (0, "auto", False), None)
    spawned = demo._execute(specs, 2, (0, "auto", False), None)
    for a, b in zip(serial, spawned):
        a.pop("time_s"), b.pop("time_s")
        assert a == b


def test_compile_notice_detects_a_cold_numba_cache(tmp_path):
    code = "from fastreg.train import demo; print(demo._numba_cache_cold())"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "True"


def test_info_runs(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "backends:" in text and "numpy" in text and "numba" in text


def test_cuda_without_numba_cuda_says_how_to_install(monkeypatch):
    cuda = pytest.importorskip("fastreg.cuda")
    monkeypatch.setattr(cuda, "_cuda", None)
    monkeypatch.setattr(cuda, "_IMPORT_ERROR", "ImportError: cannot import name 'overload'")
    monkeypatch.setattr(cuda.importlib.util, "find_spec",
                        lambda name, *a: None if name == "numba_cuda" else object())
    reason = cuda.unavailable_reason()
    assert 'pip install "fastreg-kernels[cuda]"' in reason and "overload" not in reason


def test_install_hints_name_the_distribution():
    pyproject = (ROOT / "pyproject.toml").read_text()
    # "fastreg" on PyPI is another project (sparse regressions)
    assert re.search(r'^name = "fastreg-kernels"$', pyproject, re.M)
    stale = re.compile(r"""pip install \\?["']?fastreg\[""")
    paths = [ROOT / "README.md", *(ROOT / "fastreg").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
             *(ROOT / "bench").glob("*.py")]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in paths if p.exists()
           for i, line in enumerate(p.read_text().splitlines(), 1) if stale.search(line)]
    assert not bad, f"install hints naming the distribution 'fastreg': {bad}"


def test_parser_keeps_bench_and_has_demo_options():
    parser = build_parser()
    args = parser.parse_args(["demo", "--quick", "--out", "x", "--epochs", "3", "--seed", "2",
                              "--backend", "numpy", "--quiet", "--jobs", "2"])
    assert (args.quick, args.out, args.epochs, args.seed, args.backend, args.quiet,
            args.jobs) == (True, "x", 3, 2, "numpy", True, 2)
    assert parser.parse_args(["bench", "--quick"]).command == "bench"


def test_import_fastreg_does_not_load_the_trainer_or_its_optional_deps():
    code = ("import sys, fastreg; bad = [m for m in ('fastreg.train', 'tqdm', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], r"--seed: expected a seed in \[0, 2\*\*32\)"),
    (["--seed", str(2**64)], r"--seed: expected a seed in \[0, 2\*\*32\)"),
    (["--seed", "x"], r"--seed: expected an integer seed"),
])
def test_demo_refuses_bad_seeds_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", *argv])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_demo_setup_errors_before_any_work(tmp_path, capsys):
    """An --out that cannot be created, a last seed beyond 2**32, a backend that cannot run:
    one line on stderr and exit status 2, before any training."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot create the --out folder" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", str(2**32 - 2),
                 "--seeds", "5"]) == 2
    assert "must lie in [0, 2**32)" in capsys.readouterr().err
    import fastreg
    if fastreg.available_backends()["cuda"] is not None:
        assert main(["demo", "--quick", "--out", str(tmp_path), "--backend", "cuda"]) == 2
        assert "--backend cuda: backend 'cuda' is not available" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
    # --quick runs one seed: the last seed 2**32 - 1 is valid there
    args = build_parser().parse_args(["demo", "--quick", "--out", str(tmp_path),
                                      "--seed", str(2**32 - 1)])
    assert demo._check_setup(args) is None
