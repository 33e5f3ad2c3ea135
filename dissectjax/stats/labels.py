"""From counts to IoU, unit labels, detectors and unique detectors (docs/ARCHITECTURE.md, Semantics 4-5).

Host-side NumPy on small arrays ([U, C]); exact integer inputs, float64 IoU.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def iou(intersection: np.ndarray, unit_area: np.ndarray, concept_area: np.ndarray, concept_category: np.ndarray):
    """IoU [U, C] = I / (A[:, k(c)] + L - I), 0 where the denominator is 0.

    intersection int [U, C]; unit_area int [U, K]; concept_area int [C]; concept_category int [C].

    >>> iou(np.array([[2, 0]]), np.array([[4]]), np.array([3, 0]), np.array([0, 0])).tolist()
    [[0.4, 0.0]]
    """
    inter = np.asarray(intersection, np.int64)
    union = np.asarray(unit_area, np.int64)[:, concept_category] + np.asarray(concept_area, np.int64)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclasses.dataclass(frozen=True)
class UnitLabels:
    """Best concept per unit and per category.

    best_per_category: int [U, K], concept index of the best concept of each category
      (-1 for a category with no concepts).
    label: int [U], concept index of the unit's label (the best over categories).
    score: float [U], IoU of the label.
    detector: bool [U], score >= the IoU threshold.
    """

    best_per_category: np.ndarray
    label: np.ndarray
    score: np.ndarray
    detector: np.ndarray


def label_units(iou_table: np.ndarray, concept_category: np.ndarray, num_categories: int, iou_threshold: float):
    """Labels from an IoU table [U, C]. Ties go to the lower concept index.

    >>> table = np.array([[0.1, 0.3, 0.02], [0.0, 0.01, 0.03]])
    >>> labels = label_units(table, np.array([0, 0, 1]), num_categories=2, iou_threshold=0.04)
    >>> labels.label.tolist(), labels.detector.tolist(), labels.best_per_category.tolist()
    ([1, 2], [True, False], [[1, 2], [1, 2]])
    """
    units = iou_table.shape[0]
    best = np.full((units, num_categories), -1, np.int64)
    for k in range(num_categories):
        cols = np.flatnonzero(concept_category == k)
        if cols.size:
            pick = np.argmax(iou_table[:, cols], axis=1)
            best[:, k] = cols[pick]
    # the best category; ties to the lower concept index, like an argmax over all columns
    label = np.argmax(iou_table, axis=1)
    score = iou_table[np.arange(units), label]
    return UnitLabels(best, label, score, score >= iou_threshold)


def unique_detectors(labels: UnitLabels, concept_category: np.ndarray, categories: list[str]) -> dict[str, int]:
    """Distinct labels among detectors, per category, plus ``total`` (their sum).

    >>> labels = UnitLabels(np.zeros((3, 2)), np.array([4, 4, 1]), np.ones(3), np.array([True, True, True]))
    >>> unique_detectors(labels, np.array([0, 1, 0, 0, 1]), ["color", "object"])
    {'color': 0, 'object': 2, 'total': 2}
    """
    found = np.unique(labels.label[labels.detector])
    out = {name: int(np.sum(concept_category[found] == k)) for k, name in enumerate(categories)}
    out["total"] = int(found.size)
    return out
