"""bench/gpu_validate.sh and bench/gpu_validate.py, everything that can be checked without a GPU:
the command line, the early exit without a GPU, the comparison rule, and one whole run under
Numba's simulator (tiny sizes), so that the first run on a real GPU does not fail on a typo.

The simulated run takes about half a minute here; the module is named so that the simulator
step of CI (``-k cuda``) does not run it a second time, and the script's own default test
selection leaves it out.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_validate.sh"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_validate",
                                                  ROOT / "bench" / "gpu_validate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env(**extra):
    """The environment of a script run: the Python running the tests, no simulator unless asked,
    and the script's own Numba cache (OUTDIR/numba-cache) even when the suite runs with a
    NUMBA_CACHE_DIR of its own. The steps' time limits are a real GPU's: on a busy machine (this
    suite runs beside others, and under pytest-xdist beside itself) even the env step can take
    over its 30 s here, so they are raised (the limits are the script's business, not what these
    tests check)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CACHE_DIR")}
    env["PYTHON"] = sys.executable
    for step in ("ENV", "TESTS", "AGREE", "BENCH"):
        env[f"GPU_VALIDATE_{step}_TIMEOUT"] = "400"
    env.update(extra)
    return env


def _run(args, tmp_path, timeout=900, **extra):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=_env(**extra),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    ([], "usage: bench/gpu_validate.sh OUTDIR"),
    (["a", "b"], "one OUTDIR only"),
    (["out", "--bogus"], "unknown option --bogus"),
    (["out", "--tests"], "--tests needs pytest arguments"),
    (["out", "--n"], "--n needs a number"),
    (["out", "--n", "2e4"], "--n takes N or 2^K"),
])
def test_bad_arguments(tmp_path, args, message):
    res = _run(args, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert not (tmp_path / "out").exists()      # nothing created before the arguments are valid


def test_help(tmp_path):
    res = _run(["--help"], tmp_path)
    assert res.returncode == 0
    assert res.stdout.startswith("Validate fastreg on an NVIDIA GPU")
    for word in ("OUTDIR", "--quick", "--n N", "--tests", "--no-bench", "summary.txt"):
        assert word in res.stdout


def test_python_command_line(capsys):
    gv = _load()
    with pytest.raises(SystemExit) as exc:
        gv.main(["bench", "--sizes", "2e4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        gv.main(["launch"])
    assert "invalid choice" in capsys.readouterr().err


def test_mismatches_compare_bits_and_any_nan_equals_any_nan():
    gv = _load()
    a = np.array([0.0, 1.0, np.nan, 2.0], np.float32)
    b = a.copy()
    assert gv.mismatches(a, b) == (0, -1)
    b[2] = np.float32(-np.nan)                     # another NaN: canonical NaN on a GPU
    assert gv.mismatches(a, b) == (0, -1)
    b[0] = -0.0                                    # signed zeros differ
    b[3] = np.nextafter(np.float32(2), np.float32(3))
    assert gv.mismatches(a, b) == (2, 0)
    assert gv.mismatches(np.array([1, 2], np.uint8), np.array([1, 3], np.uint8)) == (1, 1)
    assert gv.mismatches(np.array([True, False]), np.array([True, False])) == (0, -1)
    with pytest.raises(AssertionError, match="dtype differ"):
        gv.mismatches(a, a.astype(np.float64))


def test_agreement_cases_cover_every_exact_op():
    gv = _load()
    ops = {op for op, *_ in gv.agreement_cases(1024)}
    assert ops == {"random_bits", "dropout_mask", "dropout_mask_packed", "uniform", "dropout",
                   "group_dropout", "penalty_grad", "soft_threshold", "all_finite", "sgd_step",
                   "adam_step", "aug_flip", "aug_erase", "aug_paste", "drop_block_mask",
                   "drop_block_apply", "scale", "scale_rows", "aug_color", "aug_blur",
                   "aug_normalize", "half_to_float32", "float32_to_half"}
    # the ops the CUDA check holds to the host's bits are all compared on a GPU
    from fastreg.cuda import check
    exact_modules = {k.split(".")[0] for k, v in check.POLICY.items() if check.EXACT in v}
    assert exact_modules == {"philox", "dropout", "penalty", "optim", "augment", "dropblock",
                             "clip", "augment_color", "half"}


def test_without_a_gpu_it_stops_early(tmp_path):
    from fastreg.cuda import unavailable_reason
    if unavailable_reason() is None and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        pytest.skip("a GPU is present")
    res = _run([str(tmp_path / "out")], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no usable GPU / CUDA backend" in res.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text().split()
    assert summary[:2] == ["env", "FAIL"]
    assert "the CUDA backend cannot run here" in (tmp_path / "out" / "env.txt").read_text()


def test_simulated_run(tmp_path):
    """The whole script under the simulator, every step, with a tiny test selection."""
    out = tmp_path / "out"
    res = _run([str(out), "--n", "1024", "--tests",
                "tests/test_cuda_backend.py -k philox_known"], tmp_path,
               NUMBA_ENABLE_CUDASIM="1", FASTREG_CUDA_TPB="8")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = (out / "summary.txt").read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["env", "ok"], ["tests", "ok"], ["agree", "ok"],
                                                 ["bench", "ok"]]
    assert "simulator: yes" in (out / "env.txt").read_text()
    assert "1 passed" in (out / "tests.txt").read_text()
    assert (out / "tests.xml").read_text().startswith("<?xml")
    assert (out / "numba-cache").is_dir()

    agree = json.loads((out / "agree.json").read_text())
    assert agree["n"] == 1024 and agree["failures"] == 0
    assert all(r["ok"] and r["differ"] == 0 for r in agree["rows"])
    assert {r["host"] for r in agree["rows"]} <= {"c", "cpu", "numpy"}
    text = (out / "agree.txt").read_text()
    assert text.splitlines()[1].split()[:4] == ["op", "variant", "dtype", "n"]
    assert f"{len(agree['rows'])} comparisons: 0 failed" in text

    bench = json.loads((out / "bench.json").read_text())
    labels = [r["op"] for r in bench["rows"]]
    assert "dropout p=0.5" in labels and "adamw step" in labels and "bn train fwd" in labels
    assert all(r["gb_s"] > 0 and r["of_copy"] > 0 and r["torch_ms"] is None
               for r in bench["rows"])
    text = (out / "bench.txt").read_text()
    assert "device-to-device copy" in text.splitlines()[0]
    assert text.splitlines()[1].split() == ["op", "n", "ms", "(min)", "GB/s", "of", "copy",
                                            "x", "torch", "x", "fused"]
    assert "timings are meaningless" in text
