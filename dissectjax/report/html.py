"""Small HTML builders shared by the report, the notebook views and the app (escaped, no templates)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; z-index: 1; }
.controls label { margin-right: 1.2em; }
.bars { display: flex; flex-wrap: wrap; gap: 1em 2.5em; margin: .5em 0 1em; }
.bars h3 { font-size: .95em; margin: .2em 0; text-transform: capitalize; }
.bar { display: flex; align-items: center; font-size: 12px; }
.bar span.name { width: 9em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar span.fill { display: inline-block; height: 10px; background: #3b7dd8; margin-right: .4em; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: .4em; width: max-content; max-width: 100%; }
.card.not-detector { opacity: .45; filter: grayscale(1); }
.card .title { font-weight: 600; } .card .meta { color: #555; font-size: 12px; }
.card img { display: block; margin-top: .3em; image-rendering: pixelated; height: 72px; }
table.data { border-collapse: collapse; margin: .5em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
table.data th:first-child, table.data td:first-child { text-align: left; }
.neg { color: #b00020; } .pos { color: #0a7d32; }
img.plot { max-width: min(100%, 1000px); }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, spec: str = ".3f") -> str:
    """A number for a table; '' for None (not measured)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(head: Sequence[str], rows: Iterable[Sequence], css: str = "data") -> str:
    """An escaped HTML table; float cells are shown with 3 decimals."""
    head_html = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(x))}</td>" for x in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table>'


def unit_card(layer: str, info: dict, strip: str | None) -> str:
    """One unit: label, category, IoU, threshold and its top images (greyed if not a detector)."""
    css = "card" if info["detector"] else "card not-detector"
    data = (
        f'data-layer="{esc(layer)}" data-unit="{info["unit"]}" data-iou="{info["iou"]:.6f}" '
        f'data-label="{esc(info["label"])}" data-category="{esc(info["category"])}"'
    )
    picture = f'<img alt="top images of unit {info["unit"]}" src="{strip}">' if strip else ""
    return (
        f'<div class="{css}" {data}><div class="title">unit {info["unit"]}: {esc(info["label"])}</div>'
        f'<div class="meta">{esc(info["category"])} · IoU {info["iou"]:.3f} · threshold {info["threshold"]:.4g}</div>'
        f"{picture}</div>"
    )


def concept_bars(groups: dict[str, list[tuple[str, int]]]) -> str:
    """Detectors per concept, one block per category: {category: [(concept, detectors)]}."""
    top = max((n for rows in groups.values() for _, n in rows), default=1)
    blocks = []
    for category, rows in groups.items():
        if not rows:
            continue
        bars = "".join(
            f'<div class="bar"><span class="name" title="{esc(name)}">{esc(name)}</span>'
            f'<span class="fill" style="width:{max(2, round(120 * n / top))}px"></span>{n}</div>'
            for name, n in rows
        )
        blocks.append(f"<div><h3>{esc(category)}</h3>{bars}</div>")
    return f'<div class="bars">{"".join(blocks)}</div>' if blocks else "<p>No detectors.</p>"


def page(title: str, body: str, script: str = "") -> str:
    """A self-contained document: inline style and script, nothing fetched."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n'
        f"<body>{body}<script>{script}</script></body></html>\n"
    )
