"""The ``dissectjax debug`` report: the blamed units with their dissection labels, and every fix measured."""

from __future__ import annotations

from collections.abc import Sequence

from dissectjax.report.html import esc, fmt, page, table


def debug_page(summary: dict, blamed: Sequence[dict], fixes: Sequence[dict]) -> str:
    """A self-contained HTML page: ``summary`` (debug.json's header), the top ``blamed`` rows
    (blame.csv) and the ``fixes`` rows (fixes.csv)."""
    s = summary
    intro = (
        f"<p>{esc(s['checkpoint'])}, layer <b>{esc(s['layer'])}</b> ({s['units']} units). Failing examples: "
        f"{esc(s['failing'])} on {esc(s['data'])} ({s['failing_rank']} to blame units, {s['failing_eval']} held out "
        f"to measure fixes); passing: {s['passing_rank']} images of {esc(s['clean'])} the network gets right. Each "
        f"unit was ablated alone ({esc(s['mode'])}); score = share of failures fixed - share of passes broken.</p>"
    )
    units = table(
        ["rank", "unit", "dissection label", "IoU", "score", "failures fixed", "passes broken"],
        [[r["rank"], r["unit"], f"{r.get('label', '-')} ({r.get('category', '-')})", fmt(r.get("iou")),
          fmt(r["score"]), r["fixed"], r["broken"]] for r in blamed],
    )  # fmt: skip
    measured = table(
        ["fix", "units", "failing acc.", "shifted acc.", "clean acc.", "agreement", "parameters changed", "seconds"],
        [[r["name"], r["units"] or "-", fmt(r["failing_accuracy"]), fmt(r["shifted_accuracy"]),
          fmt(r["clean_accuracy"]), fmt(r["agreement"]), r["parameters_changed"], fmt(r["seconds"], ".2f")]
         for r in fixes],
    )  # fmt: skip
    note = (
        "<p>Agreement: the share of clean examples the original network got right whose prediction the fix "
        "keeps. Random-unit rows and the whole-network fine-tune are baselines run in the same command.</p>"
    )
    body = (
        f"<h1>Debugging {esc(s['layer'])}</h1>{intro}<h2>Units most to blame</h2>{units}<h2>Fixes</h2>{measured}{note}"
    )
    return page(f"dissectjax debug: {s['layer']}", body)
