"""Cold Numba compile time of every op: the first call in a fresh process with an empty cache.

Each op runs in its own subprocess with ``NUMBA_CACHE_DIR`` pointing to a new empty directory, so
nothing compiled by another op (or an earlier run) is reused: the figure is what a user pays on
the first call of that op in a fresh container. fastreg, NumPy and the backend package (Numba
itself) are imported before the clock starts; the first call is timed, then a second one (the
warm cost, for comparison). Numba's cache is written during the first call and counts in it.
Wall and CPU seconds are both reported: on a busy machine the wall time grows with the load, the
CPU time (all threads of the subprocess) much less.

Two sizes per op: ``small`` (below the thread grain: the serially compiled kernels run) and
``large`` (above it: the parallel ones, and Numba's threading layer starts). Backends: "cpu"
(Numba) always; "cuda" only where a GPU is present (the simulator compiles nothing).

    python bench/compile_time.py                        # every op, both sizes, backend cpu
    python bench/compile_time.py --ops bn_ --size small # ops whose name contains "bn_"
    python bench/compile_time.py --json out.json
    python bench/compile_time.py --demo                 # only the demo's kernels, together
    python bench/compile_time.py --demo --ops bn_       # both
    python bench/compile_time.py --ops bn_stats --size small --profile   # where the time goes

``--profile`` lists, per compiled function (kernels, helpers, Numba's own overloads such as
``np.empty``'s ``impl``), the CPU seconds of its compile less its callees' (Numba's
``numba:compile`` events), and how much of that was LLVM (``numba:llvm_lock``: optimizing and
emitting machine code; the rest is Numba's typing and lowering, in Python).

``cold_compile_seconds(op, size, backend)`` is the function behind it (one op, one subprocess).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

# Shapes per size: small stays under every family's grain (fastreg._threads.GRAIN), large is
# well above it (so plan() picks several threads where there are several CPUs).
SIZES = {
    "small": dict(N=16384, NCHW=(4, 16, 16, 16), NC=(64, 256), IMG=(4, 16, 16, 3)),
    "large": dict(N=1 << 20, NCHW=(16, 64, 32, 32), NC=(1024, 512), IMG=(32, 64, 64, 3)),
}

_BN_SETUP = """
x = rng.standard_normal(NCHW).astype(np.float32)
C = NCHW[1]
w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
"""
_BN_BACKWARD_SETUP = _BN_SETUP + """
y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=True, backend="numpy")
gy = rng.standard_normal(NCHW).astype(np.float32)
"""
_BN_NHWC_SETUP = """
x = rng.standard_normal(NCHW[:1] + NCHW[2:] + NCHW[1:2]).astype(np.float32)
C = NCHW[1]
w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
"""
_VEC_SETUP = "w = rng.standard_normal(N).astype(np.float32)\n"
_IMG_SETUP = "img = rng.integers(0, 256, IMG, dtype=np.uint8)\n"

#: op -> (setup, call): Python source run in the subprocess; N, NCHW, NC, IMG, rng, np, fastreg
#: and BACKEND are defined there. One float32 call per op.
OPS = {
    # batch norm (fastreg/cpu/batchnorm.py)
    "bn_train_forward": (_BN_SETUP,
                         "fastreg.batch_norm(x, rm, rv, w, b, training=True, backend=BACKEND)"),
    "bn_train_forward_residual_relu": (
        _BN_SETUP + "r = rng.standard_normal(NCHW).astype(np.float32)\n",
        "fastreg.batch_norm(x, rm, rv, w, b, training=True, residual=r, activation='relu', "
        "backend=BACKEND)"),
    "bn_inference": (_BN_SETUP,
                     "fastreg.batch_norm(x, rm, rv, w, b, training=False, backend=BACKEND)"),
    "bn_backward": (_BN_BACKWARD_SETUP,
                    "fastreg.batch_norm_backward(gy, x, saved, w, backend=BACKEND)"),
    "bn_train_forward_nhwc": (
        _BN_NHWC_SETUP,
        "fastreg.batch_norm(x, rm, rv, w, b, training=True, axis=-1, backend=BACKEND)"),
    "bn_stats": (_BN_SETUP, "fastreg.batch_norm_stats(x, backend=BACKEND)"),
    # dropout and random streams (fastreg/cpu/dropout.py, philox.py)
    "dropout": ("x = rng.standard_normal(N).astype(np.float32)\n",
                "fastreg.dropout(x, 0.5, seed=1, backend=BACKEND)"),
    "dropout_mask_packed": ("", "fastreg.dropout_mask(N, 0.5, seed=1, backend=BACKEND)"),
    "channel_dropout": ("x = rng.standard_normal(NCHW).astype(np.float32)\n",
                        "fastreg.channel_dropout(x, 0.5, seed=1, backend=BACKEND)"),
    "random_bits": ("", "fastreg.random.random_bits(N, seed=1, backend=BACKEND)"),
    "uniform": ("", "fastreg.random.uniform(N, seed=1, backend=BACKEND)"),
    # penalties and proximal steps (fastreg/cpu/penalty.py)
    "l1_penalty": (_VEC_SETUP, "fastreg.l1_penalty(w, 1e-4, backend=BACKEND)"),
    "elastic_net_grad": (_VEC_SETUP, "fastreg.elastic_net_grad(w, 1e-4, 1e-4, backend=BACKEND)"),
    "prox_l1": (_VEC_SETUP, "fastreg.prox_l1(w, 1e-6, backend=BACKEND)"),
    "prox_group_lasso": ("w = rng.standard_normal((N // 64, 64)).astype(np.float32)\n",
                         "fastreg.prox_group_lasso(w, 0.1, axis=1, backend=BACKEND)"),
    # optimizers (fastreg/cpu/optim.py)
    "sgd_step": (_VEC_SETUP + "opt = fastreg.optim.SGD([w], lr=0.01, momentum=0.9, "
                 "weight_decay=1e-4, backend=BACKEND)\ng = np.ones_like(w)\n",
                 "opt.step([g])"),
    "adamw_step": (_VEC_SETUP + "opt = fastreg.optim.AdamW([w], lr=1e-3, backend=BACKEND)\n"
                   "g = np.ones_like(w)\n", "opt.step([g])"),
    # image augmentation (fastreg/cpu/augment.py)
    "random_flip": (_IMG_SETUP, "fastreg.augment.random_flip(img, seed=1, backend=BACKEND)"),
    "random_rotate": (_IMG_SETUP, "fastreg.augment.random_rotate(img, seed=1, backend=BACKEND)"),
    "gaussian_noise": (_IMG_SETUP.replace("rng.integers(0, 256, IMG, dtype=np.uint8)",
                                          "rng.random(IMG, dtype=np.float32)"),
                       "fastreg.augment.gaussian_noise(img, seed=1, backend=BACKEND)"),
    "random_erasing": (_IMG_SETUP,
                       "fastreg.augment.random_erasing(img, p=1.0, seed=1, backend=BACKEND)"),
    "mixup": (_IMG_SETUP + "labels = np.arange(IMG[0]) % 10\n",
              "fastreg.augment.mixup(img.astype(np.float32), labels, num_classes=10, seed=1, "
              "backend=BACKEND)"),
    "cutmix": (_IMG_SETUP + "labels = np.arange(IMG[0]) % 10\n",
               "fastreg.augment.cutmix(img, labels, num_classes=10, seed=1, backend=BACKEND)"),
    # penalties' gradients and the loss (the Trainer's l2= and its loss)
    "l2_grad": (_VEC_SETUP, "fastreg.l2_grad(w, 1e-4, backend=BACKEND)"),
    "cross_entropy": ("logits = rng.standard_normal((NC[0], 10)).astype(np.float32)\n"
                      "y = np.arange(NC[0]) % 10\n",
                      "fastreg.cross_entropy(logits, y, label_smoothing=0.1, backend=BACKEND)"),
    # the rest of dropout's family and today's recipe (fastreg/cpu/dropout.py, dropblock.py,
    # ema.py, clip.py, augment_color.py)
    "dropout_backward": ("x = rng.standard_normal(N).astype(np.float32)\n",
                         "fastreg.dropout_backward(x, 0.5, seed=1, backend=BACKEND)"),
    "drop_path": ("x = rng.standard_normal(NCHW).astype(np.float32)\n",
                  "fastreg.drop_path(x, 0.5, seed=1, backend=BACKEND)"),
    "drop_block": ("x = rng.standard_normal(NCHW).astype(np.float32)\n",
                   "fastreg.drop_block(x, 0.1, 3, seed=1, backend=BACKEND)"),
    "ema_update": (_VEC_SETUP + "e = w.copy()\n", "fastreg.ema_update([e], [w], 0.999, "
                   "backend=BACKEND)"),
    "clip_grad_norm": (_VEC_SETUP, "fastreg.clip_grad_norm([w], 1.0, backend=BACKEND)"),
    "color_jitter": (_IMG_SETUP, "fastreg.augment.ColorJitter(0.4, 0.4, 0.4, 0.1)(img, seed=1, "
                     "backend=BACKEND)"),
    "gaussian_blur": (_IMG_SETUP, "fastreg.augment.gaussian_blur(img, 5, 1.0, backend=BACKEND)"),
    "normalize": (_IMG_SETUP, "fastreg.augment.normalize(img, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "
                  "backend=BACKEND)"),
    "rand_augment": (_IMG_SETUP, "fastreg.augment.RandAugment()(img, seed=1, backend=BACKEND)"),
}

# Every kernel ``fastreg demo --backend cpu`` uses: one epoch of each of its configurations (the
# first epoch compiles; the figure is that epoch's cost minus the same epoch run again warm).
_DEMO = """
import json, time
import fastreg
from fastreg.train import demo
fastreg.available_backends()
demo._init_worker(0, {backend!r}, True)
def epoch_of_every_config():
    for cfg in demo._configs().values():
        dropout = "dropout" in cfg["model"]
        demo._task({{"cfg": cfg, "seed": 0, "epochs": 1, "histogram": True,
                    **({{"mc_passes": 1}} if dropout and not cfg["model"].get("batch_norm")
                       else {{}})}})
