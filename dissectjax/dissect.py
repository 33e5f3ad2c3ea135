"""The dissection driver: threshold passes, then one tally pass (DESIGN.md section 5).

    source(batch) -> activations -> histograms -> thresholds     (passes 1..3, until resolved)
    source(batch) -> activations + labels -> counts -> IoU -> labels   (final pass)

Every statistic is an integer sum (or min/max) over batches, so the result does not
depend on batch size, order, or how the work is split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.data.broden import BrodenDataset
from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import batch_plan, iterate_batches
from dissectjax.errors import DissectError
from dissectjax.stats.labels import UnitLabels, iou, label_units, unique_detectors
from dissectjax.stats.quantile import RadixSelect, prefix_histogram
from dissectjax.stats.tally import Counts, LabelBatch, default_strategy, tally

Progress = Callable[..., Iterable]


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    quantile: float = 0.005
    iou_threshold: float = 0.04
    condition: bool = True
    batch_size: int = 64
    strategy: str | None = None  # tally strategy; None picks by backend

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise DissectError(f"--quantile must be between 0 and 1 (exclusive), got {self.quantile}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise DissectError(f"--iou-threshold must be between 0 and 1, got {self.iou_threshold}")
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be positive, got {self.batch_size}")


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
    unique: dict[str, int]
    quantile: float
    iou_threshold: float
    condition: bool
    images: int
    seconds: float

    @property
    def units(self) -> int:
        return len(self.thresholds)

    @property
    def detectors(self) -> int:
        return int(self.labels.detector.sum())


class _IntSum:
    """Sums int32 device arrays into exact int64 host totals.

    ``add(value, bound)`` promises that no entry of ``value`` exceeds ``bound``; the device
    partial sum is moved to the host before the bounds could overflow int32.
    """

    _LIMIT = 2**31 - 1

    def __init__(self):
        self._device = None
        self._bound = 0
        self.total = None

    def add(self, value, bound: int) -> None:
        if self._bound + bound > self._LIMIT:
            self.flush()
        self._device = value if self._device is None else jax.tree.map(jnp.add, self._device, value)
        self._bound += bound

    def flush(self):
        if self._device is not None:
            host = jax.tree.map(lambda a: np.asarray(a, np.int64), self._device)
            self.total = host if self.total is None else jax.tree.map(np.add, self.total, host)
            self._device, self._bound = None, 0
        return self.total


_histogram = jax.jit(prefix_histogram, static_argnames=("depth", "bits"))
_tally = jax.jit(tally, static_argnames=("num_categories", "condition", "strategy"))


def _merge_minmax(a, b):
    return (jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1]))


def _no_progress(iterable, **_):
    return iterable


def compute_thresholds(source, probe: BrodenDataset, config: DissectConfig, progress: Progress = _no_progress):
    """Per-unit thresholds {layer: float32 [U]} by radix selection over histogram passes."""
    plan = batch_plan(probe, config.batch_size)
    select = {name: RadixSelect(source.units[name], config.quantile) for name in source.layers}
    level = 0
    while not all(s.done for s in select.values()):
        active = [name for name, s in select.items() if not s.done]
        counts, extremes = {}, {}
        nonfinite = {}
        batches = iterate_batches(probe, plan, images=source.needs_images, labels=False)
        desc = f"thresholds, pass {level + 1}"
        for batch in progress(batches, total=len(plan), desc=desc, unit="batch", leave=False):
            acts = source(batch)
            valid = jnp.asarray(batch.valid)
            for name in active:
                s = select[name]
                a = acts[name]
                c, kmin, kmax, bad = _histogram(a, valid, jnp.asarray(s.prefix), s.depth, s.bits)
                if name not in counts:
                    counts[name], nonfinite[name] = _IntSum(), _IntSum()
                    extremes[name] = (kmin, kmax)
                else:
                    extremes[name] = _merge_minmax(extremes[name], (kmin, kmax))
                values = int(np.prod(a.shape[:-1]))  # per unit, in this batch
                counts[name].add(c, values)
                nonfinite[name].add(bad, values)
        for name in active:
            bad = nonfinite[name].flush()
            if bad.any():
                u = int(np.argmax(bad > 0))
                raise DissectError(
                    f"layer {name!r} has {int(bad.sum())} NaN/Inf activation values (first in unit {u}); "
                    "fix the model or the activations file"
                )
            kmin, kmax = (np.asarray(e) for e in extremes[name])
            select[name].step(counts[name].flush(), kmin, kmax)
        level += 1
    return {name: s.thresholds for name, s in select.items()}


def tally_counts(
    source,
    probe: BrodenDataset,
    thresholds: dict[str, np.ndarray],
    config: DissectConfig,
    progress: Progress = _no_progress,
) -> dict[str, Counts]:
    """Exact int64 counts per layer with the given thresholds."""
    concepts = probe.concepts
    plan = batch_plan(probe, config.batch_size)
    strategy = config.strategy or default_strategy()
    category = jnp.asarray(concepts.category, jnp.int32)
    sums: dict[str, _IntSum] = {}
    device_thresholds = {name: jnp.asarray(t, jnp.float32) for name, t in thresholds.items()}
    batches = iterate_batches(probe, plan, images=source.needs_images, labels=True)
    for batch in progress(batches, total=len(plan), desc="tally", unit="batch", leave=False):
        acts = source(batch)
        labels = LabelBatch(*(jnp.asarray(x) for x in batch.labels))
        for name in source.layers:
            counts = _tally(
                acts[name],
                device_thresholds[name],
                labels,
                category,
                concepts.num_categories,
                config.condition,
                strategy,
            )
            b, _, sh, sw = batch.labels.pixel.shape
            sums.setdefault(name, _IntSum()).add(counts, b * sh * sw)  # no count outgrows the pixels
    return {name: Counts(*s.flush()) for name, s in sums.items()}


def dissect(source, probe: BrodenDataset, config: DissectConfig = DissectConfig(), progress: Progress = _no_progress):
    """Dissects every layer of ``source`` on ``probe``; returns {layer: LayerResult}."""
    start = time.perf_counter()
    thresholds = compute_thresholds(source, probe, config, progress)
    counts = tally_counts(source, probe, thresholds, config, progress)
    seconds = time.perf_counter() - start
    concepts = probe.concepts
    results = {}
    for name in source.layers:
        c = counts[name]
        table = iou(c.intersection, c.unit_area, c.concept_area, concepts.category)
        labels = label_units(table, concepts.category, concepts.num_categories, config.iou_threshold)
        results[name] = LayerResult(
            name=name,
            concepts=concepts,
            thresholds=thresholds[name],
            intersection=c.intersection,
            unit_area=c.unit_area,
            concept_area=c.concept_area,
            iou=table,
            labels=labels,
            unique=unique_detectors(labels, concepts.category, list(concepts.categories)),
            quantile=config.quantile,
            iou_threshold=config.iou_threshold,
            condition=config.condition,
            images=len(probe),
            seconds=seconds,
        )
    return results
