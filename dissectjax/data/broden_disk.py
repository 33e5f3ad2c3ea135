"""Broden-shaped probe data, generated: labels in memory, or a Broden-format directory on disk.

The shapes are Broden's (Bau et al. 2017): 224 x 224 images, 112 x 112 label maps,
1,200 concepts in six categories (object in up to two label layers, part, material and
color pixel-level; scene and texture image-level), up to the full 63,305 rows. Labels are
constant on 8 x 8 squares, with each category's coverage of the pixels set near Broden's
(objects cover most of an image, parts a third, every pixel has a color). The on-disk set
(:func:`ensure_broden_disk`) writes ``distinct`` rows as files, a JPEG image (quality 90)
and its label PNGs (R + 256 G), and an ``index.csv`` of the requested size that cycles
through them: every row is still read and decoded as a row, as a real set's would be.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable

import numpy as np

from dissectjax.data.broden import BrodenRow, LabelInfo, generate_once, write_broden
from dissectjax.data.concepts import Concepts

BRODEN_ROWS = 63_305  # images in Broden 1.0 (224 px)
BRODEN_CATEGORIES = {"object": 500, "part": 200, "material": 30, "color": 11, "scene": 412, "texture": 47}
BRODEN_PIXEL_LAYERS = ("object", "object", "part", "material", "color")
BRODEN_COVERAGE = {"object": 0.9, "part": 0.35, "material": 0.5, "color": 1.0}
GENERATOR_VERSION = 1  # bumped when the files it writes change


def broden_concepts() -> Concepts:
    """The 1,200 concepts, named ``<category><j>``, label number = column + 1."""
    names, category = [], []
    for k, (cat, count) in enumerate(BRODEN_CATEGORIES.items()):
        names += [f"{cat}{j}" for j in range(count)]
        category += [k] * count
    return Concepts(np.arange(1, len(names) + 1), tuple(names), np.array(category, np.int32), tuple(BRODEN_CATEGORIES))


def blocky(rng: np.random.Generator, n: int, size: int, block: int, choices, coverage: float, p=None) -> np.ndarray:
    """int [n, size, size]: random labels constant on block x block squares, -1 outside coverage;
    labels drawn uniformly from ``choices``, or with probabilities ``p``."""
    low = rng.choice(choices, (n, size // block, size // block), p=p)
    low = np.where(rng.random(low.shape) < coverage, low, -1)
    return np.repeat(np.repeat(low, block, axis=1), block, axis=2)


def broden_labels(rng: np.random.Generator, rows: int, concepts: Concepts, size: int = 112):
    """(pixel int16 [rows, 5, size, size], image int32 [rows, 2]) concept indices (-1 none): the
    pixel layers of :data:`BRODEN_PIXEL_LAYERS` (the second object layer in 30% of rows, never
    repeating the first), a scene for every row and a texture for 20% of them."""
    cols = {c: np.flatnonzero(concepts.category == k) for k, c in enumerate(BRODEN_CATEGORIES)}
    pixel = np.stack([blocky(rng, rows, size, 8, cols[c], BRODEN_COVERAGE[c]) for c in BRODEN_PIXEL_LAYERS], axis=1)
    pixel[:, 1] = np.where(rng.random((rows, 1, 1)) < 0.3, pixel[:, 1], -1)  # a second object layer, sometimes
    pixel[:, 1] = np.where(pixel[:, 1] == pixel[:, 0], -1, pixel[:, 1])  # no repeats
    texture = np.where(rng.random(rows) < 0.2, rng.choice(cols["texture"], rows), -1)
    image = np.stack([rng.choice(cols["scene"], rows), texture], axis=1)
    return pixel.astype(np.int16), image.astype(np.int32)


def picture(rng: np.random.Generator, pixel: np.ndarray, palette: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 [size, size, 3]: a picture of one row's labels (int [5, sh, sw]): each object's
    colour from ``palette`` [C, 3], shaded by its material, with fine noise (so the JPEG is
    about as large as a photograph's)."""
    objects = np.where(pixel[0] >= 0, pixel[0], pixel[4])  # uncovered pixels show their color label
    base = palette[np.maximum(objects, 0)].astype(np.float32)
    shade = np.where(pixel[3] >= 0, 0.75 + 0.5 * (pixel[3] % 5) / 4, 1.0)[..., None]
    factor = size // pixel.shape[-1]
    base = np.repeat(np.repeat(base * shade, factor, axis=0), factor, axis=1)
    noise = rng.normal(0.0, 18.0, (size, size, 1)) + rng.normal(0.0, 6.0, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _rows(concepts: Concepts, pixel: np.ndarray, image: np.ndarray, seed: int):
    """The BrodenRows of the distinct rows (label numbers = concept index + 1; 0 = none)."""
    rng = np.random.default_rng([seed, 1])
    palette = rng.integers(0, 256, (len(concepts), 3))
    numbers = concepts.numbers
    for i in range(len(pixel)):
        maps: dict[str, list[np.ndarray]] = {}
        for layer, category in enumerate(BRODEN_PIXEL_LAYERS):
            ids = pixel[i, layer].astype(np.int64)
            if (ids >= 0).any():
                maps.setdefault(category, []).append(np.where(ids >= 0, numbers[np.maximum(ids, 0)], 0))
        whole = {c: [int(numbers[image[i, j]])] for j, c in enumerate(("scene", "texture")) if image[i, j] >= 0}
        size = pixel.shape[-1] * 2
        yield BrodenRow(f"r{i:05d}.jpg", "train", (size, size), pixel.shape[2:], maps, whole,
                        picture(rng, pixel[i], palette, size))  # fmt: skip


def write_broden_disk(root: str, rows: int, distinct: int, seed: int = 0,
                      progress: Callable | None = None) -> None:  # fmt: skip
    """Writes the set at ``root`` (which must not exist): ``distinct`` rows of files, and an
    index.csv of ``rows`` rows, row i naming the files of distinct row ``i % distinct``."""
    concepts = broden_concepts()
    distinct = min(distinct, rows)
    pixel, image = broden_labels(np.random.default_rng(seed), distinct, concepts)
    labels = [LabelInfo(int(n), name, concepts.categories[k])
              for n, name, k in zip(concepts.numbers, concepts.names, concepts.category)]  # fmt: skip
    made = _rows(concepts, pixel, image, seed)
    if progress is not None:
        made = progress(made, total=distinct, desc="writing broden-disk files", unit="row")
    write_broden(root, list(BRODEN_CATEGORIES), labels, made, image_format="jpeg")
    index = os.path.join(root, "index.csv")
    with open(index, newline="") as f:
        header, *lines = list(csv.reader(f))
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(lines[i % distinct] for i in range(rows))
    with open(os.path.join(root, "broden-disk.json"), "w") as f:
        json.dump({"rows": rows, "distinct": distinct, "seed": seed, "version": GENERATOR_VERSION}, f)


def ensure_broden_disk(rows: int, distinct: int = 2048, seed: int = 0, cache_dir: str | None = None,
                       progress: Callable | None = None) -> str:  # fmt: skip
    """Path of the on-disk set of ``rows`` rows, generated on first use under ``cache_dir``
    (default: the synthetic sets' cache, ``$DISSECTJAX_CACHE`` or ~/.cache/dissectjax).
    Written under a temporary name and renamed into place: never half-written."""
    from dissectjax.data.synthetic import default_cache_dir

    cache_dir = cache_dir or default_cache_dir()
    root = os.path.join(cache_dir, f"broden-disk-{rows}-d{min(distinct, rows)}-s{seed}-v{GENERATOR_VERSION}")
    return generate_once(root, lambda target: write_broden_disk(target, rows, distinct, seed, progress),
                         marker="broden-disk.json")  # fmt: skip
