"""``python -m fastreg.bench`` / ``fastreg bench``: time every op on every available backend and
print, beside PyTorch on the same data:

- the small-ops section (``fastreg.bench.small``): ops on small arrays, per call in
  microseconds, idle and, with ``--load`` and ``--pin``, under a background load and pinned to
  one CPU;
- one table of the ops on large arrays (and batch norm on layer shapes) with effective GB/s and
  the fraction of this machine's bandwidth measured in the same run (``fastreg.bench.bandwidth``).

Timing of the large rows: one warm-up call (JIT compilation, first touch of the output), then
repeated calls for about ``--budget`` seconds (at least 3, at most 50), each timed alone; the
table shows their min, median and max, and GB/s and the ratios come from the minimum, since on a
shared machine it is the run least disturbed by neighbours. The NumPy reference and PyTorch are
slow: they are timed only where one call is predicted (from their timing at a smaller size) to
take at most ``--slow-limit`` seconds.
"""
import argparse
import os
import re
import sys
import textwrap
import time
from typing import NamedTuple

import numpy as np

import fastreg
from fastreg import _registry
from fastreg._cli import positive_float, positive_int
from . import bandwidth, cases, load, small, torch_peer
from .cases import size_id

DEFAULT_SIZES = (1 << 24, 1 << 26)
QUICK_SIZES = (1 << 20,)
_PROBE_N = 1 << 20          # slow peers are timed once here to predict larger sizes
BANDWIDTH_N = bandwidth.DEFAULT_N   # the bandwidth probe's arrays (2^26 float32, 256 MiB each)
QUICK_BANDWIDTH_N = 1 << 24         # with --quick: 64 MiB each (may fit a large L3: footer)


def _parse_size(text):
    text = text.strip().replace("**", "^")
    m = re.fullmatch(r"(\d+)\^(\d+)", text)
    value = int(m.group(1)) ** int(m.group(2)) if m else int(text)
    if value < 1:
        raise ValueError(text)
    return value


class _NothingToRun(Exception):
    """Every backend named with --backends is unavailable here (the message says why)."""


class _SizesAction(argparse.Action):
    """``--sizes 2^24 2^26``, ``--sizes 2^24,2^26`` or repeated ``--sizes``: one flat list."""

    def __call__(self, parser, namespace, values, option_string=None):
        sizes = list(getattr(namespace, self.dest) or [])
        for token in values:
            try:
                sizes += [_parse_size(s) for s in token.split(",") if s.strip()]
            except ValueError:
                parser.error(f"{option_string}: sizes are integers >= 1 or powers like 2^24, "
                             f"got {token!r}")
        if not sizes:   # "" or ",": not "the default sizes"
            parser.error(f"{option_string}: name at least one size")
        setattr(namespace, self.dest, sizes)


