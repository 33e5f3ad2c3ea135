"""A dissection output directory, opened for questions: the data behind reports and the app.

Dissection.load(DIR) -> layers (LayerResult), top images -> per unit: strips, concepts
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from dissectjax.dissect.result import LayerResult
from dissectjax.errors import DissectError
from dissectjax.report import images as img
from dissectjax.results import read_results, read_top_images


@dataclasses.dataclass
class Dissection:
    """Every layer of one dissection, with the probe images its units fire on most."""

    directory: str
    layers: dict[str, LayerResult]
    summary: dict
    top_images: dict | None  # rows [R], images [R, H, W, 3], label_size [2]; None if not saved
    _strips: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str) -> Dissection:
        """Reads and checks every file (:func:`~dissectjax.results.read_results`), and that
        ``top_images.npz`` holds each top image the layers name."""
        layers, summary = read_results(directory)
        top = read_top_images(directory)
        if top is not None:
            for name, r in layers.items():
                if r.top_images is not None and r.top_maps is not None:
                    rows = np.unique(r.top_images[r.top_images >= 0])
                    absent = rows[~np.isin(rows, top["rows"])]
                    if absent.size:
                        raise DissectError(f"{directory}/top_images.npz lacks dataset row {int(absent[0])}, a top "
                                           f"image of layer {name!r}; expected the top images of this dissection: "
                                           "rerun it")  # fmt: skip
        return cls(os.path.abspath(directory), layers, summary, top)

    @property
    def concepts(self):
        return next(iter(self.layers.values())).concepts

    def layer(self, name: str) -> LayerResult:
        if name not in self.layers:
            raise DissectError(f"unknown layer {name!r}; layers: {', '.join(self.layers)}")
        return self.layers[name]

    def check_unit(self, layer: str, unit: int) -> int:
        units = self.layer(layer).units
        if not 0 <= unit < units:
            raise DissectError(f"unit {unit} is out of range: {layer} has units 0..{units - 1}")
        return unit

    def concept_index(self, name: str) -> int:
        names = self.concepts.names
        if name not in names:
            close = [n for n in names if name.lower() in n.lower()][:8]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DissectError(f"unknown concept {name!r}{hint}")
        return names.index(name)

    def unit_label(self, layer: str, unit: int) -> dict:
        """The unit's label, category, IoU, threshold and whether it is a detector."""
        r = self.layer(layer)
        c = int(r.labels.label[unit])
        return {
            "unit": unit,
            "label": r.concepts.names[c],
            "category": r.concepts.categories[r.concepts.category[c]],
            "iou": float(r.labels.score[unit]),
            "threshold": float(r.thresholds[unit]),
            "detector": bool(r.labels.detector[unit]),
        }

    def top_masks(self, layer: str, unit: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(images uint8 [k, H, W, 3], masks bool [k, sh, sw]) of the unit's top images, or None."""
        r = self.layer(layer)
        if self.top_images is None or r.top_maps is None:
            return None
        rows = r.top_images[unit]
        keep = rows >= 0
        where = np.searchsorted(self.top_images["rows"], rows[keep])
        masks = img.unit_masks(r.top_maps[unit][keep], r.thresholds[unit], tuple(self.top_images["label_size"]))
        return self.top_images["images"][where], masks

    def strip(self, layer: str, unit: int, count: int | None = None) -> str | None:
        """A data URI of the unit's top images (highest first) with its mask overlaid, or None."""
        key = (layer, unit, count)
        if key not in self._strips:
            top = self.top_masks(layer, unit)
            if top is None or not len(top[0]):
                self._strips[key] = None
            else:
                pictures = [img.overlay(im, m) for im, m in zip(*top)][:count]
                self._strips[key] = img.data_uri(img.strip(pictures))
        return self._strips[key]
