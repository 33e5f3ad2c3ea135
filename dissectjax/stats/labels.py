"""From counts to IoU, unit labels, detectors and unique detectors (docs/ARCHITECTURE.md, Semantics 4-5).

Host-side NumPy on small arrays ([U, C]); exact integer inputs, float64 IoU.

Unique detectors are counted under two named rules, both per category, ``total`` their sum:

* **best label** (:func:`unique_detectors`, NetDissect-Lite): the distinct labels among
  detectors, a unit's label being its best concept over all categories;
* **NetDissect tables** (:func:`unique_detectors_tables`, the CVPR 2017 figures): for each
  category k, the distinct best concepts of category k among units whose IoU with that
  concept passes the threshold.

A score passes the threshold under a comparison, ``">="`` (dissectjax's default) or ``">"``
(NetDissect's): :data:`DETECTOR_RULES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dissectjax.errors import DissectError

DETECTOR_RULES = (">=", ">")  # how a score is compared with the IoU threshold; the first is the default


def iou(intersection: np.ndarray, unit_area: np.ndarray, concept_area: np.ndarray, concept_category: np.ndarray):
    """IoU [U, C] = I / (A[:, k(c)] + L - I), 0 where the denominator is 0.

    intersection int [U, C]; unit_area int [U, K]; concept_area int [C]; concept_category int [C].

    >>> iou(np.array([[2, 0]]), np.array([[4]]), np.array([3, 0]), np.array([0, 0])).tolist()
    [[0.4, 0.0]]
    """
    inter = np.asarray(intersection, np.int64)
    union = np.asarray(unit_area, np.int64)[:, concept_category] + np.asarray(concept_area, np.int64)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def passes(score: np.ndarray, threshold: float, rule: str = ">=") -> np.ndarray:
    """bool, the shape of ``score``: ``score >= threshold`` (rule ``">="``) or ``score > threshold`` (``">"``).

    >>> passes(np.array([0.03, 0.04, 0.05]), 0.04).tolist(), passes(np.array([0.03, 0.04, 0.05]), 0.04, ">").tolist()
    ([False, True, True], [False, False, True])
    """
    if rule not in DETECTOR_RULES:
        raise DissectError(f"detector rule must be one of {', '.join(map(repr, DETECTOR_RULES))}, got {rule!r}")
    return np.greater_equal(score, threshold) if rule == ">=" else np.greater(score, threshold)


@dataclasses.dataclass(frozen=True)
class UnitLabels:
    """Best concept per unit and per category.

    best_per_category: int [U, K], concept index of the best concept of each category
      (-1 for a category with no concepts).
    label: int [U], concept index of the unit's label (the best over categories).
    score: float [U], IoU of the label.
    detector: bool [U], score passes the IoU threshold (``>=`` or ``>``: :func:`passes`).
    """

    best_per_category: np.ndarray
    label: np.ndarray
    score: np.ndarray
    detector: np.ndarray


def label_units(
    iou_table: np.ndarray, concept_category: np.ndarray, num_categories: int, iou_threshold: float, rule: str = ">="
) -> UnitLabels:
    """Labels from an IoU table float [U, C] and concept_category int [C]. Ties go to the lower
    concept index. A detector's score passes ``iou_threshold`` under ``rule`` (``">="`` or ``">"``).

    >>> table = np.array([[0.1, 0.3, 0.02], [0.0, 0.01, 0.04]])
    >>> labels = label_units(table, np.array([0, 0, 1]), num_categories=2, iou_threshold=0.04)
    >>> labels.label.tolist(), labels.detector.tolist(), labels.best_per_category.tolist()
    ([1, 2], [True, True], [[1, 2], [1, 2]])
    >>> label_units(table, np.array([0, 0, 1]), 2, 0.04, rule=">").detector.tolist()
    [True, False]
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
    return UnitLabels(best, label, score, passes(score, iou_threshold, rule))


