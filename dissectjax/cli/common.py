"""What every command shares: comma-separated values, checks that name the flag, log lines,
progress bars, result tables."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from dissectjax.errors import DissectError
from dissectjax.flags import finite_float, non_negative_int, positive_int, seed  # noqa: F401 (the commands' flag types)

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


def positive(value: int, flag: str) -> int:
    """``value`` if it is a positive integer, else a DissectError naming ``flag``."""
    if value < 1:
        raise DissectError(f"{flag} must be a positive integer, got {value}")
    return value


def progress_bars(enabled: bool) -> Callable[..., Iterable]:
    """A ``progress(iterable, **tqdm_kwargs)``: tqdm bars on stderr when ``enabled`` (and on a terminal)."""
    if not enabled:
        return lambda iterable, **_: iterable
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, so logs and pipes stay readable
    return lambda iterable, **kw: tqdm(iterable, file=sys.stderr, dynamic_ncols=True, disable=None, **kw)


def log_lines(quiet: bool) -> Callable[[str], None]:
    """A ``say(message)`` that prints one line to stderr, or nothing when ``quiet``."""
    return (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def table(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with a rule under the header; columns as wide as their widest cell.

    >>> print(table(["a", "bb"], [["1", "2"]]))
    a  bb
    -  --
    1  2
    """
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_table(path: str, rows: list[dict]) -> None:
    """Writes rows as CSV (:func:`dissectjax.results.write_csv`) and says where."""
    from dissectjax.results import write_csv

    write_csv(path, rows)
    print(f"wrote {path}", file=sys.stderr)