c0, t0 = time.process_time(), time.perf_counter()
epoch_of_every_config()
c1, t1 = time.process_time(), time.perf_counter()
epoch_of_every_config()
c2, t2 = time.process_time(), time.perf_counter()
print("RESULT " + json.dumps(dict(first=t1 - t0, first_cpu=c1 - c0, second=t2 - t1,
                                  second_cpu=c2 - c1)))
"""

_TEMPLATE = """
import json, time
import numpy as np
import fastreg
import fastreg.augment
fastreg.available_backends()  # imports Numba and the backend packages: not timed
BACKEND = {backend!r}
{sizes}
rng = np.random.default_rng(0)
{setup}
{profile}
c0, t0 = time.process_time(), time.perf_counter()
{call}
c1, t1 = time.process_time(), time.perf_counter()
{call}
t2 = time.perf_counter()
print("RESULT " + json.dumps(dict(first=t1 - t0, first_cpu=c1 - c0, second=t2 - t1,
                                  **PROFILE)))
"""

# Per compiled function: CPU seconds of its compile less its callees' compiles, and the LLVM part
# of them (the llvm_lock events seen while it is the innermost compile). Compiles run on the
# calling thread: thread_time.
_PROFILE = """
from numba.core import event
compiles, stack = {}, []

class Compiles(event.Listener):
    def on_start(self, ev):
        fn = getattr(ev.data["dispatcher"], "py_func", None)
        stack.append([getattr(fn, "__qualname__", "?"), time.thread_time(), 0.0, 0.0])

    def on_end(self, ev):
        name, start, callees, llvm = stack.pop()
        total = time.thread_time() - start
        row = compiles.setdefault(name, [0.0, 0.0, 0])
        row[0] += total - callees
        row[1] += llvm
        row[2] += 1
        if stack:
            stack[-1][2] += total

