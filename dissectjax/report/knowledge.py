"""The ``dissectjax transplant-concept`` report: A's units for a concept, and B measured with and without it."""

from __future__ import annotations

from collections.abc import Sequence

from dissectjax.report.html import esc, fmt, page, table


def knowledge_page(summary: dict, candidates: Sequence[dict], results: Sequence[dict]) -> str:
    """A self-contained HTML page: ``summary`` (knowledge.json's header), the ``candidates``
    rows (units.csv) and the ``results`` rows (knowledge.csv)."""
    s = summary
    concept = esc(s["concept"])
    intro = (
        f"<p>Moving <b>{concept}</b> from {esc(s['source'])} (A) into {esc(s['target'])} (B) at layer "
        f"<b>{esc(s['layer'])}</b>: A's units {', '.join(map(str, s['units']))} into B's matched slots "
        f"{', '.join(map(str, s['slots']))} (mean matched correlation {fmt(s['matching_mean_correlation'])}). "
        f"{s['rank_with_concept']} of {s['rank_scenes']} rank scenes show a {concept} (they choose the units, match "
        f"the instances and train the fine-tune baselines); {s['held_out_with_concept']} of "
        f"{s['held_out_scenes']} held-out scenes do (they measure every network).</p>"
    )
    units = table(
        ["A's unit", f"IoU with {concept}", "damage with", "damage without", "specific", "chosen", "B slot", "corr."],
        [[r["unit"], fmt(r["iou"]), fmt(r["damage_with"]), fmt(r["damage_without"]), fmt(r["specific"]),
          "yes" if r["chosen"] else "", r["slot"], fmt(r["match_correlation"])] for r in candidates],
    )  # fmt: skip
    measured = table(
        ["network", "A units", "B slots", f"accuracy with {concept}", "without", "overall", "parameters changed",
         "seconds"],
        [[r["name"], r["units"] or "-", r["slots"] or "-", fmt(r["with_concept"]), fmt(r["without"]),
          fmt(r["overall"]), r["parameters_changed"], fmt(r["seconds"], ".2f")] for r in results],
    )  # fmt: skip
    note = (
        "<p>Damage: the fall of the right label's mean log-probability when A's unit is ablated alone; specific = "
        "with the concept minus without. Parameters changed are counted against B (A's row against A itself). "
        "Random units and both fine-tunes are baselines run in the same command.</p>"
    )
    body = (
        f"<h1>Transplanting {concept}</h1>{intro}<h2>A's candidate units</h2>{units}"
        f"<h2>B, measured</h2>{measured}{note}"
    )
    return page(f"dissectjax transplant-concept: {s['concept']}", body)
