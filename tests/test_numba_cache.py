"""fastreg.cpu._cache: processes that fill Numba's on-disk cache at the same time, each with
another signature of the same function, leave an index that names every signature's own
machine code. Without the guard Numba's save loses entries and points signatures at the other
processes' code. The harness makes the race certain rather than likely: the four processes
enter the save together (a barrier of files), and the index read is slowed, as on a busy
machine; so without the guard they all read the empty index."""
import os
import subprocess
import sys

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
import glob, sys, time
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
save = caching.IndexDataCacheFile.save  # (the guard's, or Numba's)
def together(self, key, data):  # every process enters its save when all four have compiled
    open({go!r} + ".save.{dtype}", "w").close()
    deadline = time.monotonic() + 120
    while len(glob.glob({go!r} + ".save.*")) < {n} and time.monotonic() < deadline:
        time.sleep(0.002)
    return save(self, key, data)
caching.IndexDataCacheFile.save = together
import numpy as np
import cachemod
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
    """Four processes compile f for four dtypes into an empty cache and save it at the same
    moment (CHILD's barrier); then a fifth loads all four. Returns the fifth process (its
    returncode, stdout, stderr), whose last output is its cache misses (0: every signature was
    there)."""
    work = tmp_path / ("guarded" if guard else "numba")
    work.mkdir()
    (work / "cachemod.py").write_text(MODULE)
    go = str(work / "barrier")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "cache"))
    children = [subprocess.Popen([sys.executable, "-c", CHILD.format(
        dir=str(work), guard=guard, go=go, dtype=dtype, n=len(DTYPES))], env=env)
        for dtype in DTYPES]
    for child in children:
        assert child.wait(timeout=300) == 0
    return subprocess.run([sys.executable, "-c", CHECK.format(dir=str(work), dtypes=DTYPES)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_concurrent_compiles_keep_every_signature(tmp_path):
    check = _fill_at_once(tmp_path, guard=True)
    assert check.returncode == 0, check.stderr[-2000:]
    assert int(check.stdout.split()[-1]) == 0


def test_without_the_guard_numba_loses_signatures(tmp_path):
    """The harness reproduces the race the guard prevents: the fifth process compiles again
    (misses), or fails on another signature's machine code (seen: "can't unbox array"). If a
    Numba release fixes its save, this fails: then fastreg.cpu._cache can go."""
    check = _fill_at_once(tmp_path, guard=False)
    assert check.returncode != 0 or int(check.stdout.split()[-1]) > 0


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
