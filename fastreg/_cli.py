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
