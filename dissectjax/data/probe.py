"""Probe batches: images and normalized concept labels, padded, prefetched off the main thread.

A batch holds rows of one shape (image ``ih x iw``, labels ``sh x sw``); a dataset whose
rows differ in shape is split into one bucket of rows per shape, so each compiled kernel
sees static shapes. The last batch of a bucket is padded with rows marked invalid, which
add nothing to any count.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from dissectjax.data.broden import BrodenDataset
from dissectjax.stats.tally import LabelBatch


class ProbeBatch(NamedTuple):
    """images: uint8 [B, ih, iw, 3] or None; labels: LabelBatch of NumPy arrays or None;
    index: int64 [B], dataset row of each entry (-1 for padding); valid: bool [B]."""

    images: np.ndarray | None
    labels: LabelBatch | None
    index: np.ndarray
    valid: np.ndarray


def normalize_labels(pixel: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Removes label repeats that the tally kernels must not count twice.

    pixel: int32 [L, sh, sw] concept indices (-1 = none); image: int [M] image-level concepts.
    Returns a copy of ``pixel`` where a concept appears at most once per pixel (later
    layers lose repeats) and concepts given as image-level labels have no pixel labels
    (an image-level label already covers the whole image).
    """
    pixel = np.array(pixel, np.int32, copy=True)
    image = np.asarray(image)
    image = image[image >= 0]
    if image.size:
        pixel[np.isin(pixel, image)] = -1
    for layer in range(1, pixel.shape[0]):
        repeat = np.any(pixel[layer][None] == pixel[:layer], axis=0) & (pixel[layer] >= 0)
        pixel[layer][repeat] = -1
    return pixel


def example_labels(ds: BrodenDataset, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row i's labels as concept indices: pixel int32 [L, sh, sw] (normalized), image int32 [M]."""
    row = ds.row(i)
    sh, sw = row.label_size
    layers = sum(ds.pixel_layers.values())
    pixel = np.full((layers, sh, sw), -1, np.int32)
    start = 0
    for category, count in ds.pixel_layers.items():
        for j, m in enumerate(row.pixel.get(category, [])):
            pixel[start + j] = ds.concept_indices(m, i)
        start += count
    image = np.full(ds.max_image_labels, -1, np.int32)
    numbers = [n for c in ds.categories for n in row.image_level.get(c, [])]
    if numbers:
        image[: len(numbers)] = ds.concept_indices(np.array(numbers), i)
    return normalize_labels(pixel, image), image


def shape_buckets(ds: BrodenDataset, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Row indices grouped by (ih, iw, sh, sw), each group in dataset order."""
    rows = np.arange(len(ds)) if rows is None else np.asarray(rows)
    shapes = ds.shapes[rows]
    keys, inverse = np.unique(shapes, axis=0, return_inverse=True)
    return [rows[inverse.ravel() == k] for k in range(len(keys))]


def batch_plan(ds: BrodenDataset, batch_size: int, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows of every batch, padded to ``batch_size`` with -1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    plan = []
    for bucket in shape_buckets(ds, rows):
        for start in range(0, len(bucket), batch_size):
            chunk = bucket[start : start + batch_size]
            plan.append(np.concatenate([chunk, np.full(batch_size - len(chunk), -1, chunk.dtype)]))
    return plan


def load_batch(ds: BrodenDataset, rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch:
    """Assembles one batch (padding rows repeat the first row's shapes, marked invalid)."""
    valid = rows >= 0
    first = int(rows[0])
    image_batch = label_batch = None
    if images:
        ih, iw = ds.image_size(first)
        image_batch = np.zeros((len(rows), ih, iw, 3), np.uint8)
        for j in np.flatnonzero(valid):
            image_batch[j] = ds.load_image(int(rows[j]))
    if labels:
        sh, sw = ds.label_size(first)
        layers = sum(ds.pixel_layers.values())
        pixel = np.full((len(rows), layers, sh, sw), -1, np.int32)
        image = np.full((len(rows), max(ds.max_image_labels, 1)), -1, np.int32)
        for j in np.flatnonzero(valid):
            p, m = example_labels(ds, int(rows[j]))
            pixel[j], image[j, : m.size] = p, m
        label_batch = LabelBatch(pixel, image, valid)
    return ProbeBatch(image_batch, label_batch, rows.astype(np.int64), valid)


def iterate_batches(
    ds: BrodenDataset,
    plan: list[np.ndarray],
    images: bool = True,
    labels: bool = True,
    workers: int = 4,
    prefetch: int = 4,
) -> Iterator[ProbeBatch]:
    """Yields the batches of ``plan`` in order, decoded by a thread pool ahead of use."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
        pending: collections.deque = collections.deque()
        todo = iter(plan)
        for rows in todo:
            pending.append(pool.submit(load_batch, ds, rows, images, labels))
            if len(pending) >= prefetch + workers:
                break
        while pending:
            batch = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(load_batch, ds, nxt, images, labels))
            yield batch
