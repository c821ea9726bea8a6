"""How many threads an op may use: decided here, in Python, once per call, for every backend.

Policy (PyTorch's ``at::parallel_for`` is the model):

* Work below two grains of its family (``GRAIN``) runs on the calling thread: the Numba backend
  runs its kernel as one share (no other thread woken), the C backend its plain loop (no OpenMP
  call at all). No thread pool is touched, so a small op never waits for a core another process
  holds.
* Above it, ``min(get_num_threads(), work // grain)`` threads: no more than the work pays for.
* The grains are the break-even sizes with sleeping worker threads (fastreg starts OpenMP with
  a short spin, ``bounded_openmp_spin``, which a call after a pause does not reach). When the
  user asks OpenMP to spin (``openmp_spins()``: ``OMP_WAIT_POLICY=active``), a region costs no
  wake and the C backend takes the smaller ``SPIN_GRAIN``.
  Each backend also stays within its runtime's own ceiling: NUMBA_NUM_THREADS for the Numba
  backend (whose kernels run in shares on fastreg's own threads, fastreg/cpu/_jit.py) and,
  for the C backend, the OpenMP limit of the calling thread (OMP_NUM_THREADS,
  ``omp_set_num_threads``, threadpoolctl's "openmp" limit).
* In a child forked after this process ran a parallel region, or while it had other threads (an
  OpenMP or Numba pool started by anyone), everything runs serially: GNU OpenMP's pool does not
  survive ``fork`` (torch's DataLoader workers run single-threaded too).
* ``get_num_threads()`` defaults to the CPUs this process may run on (``os.sched_getaffinity``,
  so ``taskset`` and container CPU sets count, and a cgroup CPU quota, ``docker --cpus``),
  capped by ``OMP_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` when they are set;
  ``FASTREG_NUM_THREADS`` overrides all of them.

``set_num_threads(n)`` changes the process-wide default; ``with threads(n):`` overrides it for the
calling Python thread only and restores it on exit (so a worker thread can run single-threaded
without touching the main thread's setting).
"""
import contextlib
import math
import os
import threading
from time import monotonic as _monotonic

# Units of work per thread below which a second thread does not pay for waking it: plan() gives
# 2 threads from 2 * GRAIN. Units: elements (elementwise; optimizer steps count 2 per element,
# fastreg/c/optim.py OPTIM_WEIGHT), stream words (random), bytes of image (augment; bilinear
# resampling counts 16 per output byte, Gaussian noise 16 per value).
#
# Measured with bench/grain.py (1 against 2 threads, medians) on the 2-vCPU Xeon VM this project
# runs on, idle (load average 0.3-1.3), for issue 12 after the cpu backend moved to fastreg's
# own Python threads. Waking a sleeping thread is what a second thread costs there: GNU OpenMP
# with the passive wait policy (the C backend) took 60-100 us more than a serial call at any
# size up to 2^17, fastreg's pool (the cpu backend) 10-60 us. Sizes from which 2 threads won,
# C / Numba (work units as above):
#   dropout float32                  524288 / 524288 elements
#   l2_grad float32                 1048576 / 1048576
#   AdamW step float32 (weighted)   1048576 / 1048576
#   flip uint8 images             > 1047843 / > 1047843 bytes
#   bilinear rotation (weighted)    2096688 / 2096688
#   Gaussian noise (weighted)       4205568 / 2096688
#   batch-norm training forward      262144 / 262144 elements, NCHW rows of 64 (1.14x / 1.17x
#                                   there, 1.3x / 1.4x at 524288); (N, 256): 262144 / 2097152
# (batch norm timed back to back, as the others; with 0.5 ms between calls, as between layers, 2
# threads only broke even at 524288 on c and lost 16% on cpu: its grain takes the larger size)
# At the grains used before (elementwise 131072, random 32768, augment 262144, batch norm
# 32768, from the shared EPYC VM of earlier sessions, where a wake cost about 40 us) 2 threads
# lost by up to 4x here: dropout on 65536 values 29 against 91 us (C), 49 against 113 us
# (Numba); a batch-norm forward on (1024, 64) 43 against 167 us (C). A grain too high costs at
# most the second thread's half of the work at the grain; one too low costs the wake, which can
# be several times the work: the grains are the break-even sizes of this VM. Beside a busy load
# (bench/load.py) 2 threads lost at every size up to 2^20 in earlier sessions.
GRAIN = {
    "elementwise": 524288,  # penalties, prox steps, checks, optimizer steps (weighted 2)
    "random": 262144,       # Philox stream words
    "batchnorm": 262144,    # per pass over x
    "augment": 1048576,     # bytes of image (resampling and noise weighted 16)
}

