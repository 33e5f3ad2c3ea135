"""The two-pass driver (docs/ARCHITECTURE.md, Semantics).

    source(batch) -> activations -> histograms -> thresholds     (passes 1..3, until resolved)
    source(batch) -> activations + labels -> counts -> IoU -> labels   (final pass)

Every statistic is an integer sum (or min/max) over batches, reduced over all devices and
hosts inside the compiled kernels (:mod:`dissectjax.parallel`), so the result does not
depend on batch size, order, or how the work is split. With a resume file, the
accumulated state is saved atomically every so often, and a restarted run continues
from the last save with bit-identical results.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import ProbeBatch, batch_plan, iterate_batches
from dissectjax.dissect.accumulate import COUNT_REDUCTIONS, HISTOGRAM_REDUCTIONS, Accumulator
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.kernels import kernels
from dissectjax.dissect.protocols import ProbeDataset, Progress, Source, no_progress
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.resume import ResumeFile, flatten, restore_select, select_state, unflatten
from dissectjax.dissect.top_images import TopImages
from dissectjax.errors import DissectError
from dissectjax.parallel import DataParallel, to_host
from dissectjax.stats.labels import iou, label_units, unique_detectors, unique_detectors_tables
from dissectjax.stats.quantile import RadixSelect
from dissectjax.stats.tally import Counts, LabelBatch, default_strategy


def per_device_batch(config: DissectConfig, images: int) -> int:
    """Rows per device and batch: ``config.batch_size``, or the probe set's size where that is
    smaller (batches are padded to full size, so a huge batch_size would only allocate
    padding). Independent of the device count, so every mesh runs the same per-device program."""
    return max(1, min(config.batch_size, images))


class Passes:
    """One dissection's passes over the probe set, and their saved state.

    ``thresholds(saved)`` runs the threshold passes, ``counts(thresholds, saved)`` the
    tally pass (which also fills ``top``); ``saved`` is a :meth:`ResumeFile.load` state to
    continue from, or None. :func:`dissect` runs both; run them one by one to time them.
    """

    def __init__(
        self,
        source: Source,
        probe: ProbeDataset,
        config: DissectConfig = DissectConfig(),
        progress: Progress = no_progress,
        parallel: DataParallel | None = None,
        resume: ResumeFile | None = None,
    ):
        self.parallel = parallel or DataParallel.create()
        self.source, self.probe, self.config = source, probe, config
        self.progress = progress if self.parallel.is_main else no_progress
        self.resume = resume
        self.plan = batch_plan(probe, self.parallel.global_batch_size(per_device_batch(config, len(probe))))
        self.layers = list(source.layers)
        self.select = {name: RadixSelect(source.units[name], config.quantile) for name in self.layers}
        self.kernels = kernels(self.parallel)
        self.top = {name: TopImages(source.units[name], config.top_k) for name in self.layers}

    # batches: this process's rows of every global batch, sharded onto the mesh
    def _batches(self, start: int, labels: bool, desc: str) -> Iterator[ProbeBatch]:
        local_plan = [self.parallel.local_rows(rows) for rows in self.plan[start:]]
        batches = iterate_batches(self.probe, local_plan, images=self.source.needs_images, labels=labels)
        return self.progress(batches, total=len(self.plan), initial=start, desc=desc, unit="batch", leave=False)

    def _activations(self, batch: ProbeBatch) -> dict[str, jax.Array]:
        return self.source.activations(batch, self.parallel)

    def _gather_maps(self, acts: jax.Array, positions: np.ndarray) -> np.ndarray:
        return to_host(self.kernels.unit_maps(acts, self.parallel.replicate(positions.astype(np.int32))))

    def _maybe_save(self, state_fn: Callable[[], dict], force: bool = False) -> None:
        if self.resume is not None and (force or self.resume.due()):
            state = state_fn()
            if self.parallel.is_main:
                self.resume.save(state)

    def _state(self, stage: str, batch: int, totals: dict) -> dict:
        """Everything needed to continue from ``batch`` of the current pass; ``totals``
        maps a name to an Accumulator or TopImages (anything with ``flush()``)."""
        state = {"stage": np.array(stage), "batch": np.array(batch), **select_state(self.select)}
        for name, acc in totals.items():
            total = acc.flush()
            if total is not None:
                state.update(flatten(f"{stage}/{name}", total))
        return state

    def thresholds(self, saved: dict | None = None) -> dict[str, np.ndarray]:
        """Per layer, float32 [U]: each unit's (1 - quantile) quantile of its activations."""
        if saved is not None:
            restore_select(self.select, saved)
        while not all(s.done for s in self.select.values()):
            active = [name for name, s in self.select.items() if not s.done]
            level = self.select[active[0]].level
            start = 0
            acc = {name: Accumulator(HISTOGRAM_REDUCTIONS) for name in active}
            if saved is not None and str(saved["stage"]) == "threshold":
                start = int(saved["batch"])
                for name in active:
                    acc[name].total = unflatten(f"threshold/{name}", HISTOGRAM_REDUCTIONS, saved)
            saved = None

            prefixes = {name: self.parallel.replicate(self.select[name].prefix) for name in active}
            for i, batch in enumerate(self._batches(start, False, f"thresholds, pass {level + 1}"), start=start):
                acts = self._activations(batch)
                valid = self.parallel.shard(batch.valid)
                for name in active:
                    s = self.select[name]
                    a = acts[name]
                    acc[name].add(
                        self.kernels.histogram(a, valid, prefixes[name], s.depth, s.bits, s.extremes),
                        int(np.prod(a.shape[:-1])),
                    )
                self._maybe_save(functools.partial(self._state, "threshold", i + 1, acc))
            for name in active:
                counts, kmin, kmax, nonfinite = acc[name].flush()
                if nonfinite.any():
                    u = int(np.argmax(nonfinite > 0))
                    raise DissectError(
                        f"layer {name!r} has {int(nonfinite.sum())} NaN/Inf activation values (first in unit {u}); "
                        "fix the model or the activations file"
                    )
                self.select[name].step(counts, kmin, kmax)
            self._maybe_save(functools.partial(self._state, "select", 0, {}), force=True)
        return {name: s.thresholds for name, s in self.select.items()}

    def counts(self, thresholds: dict[str, np.ndarray], saved: dict | None = None) -> dict[str, Counts]:
        """Per layer, the int64 counts (intersection [U, C], unit_area [U, K], concept_area [C])
        of the units' masks ``upsampled activations > thresholds``."""
        concepts = self.probe.concepts
        strategy = self.config.strategy or default_strategy()
        category = self.parallel.replicate(concepts.category.astype(np.int32))
        device_thresholds = {name: self.parallel.replicate(t.astype(np.float32)) for name, t in thresholds.items()}
        acc = {name: Accumulator(COUNT_REDUCTIONS) for name in self.layers}
        start = 0
        if saved is not None and str(saved["stage"]) == "tally":
            start = int(saved["batch"])
            for name in self.layers:
                acc[name].total = unflatten(f"tally/{name}", COUNT_REDUCTIONS, saved)
                self.top[name].load(unflatten(f"tally/{name}/top", (0, 0, 0), saved))

        for i, batch in enumerate(self._batches(start, True, "tally"), start=start):
            acts = self._activations(batch)
            labels = LabelBatch(*(self.parallel.shard(x) for x in batch.labels))
            _, _, sh, sw = labels.pixel.shape
            for name in self.layers:
                counts = self.kernels.tally(acts[name], labels, device_thresholds[name], category,
                                            concepts.num_categories, self.config.condition, strategy)  # fmt: skip
                acc[name].add(counts, labels.pixel.shape[0] * sh * sw)  # no count outgrows the pixels
                if self.config.top_k:
                    gather = functools.partial(self._gather_maps, acts[name])
                    self.top[name].add(to_host(self.kernels.image_max(acts[name])), self.plan[i], gather)
            tops = {f"{name}/top": self.top[name] for name in self.layers}
            self._maybe_save(functools.partial(self._state, "tally", i + 1, {**acc, **tops}))
        tops = {f"{name}/top": self.top[name] for name in self.layers}
        # the finished tally is saved: a failure while writing the results reruns from here
        self._maybe_save(functools.partial(self._state, "tally", len(self.plan), {**acc, **tops}), force=True)
        return {name: Counts(*acc[name].flush()) for name in self.layers}


