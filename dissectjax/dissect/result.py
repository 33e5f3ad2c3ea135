"""What a dissection learns about one layer."""

from __future__ import annotations

import dataclasses

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.stats.labels import UnitLabels


@dataclasses.dataclass
class LayerResult:
    """Everything a dissection learns about one layer (arrays in concept order)."""

    name: str
    concepts: Concepts
    thresholds: np.ndarray  # float32 [U]
    intersection: np.ndarray  # int64 [U, C]
    unit_area: np.ndarray  # int64 [U, K]
    concept_area: np.ndarray  # int64 [C]
    iou: np.ndarray  # float64 [U, C]
    labels: UnitLabels
    unique: dict[str, int]  # unique detectors, best-label rule: {category: n, ..., 'total': sum}
    unique_tables: dict[str, int]  # unique detectors, NetDissect-tables rule (same shape)
    quantile: float
    iou_threshold: float
    detector_rule: str  # '>=' or '>': how a score is compared with iou_threshold
    condition: bool
    images: int
    seconds: float
    semantics: str = "netdissect"  # the counting rules (dissectjax.stats.semantics.SEMANTICS)
    top_images: np.ndarray | None = None  # int64 [U, k]: dataset rows, highest maximum first (-1: none)
    top_activations: np.ndarray | None = None  # float32 [U, k]: those maxima
    top_maps: np.ndarray | None = None  # float32 [U, k, h, w]: the unit's activation map on those rows

    @property
    def units(self) -> int:
        return len(self.thresholds)

    @property
    def detectors(self) -> int:
        return int(self.labels.detector.sum())
