"""Parsing of comma-separated command-line values, with errors that name the flag."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dissectjax.errors import DissectError

T = TypeVar("T")


def comma_list(text: str | None, flag: str, parse: Callable[[str], T] = str, kind: str = "names") -> list[T]:
    """``"a, b,,c"`` -> ``[parse("a"), parse("b"), parse("c")]`` (empty items and None are skipped)."""
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    try:
        return [parse(x) for x in items]
    except ValueError:
        raise DissectError(f"{flag} must be comma-separated {kind}, got {text!r}") from None


def comma_ints(text: str | None, flag: str) -> list[int]:
    return comma_list(text, flag, int, "integers")


def comma_floats(text: str | None, flag: str) -> list[float]:
    return comma_list(text, flag, float, "numbers")
