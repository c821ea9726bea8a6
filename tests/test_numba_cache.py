"""fastreg.cpu._cache: processes that fill Numba's on-disk cache at the same time, each with
another signature of the same function, leave an index that names every signature's own
machine code. Without the guard Numba's save loses entries and points signatures at the other
processes' code (the race is widened here by a slower index read, as a busy machine does)."""
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("fcntl")

DTYPES = ("int32", "int64", "float32", "float64")

MODULE = """
import numba


@numba.njit(cache=True)
def f(x):
    return x + x  # an array in, an array of its dtype out
"""

CHILD = """
import os, sys, time
sys.path.insert(0, {dir!r})
if {guard}:
    from fastreg.cpu import _cache
    assert _cache.guard()
from numba.core import caching
read = caching.IndexDataCacheFile._load_index
def slow_read(self):  # the window between reading the index and writing it back
    overloads = read(self)
    time.sleep(0.3)
    return overloads
caching.IndexDataCacheFile._load_index = slow_read
import numpy as np
import cachemod
open({go!r} + ".ready.{dtype}", "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.005)
cachemod.f(np.ones(3, np.{dtype}))
"""

CHECK = """
import sys
sys.path.insert(0, {dir!r})
import numpy as np
import cachemod
for name in {dtypes!r}:
    r = cachemod.f(np.ones(3, name))
    assert r.dtype == name and (r == 2).all(), (name, r)
misses = sum(cachemod.f.stats.cache_misses.values())
print("misses", misses)
"""


def _fill_at_once(tmp_path, guard):
    """Four processes compile f for four dtypes at the same moment into an empty cache; then a
    fifth loads all four. Returns the fifth's cache misses (0: every signature was there)."""
    work = tmp_path / ("guarded" if guard else "numba")
    work.mkdir()
    (work / "cachemod.py").write_text(MODULE)
    go = str(work / "go")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "cache"))
    children = [subprocess.Popen([sys.executable, "-c", CHILD.format(
        dir=str(work), guard=guard, go=go, dtype=dtype)], env=env) for dtype in DTYPES]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(f"{go}.ready.{dtype}") for dtype in DTYPES):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.01)
    open(go, "w").close()  # all four compile from here on, at the same moment
    for child in children:
        assert child.wait(timeout=300) == 0
    check = subprocess.run([sys.executable, "-c", CHECK.format(dir=str(work), dtypes=DTYPES)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    return int(check.stdout.split()[-1])


def test_concurrent_compiles_keep_every_signature(tmp_path):
    assert _fill_at_once(tmp_path, guard=True) == 0


def test_without_the_guard_numba_loses_signatures(tmp_path):
    """The harness reproduces the race the guard prevents (if a Numba release fixes its save,
    this fails: then fastreg.cpu._cache can go)."""
    assert _fill_at_once(tmp_path, guard=False) > 0


def test_the_cpu_backend_installs_the_guard():
    import importlib

    from numba.core import caching

    importlib.import_module("fastreg.cpu._jit")  # (installs it)
    assert getattr(caching.IndexDataCacheFile, "_fastreg_guard", False)
    assert caching.IndexDataCacheFile.save.__module__ == "fastreg.cpu._cache"


def test_a_save_where_no_lock_file_can_be_made_falls_back(tmp_path, monkeypatch):
    """An unwritable lock path: Numba's own save runs (and fails or not as it would)."""
    from numba.core import caching

    from fastreg.cpu import _cache
    assert _cache.guard()
    cache = caching.IndexDataCacheFile(str(tmp_path), "m.f-1.py311", ("stamp", 1))
    calls = []
    monkeypatch.setattr(_cache, "LOCK_NAME", os.path.join("missing", "lock"))
    monkeypatch.setattr(caching.IndexDataCacheFile, "_save_data",
                        lambda self, name, data: calls.append(name))
    cache.save(("sig",), b"code")
    assert calls == ["m.f-1.py311.1.nbc"]
