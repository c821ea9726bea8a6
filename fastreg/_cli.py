"""Command-line argument types shared by ``fastreg demo`` and ``fastreg bench`` (light: both
import it before their work starts)."""
import argparse


def positive_int(text):
    """argparse type: an int >= 1, else an error naming what was given (a 0 must not stand for
    "the default", a negative count must not reach a worker)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


SEED_LIMIT = 2**32


def seed_int(text):
    """argparse type: a seed, an int in [0, 2**32) (the demo's data split and every stream take
    it; a negative or huge one must not fail later, inside a worker)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (seconds of a budget or a limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value
