"""Every FASTREG_* environment setting, read in one place.

FASTREG_BACKEND      default host backend for backend="auto" ("numpy", "cpu" or "c").
FASTREG_NUM_THREADS  threads per op on the host backends (read by fastreg._threads, which also
                     honours OMP_NUM_THREADS, NUMBA_NUM_THREADS and the CPU affinity).
FASTREG_CUDA_TPB     threads per block for the CUDA kernels (tests lower it under the simulator).
FASTREG_C_NO_AVX2    1: the C backend uses its portable kernels even where the CPU has AVX2.
FASTREG_SPIN_US      microseconds the C backend's own pool threads spin after a job before they
                     sleep (default 50; 0: never spin; "infinite" or -1: never sleep).
FASTREG_MPI_TIMEOUT  seconds an MPI collective may wait (fastreg.distributed; "none" = forever).
FASTREG_NO_C         (install time, read by setup.py) build without the C extension.
FASTREG_NATIVE       (install time, read by csrc/ffi_build.py) compile the C extension with -march=native.
FASTREG_SANITIZE     (build time, read by csrc/ffi_build.py) build it with ASan + UBSan instead.
"""
import math
import os

BACKENDS = ("numpy", "cpu", "c", "cuda")


def default_backend():
    """The FASTREG_BACKEND override, or "auto" when unset."""
    value = os.environ.get("FASTREG_BACKEND", "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(
            f"FASTREG_BACKEND={value!r} is not a backend; expected one of {BACKENDS} or 'auto'"
        )
    return value


def cuda_threads_per_block():
    """Threads per CUDA block (FASTREG_CUDA_TPB, default 256)."""
    return int(os.environ.get("FASTREG_CUDA_TPB", "256"))


def c_force_portable():
    """FASTREG_C_NO_AVX2=1: the C backend's portable kernels only."""
    return os.environ.get("FASTREG_C_NO_AVX2", "") not in ("", "0")


def spin_us(default):
    """FASTREG_SPIN_US as a number of microseconds >= 0 (``default`` when unset), or -1 for
    "infinite"."""
    value = os.environ.get("FASTREG_SPIN_US", "").strip().lower()
    if not value:
        return default
    if value in ("infinite", "infinity", "inf", "-1"):
        return -1
    try:
        us = float(value)
    except ValueError:
        us = math.nan
    if not (math.isfinite(us) and 0 <= us < 1e12):
        raise ValueError(f"FASTREG_SPIN_US={value!r} must be a number of microseconds >= 0 "
                         "(below 1e12), or 'infinite' or -1")
    return us


def mpi_timeout():
    """FASTREG_MPI_TIMEOUT in seconds (default 300); None for "none", "0", "inf" or empty."""
    value = os.environ.get("FASTREG_MPI_TIMEOUT", "300").strip().lower()
    if value in ("none", "0", "inf", ""):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"FASTREG_MPI_TIMEOUT={value!r} must be a number of seconds > 0")
    return seconds
