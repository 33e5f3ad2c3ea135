"""Results over seeds: the mean and spread of each measured field, per named row.

    rows of every seed (dicts: a name, numeric fields) -> over_seeds(...) -> markdown(...)

>>> rows = [{"name": "a", "acc": 0.5}, {"name": "a", "acc": 0.7}, {"name": "b", "acc": 1.0}]
>>> over_seeds(rows, "name", ["acc"])[0]
{'name': 'a', 'n': 2, 'acc': 0.6, 'acc_std': 0.1}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


def without_draw(name: str) -> str:
    """A row name without its random draw (``"random-4 (draw 2)"`` -> ``"random-4"``): to pool
    random draws with the seeds, as ``over_seeds(..., group=without_draw)``.

    >>> without_draw("random-4 (draw 2)"), without_draw("zero top-4")
    ('random-4', 'zero top-4')
    """
    return name.split(" (draw")[0]


def over_seeds(rows: Iterable[Mapping], name: str, fields: Sequence[str],
               group: Callable[[str], str] = lambda n: n) -> list[dict]:  # fmt: skip
    """One row per ``group(row[name])`` (first-seen order): ``n`` rows, and each field's mean
    and population standard deviation (``<field>_std``); empty fields (None, '') are skipped."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(group(str(row[name])), []).append(row)
    out = []
    for key, members in groups.items():
        summary = {name: key, "n": len(members)}
        for field in fields:
            values = [float(m[field]) for m in members if m.get(field) not in (None, "")]
            mean, std = (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))
            summary[field], summary[field + "_std"] = round(mean, 6), round(std, 6)
        out.append(summary)
    return out


def markdown(rows: Sequence[Mapping], name: str, fields: Sequence[str], digits: Mapping[str, int] | None = None) -> str:
    """A Markdown table of :func:`over_seeds` rows: ``mean ± std`` per field."""
    digits = digits or {}
    head = [name, "n", *fields]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[name]), str(r["n"])]
        for f in fields:
            d = digits.get(f, 3)
            cells.append(f"{r[f]:.{d}f} ± {r[f + '_std']:.{d}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