# The C backend's grains when its OpenMP team spins (``openmp_spins()``: OMP_WAIT_POLICY=active,
# a machine of the user's own): a region started while the team spins costs no wake, so a second
# thread pays from much smaller work, as in torch (whose at::parallel_for grain is 32768).
# Measured with ``OMP_WAIT_POLICY=active python bench/grain.py --backends c`` on the same VM, idle
# (us with 1 / 2 threads): l2_grad 65536 7.1 / 5.4, 262144 38.3 / 14.4; AdamW step (weighted)
# 65536 25.7 / 17.9, 524288 158 / 82; dropout 32768 16.0 / 11.2, 262144 110 / 60; flip and
# bilinear rotation 2 threads from 131043 / 129792 bytes; batch-norm forward NCHW rows of 64 from
# 8192 elements (65536: 27.3 / 20.2), (N, 256) from 131072 (65536: 21.5 / 22.1).
SPIN_GRAIN = {
    "elementwise": 32768,
    "random": 16384,
    "batchnorm": 32768,
    "augment": 65536,
}

# How long the C backend's own pool threads (csrc/pool.c: they run its elementwise kernels, i.e.
# penalties, prox steps and optimizer steps, and its Philox stream ops, dropout among them) spin
# after a job before they sleep, in us (FASTREG_SPIN_US overrides; -1: forever, as when the user
# asks OpenMP to spin). While they spin a job costs no wake and the C backend takes SPIN_GRAIN
# for those kernels; asleep, GRAIN.
# Calls that follow each other (an optimizer step over a model's parameters, a loop of ops)
# find them spinning; a call after a pause of a torch forward pass finds them asleep.
POOL_SPIN_US = 50

_default = None                 # set_num_threads() value; None: the environment's default
class _Local(threading.local):
    # the innermost ``threads(n)`` of this Python thread; a class attribute, so that reading it
    # in a thread that never set it costs a lookup, not a caught AttributeError (0.35 us)
    override = None
    # this thread's last read of its affinity mask: (time.monotonic() of it, the count, the
    # _affinity_gen it was read in)
    cpus_read = (-math.inf, 1, -1)
    # this thread's last default_num_threads(): (until when it stands, the _affinity_gen it was
    # read in, the three variables' raw values it was read from, the count)
    default_read = (-math.inf, -1, None, None, None, 1)


_local = _Local()
_parallel_used = False          # a parallel region has run in this process
_forked_after_parallel = False  # this process is a fork child of one that had run one


