"""Backend "c": the kernels of fastreg.reference in C (csrc/), called through cffi; parallel on
fastreg's own thread pool (csrc/pool.c: the elementwise and Philox stream kernels) or OpenMP.

The compiled module ``fastreg.c._fastreg_c`` is built at install time (csrc/ffi_build.py) or, for
development, by ``python csrc/ffi_build.py``. Importing this package never fails: without the
module, ``unavailable_reason()`` says why and the other backends still work.

The Philox stream kernels use AVX-512 (the generator) or AVX2 where the CPU has it and portable
C otherwise; all give the same bits. ``FASTREG_C_NO_AVX2=1`` (read at import) or ``set_isa("portable")`` forces the portable
path.
"""
import math

from .. import _config, _threads

# GNU OpenMP reads its wait policy once, when it is loaded (by the import below, or before it by
# torch, whose copy the module then shares): with a spinning team (the user's
# OMP_WAIT_POLICY=active) a parallel region costs no wake, and _plan takes the smaller grains
# that pay then.
SPINNING = _threads.openmp_spins()

try:
    with _threads.bounded_openmp_spin():  # the module links the OpenMP runtime: loaded here
        from ._fastreg_c import ffi, lib
    _reason = None
except ImportError as exc:  # not built, or built for another Python / with a sanitizer
    ffi = lib = None
    _reason = (f"C extension not built (installed with FASTREG_NO_C=1?): "
               f"{type(exc).__name__}: {exc}")

_plan_pool = lib.fr_plan_pool if lib is not None else None
_set_pool_threads = lib.fr_set_pool_threads if lib is not None else None
_ISAS = ("portable", "avx2", "avx512")
_STREAM_MODES = ("never", "auto", "always")


def unavailable_reason():
    """None if the compiled module imports, else a string saying why it does not."""
    return _reason


def _check(status, fn):
    if status != 0:
        raise RuntimeError(f"fastreg C kernel {fn} failed with status {status}")


def omp_max_threads():
    """The OpenMP limit of the calling thread (``omp_get_max_threads()``): a parallel region of
    this module never uses more threads (OMP_NUM_THREADS, or threadpoolctl's "openmp" limit)."""
    return int(lib.fr_omp_max_threads())


def _plan(work, family):
    """Set the calling thread's thread count for the next kernel from ``fastreg._threads.plan``
    (1: the kernel runs on this thread and makes no OpenMP call); returns it. Set at every
    call: the count is per OS thread in C (csrc/dropout.c) and batch norm sets it directly, so
    a value remembered here could be stale. The families of ``_POOL_FAMILIES`` also get the
    count for fastreg's pool while its threads spin (``SPIN_GRAIN``; csrc/pool.c), which the
    kernels that run on the pool use (the elementwise driver, fr_ew_run, and the Philox
    stream's tiles, fr_run_tiles).

    Those two counts are planned in C (csrc/dropout.c fr_plan_pool: ``_threads.plan``'s rule,
    ``_threads.plan_pair`` in Python), on the thread count (``get_num_threads``) it keeps per
    thread under the settings it was read with, passed at each call: their generation
    (``_threads.settings_gen``: set_num_threads, the environment's three variables, fastreg's
    affinity change), the thread's ``threads(n)``, ``set_num_threads``' value and the fork-child
    flag; C also lets it expire with the affinity read (``AFFINITY_TTL``). 0.7 us a call above
    the grain, where ``plan_pair`` and ``fr_set_pool_threads`` took 0.95 (an l2_grad on 1e5
    float32 costs 8-9 us in all); 0.24 below it (0.36)."""
    if family in _POOL_FAMILIES:
        t = _threads
        g, sg = t.GRAIN[family], t.SPIN_GRAIN[family]
        if work < 2 * g and work < 2 * sg:   # below two of the smaller grain: both counts 1
            _set_pool_threads(1, 1)
            return 1
        gen = t.settings_gen()
        try:
            n = _plan_pool(work, g, sg, SPINNING, _pool_spins, gen, t._local.override or 0,
                           t._default or 0, t._forked_after_parallel) if gen is not None else -2
        except OverflowError:   # a count or grain beyond int64 (threads(2**70))
            n = -2
        if n < 0:
            n = _plan_pool_reading(work, family, gen, n == -2)
    else:
        n = _threads.plan(work, family, SPINNING)
        lib.fr_set_threads(n)
    if n > 1:
        _threads.mark_parallel()
    return n


