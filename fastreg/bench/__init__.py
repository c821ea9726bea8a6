"""Benchmark machinery: this machine's memory bandwidth, the benchmark table, the pytest plugin.

- ``python -m fastreg.bench`` (or ``fastreg bench``) prints the small-ops section (per-call
  microseconds, min/median/max, beside PyTorch; with ``--load`` also under a background load,
  with ``--pin`` pinned to one CPU) and every op on every available backend with effective GB/s,
  the fraction of the bandwidth measured in the same run, and the ratio to PyTorch on the same
  data (``--help`` for the options).
- The pytest plugin (``fastreg.bench.plugin``, registered through the ``pytest11`` entry point)
  gives any suite a ``bandwidth_benchmark`` fixture: pytest-benchmark's ``benchmark`` plus the
  bytes the kernel must move, reported as GB/s and as a fraction of the machine's bandwidth.
- ``machine_bandwidth()``: the bandwidth probe itself (the best of a few STREAM-like kernels
  over 2**26 float32, ``bandwidth.probe`` for every kernel's figure); ``device_bandwidth()``: the
  in-place update ``a += s*b`` on a GPU.
- ``load.background_load()``: the reproducible background load of ``--load``, always ended.

Importing this package loads neither Numba nor torch and compiles nothing.
"""
from .bandwidth import device_bandwidth, machine_bandwidth

__all__ = ["machine_bandwidth", "device_bandwidth"]
