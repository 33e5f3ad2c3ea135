"""Command-line flag parsing shared by ``dissectjax`` (:mod:`dissectjax.cli`) and ``dissectjax bench``
(:mod:`dissectjax.bench`): a parser whose errors are one line, and validated number types.

>>> positive_int("3"), finite_float("0.5")
(3, 0.5)
>>> positive_int("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected a positive integer, got '0'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """Bad flags end in one line on stderr (``dissectjax CMD: error: ...``) and status 2, like
    every other bad input; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(parse: Callable[[str], T], check: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse ``type``: ``parse(text)`` if ``check`` holds, else an error naming what is expected."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = expected  # argparse names the type in its messages
    return convert


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
seed = number(int, lambda v: 0 <= v < 2**32, "a seed in 0 .. 2**32 - 1")
finite_float = number(float, math.isfinite, "a finite number")
positive_float = number(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
fraction = number(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
