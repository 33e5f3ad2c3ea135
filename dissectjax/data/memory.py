"""A probe set held in arrays (benchmarks, tests, labels produced by other tools).

Rows may cycle through a smaller pool (row i is pool entry ``i % P``), so a benchmark can
stand for a dataset of any size without holding it in memory.
"""

from __future__ import annotations

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import ProbeBatch
from dissectjax.stats.tally import LabelBatch


class InMemoryProbe:
    """``size`` rows drawn from pools of labels (and optional images).

    pixel: int [P, L, sh, sw] concept indices (-1 none); a concept may repeat across layers
      (the counting rules, :mod:`dissectjax.stats.semantics`, decide what a repeat counts).
    image: int [P, M] image-level concept indices (-1 padding).
    images: uint8 [P, ih, iw, 3] or None.
    """

    def __init__(self, concepts: Concepts, pixel: np.ndarray, image: np.ndarray, images=None, size=None):
        self.concepts = concepts
        self._pixel, self._image, self._images = pixel, image, images
        self.pool = len(pixel)
        self.size = self.pool if size is None else int(size)
        self.label_layers = pixel.shape[1]
        self.max_image_labels = image.shape[1]
        ih, iw = images.shape[1:3] if images is not None else pixel.shape[2:]
        self.shapes = np.tile(np.array([ih, iw, *pixel.shape[2:]], np.int64), (self.size, 1))

    def __len__(self) -> int:
        return self.size

    def image_size(self, i: int) -> tuple[int, int]:
        return int(self.shapes[0, 0]), int(self.shapes[0, 1])

    def label_size(self, i: int) -> tuple[int, int]:
        return int(self.shapes[0, 2]), int(self.shapes[0, 3])

    def load_image(self, i: int) -> np.ndarray:
        return self._images[i % self.pool]

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._pixel[i % self.pool].astype(np.int32), self._image[i % self.pool].astype(np.int32)

    def load_batch(self, rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch:
        """Vectorized: one gather per array."""
        valid = rows >= 0
        pool = np.where(valid, rows % self.pool, 0)
        image_batch = self._images[pool] if images and self._images is not None else None
        label_batch = None
        if labels:
            pixel = np.where(valid[:, None, None, None], self._pixel[pool], -1)  # pool dtype (int16: half the copy)
            image = np.where(valid[:, None], self._image[pool], -1).astype(np.int32)
            label_batch = LabelBatch(pixel, image, valid)
        return ProbeBatch(image_batch, label_batch, rows.astype(np.int64), valid)