def _env_int(value):
    """A count from a variable's text (None: unset), or None where it gives none."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        n = int(value.split(",")[0])  # OMP_NUM_THREADS may be a list per nesting level
    except ValueError:
        return None
    return n if n >= 1 else None


def _cgroup_cpu_limit():
    """CPUs' worth of time the cgroup quota grants (``docker --cpus=1.5`` -> 2), or None.

    cgroup v2 ``cpu.max`` ("quota period", or "max period"), else v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``. Read once per process: a container's quota does not change under it.
    """
    global _cgroup_cache
    if _cgroup_cache is not None:
        return _cgroup_cache[0]
    limit = None
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            limit = math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
                quota = int(f.read())
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                period = int(f.read())
            if quota > 0 and period > 0:
                limit = math.ceil(quota / period)
        except (OSError, ValueError):
            pass
    _cgroup_cache = (max(1, limit) if limit is not None else None,)
    return _cgroup_cache[0]


_cgroup_cache = None


# How long a read of the affinity mask stands (seconds): the system call costs 0.45 us, and every
# call above its grain asks (an l2_grad on 1e5 float32 takes 10 us in all).
AFFINITY_TTL = 0.1


def available_cpus():
    """CPUs this process may run on: the calling thread's affinity mask (``taskset``, container
    CPU sets; the CPU count where there is none), read at most every ``AFFINITY_TTL`` seconds,
    capped by a cgroup CPU quota (``docker --cpus``)."""
    now = _monotonic()
    t, n, gen = _local.cpus_read
    if now - t < AFFINITY_TTL and gen == _affinity_gen:
        return n
    try:
        n = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    quota = _cgroup_cache[0] if _cgroup_cache is not None else _cgroup_cpu_limit()
    n = n if quota is None or quota >= n else quota
    _local.cpus_read = (now, n, _affinity_gen)
    return n


_affinity_gen = 0   # bumped by _forget_affinity: every thread's read is stale then


def _forget_affinity():
    """Make every thread read its affinity mask again at its next ``available_cpus`` (after
    fastreg changed it, and in a fork child, which may pin itself before its first op)."""
    global _affinity_gen, _settings_gen
    _affinity_gen += 1
    _settings_gen += 1


# The variables default_num_threads reads, as keys of os.environ's own dict (CPython: bytes on
# POSIX), and the last parse of them: os.environ.get costs ~0.6 us a name here (it encodes the
# key and decodes the value), and every parallel call asks.
_ENV_NAMES = ("FASTREG_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
_ENV_KEYS = (tuple(os.environ.encodekey(k) for k in _ENV_NAMES)
             if hasattr(os.environ, "encodekey") else None)
_env_parsed = (None, None)      # (the raw values, (FASTREG_NUM_THREADS, the cap)) last parsed


def _env_counts(raw):
    """(FASTREG_NUM_THREADS or None, min of OMP_NUM_THREADS and NUMBA_NUM_THREADS or None) from
    ``raw``, the three values as os.environ's own dict holds them (read by default_num_threads;
    parsed here, not read a second time: another thread's write in between would pair the first
    read's values with the second's counts), parsed again only when one of them changed
    (os.environ's dict is kept up to date by assignment, del, putenv through os.environ and
    monkeypatch.setenv). ``raw`` None (no such dict): read through os.environ, every time."""
    global _env_parsed
    if raw is not None:
        parsed = _env_parsed
        if raw == parsed[0]:
            return parsed[1]
        decode = os.environ.decodevalue
        texts = [None if r is None else decode(r) for r in raw]
    else:
        texts = [os.environ.get(name) for name in _ENV_NAMES]
    value = (texts[0] or "").strip()
    forced = None
    if value:
        try:
            forced = int(value)
        except ValueError:
            forced = 0
        if forced < 1:
            raise ValueError(f"FASTREG_NUM_THREADS={value!r} must be a positive integer")
    caps = [c for c in map(_env_int, texts[1:]) if c is not None]
    counts = (forced, min(caps) if caps else None)
    if raw is not None:
        _env_parsed = (raw, counts)
    return counts


def default_num_threads():
    """The thread count before any set_num_threads: FASTREG_NUM_THREADS, else the available CPUs
    capped by OMP_NUM_THREADS and NUMBA_NUM_THREADS.

    Every parallel call asks, so the calling thread keeps its answer (``_Local.default_read``)
    while the three variables hold the very values it was read from (os.environ's dict is kept
    up to date by assignment, del, putenv through os.environ and monkeypatch.setenv: a new value
    is a new object) and its affinity read stands (``available_cpus``): 0.15 us, where reading
    them again takes 0.45."""
    data = getattr(os.environ, "_data", None)
    raw = None
    if _ENV_KEYS is not None and type(data) is dict:
        k0, k1, k2 = _ENV_KEYS
        m = _local.default_read
        v0, v1, v2 = data.get(k0), data.get(k1), data.get(k2)
        if v0 is m[2] and v1 is m[3] and v2 is m[4] and m[1] == _affinity_gen \
                and _monotonic() < m[0]:
            return m[5]
        raw = (v0, v1, v2)
    forced, cap = _env_counts(raw)
    if forced is not None:
        n, read_at, gen = forced, _monotonic(), _affinity_gen
    else:
        n = available_cpus()
        n = n if cap is None or cap >= n else cap
        read_at, _, gen = _local.cpus_read
    if raw is not None:
        _local.default_read = (read_at + AFFINITY_TTL, gen) + raw + (n,)
    return n


def check_count(n, name="n"):
    """``n`` as an int >= 1; TypeError (bools, floats, strings...) or ValueError naming ``name``."""
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import numpy as np
            ok = isinstance(n, np.integer) and not isinstance(n, np.bool_)
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise TypeError(f"{name} must be a positive integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {n}")
    return n


_check_count = check_count


def get_num_threads():
    """The most threads a fastreg op may use in the calling Python thread.

    Returns
    -------
    int
        The innermost ``threads(n)`` of this thread, else ``set_num_threads``'s value, else
        ``default_num_threads()``; 1 in a child forked after a parallel region.
    """
    if _forked_after_parallel:
        return 1
    n = _local.override
    if n is None:
        n = _default if _default is not None else default_num_threads()
    return n


# The generation of the process-wide sources of get_num_threads() (settings_gen): bumped by
# set_num_threads, _forget_affinity (a fork child too) and a new value of one of the three
# variables; and the variables' values (os.environ's own objects) last seen.
_settings_gen = 0
_env_seen = (None, None, None)


def settings_gen():
    """A number that changes whenever one of the process-wide sources of ``get_num_threads()``
    may have changed: ``set_num_threads``, fastreg's affinity change (``_forget_affinity``, also
    in a fork child) and a new value of FASTREG_NUM_THREADS, OMP_NUM_THREADS or
    NUMBA_NUM_THREADS in ``os.environ`` (seen here, by the identity of os.environ's value
    objects: a new value is a new object). The calling thread's ``threads(n)``, the fork-child
    flag and the affinity read's age are not in it. None where os.environ cannot be watched so
    (not CPython's POSIX os.environ): the caller then reads the count every time. For the C
    backend, which keeps the count per thread under this number (fastreg.c._plan)."""
    global _settings_gen, _env_seen
    data = getattr(os.environ, "_data", None)
    if _ENV_KEYS is None or type(data) is not dict:
        return None
    k0, k1, k2 = _ENV_KEYS
    v0, v1, v2 = data.get(k0), data.get(k1), data.get(k2)
    seen = _env_seen
    if v0 is not seen[0] or v1 is not seen[1] or v2 is not seen[2]:
        _env_seen = (v0, v1, v2)
        _settings_gen += 1
    return _settings_gen


def get_num_threads_until():
    """``(get_num_threads(), t, raw)``: the count; the ``time.monotonic()`` until which it stands
    as long as the settings it was read from do (the affinity read's age limit,
    ``AFFINITY_TTL``, when it comes from ``default_num_threads``; inf when it does not depend
    on the clock; -inf where the environment's read is not kept); and os.environ's own values
    of the three variables it was read from (None: it does not come from them). For the C
    backend, which keeps the count per thread (fastreg.c._plan)."""
    if _forked_after_parallel:
        return 1, math.inf, None
    n = _local.override
    if n is not None:
        return n, math.inf, None
    if _default is not None:
        return _default, math.inf, None
    n = default_num_threads()
    m = _local.default_read
    if m[1] == _affinity_gen and m[5] == n:
        return n, m[0], m[2:5]
    return n, -math.inf, None


def set_num_threads(n):
    """Set the process-wide number of threads fastreg's ops may use (Numba and C backends).

    Parameters
    ----------
    n : int
        At least 1. More than the CPUs available is allowed but rarely pays.

    Returns
    -------
    int or None
        The previous process-wide value; None where that was a bad ``FASTREG_NUM_THREADS``
        (which this call overrides: it takes effect whatever the environment says).
    """
    global _default, _settings_gen
    n = _check_count(n)
    previous, _default = _default, n
    _settings_gen += 1
    if previous is None:
        try:
            previous = default_num_threads()
        except ValueError:   # a bad FASTREG_NUM_THREADS, replaced now
            previous = None
    return previous


class threads:
    """Run the block with at most ``n`` threads per fastreg op, in this Python thread only.

    Parameters
    ----------
    n : int
        At least 1.

    Returns
    -------
    context manager
        Restores the previous setting on exit, also on an exception; nests. (A class: a
        generator's ``finally``, skipped by a KeyboardInterrupt between two nested ``with``
        lines, ran later, at garbage collection, over the outer restore. As with any Python
        context manager, an interrupt delivered just as ``__exit__`` starts can still skip it.)
    """

    __slots__ = ("n", "_saved")

    def __init__(self, n):
        self.n = _check_count(n)
        # the settings to restore, per Python thread, innermost last: one object may be
        # entered again inside its own block, or by several threads
        self._saved = {}

    def __enter__(self):
        self._saved.setdefault(threading.get_ident(), []).append(_local.override)
        _local.override = self.n
        return self.n

    def __exit__(self, *exc):
        me = threading.get_ident()
        stack = self._saved.get(me)
        if not stack:   # entered by another thread (a generator closed elsewhere): its
            return False   # setting is that thread's, not restorable from here
        _local.override = stack.pop()
        if not stack:
            del self._saved[me]
        return False


# --- OpenMP's wait policy -------------------------------------------------------------------------

_OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")


def openmp_loaded():
    """Whether an OpenMP runtime is mapped into this process (Linux; None where unknown)."""
    try:
        with open("/proc/self/maps") as f:
            return any(name in line for line in f for name in _OPENMP_RUNTIMES)
    except OSError:
        return None


# GNU OpenMP's spin count that fastreg starts its runtime with (``bounded_openmp_spin``): about
# 0.2 ms of spinning after a parallel region on the 2-vCPU Xeon VM (worker CPU time after one
# region: 0.18 ms over the region's own; GNU's default, 300000, spins 3.6-9 ms).
OPENMP_SPINCOUNT = 10000


@contextlib.contextmanager
def bounded_openmp_spin():
    """Wrap the first load of the OpenMP runtime (the C extension) so that it starts with
    ``GOMP_SPINCOUNT=OPENMP_SPINCOUNT``: an idle team thread spins about 0.2 ms, then sleeps,
    instead of GNU's default 300000 spins (3.6-9 ms on this project's VMs).

    The runtime is shared: torch, imported after fastreg's first op, finds it loaded (the same
    soname) and keeps its policy. So the choice is measured on both, the 2-vCPU VM:

    * torch alone, an MLP training step (batch 64, 784-256-256-10, AdamW) took a median 1.51 ms
      with GNU's default; with fastreg's op first, 1.73 ms with this spin count and 3.97 ms with
      ``OMP_WAIT_POLICY=passive`` (what fastreg used before; (256, 784-1024-1024-10): 19.9,
      16.7 and 23.1 ms). A sleeping team costs torch a wake per region.
    * Beside a busy load (bench/load.py mixed), a spinning team takes the time slices that the
      thread it waits for needs: a batch-norm forward on NCHW (32, 64, 28, 28) with the C
      backend took a median 0.9-1.2 ms passive, 1.6-1.7 ms with this spin count and 11.7-21 ms
      with GNU's default. An l2_grad over 1e5 float32 forced onto 2 OpenMP threads took 78 us
      passive, 740-860 us with 10000 spins and 16 ms with the default (an earlier session).

    The penalties, prox steps, optimizer steps and Philox-stream kernels (dropout, masks) run on
    fastreg's own pool instead (csrc/pool.c), whose spinning is bounded separately
    (``FASTREG_SPIN_US``).

    Nothing is changed when the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, or when a
    runtime is already loaded (by torch, which brings its own copy of GNU OpenMP, or by any
    OpenMP code that ran first: the policy is read once, at load). The variable is restored
    right after the load, so child processes and libraries loaded later see the user's
    environment.
    """
    global openmp_start
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        openmp_start = "as the environment sets it: " + ", ".join(
            f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
            if k in os.environ)
        yield
        return
    if openmp_loaded() is not False:
        openmp_start = "loaded before fastreg's (by torch?), with its own policy"
        yield
        return
    openmp_start = (f"started by fastreg with GOMP_SPINCOUNT={OPENMP_SPINCOUNT} (a team thread "
                    f"spins about 0.2 ms after a region, then sleeps)")
    os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPINCOUNT)
    try:
        yield
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


openmp_start = None   # how the C backend's OpenMP runtime started (set by bounded_openmp_spin)


# GNU OpenMP's spin counts from which its idle team threads spin for about a millisecond or more
# after a region (10000: about 0.2 ms on the 2-vCPU VM; GNU's default, 300000: 3.6-9 ms).
LINGERING_SPINCOUNT = 100000


def openmp_team_lingers(environ=None):
    """Whether the C backend's OpenMP team keeps spinning for a millisecond or more after a
    region: the runtime was not started by fastreg's ``bounded_openmp_spin`` (torch loaded it
    first, with GNU's default spin, or the environment chose the policy), the policy is not
    passive, and the spin count (``GOMP_SPINCOUNT``, GNU's default 300000 when unset) is at
    least ``LINGERING_SPINCOUNT``. Then the pool (csrc/pool.c, ``fr_pool_set_omp_borrow``) runs
    its jobs on that team while the team's spinning threads hold the cores that the pool's
    workers need."""
    environ = os.environ if environ is None else environ
    if openmp_start is None or openmp_start.startswith("started by fastreg"):
        return False
    if environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
        return False
    count = environ.get("GOMP_SPINCOUNT", "").strip().lower()
    if not count or openmp_spins(environ):   # GNU's default, or active / infinite
        return True
    try:
        # GNU's suffixes: k, M, G, T (thousands, millions...)
        scale = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}.get(count[-1], 1)
        return int(count[:-1] if scale != 1 else count) * scale >= LINGERING_SPINCOUNT
    except ValueError:
        return True   # a value GNU OpenMP would ignore: its default


def openmp_spins(environ=None):
    """Whether GNU OpenMP started with this environment (``os.environ`` by default) keeps its idle
    threads spinning: ``OMP_WAIT_POLICY=active``, or ``GOMP_SPINCOUNT=infinite``. fastreg never
    asks for it (see ``bounded_openmp_spin``); a user who does, on a machine of their own, gets
    the C backend's ``SPIN_GRAIN``."""
    environ = os.environ if environ is None else environ
    policy = environ.get("OMP_WAIT_POLICY", "").strip().lower()
    spins = environ.get("GOMP_SPINCOUNT", "").strip().lower()
    return policy == "active" or spins in ("infinite", "infinity")


def grain(family, spinning=False):
    """The grain of op family ``family``: ``GRAIN``'s (read at each call: tests shrink it), at
    most ``SPIN_GRAIN``'s when the caller's thread team spins (``spinning``: the C backend under
    ``openmp_spins()``)."""
    g = GRAIN[family]
    return min(g, SPIN_GRAIN[family]) if spinning else g


def plan(work, family, spinning=False):
    """Threads to run ``work`` units of the op family ``family`` with: 1 means serially, on the
    calling thread, without entering a parallel region. Work below two grains (``grain``) is
    decided without reading any setting (the common small call costs one comparison)."""
    grain_ = grain(family, spinning)
    if work < 2 * grain_:
        return 1
    return max(1, min(get_num_threads(), work // grain_))


def plan_pair(work, family, spinning, hot_spinning):
    """``(plan(work, family, spinning), plan(work, family, hot_spinning))`` with at most one read
    of ``get_num_threads()`` (the affinity mask, a system call, is kept 0.1 s), for the C backend's
    pool families (a count for sleeping workers, one for spinning workers). The C backend plans
    them in C (fastreg.c._plan, csrc/dropout.c fr_plan_pool: tested against this and against
    two plans) on a count it keeps, and calls this only for settings beyond int64 or where the
    environment's read is not kept."""
    g = GRAIN[family]
    sg = SPIN_GRAIN[family]
    if sg > g:
        sg = g
    g_cold = sg if spinning else g
    g_hot = sg if hot_spinning else g
    if work < 2 * g_cold and work < 2 * g_hot:
        return 1, 1
    limit = get_num_threads()
    cold = 1 if work < 2 * g_cold else work // g_cold
    hot = 1 if work < 2 * g_hot else work // g_hot
    return (cold if cold < limit else limit), (hot if hot < limit else limit)


def mark_parallel():
    """Record that a parallel region ran (a later fork child then runs serially)."""
    global _parallel_used
    _parallel_used = True


def in_forked_child():
    """Whether this process was forked after its parent had run a parallel region."""
    return _forked_after_parallel


def _os_threads():
    """Threads of this process now (Linux: /proc/self/task; elsewhere the Python threads)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


_threads_at_fork = 1


def _before_fork():
    # A thread pool started by anyone (fastreg, a user's own Numba parallel code, torch, any
    # library using GNU OpenMP) lives on as threads: the child cannot use it either.
    global _threads_at_fork
    _threads_at_fork = _os_threads()


def _after_fork_in_child():
    global _forked_after_parallel
    _forget_affinity()
    _forked_after_parallel = _forked_after_parallel or _parallel_used or _threads_at_fork > 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
