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


def ambiguous_pixels(up: np.ndarray, t: np.ndarray) -> np.ndarray:
    """int [U]: pixels of upsampled maps up [U, sh, sw] within float32 rounding of their unit's
    threshold t [U] but not equal to it (another float32 implementation may decide them otherwise)."""
    gap = np.abs(up - t[:, None, None])
    return ((gap > 0) & (gap <= 1e-5 * np.maximum(1, np.abs(t))[:, None, None])).sum((1, 2))


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
        ambiguous += ambiguous_pixels(up, t)
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


# ---- NetDissect-Lite's rules (docs/SEMANTICS.md) -------------------------------------------------
def lite_threshold(values: np.ndarray, quantile: float) -> float:
    """NetDissect-Lite's threshold as its code computes it while its sketch holds every value:
    ``readout(1000)[int(1000 * (1 - q) - 1)]``, i.e. ``np.interp`` of the quantile
    ``linspace(0, 1, 1000)[i]`` over the sorted values placed at ``(j + 1/2) / n`` (weight 1
    each), with the minimum and maximum added at 0 and 1 (weight 0). float64."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = v.size
    xp = np.concatenate([[0.0], (np.arange(n) + 0.5) / n, [1.0]])
    fp = np.concatenate([[v[0]], v, [v[-1]]])
    p = np.linspace(0.0, 1.0, 1000)[int(1000 * (1 - quantile) - 1)]
    return float(np.interp(p, xp, fp))


def lite_counts(acts, thresholds, pixel_labels, image_labels, concept_category, num_categories):
    """NetDissect-Lite's ``tally_job``, loop for loop, without its carry-over of the previous
    image's category indicator into an image with only image-level labels (a bug).

    Per image: ``pixels`` = every label layer (repeats kept), ``scalars`` = the image-level
    labels (repeats kept). ``tally_labels[c]`` adds c's pixel labels and ``sh * sw`` per
    scalar. Per unit whose map exceeds its threshold somewhere: the mask's pixels; ``tally_bt``
    = a bincount of the labels under it in all layers; the unit's area counts for category k
    if ``tally_bt`` holds a concept of k or a scalar is of k. Arguments as :func:`counts`,
    with image_labels a list per image (repeats allowed). Returns (intersection [U, C],
    unit_area [U, K], concept_area [C], ambiguous [U]) as int64.
    """
    n, units = acts.shape[:2]
    num_concepts = len(concept_category)
    labelcat = np.eye(num_categories, dtype=np.int64)[np.asarray(concept_category)]  # [C, K]
    tally_both = np.zeros((units, num_concepts), np.int64)
    tally_units_cat = np.zeros((units, num_categories), np.int64)
    tally_labels = np.zeros(num_concepts, np.int64)
    ambiguous = np.zeros(units, np.int64)
    t = np.asarray(thresholds, np.float64)
    for i in range(n):
        pixels = np.asarray(pixel_labels[i])
        sh, sw = pixels.shape[-2:]
        scalars = list(image_labels[i])
        for scalar in scalars:
            tally_labels[scalar] += sh * sw
        tally_labels += np.bincount(pixels[pixels >= 0].ravel(), minlength=num_concepts)
        up = upsample(np.asarray(acts[i]), sh, sw)
        ambiguous += ambiguous_pixels(up, t)
        for unit in range(units):
            if not acts[i, unit].max() > t[unit]:
                continue
            mask = up[unit] > t[unit]
            area = int(mask.sum())
            under = pixels[:, mask]
            tally_bt = np.bincount(under[under >= 0].ravel(), minlength=num_concepts)
            tally_cat = tally_bt @ labelcat
            tally_both[unit] += tally_bt
            for scalar in scalars:
                tally_cat = tally_cat + labelcat[scalar]
                tally_both[unit, scalar] += area
            tally_units_cat[unit] += area * (tally_cat > 0)
    return tally_both, tally_units_cat, tally_labels, ambiguous
