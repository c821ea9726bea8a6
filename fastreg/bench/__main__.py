"""``python -m fastreg.bench``: print the benchmark table (see fastreg.bench.table)."""
from .table import main

if __name__ == "__main__":
    raise SystemExit(main())
