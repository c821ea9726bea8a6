"""pytest plugin: the ``bandwidth_benchmark`` fixture, pytest-benchmark's ``benchmark`` in GB/s.

Registered for every suite through the ``pytest11`` entry point of the installed package (the
fastreg suite in ``bench/`` also loads it from its conftest when fastreg is not installed)::

    def test_my_kernel(bandwidth_benchmark):
        x = np.ones(1 << 24, np.float32)
        out = np.empty_like(x)
        my_kernel(x, out)                                   # warm up (JIT) before timing
        bandwidth_benchmark(my_kernel, x, out, nbytes=x.nbytes + out.nbytes)

The fixture times the call with pytest-benchmark (so ``--benchmark-*`` options, JSON output and
comparisons all work) and stores in ``benchmark.extra_info``:

- ``nbytes``: the bytes the kernel must move (what you passed);
- ``gb_per_s``: ``nbytes / min time / 1e9``;
- ``machine_gb_per_s``: this machine's memory bandwidth, measured once per session in the same
  run (``fastreg.bench.machine_bandwidth``: the best of a few STREAM-like kernels over 2**26
  float32), or the value
  of ``--machine-gb-per-s``, or ``peak_gb_per_s=`` given to the call (a GPU's bandwidth, say);
- ``bandwidth_fraction``: ``gb_per_s / machine_gb_per_s``.

A summary table of those closes the terminal report. Under ``--benchmark-disable`` the call runs
once, untimed: nothing is measured, the GB/s entries are None and the summary says so in one
line. Without pytest-benchmark (or with ``-p no:benchmark``) the fixture skips with the reason.
Importing this module loads neither Numba nor torch.
"""
import math
import numbers

import pytest

from fastreg._cli import positive_float

_RESULTS = pytest.StashKey()   # config.stash: list of result dicts, in the order they finished
_MACHINE = pytest.StashKey()   # config.stash: the session's machine bandwidth in GB/s


def pytest_addoption(parser):
    group = parser.getgroup("fastreg", "fastreg bandwidth benchmarks")
    group.addoption(
        "--machine-gb-per-s", type=positive_float, default=None, metavar="GBPS",
        help="memory bandwidth (GB/s) that bandwidth_benchmark compares with, instead of "
             "measuring it once per session (the best of a few STREAM-like kernels over "
             "2**26 float32)")


def pytest_configure(config):
    config.stash[_RESULTS] = []
    # Which fixture to offer is known only now that every plugin is registered (as pytest's
    # legacypath plugin does for tmpdir).
    holder = _Timed if _pytest_benchmark_active(config) else _Untimed
    config.pluginmanager.register(holder, "fastreg-bandwidth-benchmark")


def _min_seconds(benchmark):
    """The benchmark's min time in seconds, or None when it was not timed (disabled, skipped)."""
    stats = getattr(benchmark, "stats", None)
    stats = getattr(stats, "stats", stats)      # pytest-benchmark's Metadata wraps a Stats
    seconds = getattr(stats, "min", None)
    return seconds if isinstance(seconds, (int, float)) and seconds > 0 else None


def _machine_gb_per_s(config):
    if _MACHINE not in config.stash:
        value = config.getoption("machine_gb_per_s")
        if value is None:
            from .bandwidth import machine_bandwidth   # imports Numba: only now, when needed
            value = machine_bandwidth()
        config.stash[_MACHINE] = float(value)
    return config.stash[_MACHINE]


