"""Fork after a parallel call: a child (os.fork, a multiprocessing Pool with the fork context, a
torch DataLoader's workers) runs every op to the right result, on any backend, instead of hanging
in GNU OpenMP's dead thread pool (fastreg runs such children serially: fastreg._threads).

Each scenario runs in its own Python process under a timeout, so a hang fails the test instead
of the suite; the processes import the fastreg under test (site-packages when installed).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastreg

ROOT = Path(fastreg.__file__).resolve().parents[1]
TIMEOUT = 300  # seconds; a cold Numba cache compiles a few kernels in each process

_COMMON = r"""
import os, sys
import numpy as np
import fastreg
from fastreg import _threads

fastreg.set_num_threads(2)
rng = np.random.default_rng(0)
X = rng.standard_normal(1 << 18).astype(np.float32)  # above every grain: parallel in the parent
W = rng.standard_normal(1 << 19).astype(np.float32)


def run(backend, seed=5):
    d = fastreg.dropout(X, 0.3, seed=seed, backend=backend)
    g = fastreg.l2_grad(W, 0.1, backend=backend)
    p = W.copy()
    fastreg.optim.AdamW([p], backend=backend).step([W])
    return d, g, p


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


def regions(backend):
    if backend == "c":
        import fastreg.c
        return fastreg.c.parallel_regions()
    from fastreg.cpu import _jit
    return _jit.launches["parallel"]
"""

_PAIR = _COMMON + r"""
parent, children = sys.argv[1], sys.argv[2:]
ref = run("numpy")
before = regions(parent)
assert same(run(parent), ref), "parent result"
assert regions(parent) > before, "the parent did not run a parallel region"
for child in children:   # one child per backend, each forked from the same parent state
    pid = os.fork()
    if pid == 0:
        ok = fastreg.get_num_threads() == 1 and same(run(child), ref)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print(child, os.waitstatus_to_exitcode(status))
"""


def _run(code, *args, **env):
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    try:
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, cwd=ROOT, env=full, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: no result after {TIMEOUT} s ({' '.join(args)})")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _need(*backends):
    avail = fastreg.available_backends()
    for b in backends:
        if avail[b] is not None:
            pytest.skip(f"backend {b!r} unavailable: {avail[b]}")


@pytest.mark.parametrize("parent", ["c", "cpu"])
def test_os_fork_after_parallel_call(parent):
    """Every parent/child pair: c/c, c/cpu, cpu/c, cpu/cpu (both children of one parent)."""
    _need("c", "cpu")
    assert _run(_PAIR, parent, "c", "cpu").split() == ["c", "0", "cpu", "0"]


_AUGMENT = r"""
import os
import numpy as np
import fastreg
from fastreg import augment

fastreg.set_num_threads(2)
images = np.random.default_rng(1).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)


def run(backend):
    return [augment.random_rotate(images, 20.0, seed=3, backend=backend),
            augment.random_flip(images, seed=4, backend=backend),
            augment.gaussian_noise(images, 8.0, seed=5, backend=backend)]


ref = run("numpy")
assert all(np.array_equal(a, b) for a, b in zip(run("auto"), ref))
pid = os.fork()
if pid == 0:
    ok = all(np.array_equal(a, b) for a, b in zip(run("auto"), ref))
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_augment_fork_default_backend():
    _need("cpu")
    assert _run(_AUGMENT).split() == ["child", "0"]


_POOL = _COMMON + r"""
import multiprocessing as mp


def work(seed):
    return [same(run(b, seed), run("numpy", seed)) for b in ("c", "cpu")
            if fastreg.available_backends()[b] is None] + [fastreg.get_num_threads()]


before = regions("c") + regions("cpu")
run("c"), run("cpu")
assert regions("c") + regions("cpu") > before
with mp.get_context("fork").Pool(2) as pool:
    out = pool.map(work, range(4))
print(all(all(r[:-1]) for r in out), sorted({r[-1] for r in out}))
"""


def test_pool_map_with_fork_context():
    _need("c", "cpu")
    assert _run(_POOL).split() == ["True", "[1]"]


_LOADER = _COMMON + r"""
import torch
from torch.utils.data import DataLoader, Dataset


class Noisy(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        backend = ("c", "cpu")[i % 2]
        return torch.from_numpy(fastreg.dropout(X, 0.3, seed=i, backend=backend))


run("c"), run("cpu")
loader = DataLoader(Noisy(), batch_size=None, num_workers=2, multiprocessing_context="fork")
ok = all(np.array_equal(t.numpy(), fastreg.dropout(X, 0.3, seed=i, backend="numpy"))
         for i, t in enumerate(loader))
print(ok)
"""


def test_torch_dataloader_workers():
    pytest.importorskip("torch")
    _need("c", "cpu")
    assert _run(_LOADER).split() == ["True"]