def _plan_pool_reading(work, family, gen, no_keep):
    """_plan for a pool family when the count kept in C does not stand (-1) or cannot be kept
    (``no_keep``: settings beyond int64, a grain below 1, no generation): read it
    (``get_num_threads``), keep it in C under the settings it was read with
    (``fr_plan_limit``: ``gen`` was taken before the read, so a change during it makes the
    next call read again) and plan there, or plan in Python (``plan_pair``)."""
    t = _threads
    key = (gen, t._local.override or 0, t._default or 0, t._forked_after_parallel)
    seen = t._env_seen   # the variables' values under gen (or a later generation)
    limit, until, raw = t.get_num_threads_until()
    # kept only when read from those very values: another thread may have set a variable and
    # put back the very object seen (a one-character value, an unset one) meanwhile
    if raw is not None and not (raw[0] is seen[0] and raw[1] is seen[1] and raw[2] is seen[2]):
        no_keep = True
    if not no_keep and until > -math.inf:
        until_ns = (_NEVER if until * 1e9 >= _NEVER else
                    -_NEVER if until * 1e9 <= -_NEVER else int(until * 1e9))
        try:
            _check(lib.fr_plan_limit(limit if limit < _NEVER else _NEVER, until_ns, *key),
                   "fr_plan_limit")
            n = _plan_pool(work, t.GRAIN[family], t.SPIN_GRAIN[family], SPINNING, _pool_spins,
                           *key)
        except OverflowError:
            n = -2
        if n > 0:
            return n
    n, hot = t.plan_pair(work, family, SPINNING, _pool_spins)
    _check(lib.fr_set_pool_threads(n, hot), "fr_set_pool_threads")
    return n if n > hot else hot


_NEVER = 2 ** 63 - 1
_pool_spins = False     # whether the pool's threads spin after a job (set_pool_spin)
_POOL_FAMILIES = ("elementwise", "random")


def set_pool_spin(us):
    """Microseconds fastreg's pool threads (csrc/pool.c) spin after a job before they sleep:
    a number >= 0 (0: they sleep at once, and every kernel keeps ``GRAIN``), or -1 to never
    sleep (and never back off: see csrc/pool.c). Returns the previous value. The default is
    ``FASTREG_SPIN_US``, else forever when OpenMP was asked to spin (``OMP_WAIT_POLICY=active``),
    else ``fastreg._threads.POOL_SPIN_US``."""
    global _pool_spins, _pool_spin_us
    us = float(us)
    if not ((0 <= us < 1e12) or us == -1):
        raise ValueError(f"us must be a finite number >= 0 (below 1e12) or -1 (forever), "
                         f"got {us}")
    _check(lib.fr_pool_set_spin_ns(-1 if us < 0 else int(us * 1000)), "fr_pool_set_spin_ns")
    previous, _pool_spin_us = _pool_spin_us, us
    _pool_spins = us != 0
    return previous


def pool_spin_us():
    """The microseconds fastreg's pool threads spin after a job (-1: forever); see
    ``set_pool_spin``."""
    return _pool_spin_us


def pool_stats():
    """Counts since the start, for tests and measurements: "cold", "hot": jobs run on fastreg's
    pool that found its threads asleep / spinning; "preempted", "missed", "stalled": times it
    backed off (csrc/pool.c) after a spinning thread lost its CPU, after jobs in which the
    other threads never got to a task, and after a call waited for a task of a thread that lost
    its CPU; "omp": jobs run on the calling thread's OpenMP team instead, while the pool backed
    off from missed jobs and that team kept spinning (``fastreg._threads.openmp_team_lingers``:
    torch's team, when torch loaded the OpenMP runtime first); "omp_late": those of them whose
    team started or ended late (a thread without a CPU: borrowing then pauses, unless one such
    region comes after a long run of good ones: csrc/pool.c FR_POOL_OMP_FORGIVE)."""
    out = ffi.new("int64_t[7]")
    lib.fr_pool_stats(out)
    return dict(zip(("cold", "hot", "preempted", "missed", "stalled", "omp", "omp_late"),
                    map(int, out)))


def set_omp_borrow(on):
    """Whether fastreg's pool may run its jobs on the calling thread's OpenMP team after missed
    jobs (csrc/pool.c ``fr_pool_omp``); returns the previous setting. On by default where that
    team lingers after its regions (``fastreg._threads.openmp_team_lingers``: torch loaded the
    OpenMP runtime first)."""
    global _omp_borrow
    _check(lib.fr_pool_set_omp_borrow(1 if on else 0), "fr_pool_set_omp_borrow")
    previous, _omp_borrow = _omp_borrow, bool(on)
    return previous


def borrow_team(us):
    """For tests: the calling thread's jobs on fastreg's pool run on its OpenMP team for the
    next ``us`` microseconds (0: stop), as after missed jobs when that team lingers (csrc/pool.c
    ``fr_pool_omp``); ``pool_stats()["omp"]`` counts them."""
    _check(lib.fr_pool_borrow_ns(int(us * 1000), 1), "fr_pool_borrow_ns")