def dissect(
    source: Source,
    probe: ProbeDataset,
    config: DissectConfig = DissectConfig(),
    progress: Progress = no_progress,
    parallel: DataParallel | None = None,
    resume: ResumeFile | None = None,
) -> dict[str, LayerResult]:
    """Dissects every layer of ``source`` on ``probe``; returns {layer: LayerResult}.

    ``parallel`` is the device mesh (default: every device); ``resume`` saves and restores
    the accumulated state so an interrupted run can continue.
    """
    start = time.perf_counter()
    passes = Passes(source, probe, config, progress, parallel, resume)
    saved = resume.load() if resume is not None else None
    thresholds = passes.thresholds(saved)
    counts = passes.counts(thresholds, saved)
    seconds = time.perf_counter() - start
    results = {}
    for name in passes.layers:
        top = passes.top[name] if config.top_k else None
        results[name] = _layer_result(name, probe.concepts, thresholds[name], counts[name], top, config, len(probe),
                                      seconds)  # fmt: skip
    return results


def _layer_result(
    name: str,
    concepts: Concepts,
    thresholds: np.ndarray,
    counts: Counts,
    top: TopImages | None,
    config: DissectConfig,
    images: int,
    seconds: float,
) -> LayerResult:
    """IoU, labels, detectors and unique detectors (both rules) from one layer's counts."""
    table = iou(counts.intersection, counts.unit_area, counts.concept_area, concepts.category)
    labels = label_units(table, concepts.category, concepts.num_categories, config.iou_threshold, config.detector_rule)
    categories = list(concepts.categories)
    return LayerResult(
        name=name,
        concepts=concepts,
        thresholds=thresholds,
        intersection=counts.intersection,
        unit_area=counts.unit_area,
        concept_area=counts.concept_area,
        iou=table,
        labels=labels,
        unique=unique_detectors(labels, concepts.category, categories),
        unique_tables=unique_detectors_tables(table, labels, categories, config.iou_threshold, config.detector_rule),
        quantile=config.quantile,
        iou_threshold=config.iou_threshold,
        detector_rule=config.detector_rule,
        condition=config.condition,
        images=images,
        seconds=seconds,
        top_images=None if top is None else top.rows,
        top_activations=None if top is None else top.values,
        top_maps=None if top is None else top.maps,
    )
