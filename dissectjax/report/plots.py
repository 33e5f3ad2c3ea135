"""Matplotlib figures of a dissection (saved as PNG beside the report)."""

from __future__ import annotations

import numpy as np

from dissectjax.report.dissection import Dissection


def detectors_per_category(dissection: Dissection):
    """Grouped bar charts: per layer and category, the detectors and the unique detectors under
    each rule (best label, NetDissect tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dissection.layers)
    categories = list(dissection.concepts.categories)
    panels = (("detectors per category", _detectors),
              ("unique detectors per category: best-label rule", _unique("unique")),
              ("unique detectors per category: NetDissect-tables rule", _unique("unique_tables")))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 1.3 * len(layers) + 3) * len(panels), 3.6),
                             constrained_layout=True)  # fmt: skip
    x = np.arange(len(layers))
    width = 0.8 / max(len(categories), 1)
    for ax, (title, values) in zip(axes, panels):
        for k, category in enumerate(categories):
            ax.bar(x + (k - (len(categories) - 1) / 2) * width, [values(dissection, n, k) for n in layers], width,
                   label=category)  # fmt: skip
        ax.set_xticks(x, layers)
        ax.set_title(title)
    axes[0].legend(fontsize=8, ncols=2)
    return fig


def _detectors(dissection: Dissection, layer: str, k: int) -> int:
    r = dissection.layer(layer)
    return int(np.sum(r.labels.detector & (r.concepts.category[r.labels.label] == k)))


def _unique(field: str):
    """(dissection, layer, k) -> the layer's unique detectors of category k under the rule in ``field``."""
    return lambda dissection, layer, k: getattr(dissection.layer(layer), field)[dissection.concepts.categories[k]]
