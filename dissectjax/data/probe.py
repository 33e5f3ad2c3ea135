"""Probe batches: images and concept labels (as stored), padded, prefetched off the main thread.

A batch holds rows of one shape (image ``ih x iw``, labels ``sh x sw``); a dataset whose
rows differ in shape is split into one bucket of rows per shape, so each compiled kernel
sees static shapes. The last batch of a bucket is padded with rows marked invalid, which
add nothing to any count.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.stats.tally import LabelBatch


class ProbeBatch(NamedTuple):
    """images: uint8 [B, ih, iw, 3] or None; labels: LabelBatch of NumPy arrays or None;
    index: int64 [B], dataset row of each entry (-1 for padding); valid: bool [B]."""

    images: np.ndarray | None
    labels: LabelBatch | None
    index: np.ndarray
    valid: np.ndarray


class ProbeDataset(Protocol):
    """What a dissection reads: N images with concept labels (Broden directory, in memory...).

    ``shapes`` int [N, 4] holds (ih, iw, sh, sw) per row; ``labels(i)`` gives the row's
    pixel labels int32 [label_layers, sh, sw] and image-level labels int32
    [max_image_labels] as concept indices (-1 = none), as stored: a concept may repeat
    across layers or be both pixel- and image-level (the tally's rules decide what a repeat
    counts, :mod:`dissectjax.stats.semantics`); ``load_batch`` assembles a
    :class:`ProbeBatch` (see :func:`load_rows` for the row-by-row way).
    """

    concepts: Concepts
    shapes: np.ndarray
    label_layers: int
    max_image_labels: int

    def __len__(self) -> int: ...
    def image_size(self, i: int) -> tuple[int, int]: ...
    def label_size(self, i: int) -> tuple[int, int]: ...
    def load_image(self, i: int) -> np.ndarray: ...
    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...
    def load_batch(self, rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch: ...


def concept_presence(labels: LabelBatch, num_concepts: int) -> np.ndarray:
    """bool [n, S, C]: which concepts cover each pixel of the batch's valid rows.

    A pixel has a concept if any label layer holds it, or if it is an image-level label of
    the row (covering every pixel), as in the counts of docs/ARCHITECTURE.md, Semantics.
    """
    valid = np.flatnonzero(labels.valid)
    n, layers = len(valid), labels.pixel.shape[1]
    pixels = int(np.prod(labels.pixel.shape[2:]))
    ids = np.asarray(labels.pixel[valid]).reshape(n, layers, pixels)
    ids = np.where(ids < 0, num_concepts, ids).transpose(0, 2, 1)  # [n, S, L]; num_concepts = none
    present = np.zeros((n, pixels, num_concepts + 1), bool)
    present[np.arange(n)[:, None, None], np.arange(pixels)[None, :, None], ids] = True
    for j, row in enumerate(valid):
        whole = np.asarray(labels.image[row])
        present[j, :, whole[whole >= 0]] = True
    return present[:, :, :num_concepts]


def shape_buckets(ds: ProbeDataset, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Row indices grouped by (ih, iw, sh, sw), each group in dataset order."""
    rows = np.arange(len(ds)) if rows is None else np.asarray(rows)
    shapes = ds.shapes[rows]
    keys, inverse = np.unique(shapes, axis=0, return_inverse=True)
    return [rows[inverse.ravel() == k] for k in range(len(keys))]


def batch_plan(ds: ProbeDataset, batch_size: int, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows of every batch, padded to ``batch_size`` with -1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    plan = []
    for bucket in shape_buckets(ds, rows):
        for start in range(0, len(bucket), batch_size):
            chunk = bucket[start : start + batch_size]
            plan.append(np.concatenate([chunk, np.full(batch_size - len(chunk), -1, chunk.dtype)]))
    return plan


def load_rows(ds: ProbeDataset, rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch:
    """Assembles one batch row by row (padding rows, -1, repeat the first row's shapes)."""
    rows = np.asarray(rows, np.int64)
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
        pixel = np.full((len(rows), ds.label_layers, sh, sw), -1, np.int32)
        image = np.full((len(rows), max(ds.max_image_labels, 1)), -1, np.int32)
        for j in np.flatnonzero(valid):
            p, m = ds.labels(int(rows[j]))
            pixel[j], image[j, : m.size] = p, m
        label_batch = LabelBatch(pixel, image, valid)
    return ProbeBatch(image_batch, label_batch, rows.astype(np.int64), valid)


class Decoder:
    """Decodes a probe set's batches ahead of use, pass after pass: in ``processes`` spawned
    worker processes, started once and kept until :meth:`close` (each holds a copy of ``ds``,
    which must pickle), or with 0 in a pool of ``workers`` threads. The batches are the same
    either way; ``prefetch`` batches per worker are decoded ahead."""

    def __init__(self, ds: ProbeDataset, processes: int = 0, workers: int = 4, prefetch: int = 4):
        self.ds = ds
        if processes:
            context = multiprocessing.get_context("spawn")  # never fork a process running XLA's threads
            self._executor = concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=context, initializer=_hold_dataset, initargs=(ds,)
            )
            self._load, self._ahead = _load_held, processes * (prefetch + 1)
        else:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
            self._load, self._ahead = ds.load_batch, prefetch + workers

    def batches(self, plan: list[np.ndarray], images: bool = True, labels: bool = True) -> Iterator[ProbeBatch]:
        """Yields the batches of ``plan`` in order (``images``, ``labels``: what to decode)."""
        if not images and not labels:  # nothing to decode: the rows alone
            for rows in plan:
                yield self.ds.load_batch(rows, False, False)
            return
        pending: collections.deque = collections.deque()
        todo = iter(plan)
        try:
            for rows in todo:
                pending.append(self._executor.submit(self._load, rows, images, labels))
                if len(pending) >= self._ahead:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(self._executor.submit(self._load, nxt, images, labels))
                yield batch
        finally:
            for future in pending:  # a consumer that stops early does not wait for decoding it will not use
                future.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iterate_batches(
    ds: ProbeDataset,
    plan: list[np.ndarray],
    images: bool = True,
    labels: bool = True,
    workers: int = 4,
    prefetch: int = 4,
    processes: int = 0,
) -> Iterator[ProbeBatch]:
    """Yields the batches of ``plan`` in order, decoded ahead of use by a :class:`Decoder` made
    for this one pass (``processes`` worker processes, or with 0 ``workers`` threads)."""
    with Decoder(ds, processes, workers, prefetch) as decoder:
        yield from decoder.batches(plan, images, labels)


_HELD: list = []  # a decoding process's copy of the dataset (set once, by the pool's initializer)


def _hold_dataset(ds: ProbeDataset) -> None:
    _HELD[:] = [ds]


def _load_held(rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch:
    """A batch decoded in a worker process, its label maps sent back as int16 where the concept
    indices fit (half the bytes through the pipe; the kernels widen them)."""
    batch = _HELD[0].load_batch(rows, images, labels)
    if batch.labels is not None and len(_HELD[0].concepts) < np.iinfo(np.int16).max:
        batch = batch._replace(labels=batch.labels._replace(pixel=batch.labels.pixel.astype(np.int16)))
    return batch
