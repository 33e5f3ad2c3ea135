"""A brute-force NumPy reference of the dissection semantics (docs/ARCHITECTURE.md, Semantics).

Deliberately naive and independent of dissectjax: loops over images and concepts,
float64 arithmetic, raw (un-normalized) labels.
"""

from __future__ import annotations

import numpy as np


def upsample(a: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """[..., h, w] -> [..., sh, sw], bilinear, half-pixel centers, edge-clamped, float64."""
    h, w = a.shape[-2:]

    def coords(n_out, n_in):
        s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0

    y0, y1, fy = coords(sh, h)
    x0, x1, fx = coords(sw, w)
    a = a.astype(np.float64)
    r = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return r[..., x0] * (1 - fx) + r[..., x1] * fx


def counts(acts, thresholds, pixel_labels, image_labels, concept_category, num_categories, condition=True):
    """Exact counts.

    acts: [N, U, h, w]; thresholds: [U]; pixel_labels: per image an int array [L_i, sh_i, sw_i]
    of concept indices (-1 = none, repeats allowed); image_labels: per image a list of concept
    indices. Returns (intersection [U, C], unit_area [U, K], concept_area [C], ambiguous [U]):
    ambiguous counts pixels within float32 rounding of the threshold but not equal to it, where
    another implementation's float32 arithmetic may legitimately decide the other way.
    """
    n, units = acts.shape[:2]
    num_concepts = len(concept_category)
    inter = np.zeros((units, num_concepts), np.int64)
    uarea = np.zeros((units, num_categories), np.int64)
    carea = np.zeros(num_concepts, np.int64)
    ambiguous = np.zeros(units, np.int64)
    t = np.asarray(thresholds, np.float64)
    for i in range(n):
        layers = np.asarray(pixel_labels[i])
        sh, sw = layers.shape[-2:]
        up = upsample(np.asarray(acts[i]), sh, sw)
        mask = up > t[:, None, None]
        gap = np.abs(up - t[:, None, None])
        ambiguous += ((gap > 0) & (gap <= 1e-5 * np.maximum(1, np.abs(t))[:, None, None])).sum((1, 2))
        present = set()
        for c in range(num_concepts):
            m = np.any(layers == c, axis=0) if layers.size else np.zeros((sh, sw), bool)
            if c in image_labels[i]:
                m = np.ones((sh, sw), bool)
            if m.any():
                carea[c] += m.sum()
                inter[:, c] += (mask & m).sum((1, 2))
                present.add(int(concept_category[c]))
        for k in range(num_categories):
            if not condition or k in present:
                uarea[:, k] += mask.sum((1, 2))
    return inter, uarea, carea, ambiguous


def iou(inter, uarea, carea, concept_category):
    union = uarea[:, concept_category] + carea[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def rank_error(values: np.ndarray, threshold: float, quantile: float) -> float:
    """The threshold tolerance measure (docs/ARCHITECTURE.md, Semantics): excess of |#above - q n|
    beyond ties and one value, over n."""
    v = np.asarray(values, np.float64).ravel()
    above, ties = np.sum(v > threshold), np.sum(v == threshold)
    return max(0.0, abs(above - quantile * v.size) - ties - 1) / v.size


def assert_counts_match(ours, ref, ambiguous):
    """Per-unit rows [U, ...] equal exactly, except by at most ``ambiguous[u]`` pixels for the
    (few) units with pixels within float32 rounding of their threshold."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    exact = ambiguous == 0
    assert exact.sum() >= len(ambiguous) - 2, "too many ambiguous units for a meaningful check"
    np.testing.assert_array_equal(ours[exact], ref[exact])
    diff = np.abs(ours - ref).reshape(len(ours), -1).max(axis=1, initial=0)
    assert np.all(diff <= ambiguous), (diff, ambiguous)