def _parse_list(choices):
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:   # "" or ",": not "all of them"
            raise argparse.ArgumentTypeError(f"name at least one; choose from {', '.join(choices)}")
        bad = [s for s in items if s not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items
    return parse


def add_arguments(parser):
    """The options of the benchmark table (shared by ``python -m fastreg.bench`` and
    ``fastreg bench``)."""
    parser.add_argument("--sizes", nargs="+", action=_SizesAction, metavar="N",
                        help="element counts, e.g. 2^24,2^26 or 4096 (default 2^24,2^26; "
                             "2^20 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast run (2^20 elements, short timing): the CI smoke test")
    parser.add_argument("--threads", type=positive_int, metavar="T",
                        help="threads for fastreg (Numba and C backends) and torch (default: "
                             "fastreg.get_num_threads(), i.e. the CPUs this process may use, "
                             "capped by OMP_NUM_THREADS / NUMBA_NUM_THREADS; "
                             "FASTREG_NUM_THREADS overrides)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="element type of dropout's x, uniform's output and the penalty "
                             "and optimizer arrays (default float32)")
    parser.add_argument("--backends", type=_parse_list(("numpy", "cpu", "c", "cuda")),
                        metavar="B[,B...]",
                        help="subset of numpy,cpu,c,cuda (default: all available; cuda only on "
                             "a real GPU, not under NUMBA_ENABLE_CUDASIM)")
    ops = tuple(cases.SMALL_OPS) + tuple(cases.OPS) + tuple(cases.BN_OPS)
    parser.add_argument("--ops", type=_parse_list(ops), metavar="OP[,OP...]",
                        help=f"subset of {','.join(ops)} (default all; the small_* ops are the "
                             "small-ops section)")
    parser.add_argument("--layouts", type=_parse_list(tuple(cases.BN_LAYOUTS)),
                        metavar="L[,L...]",
                        help="batch-norm layer shapes: subset of "
                             f"{','.join(cases.BN_LAYOUTS)} (default all; small shapes with "
                             "--quick)")
    parser.add_argument("--no-torch", action="store_true", help="do not time the PyTorch peers")
    parser.add_argument("--budget", type=positive_float, metavar="S",
                        help="seconds of repetitions per row (default 0.25; 0.05 with --quick)")
    parser.add_argument("--slow-limit", type=positive_float, default=1.0, metavar="S",
                        help="time the NumPy reference and torch only where one call takes at "
                             "most S seconds (default 1)")
    parser.add_argument("--load", nargs="?", const="mixed", choices=load.KINDS, metavar="KIND",
                        help="also time the small ops beside a background load, started for "
                             "those rows and always ended after them: mixed (default; short "
                             "Numba parallel regions, NumPy work and sleeps, like a test suite "
                             "running beside) or spin (busy loops)")
    parser.add_argument("--load-procs", type=positive_int, metavar="N",
                        help="processes of the --load (default: the CPUs this process may use)")
    parser.add_argument("--pin", action="store_true",
                        help="also time the small ops with every thread of this process pinned "
                             f"to one CPU and {small.PIN_THREADS} threads (a container given "
                             "fewer cores than it sees; as taskset)")
    return parser


def set_threads(threads):
    """Use ``threads`` threads in Numba and OpenMP (torch follows Numba's count). Call it before
    Numba or a backend is imported: Numba's OpenMP threading layer sizes its pool from
    NUMBA_NUM_THREADS and sets the process-wide OpenMP thread count (which the C backend shares)
    to it; OMP_NUM_THREADS covers a C backend loaded without Numba."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    import numba
    numba.set_num_threads(threads)
    fastreg.set_num_threads(threads)


def _torch(threads):
    """torch set to ``threads`` threads, or None when it does not import."""
    try:
        import torch
    except Exception:
        return None
    torch.set_num_threads(threads)
    return torch


class Timing(NamedTuple):
    """Seconds per call of one row: the fastest, the median and the slowest of ``reps``."""

    min: float
    median: float
    max: float
    reps: int


def time_stats(fn, budget, min_reps=3, max_reps=50):
    """``Timing`` of ``fn()``: one untimed warm-up call, then calls each timed alone until
    ``budget`` seconds are spent (at least ``min_reps``, at most ``max_reps`` calls)."""
    fn()
    times = []
    spent = 0.0
    while len(times) < min_reps or (spent < budget and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return Timing(min(times), float(np.median(times)), max(times), len(times))


def time_min(fn, budget, min_reps=3, max_reps=50):
    """(min seconds, calls timed) for ``fn()`` (see ``time_stats``)."""
    timing = time_stats(fn, budget, min_reps, max_reps)
    return timing.min, timing.reps


def cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Bytes below which an op's data may stay in the caches: the largest cache the OS reports
    (its ``index*/size`` entries), at most 32 MiB (also when it reports none). A benchmark loop
    repeats an op on the same arrays, so what fits the caches is read from them, not from
    memory; but a VM is told the host's whole L3, which it shares: this project's reports
    480 MiB, and its rows of 64-448 MiB ran at the speed of the 768 MiB ones (AdamW 46.6
    against 47.2 GB/s), while 4 MiB ran from the caches (the probe's update 89 against 50)."""
    size = 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    for index in entries:
        if not index.startswith("index"):   # also "uevent" and "power" there
            continue
        try:
            with open(os.path.join(root, index, "size")) as f:
                text = f.read().strip().upper()
            value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except (OSError, ValueError, IndexError):
            continue
        size = max(size, value)
    return min(size, 32 << 20) if size > 0 else 32 << 20


_COLUMNS = (("op", "<", 19), ("backend", "<", 7), ("n", ">", 7), ("alloc", "<", 8),
            ("min ms", ">", 8), ("med ms", ">", 8), ("max ms", ">", 8), ("GB/s", ">", 7),
            ("of bw", ">", 5), ("x torch", ">", 7), ("x fused", ">", 7))


def _row(values):
    return "  ".join(f"{v:{align}{width}}" for v, (_, align, width) in zip(values, _COLUMNS))


def _ms(timing):
    """The min, median and max cells of a row, in milliseconds."""
    return [f"{seconds * 1e3:.3f}" for seconds in (timing.min, timing.median, timing.max)]


class _SlowGuard:
    """Keeps the NumPy reference and torch off sizes where one call would exceed ``limit``
    seconds, predicting linearly from their last timing at a smaller size (or from the fastest
    of 3-10 calls at ``min(n, 2**20)`` when there is none)."""

    def __init__(self, limit):
        self.limit = limit
        self.known = {}          # key -> (n, seconds) of the latest timing

    def record(self, key, n, seconds):
        self.known[key] = (n, seconds)

    def predicted_over(self, key, build, n):
        """The predicted seconds of one call at n when over the limit, else None.
        ``build(m)`` makes the callable at m elements."""
        if key not in self.known or self.known[key][0] > n:
            m = min(n, _PROBE_N)
            # the fastest of 3-10 calls: on a busy machine one call can stall for 10s of ms
            seconds, _ = time_min(build(m), 0.05, min_reps=3, max_reps=10)
            self.record(key, m, seconds)
        m, seconds = self.known[key]
        predicted = seconds * n / m
        return predicted if predicted > self.limit else None


class _Table:
    """Times the rows of one run and prints them; see ``run``."""

    def __init__(self, args, file):
        self.file = file
        self.sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
        self.budget = args.budget if args.budget is not None else (0.05 if args.quick else 0.25)
        self.dtype = np.dtype(args.dtype)
        wanted_ops = args.ops or list(cases.SMALL_OPS) + list(cases.OPS) + list(cases.BN_OPS)
        self.small_ops = [op for op in wanted_ops if op in cases.SMALL_OPS]
        self.ops = [op for op in wanted_ops if op in cases.OPS]
        self.bn_ops = [op for op in wanted_ops if op in cases.BN_OPS]
        self.load_kind = getattr(args, "load", None)
        self.load_procs = getattr(args, "load_procs", None)
        self.pin = getattr(args, "pin", False)
        self.layouts = args.layouts or list(cases.BN_LAYOUTS)
        self.quick = args.quick
        self.slow_limit = args.slow_limit
        self.slow = _SlowGuard(args.slow_limit)
        self.notes = []
        self.too_slow = {}        # (what, size) -> {op: predicted seconds per call}

        status = fastreg.available_backends()
        simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
        wanted = args.backends or [b for b in status if not (b == "cuda" and simulated)]
        self.backends = [b for b in wanted if status.get(b) is None]
        self.skipped = {b: status[b] for b in wanted if status.get(b) is not None}
        if args.backends and not self.backends:   # before any probe or row
            raise _NothingToRun("none of the backends asked for can run here: " + "; ".join(
                f"{b}: {why}" for b, why in self.skipped.items()))
        if not args.backends and simulated and status.get("cuda") is None:
            self.skipped["cuda"] = ("NUMBA_ENABLE_CUDASIM=1: timings would be meaningless "
                                    "(ask with --backends cuda)")

        # small ops: "auto" and the host backends asked for (numpy only when named)
        self.small_backends = [b for b in (args.backends or ["c", "cpu"])
                               if b in self.backends and b != "cuda"]

        self.threads = bandwidth.threads()
        # torch for the large rows in this process; for the small ops in a process of its own
        # (fastreg.bench.torch_peer: here it would share fastreg's passive OpenMP runtime)
        self.torch = None if args.no_torch or not (self.ops or self.bn_ops) else _torch(self.threads)
        self.peer = None
        self.no_torch_reason = "not timed (--no-torch)" if args.no_torch else "not installed"
        if self.small_ops and not args.no_torch:
            try:
                self.peer = torch_peer.TorchPeer(self.threads)
            except torch_peer.PeerError as exc:
                if "No module named 'torch'" not in str(exc):
                    self.note(f"small ops: no torch peer ({exc})")
        self.probe = None
        self.machine = None
        if self.ops or self.bn_ops:   # the small ops are not compared with the bandwidth
            self.probe = bandwidth.probe(n=QUICK_BANDWIDTH_N if args.quick else BANDWIDTH_N,
                                         rounds=5 if args.quick else 10)
            self.machine = self.probe.gb_per_s
        self.probe_again = not args.quick   # probe again after the rows (quick rows are in cache)
        self.cache_bytes = cache_bytes()
        self.highest = None       # (fraction of bw, what) of the large rows
        self.gpu = None
        if "cuda" in self.backends:
            self.gpu_probe_n = 1 << 12 if simulated else bandwidth.DEFAULT_N
            self.gpu = bandwidth.device_bandwidth(n=self.gpu_probe_n,
                                                  repeat=2 if simulated else 10)
        self.version = fastreg.__version__

    def say(self, line=""):
        print(line, file=self.file, flush=True)

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def header(self):
        torch = self.torch
        kinds = []
        if any(op in self.ops for op in ("dropout", "dropout_backward", "dropout_mask_packed",
                                         "random_bits", "uniform")):
            kinds.append(f"Philox4x32-10 dropout and random numbers (p={cases.P})")
        if any(op in self.ops for op in ("l1_grad", "l2_grad_accumulate", "prox_l1",
                                         "l1_penalty")):
            kinds.append(f"penalties (lam={cases.LAM:g}, prox threshold={cases.THRESHOLD:g})")
        if any(op in self.ops for op in cases.FUSED_OPS):
            kinds.append("optimizer steps (one parameter of n elements)")
        if self.bn_ops:
            kinds.append("batch norm (layer shapes, n = the layout)")
        if self.small_ops:
            kinds.insert(0, "small ops (per call)")
        self.say(f"fastreg {self.version} benchmark: {', '.join(kinds)}; {self.dtype.name}")
        if self.probe is not None:
            probe = self.probe
            self.say(f"machine: {probe.gb_per_s:.1f} GB/s memory bandwidth ({probe.kernel}: the "
                     f"best of {len(probe.kernels)} STREAM-like kernels over {size_id(probe.n)} "
                     f"float32 per array, {probe.threads} threads, fastest of {probe.rounds} "
                     "passes each, taking turns)")
            self.say("  probe kernels, GB/s: " + ", ".join(
                f"{name} {gbps:.1f}" for name, gbps in probe.kernels.items()))
            if 3 * 4 * probe.n < self.cache_bytes:   # the add / triad kernels' three arrays
                self.say(f"  note: the probe's arrays ({3 * 4 * probe.n >> 20} MiB) fit the "
                         f"last-level cache ({self.cache_bytes >> 20} MiB): its figure is the "
                         "cache's rate, not memory's")
        threads = f"threads: {fastreg.get_num_threads()} (fastreg), {self.threads} (numba)"
        if "c" in self.backends:
            threads += f", {_registry.module('c').omp_max_threads()} (c, OpenMP)"
        if self.torch is not None:
            threads += f", {self.torch.get_num_threads()} (torch)"
        elif self.peer is not None:
            threads += f", {self.peer.info['threads']} (torch)"
        self.say(threads)
        if self.gpu is not None:
            self.say(f"gpu: {self.gpu:.1f} GB/s memory bandwidth (the same probe on device "
                     f"arrays, {size_id(self.gpu_probe_n)} float32)")
        self.say("backends: " + (", ".join(self.backends) or "none")
                 + "".join(f"; no {b}: {why}" for b, why in self.skipped.items()))
        version = (torch.__version__ if torch is not None
                   else self.peer.version if self.peer is not None else None)
        self.say(f"torch: {version}" if version is not None
                 else f"torch: {self.no_torch_reason}")
        self.say()

    def table_header(self):
        line = _row([name for name, _, _ in _COLUMNS])
        self.say(line)
        self.say("-" * len(line))

    def fraction(self, gbps, nbytes, peak, what):
        """The 'of bw' cell: GB/s over the bandwidth, or "cache" where the op moves too few
        bytes for memory to bound it."""
        if nbytes < self.cache_bytes:
            return "cache"
        fraction = gbps / peak
        if self.highest is None or fraction > self.highest[0]:
            self.highest = (fraction, what)
        return f"{fraction:.0%}"

    def torch_seconds(self, op, x, device, fused=False):
        """Min time of op's torch peer on x (None when too slow, when torch has no such device
        or, for ``fused``, no fused implementation of the op there)."""
        if device == "cuda" and not self.torch.cuda.is_available():
            return None
        n = x.size
        key = ("torch", device, op, fused)
        what = "x fused is '-' for" if fused else "x torch is '-' for"
        try:
            predicted = self.slow.predicted_over(
                key, lambda m: cases.torch_call(op, x[:m], device=device, fused=fused), n)
            if predicted is not None:
                self.too_slow.setdefault((what, n), {})[op] = predicted
                return None
            seconds, _ = time_min(cases.torch_call(op, x, device=device, fused=fused),
                                  self.budget)
        except RuntimeError as exc:   # e.g. an older torch without fused=True on this device
            self.note(f"torch peer of {op}{' (fused)' if fused else ''} on {device}: {exc}")
            return None
        self.slow.record(key, n, seconds)
        return seconds

    def op_rows(self, op, x):
        """Time op on every backend at x's size; print one row per backend and variant (out=,
        fresh; in place; scalar: see cases.ALLOCS)."""
        n = x.size
        label = cases.OPS[op][0] + (f" {self.dtype.name}" if op == "uniform" else "")
        bytes_moved = cases.nbytes(op, n, self.dtype)
        peers = {}   # (torch device, fused) -> seconds, timed on first need
        for backend in self.backends:
            why = cases.unavailable(op, backend)
            if why is not None:
                self.note(f"{op} on {backend}: {why}")
                continue
            if backend == "numpy":
                try:
                    predicted = self.slow.predicted_over(
                        ("numpy", op),
                        lambda m: cases.fastreg_call(op, "numpy", x[:m], preallocated=True), n)
                except fastreg.BackendUnavailableError as exc:
                    self.note(f"{op} on {backend}: {exc}")
                    continue
                if predicted is not None:
                    self.too_slow.setdefault(("numpy reference not timed for", n), {})[op] = \
                        predicted
                    continue
            on_host = backend != "cuda"
            device = "cpu" if on_host else "cuda"
            for alloc in cases.ALLOCS[op]:
                preallocated = alloc != "fresh"
                try:
                    timing = time_stats(
                        cases.fastreg_call(op, backend, x, preallocated=preallocated),
                        self.budget)
                except fastreg.BackendUnavailableError as exc:   # a kernel refusing when called
                    self.note(f"{op} on {backend}: {exc}")
                    break
                seconds = timing.min
                if backend == "numpy" and preallocated:
                    self.slow.record(("numpy", op), n, seconds)
                gbps = bytes_moved / seconds / 1e9
                ratios = []
                for fused in (False, True):
                    ratio = "-"
                    if self.torch is not None and (not fused or op in cases.FUSED_OPS):
                        if (device, fused) not in peers:
                            peers[device, fused] = self.torch_seconds(op, x, device, fused)
                        if peers[device, fused] is not None:
                            ratio = f"{peers[device, fused] / seconds:.1f}x"
                    ratios.append(ratio)
                peak = self.machine if on_host else self.gpu
                of_bw = self.fraction(gbps, bytes_moved, peak,
                                      f"{label} {backend} {size_id(n)} {alloc}")
                self.say(_row([label, backend, size_id(n), alloc, *_ms(timing), f"{gbps:.2f}",
                               of_bw, *ratios]))

    def footer(self):
        self.say()
        counts = {"dropout": "dropout fwd and bwd read x and write out: 2*itemsize*n",
                  "dropout_mask_packed": "mask packed: n/8", "random_bits": "random_bits: 4n",
                  "uniform": "uniform: itemsize*n",
                  "l1_grad": "l1_grad reads w, writes out: 2*itemsize*n",
                  "l2_grad_accumulate": "l2_grad accumulate reads w, reads+writes g: 3*itemsize*n",
                  "prox_l1": "prox_l1 reads+writes w: 2*itemsize*n",
                  "l1_penalty": "l1_penalty reads w: itemsize*n",
                  "sgd_step": "sgd step reads p, g, buf, writes p, buf: 5*itemsize*n",
                  "adamw_step": "adamw step reads p, g, m, v, writes p, m, v: 7*itemsize*n"}
        shown = [text for op, text in counts.items()
                 if op in self.ops or (op == "dropout" and "dropout_backward" in self.ops)]
        self.say("min/med/max ms: the fastest, median and slowest of the timed calls (each "
                 "timed alone); GB/s and x torch use the fastest")
        self.say("GB/s: bytes the op must move / min time:")
        for line in textwrap.wrap("; ".join(shown), 98):
            self.say("  " + line)
        self.say("of bw: GB/s / the bandwidth above (the machine's; the GPU's for cuda); 'cache' "
                 f"where the op moves under {self.cache_bytes >> 20} MiB (the last-level "
                 "cache, at most 32 MiB): its data may stay in the caches, beyond what memory "
                 "bounds")
        if self.highest is not None:
            highest = f"{self.highest[0]:.0%} ({self.highest[1]})"
            if self.probe_again:   # the machine's load may have changed during the rows
                after = bandwidth.probe(self.probe.n, self.probe.rounds, again=True)
                best = max(after.gb_per_s, self.probe.gb_per_s)
                self.say(f"  the probe again after the rows: {after.gb_per_s:.1f} GB/s "
                         f"({after.kernel}); highest of bw here: {highest}, "
                         f"{self.highest[0] * self.machine / best:.0%} of the better probe")
            else:
                self.say(f"  highest of bw here: {highest}")
            if self.highest[0] > 1.0:
                self.say("  note: an op above 100% of the probe: the probe ran while the "
                         "machine was busier than during that row, or the op's data partly sat "
                         "in the caches; compare figures of one run and a quiet machine")
        allocs = {a for op in self.ops for a in cases.ALLOCS[op]}
        if allocs & {"out=", "fresh"}:
            self.say("alloc: out= writes into a preallocated array (mask, random_bits and uniform "
                     "have no out=: the backend kernel is timed); fresh allocates the result on "
                     "every call (pages of a fresh array >= 32 MiB are faulted in at ~1.6 GB/s)")
        if allocs & {"in place", "scalar"}:
            self.say("alloc: in place updates its arrays (the repetitions keep updating them); "
                     "scalar returns a float")
        if self.torch is not None:
            self.say("x torch: torch time / fastreg time, same data and threads (> 1: fastreg "
                     "is faster). torch peers:")
            for op in self.ops:
                self.say(f"  {op}: {cases.TORCH_PEERS[op]}")
            fused = [op for op in self.ops if op in cases.FUSED_OPS]
            if fused:
                self.say("x fused: the same against torch's fused=True optimizer steps:")
                for op in fused:
                    self.say(f"  {op}: {cases.TORCH_FUSED_PEERS[op]}")
        if self.bn_ops:
            self.bn_footer()
        for (what, n), ops in self.too_slow.items():
            self.say(f"note: {what} {', '.join(ops)} at {size_id(n)}: one call would take "
                     f"{min(ops.values()):.1f}-{max(ops.values()):.1f} s (over --slow-limit)")
        for text in self.notes:
            self.say("note: " + text)

    def bn_rows(self, layout):
        """Time the batch-norm ops on every backend in one layout (one row each, out=)."""
        shape, _ = cases.bn_shape(layout, self.quick)
        for op in self.bn_ops:
            label = cases.BN_OPS[op][0]
            bytes_moved = cases.bn_nbytes(op, shape, self.dtype)
            peers = {}   # torch device -> seconds, timed on first need
            for backend in self.backends:
                why = cases.bn_unavailable(op, backend)
                if why is not None:
                    self.note(f"{op} on {backend}: {why}")
                    continue
                if backend == "numpy" and not self.quick:
                    self.note("batch norm on numpy (the reference) is timed with --quick only, "
                              "on the small shapes")
                    continue
                on_host = backend != "cuda"
                device = "cpu" if on_host else "cuda"
                try:
                    fn = cases.bn_fastreg_call(op, backend, layout, self.dtype, quick=self.quick)
                    timing = time_stats(fn, self.budget)
                except fastreg.BackendUnavailableError as exc:
                    self.note(f"{op} on {backend}: {exc}")
                    continue
                seconds = timing.min
                gbps = bytes_moved / seconds / 1e9
                ratio = "-"
                if self.torch is not None:
                    if device not in peers:
                        peers[device] = self.bn_torch_seconds(op, layout, device)
                    if peers[device] is not None:
                        ratio = f"{peers[device] / seconds:.1f}x"
                peak = self.machine if on_host else self.gpu
                of_bw = self.fraction(gbps, bytes_moved, peak, f"{label} {backend} {layout}")
                self.say(_row([label, backend, layout, "out=", *_ms(timing), f"{gbps:.2f}",
                               of_bw, ratio, "-"]))

    def bn_torch_seconds(self, op, layout, device):
        """Min time of op's torch peer (None where torch has no such device, or where one call
        takes over --slow-limit)."""
        if device == "cuda" and not self.torch.cuda.is_available():
            return None
        fn = cases.bn_torch_call(op, layout, self.dtype, quick=self.quick, device=device)
        t0 = time.perf_counter()
        fn()
        if time.perf_counter() - t0 > self.slow_limit:
            self.note(f"torch peer of {op} on {layout}: one call takes over --slow-limit, "
                      "not timed")
            return None
        seconds, _ = time_min(fn, self.budget)
        return seconds

    def bn_footer(self):
        shapes = ", ".join(f"{layout} {'x'.join(map(str, cases.bn_shape(layout, self.quick)[0]))}"
                           for layout in self.layouts)
        self.say(f"batch norm: n is the layout: {shapes} (channel axis "
                 "1 for nchw and nc, -1 for nhwc); weight, bias, running statistics; out= "
                 "(y and grad_x preallocated)")
        text = ("batch norm bytes (S = itemsize * elements): train fwd, infer fwd, bn+relu "
                "read x, write y: 2S (the statistics' pass over x is not counted: a fused "
                "kernel reads each channel from memory once); fwd+bwd adds the backward's "
                "read of grad_y and x and write of grad_x: 5S; 'bn, then relu pass' is the "
                "same 2S of work done as the forward and then the backend's own in-place "
                "ReLU pass over y (bn_apply with scale 1, shift 0)")
        for line in textwrap.wrap(text, 98):
            self.say("  " + line)
        if self.torch is not None:
            self.say("batch-norm torch peers (x torch):")
            for op in self.bn_ops:
                self.say(f"  {op}: {cases.BN_TORCH_PEERS[op]}")

    def run(self):
        try:
            self.run_rows()
        finally:
            if self.peer is not None:
                self.peer.close()

    def run_rows(self):
        self.header()
        if self.small_ops:
            small.Section(self.small_ops, self.small_backends, self.peer, self.quick,
                          self.load_kind, self.load_procs, self.pin, self.say, self.note).run()
        elif self.load_kind is not None or self.pin:
            self.note("--load and --pin time the small ops only, and none were selected")
        if self.ops or self.bn_ops:
            self.table_header()
        for n in self.sizes:
            if not self.ops:
                break
            x = cases.input_array(n, self.dtype)
            for op in self.ops:
                self.op_rows(op, x)
            del x
        if self.bn_ops:
            for layout in self.layouts:
                self.bn_rows(layout)
        if self.ops or self.bn_ops:
            self.footer()
        else:
            for text in self.notes:
                self.say("note: " + text)


def run(args, file=None):
    """Measure and print the table for parsed ``args`` (see ``add_arguments``); returns 0 (2
    when no backend named with --backends can run, 130 on Ctrl-C)."""
    if args.threads is not None:
        set_threads(args.threads)
    try:
        _Table(args, file or sys.stdout).run()
    except _NothingToRun as exc:
        print(f"fastreg bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # piped into head: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the load (if any) is already ended, threads unpinned
        print("fastreg bench: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv=None):
    """Entry point of ``python -m fastreg.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m fastreg.bench",
        description="Time fastreg's kernels on every available backend against this machine's "
                    "memory bandwidth and PyTorch.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
