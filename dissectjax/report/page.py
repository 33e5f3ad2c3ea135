"""The static HTML report: one self-contained file that works from file:// (no server, no CDN).

dissection -> per layer: header, detectors per concept, unit cards -> DIR/report.html
                                                                     DIR/plots/*.png
"""

from __future__ import annotations

import io
import os

from dissectjax.report import html as h
from dissectjax.report.dissection import Dissection
from dissectjax.report.plots import detectors_per_category
from dissectjax.report.views import LayerView
from dissectjax.results import write_atomic

SYMBOLS = {">=": "≥", ">": ">"}  # how a detector rule reads in the report

SCRIPT = """
const $ = (id) => document.getElementById(id);
const order = {
  unit: (a, b) => a.dataset.unit - b.dataset.unit,
  iou: (a, b) => b.dataset.iou - a.dataset.iou || a.dataset.unit - b.dataset.unit,
  label: (a, b) => (a.dataset.label > b.dataset.label) - (a.dataset.label < b.dataset.label) ||
                  b.dataset.iou - a.dataset.iou,
};
function apply() {
  const category = $("category").value, query = $("search").value.trim().toLowerCase();
  let shown = 0;
  for (const box of document.querySelectorAll(".cards")) {
    const cards = [...box.children].sort(order[$("sort").value]);
    for (const card of cards) {
      box.appendChild(card);
      const visible = (!category || card.dataset.category === category) &&
                      (!query || card.dataset.label.toLowerCase().includes(query));
      card.hidden = !visible;
      shown += visible;
    }
  }
  $("shown").textContent = `${shown} units shown`;
}
for (const id of ["sort", "category", "search"]) {
  for (const event of ["input", "change"]) $(id).addEventListener(event, apply);
}
apply();
"""


def _controls(categories) -> str:
    options = "".join(f'<option value="{h.esc(c)}">{h.esc(c)}</option>' for c in categories)
    return (
        '<div class="controls">'
        '<label>Sort <select id="sort"><option value="unit">unit</option><option value="iou">IoU</option>'
        '<option value="label">label</option></select></label>'
        f'<label>Category <select id="category"><option value="">all</option>{options}</select></label>'
        '<label>Search <input id="search" type="search" placeholder="concept name"></label>'
        '<span id="shown"></span></div>'
    )


def _figure_uri(fig) -> tuple[str, bytes]:
    import base64

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    png = buffer.getvalue()
    return f"data:image/png;base64,{base64.b64encode(png).decode()}", png


SEMANTICS_NOTE = {  # docs/SEMANTICS.md
    "netdissect": "the original Network Dissection's: a unit's area counts in every image where the category is "
    "labelled, a concept once per pixel",
    "lite": "NetDissect-Lite's: a unit's area counts only where its own mask covers the category, a label in two "
    "layers twice, and Lite's interpolated quantile, computed exactly",
}


def render(dissection: Dissection) -> tuple[str, dict[str, bytes]]:
    """(the report's HTML, {plot file name: PNG bytes})."""
    s = dissection.summary
    uri, png = _figure_uri(detectors_per_category(dissection))
    first = next(iter(dissection.layers.values()))
    intro = (
        f"<h1>Network dissection: {h.esc(s.get('model', '?'))}</h1>"
        f"<p>probe set {h.esc(s.get('dataset', '?'))}, {first.images} images; top quantile {first.quantile}, "
        f"detector if IoU {SYMBOLS[first.detector_rule]} {first.iou_threshold}; counted with "
        f"{h.esc(first.semantics)} semantics ({SEMANTICS_NOTE.get(first.semantics, '')}). Unique detectors are "
        f"counted under two rules: the best-label rule (NetDissect-Lite: distinct labels among detectors) and the "
        f"NetDissect-tables rule (CVPR 2017: per category, the distinct best concepts of that category whose IoU "
        f"passes, summed). Each card shows the unit's top images; outside its mask they are "
        f"dimmed, and the mask's edge is outlined. Cards of units that are not detectors are grey.</p>"
        f'<img class="plot" alt="detectors per category per layer" src="{uri}">'
    )
    layers = "".join(LayerView(dissection, name).html() for name in dissection.layers)
    body = intro + _controls(dissection.concepts.categories) + layers
    return h.page(f"dissection: {s.get('model', '')}", body, SCRIPT), {"detectors_per_category.png": png}


def write_report(directory: str, out: str | None = None) -> str:
    """Writes ``report.html`` (default: into ``directory``) and ``plots/*.png`` beside it; returns its path."""
    dissection = Dissection.load(directory)
    document, plots = render(dissection)
    out = os.path.abspath(out or os.path.join(directory, "report.html"))
    for name, png in plots.items():
        write_atomic(os.path.join(os.path.dirname(out), "plots", name), png)
    write_atomic(out, document.encode())
    return out