def distinct_per_category(names: np.ndarray, keep: np.ndarray, categories: Sequence[str]) -> dict[str, int]:
    """Per category k, the number of distinct ``names[u, k]`` over units u with ``keep[u, k]``;
    plus ``total``, their sum. names [U, K] (concept indices or names); keep bool [U, K].

    >>> names = np.array([[3, 7], [3, 8], [5, 8]])
    >>> distinct_per_category(names, np.array([[True, True], [True, True], [False, True]]), ["a", "b"])
    {'a': 1, 'b': 2, 'total': 3}
    """
    out = {name: int(np.unique(names[keep[:, k], k]).size) for k, name in enumerate(categories)}
    out["total"] = sum(out.values())
    return out


def distinct_labels(
    label: np.ndarray, label_category: np.ndarray, keep: np.ndarray, categories: Sequence[str]
) -> dict[str, int]:
    """Per category k, the number of distinct ``label[u]`` over units u with ``keep[u]`` whose
    label is of category k; plus ``total``. label [U] (concept indices or names);
    label_category int [U] (an index into ``categories``); keep bool [U].

    >>> distinct_labels(np.array([4, 4, 1, 0]), np.array([1, 1, 1, 0]), np.array([True, True, True, False]), "ab")
    {'a': 0, 'b': 2, 'total': 2}
    """
    in_category = np.asarray(label_category)[:, None] == np.arange(len(categories))  # [U, K]
    names = np.broadcast_to(np.asarray(label)[:, None], in_category.shape)
    return distinct_per_category(names, np.asarray(keep)[:, None] & in_category, categories)


def unique_detectors(labels: UnitLabels, concept_category: np.ndarray, categories: Sequence[str]) -> dict[str, int]:
    """The best-label rule (NetDissect-Lite): distinct labels among detectors, per category of
    the label, plus ``total`` (their sum). concept_category int [C].

    >>> labels = UnitLabels(np.zeros((3, 2)), np.array([4, 4, 1]), np.ones(3), np.array([True, True, True]))
    >>> unique_detectors(labels, np.array([0, 1, 0, 0, 1]), ["color", "object"])
    {'color': 0, 'object': 2, 'total': 2}
    """
    return distinct_labels(labels.label, concept_category[labels.label], labels.detector, categories)


def category_scores(iou_table: np.ndarray, best_per_category: np.ndarray) -> np.ndarray:
    """float [U, K]: each unit's IoU with its best concept of each category (0 where the category
    has no concepts). iou_table float [U, C]; best_per_category int [U, K].

    >>> category_scores(np.array([[0.1, 0.3, 0.02]]), np.array([[1, 2, -1]])).tolist()
    [[0.3, 0.02, 0.0]]
    """
    picked = np.take_along_axis(iou_table, np.maximum(best_per_category, 0), axis=1)
    return np.where(best_per_category >= 0, picked, 0.0)


def unique_detectors_tables(
    iou_table: np.ndarray, labels: UnitLabels, categories: Sequence[str], iou_threshold: float, rule: str = ">="
) -> dict[str, int]:
    """The NetDissect-tables rule (CVPR 2017): per category k, the distinct best concepts of
    category k (``labels.best_per_category[:, k]``) among units whose IoU with that concept
    passes ``iou_threshold`` under ``rule``; plus ``total`` (their sum). iou_table float [U, C].

    A unit counts in every category where its best concept passes, not only in its label's,
    so this total is at least the best-label rule's with the same threshold and rule.

    >>> table = np.array([[0.1, 0.3, 0.04], [0.2, 0.0, 0.04]])  # concepts 0, 1: color; 2: object
    >>> labels = label_units(table, np.array([0, 0, 1]), 2, 0.04)
    >>> unique_detectors(labels, np.array([0, 0, 1]), ["color", "object"])
    {'color': 2, 'object': 0, 'total': 2}
    >>> unique_detectors_tables(table, labels, ["color", "object"], 0.04)
    {'color': 2, 'object': 1, 'total': 3}
    >>> unique_detectors_tables(table, labels, ["color", "object"], 0.04, rule=">")
    {'color': 2, 'object': 0, 'total': 2}
    """
    best = labels.best_per_category
    keep = (best >= 0) & passes(category_scores(iou_table, best), iou_threshold, rule)
    return distinct_per_category(best, keep, categories)
