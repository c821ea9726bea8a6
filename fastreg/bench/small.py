"""The small-ops section of ``fastreg bench``: dropout 64x128, batch norm (64, 256) training
forward, inference forward and training forward+backward, an AdamW step and l2_grad on 1e5
float32 (``cases.SMALL_OPS``), on backend "auto" and the host backends, beside PyTorch, per
call in microseconds.

Where: ``idle`` (no load started by the benchmark), ``load`` (beside ``fastreg.bench.load``'s
background load, started for these rows and always ended after them) and ``pinned`` (every
thread of this process and of the torch peer on one CPU, running 2 threads: a container given
fewer cores than it sees, as ``taskset``). Every call is timed alone; within one op and
condition the backends and torch take turns, a few calls each per round, so a change of load
hits them alike.

torch runs in a process of its own (``fastreg.bench.torch_peer``): in this one it would share
the OpenMP runtime fastreg loaded with the passive wait policy, and pay for it on small ops.
"""
import contextlib
import os
import random
import time
import zlib

import numpy as np

import fastreg
from fastreg import _registry, _threads
from . import cases, load, torch_peer

#: columns of the section: (name, alignment, width)
COLUMNS = (("op", "<", 19), ("backend", "<", 10), ("where", "<", 6), ("calls", ">", 6),
           ("min us", ">", 8), ("med us", ">", 8), ("max us", ">", 9), ("x torch", ">", 7))

QUICK = dict(rounds=20, per_round=5, budget=0.3)     # 100 calls per contender, at most 0.3 s
FULL = dict(rounds=100, per_round=10, budget=3.0)    # 1000 calls per contender, at most 3 s
WARMUP = 20
ORDER_SEED = 12   # the contenders' order in each round of time_calls (its default seed)
PIN_THREADS = 2


def row(values):
    """One line of the section's table."""
    return "  ".join(f"{v:{align}{width}}" for v, (_, align, width) in zip(values, COLUMNS))


def time_each(fn, n):
    """n calls of ``fn()`` in this process, each timed alone: their seconds."""
    clock = time.perf_counter
    times = []
    for _ in range(n):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def time_calls(calls, *, rounds, per_round, budget, warmup=WARMUP, seed=ORDER_SEED):
    """Per-call seconds of each contender in ``calls`` (name -> a callable of no arguments,
    timed here, or an object whose ``timed(n)`` makes n calls elsewhere and returns their
    seconds, as ``torch_peer.Remote``).

    Each contender makes ``warmup`` calls untimed (JIT compilation, first touch, thread pools),
    then, for up to ``rounds`` rounds, each in turn makes ``per_round`` calls, every one timed
    alone. Each round takes the contenders in a new random order (from ``seed``: the same
    orders in every run; the section gives each op and condition its own): what a turn finds depends on the turn before it (fastreg's pool
    threads still spinning after a fastreg turn, asleep after torch's), and in a fixed order,
    or one turned round by a place each round, a row follows the same contender in most rounds
    (measured, l2_grad on 1e5 in the fixed order: "auto (c)", after torch, 12.5 us; "c", right
    after it, 10.0; the same kernel). Stops early once ``budget`` seconds have gone into the
    rounds (after at least ``min(3, rounds)`` of them): on a loaded machine one call can take
    milliseconds.

    Returns
    -------
    dict
        name -> float64 array of per-call seconds (equal lengths).
    """
    def run(fn, n):
        return fn.timed(n) if hasattr(fn, "timed") else time_each(fn, n)

    for fn in calls.values():
        run(fn, warmup)
    times = {name: [] for name in calls}
    clock = time.perf_counter
    start = clock()
    order = list(calls)
    shuffle = random.Random(seed).shuffle
    for r in range(rounds):
        if r >= min(3, rounds) and clock() - start > budget:
            break
        shuffle(order)
        for name in order:
            times[name] += run(calls[name], per_round)
    return {name: np.asarray(samples) for name, samples in times.items()}


