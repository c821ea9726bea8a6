"""The public surface: docstrings, backend discovery and selection, import cost."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastreg
from fastreg import _registry

PUBLIC = [getattr(fastreg, n) for n in fastreg.__all__ if inspect.isfunction(getattr(fastreg, n))]
PUBLIC += [getattr(fastreg.random, n) for n in fastreg.random.__all__]
PUBLIC += [getattr(fastreg.optim, n) for n in fastreg.optim.__all__]
PUBLIC += [fastreg.optim.SGD.step, fastreg.optim.SGD.state_dict, fastreg.optim.SGD.load_state_dict]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_docstrings(fn):
    doc = inspect.getdoc(fn) or ""
    if inspect.signature(fn).parameters:  # no "Parameters: None" (STYLE.md)
        assert "Parameters\n----------" in doc, fn.__name__
    if not inspect.isclass(fn):  # no "Returns" on a class (STYLE.md)
        assert "Returns\n-------" in doc, fn.__name__


def test_available_backends_reports_every_backend():
    avail = fastreg.available_backends()
    assert list(avail) == ["numpy", "cpu", "c", "cuda"]
    assert avail["numpy"] is None
    for name, reason in avail.items():
        assert reason is None or (isinstance(reason, str) and reason)


def test_auto_prefers_c_then_cpu_then_numpy(monkeypatch):
    monkeypatch.delenv("FASTREG_BACKEND", raising=False)
    avail = fastreg.available_backends()
    first = next(b for b in ("c", "cpu", "numpy") if avail[b] is None)
    assert _registry.resolve("auto", np.ones(3)) == first
    # without the C extension, Numba; without either, NumPy
    monkeypatch.setitem(_registry._missing, "c", "not built (test)")
    monkeypatch.delitem(_registry._loaded, "c", raising=False)
    expected = "cpu" if avail["cpu"] is None else "numpy"
    assert _registry.resolve("auto", np.ones(3)) == expected
    monkeypatch.setitem(_registry._missing, "cpu", "not installed (test)")
    monkeypatch.delitem(_registry._loaded, "cpu", raising=False)
    assert _registry.resolve("auto", np.ones(3)) == "numpy"


@pytest.mark.parametrize("name", ["numpy", "cpu", "c"])
def test_env_override(monkeypatch, name):
    if fastreg.available_backends()[name] is not None:
        pytest.skip(f"{name} unavailable")
    monkeypatch.setenv("FASTREG_BACKEND", name)
    assert _registry.resolve("auto", np.ones(3)) == name


def test_env_override_rejects_unknown(monkeypatch):
    monkeypatch.setenv("FASTREG_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FASTREG_BACKEND"):
        fastreg.dropout(np.ones(3, np.float32), seed=1)


def test_device_array_refused_by_host_backend():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False),
                                    "version": 3}
    with pytest.raises(ValueError, match="CUDA device array"):
        fastreg.dropout(FakeDevice(), seed=1, backend="cpu")


def test_import_fastreg_loads_no_backend():
    code = ("import sys, time; t = time.perf_counter(); import fastreg; "
            "dt = time.perf_counter() - t; "
            "assert not any(m in sys.modules for m in ('numba', 'cffi', 'fastreg.cpu', "
            "'fastreg.c', 'fastreg.cuda')), sorted(sys.modules); print(dt)")
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr


def test_required_backends_are_present():
    """CI sets FASTREG_TEST_REQUIRE (e.g. "numpy,cpu,c") so a backend that failed to build or
    import fails the run instead of skipping all of its tests."""
    required = [b for b in os.environ.get("FASTREG_TEST_REQUIRE", "").split(",") if b]
    if not required:
        pytest.skip("FASTREG_TEST_REQUIRE not set")
    avail = fastreg.available_backends()
    missing = {b: avail[b] for b in required if avail[b] is not None}
    assert not missing, f"required backends unavailable: {missing}"