class Llvm(event.Listener):
    def on_start(self, ev):
        self.start = time.thread_time()

    def on_end(self, ev):
        if stack:
            stack[-1][3] += time.thread_time() - self.start

event.register("numba:compile", Compiles())
event.register("numba:llvm_lock", Llvm())
PROFILE = dict(profile=compiles)
"""


def _run_cold(source, what, timeout):
    """Run ``source`` in a fresh Python with an empty Numba cache; its RESULT line, parsed."""
    with tempfile.TemporaryDirectory(prefix="fastreg-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        # run outside the checkout, so the installed fastreg is the one under test
        proc = subprocess.run([sys.executable, "-c", source], env=env, cwd=cache,
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def demo_compile_seconds(backend="cpu", timeout=1800):
    """Cold compile of every kernel the demo uses: one epoch of each demo configuration (with
    dropout's stochastic passes and the histograms) in a fresh process with an empty Numba
    cache, then the same again (warm).

    Returns
    -------
    dict
        ``first``/``first_cpu`` (wall/CPU seconds of the cold pass), ``second``/``second_cpu``
        (the warm pass); the compile cost is about ``first - second``.
    """
    return _run_cold(_DEMO.format(backend=backend), f"demo kernels ({backend})", timeout)


def cold_compile_seconds(op, size="small", backend="cpu", timeout=900, profile=False):
    """Seconds of the first call of ``op`` in a fresh subprocess with an empty Numba cache.

    Parameters
    ----------
    op : str
        A key of ``OPS``.
    size : {"small", "large"}
        The input size (see ``SIZES``): below or above the thread grain.
    backend : {"cpu", "cuda"}
    timeout : float
        Seconds before the subprocess is killed (then a RuntimeError).
    profile : bool
        Also return ``profile``: compiled function name -> [CPU seconds of its own compile (its
        callees' left out), of which LLVM, times compiled].

    Returns
    -------
    dict
        ``first`` (wall seconds of the cold call, compile included), ``first_cpu`` (CPU seconds
        of this process during it, all threads: less sensitive to a busy machine than the wall
        time) and ``second`` (wall seconds of the same call again).
    """
    setup, call = OPS[op]
    sizes = "\n".join(f"{k} = {v!r}" for k, v in SIZES[size].items())
    source = _TEMPLATE.format(backend=backend, sizes=sizes, setup=textwrap.dedent(setup),
                              call=call, profile=_PROFILE if profile else "PROFILE = {}")
    return _run_cold(source, f"{op} ({size}, {backend})", timeout)


def _cuda_present():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # no driver, no numba-cuda: nothing to compile for
        return False


def _print_profile(profile):
    own = sum(v[0] for v in profile.values())
    llvm = sum(v[1] for v in profile.values())
    print(f"    compiles: {own:.2f} CPU s, of which LLVM {llvm:.2f} (the rest: Numba's typing and "
          f"lowering); per function, its callees left out:")
    for name, (t, l, n) in sorted(profile.items(), key=lambda kv: -kv[1][0]):
        print(f"      {name[:60]:60s} x{n:<3d} {t:6.2f} s  LLVM {l:5.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="", help="comma-separated substrings of op names")
    parser.add_argument("--size", choices=("small", "large", "both"), default="both")
    parser.add_argument("--backend", choices=("cpu", "cuda", "all"), default="cpu")
    parser.add_argument("--demo", action="store_true",
                        help="the cold compile of every kernel the demo uses (one epoch of each "
                             "configuration, cold then warm); alone, without the per-op table "
                             "unless --ops is given")
    parser.add_argument("--profile", action="store_true",
                        help="per op, the compile CPU seconds of each compiled function (its "
                             "callees left out) and their LLVM part")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    wanted = [s for s in args.ops.split(",") if s]
    ops = [op for op in OPS if not wanted or any(s in op for s in wanted)]
    if args.demo and not wanted:
        ops = []
    sizes = ("small", "large") if args.size == "both" else (args.size,)
    backends = ["cpu"] if args.backend != "cuda" else []
    if args.backend in ("cuda", "all"):
        if _cuda_present():
            backends.append("cuda")
        else:
            print("cuda: no GPU here (the simulator compiles nothing): skipped")
    rows = []
    print(f"{'op':34s} {'backend':7s} {'size':6s} {'cold s':>8s} {'cold cpu s':>10s} "
          f"{'warm s':>9s}")
    for backend in backends:
        for op in ops:
            for size in sizes:
                r = cold_compile_seconds(op, size, backend, profile=args.profile)
                rows.append(dict(op=op, backend=backend, size=size, **r))
                print(f"{op:34s} {backend:7s} {size:6s} {r['first']:8.2f} {r['first_cpu']:10.2f} "
                      f"{r['second']:9.5f}", flush=True)
                if args.profile:
                    _print_profile(r["profile"])
    if args.demo:
        for backend in backends:
            r = demo_compile_seconds(backend)
            rows.append(dict(op="demo (every kernel it uses)", backend=backend, size="demo", **r))
            print(f"{'demo: one epoch per config':34s} {backend:7s} {'demo':6s} {r['first']:8.2f} "
                  f"{r['first_cpu']:10.2f} {r['second']:9.5f}   (compile ~ cold - warm = "
                  f"{r['first'] - r['second']:.1f} s wall, "
                  f"{r['first_cpu'] - r['second_cpu']:.1f} s CPU)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
