"""argparse types shared by `moa-stream eval` and `moa-stream bench`."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (bad values are usage errors, exit code 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"wants a positive integer, got {text!r}")
    return n
