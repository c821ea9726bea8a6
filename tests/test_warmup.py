"""``fastreg warmup``: compiles the cpu backend's kernels into Numba's cache.

One op group only, in a subprocess with an empty NUMBA_CACHE_DIR (a full warm-up compiles every
kernel: minutes). penalties is among the cheapest groups: one kernel and its helper, two
dtypes. That every kernel is reached by some group is checked without compiling them
(test_every_cpu_kernel_is_reached_by_a_group: seconds).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastreg
from fastreg import warmup as warm
from fastreg.__main__ import main


def _cpu_or_skip():
    reason = fastreg.available_backends()["cpu"]
    if reason is not None:
        pytest.skip(f"backend 'cpu' unavailable: {reason}")


def test_warmup_fills_an_empty_numba_cache(tmp_path):
    _cpu_or_skip()
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "fastreg", "warmup", "--ops", "penalties"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/1] penalties" in proc.stdout and "total" in proc.stdout
    assert str(cache) in proc.stdout
    index = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
    data = list(cache.rglob("*.nbc"))
    # the kernel ran on a tiny input: its one version serves large (parallel) calls too
    assert "penalty._sums_kernel__nogil" in index, index
    assert data


def test_plain_progress_lines_without_tqdm(monkeypatch, capsys):
    _cpu_or_skip()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # "from tqdm import tqdm" now fails
    seconds = warm.warmup("cpu", ops=["penalties"])
    assert list(seconds) == ["penalties"] and seconds["penalties"] >= 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[1/1] penalties") and out[0].endswith(" s")
    assert out[1].startswith("total ")


def test_a_group_compiles_only_its_own_kernels():
    # in a process that already ran other kernels (a test suite, a user's session), warming up
    # one group compiles (or loads) that group's kernels and nothing else
    _cpu_or_skip()
    import fastreg.random
    fastreg.random.uniform(8, seed=1, backend="cpu")          # a kernel of another module
    dispatchers = warm._dispatchers()

    def versions():
        return {id(d): set(d.signatures) for _, d in dispatchers}

    before = versions()
    warm.warmup("cpu", ops=["penalties"], progress=False)
    after = versions()
    changed = {d.py_func.__module__ for _, d in dispatchers if after[id(d)] != before[id(d)]}
    assert changed <= {"fastreg.cpu.penalty"}, changed


def test_quiet_returns_seconds_only(capsys):
    _cpu_or_skip()
    assert list(warm.warmup("cpu", ops=["penalties"], progress=False)) == ["penalties"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_ahead_of_time_backends_have_nothing_to_compile(backend, capsys):
    if fastreg.available_backends()[backend] is not None:
        pytest.skip(f"backend {backend!r} unavailable")
    assert main(["warmup", "--backend", backend]) == 0
    assert "nothing to compile" in capsys.readouterr().out


def test_bad_arguments(capsys):
    assert main(["warmup", "--ops", "penalties,nope"]) == 2
    assert "unknown op(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="backend must be"):
        warm.warmup("cuda")
    with pytest.raises(SystemExit):
        main(["warmup", "--backend", "gpu"])


def test_list_names_every_group(capsys):
    assert main(["warmup", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(warm.OPS)


@pytest.mark.parametrize("name", list(warm.OPS))
def test_every_group_runs_on_the_reference(name):
    # the same calls as on "cpu", cheap on "numpy": a group that no longer matches the API (or
    # the kernel contract, for batch_norm_sync) fails here rather than at warm-up time
    warm.OPS[name]("numpy")


# ---- coverage: every kernel of the cpu backend is reached by some group, without compiling ----

def _returns_value(fn):
    """Whether ``fn``'s source has a ``return <value>`` (nested functions aside)."""
    import ast
    import inspect
    import textwrap
    body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _global_names(fn):
    """The global names ``fn``'s code (nested code included) refers to."""
    names, codes = set(), [fn.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return names


def test_every_cpu_kernel_is_reached_by_a_group(monkeypatch):
    """Run every warm-up group on "cpu" with the kernels called from Python recorded and not
    run (no compiling: seconds): every dispatcher that ``uncompiled()`` watches must be reached.
    A kernel that returns a value runs for real (the group's next calls may depend on it; few
    and small); one that returns nothing is skipped, its writable float arrays set to 1 (a
    deterministic finite result, whatever np.empty left there). A kernel reached covers the
    jitted helpers its code names (compiled with it). Fails on a kernel that no group reaches,
    e.g. a new kernel or a path taken only by large or non-contiguous inputs: add a call to a
    group in fastreg/warmup.py."""
    _cpu_or_skip()
    from numba.core.registry import CPUDispatcher
    from fastreg.cpu import penalty as cpu_penalty

    dispatchers = warm._dispatchers()
    names = {id(d): name for name, d in dispatchers}
    real_call = CPUDispatcher.__call__          # the C dispatcher's call
    called, valued = set(), {}

    def call(self, *args, **kwargs):
        if id(self) not in names:
            return real_call(self, *args, **kwargs)
        called.add(id(self))
        if id(self) not in valued:
            valued[id(self)] = _returns_value(self.py_func)
        if valued[id(self)]:
            return real_call(self, *args, **kwargs)
        for a in args:   # as if it ran: finite floats (np.empty's bytes could steer a branch)
            if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.flags.writeable:
                a[...] = 1
        return None

    monkeypatch.setattr(CPUDispatcher, "__call__", call)
    limit = cpu_penalty.STREAM_MIN_BYTES
    for group in warm.OPS.values():
        group("cpu")
    monkeypatch.undo()
    assert cpu_penalty.STREAM_MIN_BYTES == limit   # warmup restored the limit it lowered

    # what compiling the kernels that were called compiles too
    covered, todo = set(), [d for _, d in dispatchers if id(d) in called]
    while todo:
        d = todo.pop()
        if id(d) in covered:
            continue
        covered.add(id(d))
        for name in _global_names(d.py_func):
            v = d.py_func.__globals__.get(name)
            if isinstance(v, CPUDispatcher):
                todo.append(v)
    missing = sorted(name for name, d in dispatchers if id(d) not in covered)
    if not cpu_penalty.CAN_STREAM:   # no streaming stores on this CPU: never taken
        prefix = cpu_penalty.__name__ + "."
        missing = [m for m in missing
                   if not (m.startswith(prefix) and "stream" in m[len(prefix):])]
    assert missing == [], f"kernels no warm-up group reaches: {missing}"