class BandwidthBenchmark:
    """Callable wrapper of pytest-benchmark's fixture that also reports GB/s.

    Attributes
    ----------
    benchmark : pytest_benchmark.fixture.BenchmarkFixture
        The wrapped fixture (set ``.group``, read ``.extra_info`` and ``.stats`` on it).
    """

    def __init__(self, benchmark, config, nodeid):
        self.benchmark = benchmark
        self._config = config
        self._nodeid = nodeid

    @property
    def extra_info(self):
        return self.benchmark.extra_info

    @property
    def group(self):
        return self.benchmark.group

    @group.setter
    def group(self, value):
        self.benchmark.group = value

    def __call__(self, fn, *args, nbytes, peak_gb_per_s=None, **kwargs):
        """Benchmark ``fn(*args, **kwargs)`` as pytest-benchmark does; return its result.

        Parameters
        ----------
        fn : callable
            Warm it up (JIT compilation, first touch of outputs) before: every timed round
            counts. On a GPU, synchronize inside fn.
        nbytes : int
            Bytes fn must move (reads plus writes of memory, e.g. ``x.nbytes + out.nbytes``).
        peak_gb_per_s : float, optional
            The bandwidth to compare with, instead of the machine's (e.g. a GPU's).

        Returns
        -------
        object
            What fn returned.
        """
        nbytes, peak_gb_per_s = _checked(nbytes, peak_gb_per_s)   # before any timed round
        result = self.benchmark(fn, *args, **kwargs)
        self._record(nbytes, peak_gb_per_s)
        return result

    def pedantic(self, fn, args=(), kwargs=None, *, nbytes, peak_gb_per_s=None, **options):
        """``benchmark.pedantic`` (rounds, iterations, setup, warmup_rounds...) plus ``nbytes``."""
        nbytes, peak_gb_per_s = _checked(nbytes, peak_gb_per_s)
        result = self.benchmark.pedantic(fn, args=args, kwargs=kwargs, **options)
        self._record(nbytes, peak_gb_per_s)
        return result

    def _record(self, nbytes, peak_gb_per_s):
        nbytes = int(nbytes)
        seconds = _min_seconds(self.benchmark)
        info = {"nbytes": nbytes, "gb_per_s": None, "machine_gb_per_s": None,
                "bandwidth_fraction": None}
        if seconds is not None:   # timed: the probe runs now, outside every timed round
            peak = (float(peak_gb_per_s) if peak_gb_per_s is not None
                    else _machine_gb_per_s(self._config))
            gbps = nbytes / seconds / 1e9
            info.update(gb_per_s=gbps, machine_gb_per_s=peak, bandwidth_fraction=gbps / peak)
        self.benchmark.extra_info.update(info)
        self._config.stash[_RESULTS].append(dict(info, nodeid=self._nodeid, seconds=seconds))


def _checked(nbytes, peak_gb_per_s):
    """(nbytes as an int >= 0, peak_gb_per_s as a finite float > 0 or None); ValueError /
    TypeError naming the argument otherwise (a 0 or negative peak made a ZeroDivisionError or a
    negative percentage)."""
    if (isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real)
            or not (0 <= nbytes < math.inf)):
        raise ValueError(f"nbytes must be a finite number of bytes >= 0, got {nbytes!r}")
    if peak_gb_per_s is not None:
        if isinstance(peak_gb_per_s, bool) or not isinstance(peak_gb_per_s, numbers.Real):
            raise TypeError(f"peak_gb_per_s must be a number, got {type(peak_gb_per_s).__name__}")
        peak_gb_per_s = float(peak_gb_per_s)
        if not (0 < peak_gb_per_s and math.isfinite(peak_gb_per_s)):
            raise ValueError(f"peak_gb_per_s must be a finite number > 0, got {peak_gb_per_s}")
    return int(nbytes), peak_gb_per_s


class _Timed:
    """The fixture when pytest-benchmark is active. It names ``benchmark`` as an argument (not
    through request.getfixturevalue) so that pytest-benchmark finds it in the fixture closure and
    keeps these tests under --benchmark-only."""

    @pytest.fixture
    @staticmethod
    def bandwidth_benchmark(request, benchmark):
        """pytest-benchmark's ``benchmark`` that also takes the bytes moved and reports GB/s.

        ``bandwidth_benchmark(fn, *args, nbytes=..., **kwargs)``; see ``fastreg.bench.plugin``.
        """
        return BandwidthBenchmark(benchmark, request.config, request.node.nodeid)


class _Untimed:
    """The fixture when pytest-benchmark is not installed or disabled (``-p no:benchmark``)."""

    @pytest.fixture
    @staticmethod
    def bandwidth_benchmark():
        """Skips: pytest-benchmark is not active."""
        pytest.skip("bandwidth_benchmark needs pytest-benchmark (pip install pytest-benchmark; "
                    "not with -p no:benchmark)")


def _pytest_benchmark_active(config):
    return any(getattr(plugin, "__name__", None) == "pytest_benchmark.plugin"
               for plugin in config.pluginmanager.get_plugins())


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    tr = terminalreporter
    tr.section("fastreg bandwidth")
    if all(r["seconds"] is None for r in results):
        tr.write_line(f"{len(results)} bandwidth benchmarks ran once, untimed "
                      "(--benchmark-disable): no GB/s")
        return
    machine = config.stash.get(_MACHINE, None)
    if machine is not None:
        tr.write_line(f"machine bandwidth: {machine:.1f} GB/s (of bw: GB/s / the bandwidth each "
                      "benchmark compares with, the machine's unless it gave peak_gb_per_s)")
    width = max(len(r["nodeid"]) for r in results)
    tr.write_line(f"{'benchmark':<{width}}  {'min ms':>10}  {'GB/s':>8}  {'of bw':>6}")
    for r in results:
        ms = None if r["seconds"] is None else r["seconds"] * 1e3
        tr.write_line(f"{r['nodeid']:<{width}}  {_fmt(ms, '.3f'):>10}  "
                      f"{_fmt(r['gb_per_s'], '.2f'):>8}  {_fmt(r['bandwidth_fraction'], '.0%'):>6}")
