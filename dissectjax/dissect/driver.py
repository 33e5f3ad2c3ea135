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

import collections
import concurrent.futures
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import jax
import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import Decoder, ProbeBatch, batch_plan, shape_buckets
from dissectjax.dissect.accumulate import COUNT_REDUCTIONS, HISTOGRAM_REDUCTIONS, Accumulator
from dissectjax.dissect.cache import ActivationCache, Pipeline, cache_bytes, host_memory, open_cache
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.kernels import kernels
from dissectjax.dissect.protocols import ProbeDataset, Progress, Source, no_progress
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.resume import ResumeFile, flatten, restore_select, select_state, unflatten
from dissectjax.dissect.top_images import TopImages
from dissectjax.errors import DissectError
from dissectjax.parallel import DataParallel, to_host
from dissectjax.stats.labels import iou, label_units, unique_detectors, unique_detectors_tables
from dissectjax.stats.quantile import threshold_search
from dissectjax.stats.tally import Counts, LabelBatch, count_bound, default_strategy


def per_device_batch(config: DissectConfig, images: int) -> int:
    """Rows per device and batch: ``config.batch_size``, or the probe set's size where that is
    smaller (batches are padded to full size, so a huge batch_size would only allocate
    padding). Independent of the device count, so every mesh runs the same per-device program."""
    return max(1, min(config.batch_size, images))


# ---- will one batch fit? ------------------------------------------------------------------------
GiB = float(1 << 30)


class BatchMemory(NamedTuple):
    """What one batch of ``batch`` rows needs on a device (bytes), at its peak: the tally of ``layer``."""

    batch: int
    layer: str
    parts: dict[str, int]  # what it is made of, by name

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {_size(n)}" for name, n in self.parts.items())


def _size(n: float) -> str:
    """Bytes, readably: ``1.5 GiB``, ``45.9 MiB``, ``19.5 KiB``."""
    for unit, scale in (("GiB", GiB), ("MiB", float(1 << 20))):
        if n >= scale / 10:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def batch_memory(batch: int, image_size: tuple[int, int] | None, label_size: tuple[int, int], label_layers: int,
                 layers: Mapping[str, tuple[int, int, int]], concepts: int, strategy: str) -> BatchMemory:  # fmt: skip
    """Estimates the device memory one batch of a dissection needs, from what the driver holds
    at once: the images (uint8 and their float32 copy in the model; ``image_size`` None for
    stored activations), every layer's activations ``layers[name] = (h, w, U)`` in float32
    (a source computes all layers together), the label maps (int32 [L, sh, sw], read and
    re-indexed), and for the one layer being tallied, its activations upsampled to the label
    size in float32 [sh, sw, U], plus for the ``dense`` strategy a bf16 one-hot [sh, sw, C]. An
    estimate, linear in ``batch``: XLA fuses some of these and needs a little more elsewhere.

    >>> m = batch_memory(64, (224, 224), (112, 112), 5, {"layer4": (7, 7, 512)}, 1202, "dense")
    >>> m.layer, round(m.total / GiB, 2)
    ('layer4', 3.41)
    >>> m.describe()
    'images 45.9 MiB, activations 6.1 MiB, labels 31.2 MiB, layer4 at 112x112 1.5 GiB, one-hot labels 1.8 GiB'
    """
    pixels = label_size[0] * label_size[1]
    layer = max(layers, key=lambda name: layers[name][2])  # the most units: the largest upsampled masks
    parts = {
        "images": batch * (image_size[0] * image_size[1] * 3 * 5 if image_size else 0),
        "activations": batch * sum(h * w * units * 4 for h, w, units in layers.values()),
        "labels": batch * (label_layers * pixels * 4 * 2 + concepts * 4 * 2),
        f"{layer} at {label_size[0]}x{label_size[1]}": batch * pixels * layers[layer][2] * 4,
    }
    if strategy == "dense":
        parts["one-hot labels"] = batch * pixels * concepts * 2
    return BatchMemory(batch, layer, parts)


def device_memory() -> int | None:
    """Bytes one device has free for a batch: an accelerator's allocator limit less what it holds
    (``memory_stats``), or on the CPU the host's available memory shared by its local devices
    (Linux: ``MemAvailable`` of /proc/meminfo, else free pages); None where unknown."""
    devices = jax.local_devices()
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    available = host_memory()
    return None if available is None else available // len(devices)


