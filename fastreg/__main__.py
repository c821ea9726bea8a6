"""The ``fastreg`` command (also ``python -m fastreg``): one subcommand per tool.

    fastreg bench [--quick] [--sizes 2^24,2^26] [--threads T] ...   the benchmark table
    fastreg demo [--quick] [--out DIR] [--epochs N] [--seed S] [--backend B] [--quiet]
                                                                  regularizers on the digits
    mpiexec -n N python -m mpi4py -m fastreg demo --distributed [--quick] ...
                                                                  data-parallel training: samples/s
    fastreg info                                                  backends, versions, threads
    fastreg warmup [--backend cpu] [--ops dropout,adam,...]       compile the Numba kernels into
                                                                  Numba's cache (warm images)
"""
import argparse
import os
import sys


def info(args=None):
    """Print the backends, versions and thread counts (``fastreg info``); returns 0.

    Parameters
    ----------
    args : argparse.Namespace, optional
        Unused.

    Returns
    -------
    int
        0.
    """
    import platform
    from importlib import metadata

    import fastreg

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    # the distribution is "fastreg-kernels" (the name "fastreg" on PyPI is another project)
    pip_name = "fastreg-kernels" if version("fastreg-kernels") else None
    print(f"fastreg {fastreg.__version__}" + (f" (pip: {pip_name})" if pip_name else ""))
    print(f"python  {platform.python_version()} ({platform.python_implementation()}, "
          f"{platform.machine()})")
    # versions from the installed metadata: torch is reported without being imported
    for dist in ("numpy", "numba", "cffi", "numba-cuda", "torch", "tqdm", "matplotlib",
                 "threadpoolctl"):
        v = version(dist)
        print(f"{dist:<13} {v if v else 'not installed'}")
    print("backends:")
    avail = fastreg.available_backends()
    for name, reason in avail.items():
        print(f"  {name:<6} {'available' if reason is None else 'unavailable: ' + reason}")
    from fastreg import _registry, _threads
    print(f"auto    {_registry.resolve('auto')} (host arrays; FASTREG_BACKEND overrides)")
    print("threads:")
    print(f"  fastreg              {fastreg.get_num_threads()} per op above its grain "
          f"(set_num_threads, threads(), FASTREG_NUM_THREADS; {_threads.available_cpus()} "
          f"CPUs available)")
    if avail.get("cpu") is None:
        import numba
        print(f"  numba cap (cpu)      {numba.config.NUMBA_NUM_THREADS} "
              f"(NUMBA_NUM_THREADS; the kernels run on fastreg's threads)")
    if avail.get("c") is None:
        import fastreg.c
        print(f"  OpenMP limit (c)     {fastreg.c.omp_max_threads()} "
              f"(OMP_NUM_THREADS, threadpoolctl)")
        spins = fastreg.c.SPINNING
        grains = ", ".join(f"{k} {_threads.grain(k, spins)}" for k in _threads.GRAIN)
        print(f"  OpenMP team (c)      {_threads.openmp_start or 'runtime not loaded'}"
              f"{'; set to spin' if spins else ''}; grains {grains}")
        us = fastreg.c.pool_spin_us()
        spin = "forever" if us < 0 else ("never" if us == 0 else f"{us:g} us after a job")
        hot = ", ".join(f"{k} {_threads.grain(k, fastreg.c._pool_spins)}"
                        for k in fastreg.c._POOL_FAMILIES)
        borrow = ("; borrows the OpenMP team while that team's spinning threads hold the "
                  "cores" if fastreg.c._omp_borrow else "")
        print(f"  fastreg pool (c)     elementwise and random-stream kernels; its threads spin "
              f"{spin} (FASTREG_SPIN_US); grains while they spin {hot}{borrow}")
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"  {pool.get('internal_api', '?'):<20} {pool.get('num_threads')} "
                  f"({pool.get('user_api')})")
    except ImportError:
        pass
    return 0


def build_parser():
    """The ``fastreg`` argument parser, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="fastreg", description="fastreg: fast regularization kernels for deep learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from .bench import table
    bench = sub.add_parser(
        "bench", help="time every op on every available backend (GB/s, fraction of the "
                      "machine's bandwidth, ratio to torch)",
        description="Time fastreg's kernels on every available backend against this machine's "
                    "memory bandwidth and PyTorch.")
    table.add_arguments(bench)
    bench.set_defaults(handler=table.run)

    demo = sub.add_parser(
        "demo", help="train one MLP on the embedded digits under every regularizer and compare",
        description="Train a 64-256-256-10 MLP on a small subset of the embedded digits under "
                    "no regularization, L2 (coupled, decoupled), L1-prox, dropout (inverted, "
                    "classic), batch norm, batch norm + dropout, early stopping, augmentation, "
                    "label smoothing, mixup, CutMix and all together; print "
                    "a table, answer three questions with measurements, and write results.json "
                    "and one figure per question. With --distributed (under mpiexec -n N): "
                    "train two of the configurations data-parallel over MPI and print samples/s "
                    "and the accuracy on rank 0.")
    from .train import demo as demo_module   # fastreg.train imports numpy and fastreg only
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=lambda args: demo_module.run(args=args))

    info_parser = sub.add_parser("info", help="backends, versions and thread counts",
                                 description="Print the available backends, the versions of "
                                             "fastreg and its dependencies, and thread counts.")
    info_parser.set_defaults(handler=info)

    from . import warmup   # imports numpy and fastreg._registry only
    warm = sub.add_parser(
        "warmup", help="compile every Numba kernel into Numba's on-disk cache",
        description="Run every op of the cpu backend once on tiny inputs (each dtype and "
                    "variant, serial and parallel kernels) so that the compiled code lands in "
                    "Numba's cache: later processes, or a container image built after this, "
                    "start without compiling. The c backend has nothing to compile.")
    warmup.add_arguments(warm)
    warm.set_defaults(handler=warmup.run)
    return parser


def _environment_error():
    """The message of a bad FASTREG_BACKEND / FASTREG_NUM_THREADS (or OMP_ / NUMBA_NUM_THREADS)
    value, which every command reads, or None: checked before the command runs, so that a typo
    in the environment, or a backend it names that cannot run here (FASTREG_BACKEND=cuda
    without a GPU), is one line, not a traceback from inside the command."""
    import fastreg
    from fastreg import _registry
    try:
        _registry.resolve("auto")
        fastreg.get_num_threads()
    except ValueError as exc:
        return str(exc)
    except _registry.BackendUnavailableError as exc:
        return f"FASTREG_BACKEND={os.environ.get('FASTREG_BACKEND')!r}: {exc}"
    return None


def main(argv=None):
    """Entry point of the ``fastreg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    problem = _environment_error()
    if problem is not None:
        print(f"fastreg {args.command}: error: {problem}", file=sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
