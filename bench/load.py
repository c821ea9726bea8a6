"""The benchmark background load, for scripts in bench/ (``import load``).

The implementation lives in ``fastreg.bench.load`` (so the installed ``fastreg bench --load``
has it too): a reproducible mixed Numba/NumPy load that makes small parallel regions of another
process wait for cores, always ended on exit, exception, Ctrl-C or the parent's death.

    python bench/load.py mixed --seconds 60        # the load alone, beside another shell
"""
from fastreg.bench.load import KINDS, background_load, main, start, stop  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