def check_batch_memory(source: Source, probe: ProbeDataset, config: DissectConfig,
                       available: int | None = None) -> BatchMemory:  # fmt: skip
    """Refuses a batch size whose batches cannot fit on a device (:func:`batch_memory` of the
    probe set's largest rows against ``available`` bytes, default :func:`device_memory`),
    naming a batch size that fits. Returns the estimate."""
    batch = per_device_batch(config, len(probe))
    sizes = np.unique(np.asarray(probe.shapes).reshape(-1, 4), axis=0)
    maps = getattr(source, "map_shapes", None) or {}
    layers = {name: (*maps.get(name, (0, 0)), source.units[name]) for name in source.layers}
    strategy = config.strategy or default_strategy()
    estimates = [batch_memory(batch, (int(ih), int(iw)) if source.needs_images else None, (int(sh), int(sw)),
                              probe.label_layers, layers, len(probe.concepts), strategy)
                 for ih, iw, sh, sw in sizes]  # fmt: skip
    worst = max(estimates, key=lambda m: m.total)
    available = device_memory() if available is None else available
    if available is not None and worst.total > available:
        fits = int(available // max(1, worst.total // batch))
        advice = f"use --batch-size {fits} or less" if fits else "no batch size fits: use a machine with more memory"
        raise DissectError(f"--batch-size {batch} needs about {_size(worst.total)} per device for layer "
                           f"{worst.layer} ({worst.describe()}), this device has {_size(available)} available; "
                           f"{advice}")  # fmt: skip
    return worst


class Passes:
    """One dissection's passes over the probe set, and their saved state.

    ``thresholds(saved)`` runs the threshold passes, ``counts(thresholds, saved)`` the
    tally pass (which also fills ``top``); ``saved`` is a :meth:`ResumeFile.load` state to
    continue from, or None. :func:`dissect` runs both; run them one by one to time them.

    ``pipeline`` says how (:class:`~dissectjax.dissect.cache.Pipeline`): the first pass that
    reads every batch keeps the activations (``cache``) for the passes after it, which then
    decode no images and run no forward pass; the tally pass decodes the label maps, the
    threshold passes never do. Rows are decoded by ``decode_workers`` processes where the
    probe set reads files (``decodes_files``), else by threads.
    """

    def __init__(
        self,
        source: Source,
        probe: ProbeDataset,
        config: DissectConfig = DissectConfig(),
        progress: Progress = no_progress,
        parallel: DataParallel | None = None,
        resume: ResumeFile | None = None,
        pipeline: Pipeline = Pipeline(),
    ):
        self.parallel = parallel or DataParallel.create()
        self.source, self.probe, self.config, self.pipeline = source, probe, config, pipeline
        check_batch_memory(source, probe, config)  # before any work
        self.progress = progress if self.parallel.is_main else no_progress
        self.resume = resume
        self.plan = batch_plan(probe, self.parallel.global_batch_size(per_device_batch(config, len(probe))))
        self.layers = list(source.layers)
        self.rules = config.rules
        self.select = {name: threshold_search(self.rules.quantile, source.units[name], config.quantile)
                       for name in self.layers}  # fmt: skip
        self.kernels = kernels(self.parallel)
        self.top = {name: TopImages(source.units[name], config.top_k) for name in self.layers}
        self._one_shape = len(shape_buckets(probe)) == 1  # every batch's maps one size
        self.cache = self._open_cache()
        self._filling = False  # whether the current pass keeps what the source computes
        processes = pipeline.decode_workers if getattr(probe, "decodes_files", False) else 0
        self._decoder = Decoder(probe, processes)  # its processes (if any) serve every pass, until close()

    def _open_cache(self) -> ActivationCache | None:
        maps = getattr(self.source, "map_shapes", None) or {}
        rows = {name: (*maps.get(name, (1, 1)), self.source.units[name]) for name in self.layers}
        local_batch = len(self.plan[0]) // self.parallel.process_count if self.plan else 0
        need = cache_bytes(rows, len(self.plan) * local_batch)
        free = device_memory()
        free = None if free is None else free * len(jax.local_devices())
        return open_cache(self.pipeline, self.source.needs_images, need, len(self.plan), free)

    @property
    def cached(self) -> bool:
        """Whether every batch's activations are kept (the passes left read them, not the source)."""
        return self.cache is not None and self.cache.complete

    def close(self) -> None:
        """Drops the kept activations (and deletes a cache file), and stops the decoding processes."""
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        self._decoder.close()

    # batches: this process's rows of every global batch, sharded onto the mesh
    def _batches(self, start: int, labels: bool, desc: str) -> Iterator[ProbeBatch]:
        local_plan = [self.parallel.local_rows(rows) for rows in self.plan[start:]]
        self._filling = self.cache is not None and not self.cache.complete and start == 0
        images = self.source.needs_images and not self.cached
        batches = self._decoder.batches(local_plan, images=images, labels=labels)
        return self.progress(batches, total=len(self.plan), initial=start, desc=desc, unit="batch", leave=False)

    def _activations(self, i: int, batch: ProbeBatch) -> dict[str, jax.Array]:
        """Batch i's activations: kept ones where the cache is complete, else the source's (kept
        while a pass fills the cache)."""
        if self.cached:
            return self.cache.get(i, self.parallel)
        acts = self.source.activations(batch, self.parallel)
        if self._filling:
            self.cache.put(i, acts)
        return acts

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
        """Per layer, float32 [U]: each unit's (1 - quantile) quantile of its activations, by the
        configuration's quantile rule."""
        try:
            return self._thresholds(saved)
        except BaseException:
            self.close()
            raise

    def counts(self, thresholds: dict[str, np.ndarray], saved: dict | None = None) -> dict[str, Counts]:
        """Per layer, the int64 counts (intersection [U, C], unit_area [U, K], concept_area [C])
        of the units' masks ``upsampled activations > thresholds``. The last pass: the kept
        activations are dropped after it."""
        try:
            return self._counts(thresholds, saved)
        finally:
            self.close()

    def _thresholds(self, saved: dict | None) -> dict[str, np.ndarray]:
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

            # late passes histogram only the units still open
            subsets = {name: self.select[name].open_units() for name in active}
            units = {name: np.arange(self.select[name].units) if u is None else u for name, u in subsets.items()}
            prefixes = {name: self.parallel.replicate(self.select[name].prefix[units[name]]) for name in active}
            on_device = {name: None if u is None else self.parallel.replicate(u.astype(np.int32))
                         for name, u in subsets.items()}  # fmt: skip
            # the first pass counts the values below a running floor in bin 0 (raise_floor): they
            # cost no scatter; restarted at 0 after a resume, as any floor at or below it is as exact.
            # A floor needs each unit's number of values in advance: only where every batch has one
            # shape (rows of several sizes give maps of several sizes, bucket by bucket)
            floored = level == 0 and self._one_shape
            floors = {name: self.parallel.replicate(np.zeros(self.select[name].units, np.uint32)) if floored
                      else None for name in active}  # fmt: skip
            assumed = {name: set() for name in active}  # values per unit the floors were raised for
            for i, batch in enumerate(self._batches(start, False, f"thresholds, pass {level + 1}"), start=start):
                acts = self._activations(i, batch)
                valid = self.parallel.shard(batch.valid)
                for name in active:
                    s = self.select[name]
                    a = acts[name]
                    values = len(self.probe) * int(np.prod(a.shape[1:-1]))
                    assumed[name].add(values)
                    deciding = s.deciding(values)
                    histogram = functools.partial(self.kernels.histogram, a, valid, prefixes[name], s.depth, s.bits,
                                                  s.extremes, units=on_device[name], floor=floors[name],
                                                  deciding=np.int32(min(deciding, 2**31 - 1)))  # fmt: skip

                    def step(into, histogram=histogram, name=name, floors=floors):  # the floor raised as it goes
                        total, floors[name] = histogram(into)
                        return total

                    acc[name].update(step, int(np.prod(a.shape[:-1])))
                self._maybe_save(functools.partial(self._state, "threshold", i + 1, acc))
            for name in active:
                counts, kmin, kmax, nonfinite = acc[name].flush()
                if nonfinite.any():
                    u = int(units[name][np.argmax(nonfinite > 0)])
                    raise DissectError(
                        f"layer {name!r} has {int(nonfinite.sum())} NaN/Inf activation values (first in unit {u}); "
                        "fix the model or the activations file"
                    )
                self.select[name].step(counts, kmin, kmax, subsets[name])
                if floored and assumed[name] != {self.select[name].total}:  # a floor may have left out a deciding value
                    raise DissectError(
                        f"layer {name!r}: the first threshold pass counted {self.select[name].total} values per unit, "
                        f"but its floor assumed {sorted(assumed[name])} (maps of several sizes from batches of one "
                        "shape?); set DISSECTJAX_COMPACT_FROM above any batch's values to dissect without a floor"
                    )
            self._maybe_save(functools.partial(self._state, "select", 0, {}), force=True)
        return {name: s.thresholds for name, s in self.select.items()}

    def _counts(self, thresholds: dict[str, np.ndarray], saved: dict | None) -> dict[str, Counts]:
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

        def prepared(batches):  # in batch order, on this thread: the cache fills in order
            for i, batch in enumerate(batches, start=start):
                yield i, self._activations(i, batch), LabelBatch(*(self.parallel.shard(x) for x in batch.labels))

        def tally(item):  # may run on a worker thread
            _, acts, labels = item
            return {name: (self.kernels.tally(acts[name], labels, device_thresholds[name], category,
                                              concepts.num_categories, self.rules, strategy),
                           to_host(self.kernels.image_max(acts[name])) if self.config.top_k else None)
                    for name in self.layers}  # fmt: skip

        batches = prepared(self._batches(start, True, "tally"))
        for (i, acts, labels), per_layer in in_order(tally, batches, tallies_in_flight(strategy, self.parallel.size)):
            for name, (counts, maxima) in per_layer.items():
                acc[name].add(counts, count_bound(labels, self.rules))
                if self.config.top_k:
                    self.top[name].add(maxima, self.plan[i], functools.partial(self._gather_maps, acts[name]))
            tops = {f"{name}/top": self.top[name] for name in self.layers}
            self._maybe_save(functools.partial(self._state, "tally", i + 1, {**acc, **tops}))
        tops = {f"{name}/top": self.top[name] for name in self.layers}
        # the finished tally is saved: a failure while writing the results reruns from here
        self._maybe_save(functools.partial(self._state, "tally", len(self.plan), {**acc, **tops}), force=True)
        return {name: Counts(*acc[name].flush()) for name in self.layers}


def tallies_in_flight(strategy: str, devices: int) -> int:
    """Batches tallied at once. The sparse tally on one CPU device waits on the host between its
    programs, and most of its steps (scatters, gathers) use one core: one batch more than there
    are cores (at most eight) keeps them busy, each batch's programs running on its own thread.
    One elsewhere: where dispatch is asynchronous the device stays busy anyway, and on a mesh of
    several devices, programs with collectives dispatched from two threads at once can reach the
    devices in different orders, and XLA's CPU collectives then wait on each other for ever."""
    if strategy != "sparse" or jax.default_backend() != "cpu" or devices > 1:
        return 1
    return min(8, (os.cpu_count() or 1) + 1)


def in_order(fn: Callable, items: Iterator, in_flight: int) -> Iterator[tuple]:
    """(item, fn(item)) for each item, in order, with up to ``in_flight`` calls running at once
    on worker threads (one: on this thread). ``items`` is drawn on this thread."""
    if in_flight <= 1:
        for item in items:
            yield item, fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > in_flight:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()


def dissect(
    source: Source,
    probe: ProbeDataset,
    config: DissectConfig = DissectConfig(),
    progress: Progress = no_progress,
    parallel: DataParallel | None = None,
    resume: ResumeFile | None = None,
    pipeline: Pipeline = Pipeline(),
) -> dict[str, LayerResult]:
    """Dissects every layer of ``source`` on ``probe``; returns {layer: LayerResult}.

    ``parallel`` is the device mesh (default: every device); ``resume`` saves and restores
    the accumulated state so an interrupted run can continue; ``pipeline`` says how the passes
    run (activation cache, decoding processes), with identical results whichever way.
    """
    start = time.perf_counter()
    passes = Passes(source, probe, config, progress, parallel, resume, pipeline)
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
        semantics=config.semantics,
        images=images,
        seconds=seconds,
        top_images=None if top is None else top.rows,
        top_activations=None if top is None else top.values,
        top_maps=None if top is None else top.ranked_maps,
    )
