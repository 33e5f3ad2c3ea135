"""Matplotlib figures of a dissection (saved as PNG beside the report)."""

from __future__ import annotations

import numpy as np

from dissectjax.report.dissection import Dissection


def detectors_per_category(dissection: Dissection):
    """A grouped bar chart: per layer, the detectors and unique detectors of each category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dissection.layers)
    categories = list(dissection.concepts.categories)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(layers) + 3) * 2, 3.6), constrained_layout=True)
    x = np.arange(len(layers))
    width = 0.8 / max(len(categories), 1)
    for ax, (title, values) in zip(axes, (("detectors", _detectors), ("unique detectors", _unique))):
        for k, category in enumerate(categories):
            ax.bar(x + (k - (len(categories) - 1) / 2) * width, [values(dissection, n, k) for n in layers], width,
                   label=category)  # fmt: skip
        ax.set_xticks(x, layers)
        ax.set_title(f"{title} per category")
    axes[0].legend(fontsize=8, ncols=2)
    return fig


def _detectors(dissection: Dissection, layer: str, k: int) -> int:
    r = dissection.layer(layer)
    return int(np.sum(r.labels.detector & (r.concepts.category[r.labels.label] == k)))


def _unique(dissection: Dissection, layer: str, k: int) -> int:
    return dissection.layer(layer).unique[dissection.concepts.categories[k]]
