"""The NumPy baseline: dissection written the way NetDissect-Lite writes it.

Per image, per unit: skip units whose map never exceeds the threshold, resize the rest
(bilinear, half-pixel centers, as two small matrix products), threshold, and ``bincount``
the labels under the mask, one label layer at a time. Thresholds by ``np.partition`` over
every stored activation (Lite uses a quantile sketch; storing everything is the simple,
fast way for a baseline). Same semantics as dissectjax (docs/ARCHITECTURE.md, Semantics), so the
counts agree up to float rounding at the threshold.
"""

from __future__ import annotations

import numpy as np


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(s).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in), np.float32)
    np.add.at(w, (np.arange(n_out), lo), 1 - (s - lo))
    np.add.at(w, (np.arange(n_out), hi), s - lo)
    return w


def thresholds(acts: np.ndarray, quantile: float) -> np.ndarray:
    """acts [N, h, w, U] -> per-unit values with floor(q n) values strictly above (no ties)."""
    flat = acts.reshape(-1, acts.shape[-1])
    k = int(np.floor(quantile * flat.shape[0]))
    return np.partition(flat, flat.shape[0] - 1 - k, axis=0)[flat.shape[0] - 1 - k]


def tally(acts, pixel, image, t, concept_category, num_categories, condition=True):
    """acts [N, h, w, U]; pixel [N, L, sh, sw] concept indices (-1 none, normalized);
    image [N, M]. Returns intersection [U, C], unit_area [U, K], concept_area [C] (int64)."""
    n, h, w, units = acts.shape
    sh, sw = pixel.shape[2:]
    num_concepts = len(concept_category)
    wy, wx = interpolation_matrix(sh, h), interpolation_matrix(sw, w)
    inter = np.zeros((units, num_concepts + 1), np.int64)
    uarea = np.zeros((units, num_categories), np.int64)
    carea = np.zeros(num_concepts + 1, np.int64)
    for i in range(n):
        labels = np.where(pixel[i] < 0, num_concepts, pixel[i]).reshape(pixel.shape[1], -1)
        img = image[i][image[i] >= 0]
        for layer in labels:
            carea += np.bincount(layer, minlength=num_concepts + 1)
        carea[img] += sh * sw
        seen = np.zeros(num_concepts + 1, bool)
        seen[labels.ravel()] = True
        seen[img] = True
        present = np.zeros(num_categories, bool)
        present[concept_category[np.flatnonzero(seen[:num_concepts])]] = True
        if not condition:
            present[:] = True
        for u in np.flatnonzero(acts[i].reshape(-1, units).max(0) > t):
            mask = (wy @ acts[i, :, :, u] @ wx.T > t[u]).ravel()
            area = int(mask.sum())
            if not area:
                continue
            for layer in labels:
                inter[u] += np.bincount(layer[mask], minlength=num_concepts + 1)
            inter[u, img] += area
            uarea[u] += area * present
    return inter[:, :num_concepts], uarea, carea[:num_concepts]
