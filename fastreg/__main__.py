"""The ``fastreg`` command (also ``python -m fastreg``): one subcommand per tool.

    fastreg bench [--quick] [--sizes 2^24,2^26] [--threads T] ...   the benchmark table
"""
import argparse


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
    return parser


def main(argv=None):
    """Entry point of the ``fastreg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