def _all_threads_affinity(cpus):
    """Set the CPU affinity of every thread of this process (``taskset -a -p``): threads
    created later inherit it from their creator."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (OSError, ValueError):   # a thread that ended meanwhile
            pass
    _threads._forget_affinity()   # fastreg's default thread count reads it again


@contextlib.contextmanager
def pinned(cpu, threads, peer=None):
    """Run the block with every thread of this process on CPU ``cpu`` and ``threads`` threads
    for fastreg (``fastreg.threads``) and Numba, and the same for the torch ``peer`` process
    (a ``torch_peer.TorchPeer``) when given; restores all of them on exit."""
    import numba
    before = os.sched_getaffinity(0)
    numba_before = numba.get_num_threads()
    peer_before = peer.info["threads"] if peer is not None else None
    try:
        _all_threads_affinity({cpu})
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if peer is not None:
            peer.pin(cpu, threads)
        with fastreg.threads(threads):
            yield
    finally:
        _all_threads_affinity(before)
        numba.set_num_threads(numba_before)
        if peer is not None:
            peer.pin(None, peer_before)


def can_pin():
    """Whether ``pinned`` works here (Linux: sched_setaffinity and /proc/self/task)."""
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


class Section:
    """Times the small ops under each condition, then prints them grouped by op: for each op
    and condition, one row per backend and one for torch.

    Parameters
    ----------
    ops : list of str
        Keys of ``cases.SMALL_OPS``.
    backends : list of str
        Host backends beside "auto" (e.g. ["c", "cpu"]).
    torch : torch_peer.TorchPeer or None
        The process timing torch's calls, at the benchmark's threads; None: no peer.
    quick : bool
        ``QUICK`` timing instead of ``FULL``.
    load_kind, load_procs : str or None, int or None
        Also time the rows beside ``load.background_load(load_kind, load_procs)``.
    pin : bool
        Also time the rows ``pinned`` to one CPU with ``PIN_THREADS`` threads.
    say, note : callables
        Print one line; record a note for the table's footer.
    """

    def __init__(self, ops, backends, torch, quick, load_kind, load_procs, pin, say, note):
        self.ops = ops
        self.torch = torch
        self.timing = QUICK if quick else FULL
        self.load_kind, self.load_procs = load_kind, load_procs
        self.pin = pin
        self.say, self.note = say, note
        auto = _registry.resolve("auto")
        self.labels = {"auto": f"auto ({auto})"}
        self.labels.update((b, b) for b in backends)
        self.conditions = []   # (where, one line saying what it was)
        self.results = {}      # (op, where) -> {backend or "torch": per-call seconds}

    def contenders(self, op):
        """name -> callable for op: the fastreg backends, then torch."""
        calls = {}
        for backend in self.labels:
            try:
                calls[backend] = cases.small_call(op, backend)
            except fastreg.BackendUnavailableError as exc:
                self.note(f"{op} on {backend}: {exc}")
        if self.torch is not None:
            calls["torch"] = self.torch.call(op)
        return calls

    def measure(self, where):
        for op in self.ops:
            calls = self.contenders(op)
            try:
                self.results[op, where] = time_calls(
                    calls, **self.timing, seed=zlib.crc32(f"{op} {where}".encode()))
            except fastreg.BackendUnavailableError as exc:   # a kernel refusing when called
                self.note(f"{op}: {exc}")

    def run(self):
        """Measure under every condition, then print the section."""
        self.measure("idle")
        self.conditions.append(("idle", "no load started by the benchmark (load average "
                                        f"{os.getloadavg()[0]:.2f} after these rows)"))
        if self.load_kind is not None:
            with load.background_load(self.load_kind, self.load_procs):
                self.measure("load")
                average = os.getloadavg()[0]
            self.conditions.append(("load", f"beside the background load "
                                            f"{load.describe(self.load_kind, self.load_procs)}, "
                                            "started for these rows and ended after them "
                                            f"(load average {average:.2f} at their end)"))
        if self.pin:
            if can_pin():
                cpu = min(os.sched_getaffinity(0))
                with pinned(cpu, PIN_THREADS, self.torch):
                    self.measure("pinned")
                self.conditions.append(("pinned", f"every thread of this process on CPU {cpu}, "
                                                  f"{PIN_THREADS} threads (fastreg, Numba, "
                                                  "torch), as under taskset -c " f"{cpu}"))
            else:
                self.note("--pin: this platform has no sched_setaffinity; not pinned")
        self.print()

    def print(self):
        t = self.timing
        self.say("small ops: float32, microseconds per call (each call timed alone; the "
                 f"backends and torch take turns, {t['per_round']} calls each per round, up to "
                 f"{t['rounds']} rounds or {t['budget']:g} s per op and condition)")
        for where, what in self.conditions:
            self.say(f"  {where}: {what}")
        line = row([name for name, _, _ in COLUMNS])
        self.say(line)
        self.say("-" * len(line))
        for op in self.ops:
            label = cases.SMALL_OPS[op][0]
            for where, _ in self.conditions:
                result = self.results.get((op, where))
                if result is None:
                    continue
                peer = result.get("torch")
                peer_median = None if peer is None else float(np.median(peer))
                for name, samples in result.items():
                    median = float(np.median(samples))
                    ratio = ("-" if peer_median is None or name == "torch"
                             else f"{peer_median / median:.1f}x")
                    self.say(row([label, self.labels.get(name, name), where, len(samples),
                                  f"{samples.min() * 1e6:.1f}", f"{median * 1e6:.1f}",
                                  f"{samples.max() * 1e6:.1f}", ratio]))
        if self.torch is not None:
            self.say(f"torch: {self.torch.version}, {self.torch.info['threads']} threads, in a "
                     f"process of its own (pid {self.torch.pid}; it loaded OpenMP first, with "
                     "the environment's wait policy)")
            if self.torch.unstopped:
                self.say(f"  its threads were not seen stopped after {self.torch.unstopped} of "
                         f"its {self.torch.pauses} turns (no /proc, or not within "
                         f"{torch_peer.STOP_TIMEOUT:g} s): those turns may have overlapped "
                         "fastreg's next one")
        self.say("x torch: torch's median / this row's median, same condition (> 1: fastreg is "
                 "faster). The calls:")
        for op in self.ops:
            peer = f"; torch: {cases.SMALL_TORCH_PEERS[op]}" if self.torch is not None else ""
            self.say(f"  {op}: {cases.SMALL_OPS[op][1]}{peer}")
        self.say("")