def parallel_regions():
    """How many parallel regions this module's kernels have entered (batch norm included): tests
    use it to see which path ran."""
    return int(lib.fr_parallel_regions())


def has_avx2():
    """Whether this CPU can run the AVX2 kernels."""
    return bool(lib.fr_cpu_has_avx2())


def has_avx512():
    """Whether this CPU can run the AVX-512 kernels (AVX-512F, DQ, BW and VL)."""
    return bool(lib.fr_cpu_has_avx512())


def isa():
    """The instruction set the stream kernels use now: "avx512", "avx2" or "portable"."""
    return _ISAS[lib.fr_get_isa()]


def set_isa(name):
    """Use the "avx512", "avx2" or "portable" stream kernels (process-wide); returns the previous
    one. "avx512" runs the AVX-512 Philox generator and the Adam step's AVX-512 loop, with the
    AVX2 loops of every other op.

    ValueError for an unknown name, RuntimeError for "avx2" or "avx512" on a CPU without it.
    """
    if name not in _ISAS:
        raise ValueError(f"isa must be one of {_ISAS}, got {name!r}")
    previous = isa()
    _check(lib.fr_set_isa(_ISAS.index(name)), "fr_set_isa")
    return previous


def set_stream_stores(mode):
    """Streaming (cache-bypassing) stores: "auto" (large outputs, not in place), "never", or
    "always" (where alignment allows, in place too; for measurements). Returns the previous."""
    if mode not in _STREAM_MODES:
        raise ValueError(f"mode must be one of {_STREAM_MODES}, got {mode!r}")
    previous = _STREAM_MODES[lib.fr_get_stream_stores()]
    _check(lib.fr_set_stream_stores(_STREAM_MODES.index(mode)), "fr_set_stream_stores")
    return previous


if lib is not None and _config.c_force_portable():
    set_isa("portable")
_pool_spin_us = None
_omp_borrow = False     # see set_omp_borrow
if lib is not None:
    _default_spin = -1 if SPINNING else _threads.POOL_SPIN_US
    try:
        _spin = _config.spin_us(_default_spin)
    except ValueError as exc:   # the backend stays usable (and "auto" keeps it): say so, loudly
        import warnings
        warnings.warn(f"{exc}; using {_default_spin}", RuntimeWarning, stacklevel=2)
        _spin = _default_spin
    set_pool_spin(_spin)
    set_omp_borrow(_threads.openmp_team_lingers())

from .philox import philox4x32, random_bits, uniform  # noqa: E402
from .dropout import dropout, dropout_mask, dropout_mask_packed, group_dropout  # noqa: E402

__all__ = ["philox4x32", "random_bits", "uniform", "dropout", "dropout_mask",
           "dropout_mask_packed", "group_dropout", "unavailable_reason", "omp_max_threads",
           "has_avx2", "has_avx512", "isa", "set_isa", "set_stream_stores"]

from .penalty import (all_finite, group_lasso, penalty_grad, penalty_sums,  # noqa: E402
                      soft_threshold)
from .optim import adam_step, sgd_step  # noqa: E402

__all__ += ["penalty_sums", "penalty_grad", "soft_threshold", "group_lasso", "all_finite",
            "sgd_step", "adam_step"]
from .batchnorm import *  # noqa: E402,F401,F403  the bn_* ops (fastreg/c/batchnorm.py __all__)
from .augment import *  # noqa: E402,F401,F403  the aug_* ops (fastreg/c/augment.py __all__)
from .augment_color import aug_blur, aug_color, aug_normalize  # noqa: E402,F401
from .dropblock import drop_block_apply, drop_block_mask  # noqa: E402

__all__ += ["drop_block_mask", "drop_block_apply"]
from .ema import address_lists, ema_update, ema_update_at  # noqa: E402
from .clip import norm_sum, norm_sum_at, row_norm_sums, scale, scale_at, scale_rows  # noqa: E402

__all__ += ["ema_update", "norm_sum", "scale", "row_norm_sums", "scale_rows"]
from .loss import ce_hard, ce_soft  # noqa: E402

__all__ += ["ce_hard", "ce_soft"]
from .half import float32_to_half, half_to_float32  # noqa: E402
# fused 16-bit kernels (fastreg._half.fused): this backend only
from .dropout import dropout_half  # noqa: E402,F401
from .optim import adam_step_half, sgd_step_half  # noqa: E402,F401
from .penalty import penalty_grad_half, soft_threshold_half  # noqa: E402,F401
