"""The dissection driver: threshold passes, then one tally pass (DESIGN.md section 5).

    source(batch) -> activations -> histograms -> thresholds     (passes 1..3, until resolved)
    source(batch) -> activations + labels -> counts -> IoU -> labels   (final pass)

Every statistic is an integer sum (or min/max) over batches, reduced over all devices and
hosts inside the compiled kernels (:mod:`dissectjax.parallel`), so the result does not
depend on batch size, order, or how the work is split. With a resume file, the
accumulated state is saved atomically every so often, and a restarted run continues
from the last save with bit-identical results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.data.broden import BrodenDataset
from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import ProbeBatch, batch_plan, iterate_batches
from dissectjax.errors import DissectError
from dissectjax.parallel import DataParallel, to_host
from dissectjax.stats.labels import UnitLabels, iou, label_units, unique_detectors
from dissectjax.stats.quantile import RadixSelect, prefix_histogram
from dissectjax.stats.sparse import SparseTally
from dissectjax.stats.tally import STRATEGIES, Counts, LabelBatch, default_strategy, tally

Progress = Callable[..., Iterable]


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    quantile: float = 0.005
    iou_threshold: float = 0.04
    condition: bool = True
    batch_size: int = 64  # per device: the global batch is batch_size x device count
    strategy: str | None = None  # tally strategy; None picks by backend
    top_k: int = 8  # images kept per unit: the highest maximum activations

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise DissectError(f"--quantile must be between 0 and 1 (exclusive), got {self.quantile}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise DissectError(f"--iou-threshold must be between 0 and 1, got {self.iou_threshold}")
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be positive, got {self.batch_size}")
        if self.top_k < 0:
            raise DissectError(f"top_k must be 0 or more, got {self.top_k}")
        if self.strategy not in (None, *STRATEGIES):
            raise DissectError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


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
    top_images: np.ndarray | None = None  # int64 [U, k]: dataset rows, highest maximum first (-1: none)
    top_activations: np.ndarray | None = None  # float32 [U, k]: those maxima
    top_maps: np.ndarray | None = None  # float32 [U, k, h, w]: the unit's activation map on those rows

    @property
    def units(self) -> int:
        return len(self.thresholds)

    @property
    def detectors(self) -> int:
        return int(self.labels.detector.sum())


# ---- accumulation -----------------------------------------------------------------------
_REDUCE = {"sum": (jnp.add, np.add), "min": (jnp.minimum, np.minimum), "max": (jnp.maximum, np.maximum)}


class _Accumulator:
    """Reduces per-batch device statistics into exact host totals (int64 for sums).

    Sums accumulate in int32 on the device; ``add(value, bound)`` promises that no entry
    of a summed leaf grows by more than ``bound``, and the partial result moves to the
    host before the bounds could overflow int32.
    """

    _LIMIT = 2**31 - 1

    def __init__(self, reductions, total=None):
        self._reductions = reductions
        self._device = None
        self._bound = 0
        self.total = total

    def add(self, value, bound: int) -> None:
        if self._bound + bound > self._LIMIT:
            self.flush()
        if self._device is None:
            self._device = value
        else:
            self._device = jax.tree.map(lambda r, a, b: _REDUCE[r][0](a, b), self._reductions, self._device, value)
        self._bound += bound

    def flush(self):
        if self._device is not None:
            host = jax.tree.map(
                lambda r, a: to_host(a).astype(np.int64) if r == "sum" else to_host(a), self._reductions, self._device
            )
            if self.total is None:
                self.total = host
            else:
                self.total = jax.tree.map(lambda r, a, b: _REDUCE[r][1](a, b), self._reductions, self.total, host)
            self._device, self._bound = None, 0
        return self.total


_HISTOGRAM = ("sum", "min", "max", "sum")  # counts, kmin, kmax, nonfinite
_COUNTS = Counts("sum", "sum", "sum")


# ---- resume -------------------------------------------------------------------------------
class ResumeFile:
    """Atomically saved dissection state, tied to a fingerprint of the run's inputs."""

    def __init__(self, path: str, fingerprint: dict, every_seconds: float = 60.0):
        self.path = path
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        self.every = every_seconds
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def load(self) -> dict | None:
        if not os.path.isfile(self.path):
            return None
        with np.load(self.path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
        if str(state.pop("fingerprint")) != self.fingerprint:
            return None  # saved by a different run: start afresh
        return state

    def save(self, state: dict) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".resume-", suffix=".npz", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, fingerprint=np.array(self.fingerprint), **state)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._last = time.monotonic()

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(tree)
    return {f"{prefix}/{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def _unflatten(prefix: str, like, state: dict):
    """The tree saved by :func:`_flatten`, shaped like ``like``; None if nothing was saved."""
    keys = [f"{prefix}/{i}" for i in range(len(jax.tree.leaves(like)))]
    if not all(k in state for k in keys):
        return None
    return jax.tree.unflatten(jax.tree.structure(like), [state[k] for k in keys])


# ---- the driver -----------------------------------------------------------------------------
def _no_progress(iterable, **_):
    return iterable


class TopImages:
    """Per unit, the k rows with the highest maximum activation (ties: the lower row), and
    those rows' activation maps.

    A total order on (value, row) makes the result independent of batching and order;
    the maps are fetched from the device only for the entries a batch brings into the top k.
    """

    def __init__(self, units: int, k: int):
        self.rows = np.full((units, k), -1, np.int64)
        self.values = np.full((units, k), -np.inf, np.float32)
        self.maps: np.ndarray | None = None  # float32 [U, k, h, w], once a batch has been seen

    def add(self, maxima: np.ndarray, rows: np.ndarray, gather: Callable[[np.ndarray], np.ndarray]) -> None:
        """maxima float [B, U] of the batch's rows int [B] (-1 for padding);
        ``gather(positions int [U, j]) -> float32 [U, j, h, w]`` fetches unit u's map of
        batch position ``positions[u, i]``."""
        k = self.rows.shape[1]
        none = np.iinfo(np.int64).max
        values = np.where(rows[:, None] >= 0, maxima, -np.inf).T.astype(np.float32)  # [U, B]
        ids = np.broadcast_to(np.where(rows >= 0, rows, none), values.shape)
        all_values = np.concatenate([self.values, values], axis=1)
        all_rows = np.concatenate([np.where(self.rows >= 0, self.rows, none), ids], axis=1)
        order = np.lexsort((all_rows, -all_values), axis=-1)[:, :k]  # [U, k] into (kept, batch)
        self.values = np.take_along_axis(all_values, order, axis=1)
        rows_kept = np.take_along_axis(all_rows, order, axis=1)
        self.rows = np.where(np.isfinite(self.values), rows_kept, -1)
        self.maps = self._merge_maps(order, (order >= k) & np.isfinite(self.values), gather)

    def _merge_maps(self, order: np.ndarray, new: np.ndarray, gather) -> np.ndarray | None:
        units, k = order.shape
        if not new.any():
            return None if self.maps is None else np.take_along_axis(self.maps, order[..., None, None], axis=1)
        # the new entries first in each unit's row, padded to a power of two (few compiled shapes)
        width = min(k, 1 << int(new.sum(axis=1).max() - 1).bit_length())
        slots = np.argsort(~new, axis=1, kind="stable")[:, :width]  # [U, width]
        positions = np.take_along_axis(np.where(new, order - k, 0), slots, axis=1)
        fetched = np.asarray(gather(positions), np.float32)  # [U, width, h, w]
        if self.maps is None:
            self.maps = np.zeros((units, k, *fetched.shape[2:]), np.float32)
        maps = np.take_along_axis(self.maps, np.where(new, 0, order)[..., None, None], axis=1)
        u, j = np.nonzero(np.take_along_axis(new, slots, axis=1))
        maps[u, slots[u, j]] = fetched[u, j]
        return maps

    def flush(self):
        maps = np.zeros((*self.rows.shape, 0, 0), np.float32) if self.maps is None else self.maps
        return self.rows, self.values, maps

    def load(self, saved) -> None:
        if saved is not None:
            self.rows, self.values, maps = (np.asarray(x) for x in saved)
            self.maps = maps if maps.size else None


@functools.lru_cache(maxsize=8)
def _kernels(parallel: DataParallel):
    """The per-batch kernels for a mesh: (histogram, tally, image_max, unit_maps), reduced over devices.

    ``tally(acts, labels, thresholds, category, num_categories, condition, strategy)``;
    ``image_max(acts)`` is each image's maximum per unit [B, U] and ``unit_maps(acts, positions)``
    unit u's maps at batch positions ``positions[u]`` [U, j, h, w], both replicated to every process.
    """
    hist = parallel.reduce(prefix_histogram, 2, _HISTOGRAM)
    histogram = jax.jit(
        lambda a, v, p, depth, bits, extremes: hist(a, v, p, depth=depth, bits=bits, extremes=extremes),
        static_argnums=(3, 4, 5),
    )
    count = parallel.reduce(lambda a, labels, t, cat, **kw: tally(a, t, labels, cat, **kw), 2, _COUNTS)
    dense = jax.jit(
        lambda a, labels, t, cat, k, cond, strategy: count(
            a, labels, t, cat, num_categories=k, condition=cond, strategy=strategy
        ),
        static_argnums=(4, 5, 6),
    )
    sparse = SparseTally(
        parallel, fallback=lambda a, labels, t, cat, k, cond: dense(a, labels, t, cat, k, cond, "segment")
    )
    image_max = jax.jit(lambda a: jnp.max(a, axis=(1, 2)), out_shardings=parallel.replicated)  # [B, U] everywhere
    unit_maps = jax.jit(  # acts [B, h, w, U], positions [U, j] -> [U, j, h, w] everywhere
        lambda a, positions: a[positions, :, :, jnp.arange(a.shape[-1])[:, None]], out_shardings=parallel.replicated
    )

    def tally_fn(acts, labels, t, cat, num_categories, condition, strategy):
        if strategy == "sparse":
            return sparse(acts, labels, t, cat, num_categories, condition)
        return dense(acts, labels, t, cat, num_categories, condition, strategy)

    return histogram, tally_fn, image_max, unit_maps


class _Run:
    """One dissection: the passes over the probe set and their saved state."""

    def __init__(self, source, probe, config, progress, parallel, resume):
        self.source, self.probe, self.config = source, probe, config
        self.progress = progress if parallel.is_main else _no_progress
        self.dp = parallel
        self.resume = resume
        self.plan = batch_plan(probe, parallel.global_batch_size(config.batch_size))
        self.layers = list(source.layers)
        self.select = {name: RadixSelect(source.units[name], config.quantile) for name in self.layers}
        self._histogram, self._tally, self._image_max, self._unit_maps = _kernels(parallel)
        self.top = {name: TopImages(source.units[name], config.top_k) for name in self.layers}

    # batches: this process's rows of every global batch, sharded onto the mesh
    def _batches(self, start: int, labels: bool, desc: str):
        local_plan = [self.dp.local_rows(rows) for rows in self.plan[start:]]
        batches = iterate_batches(self.probe, local_plan, images=self.source.needs_images, labels=labels)
        return self.progress(batches, total=len(self.plan), initial=start, desc=desc, unit="batch", leave=False)

    def _activations(self, batch: ProbeBatch) -> dict[str, jax.Array]:
        return self.source.activations(batch, self.dp)

    def _gather_maps(self, acts: jax.Array, positions: np.ndarray) -> np.ndarray:
        return to_host(self._unit_maps(acts, self.dp.replicate(positions.astype(np.int32))))

    def _maybe_save(self, state_fn, force=False):
        if self.resume is not None and (force or self.resume.due()):
            state = state_fn()
            if self.dp.is_main:
                self.resume.save(state)

    def _state(self, stage: str, batch: int, accumulators: dict) -> dict:
        """Everything needed to continue from ``batch`` of the current pass."""
        state = {"stage": np.array(stage), "batch": np.array(batch), **self._select_state()}
        for name, acc in accumulators.items():
            total = acc.flush()
            if total is not None:
                state.update(_flatten(f"{stage}/{name}", total))
        return state

    def _select_state(self) -> dict:
        state = {}
        for name, s in self.select.items():
            for field in ("prefix", "above", "resolved", "threshold_keys"):
                state[f"select/{name}/{field}"] = getattr(s, field)
            state[f"select/{name}/level"] = np.array(s.level)
            state[f"select/{name}/total"] = np.array(-1 if s.total is None else s.total)
        return state

    def _restore_select(self, state: dict) -> None:
        for name, s in self.select.items():
            for field in ("prefix", "above", "resolved", "threshold_keys"):
                setattr(s, field, state[f"select/{name}/{field}"])
            s.level = int(state[f"select/{name}/level"])
            total = int(state[f"select/{name}/total"])
            s.total = None if total < 0 else total

    def thresholds(self, saved: dict | None) -> dict[str, np.ndarray]:
        if saved is not None:
            self._restore_select(saved)
        while not all(s.done for s in self.select.values()):
            active = [name for name, s in self.select.items() if not s.done]
            level = self.select[active[0]].level
            start = 0
            acc = {name: _Accumulator(_HISTOGRAM) for name in active}
            if saved is not None and str(saved["stage"]) == "threshold":
                start = int(saved["batch"])
                for name in active:
                    acc[name].total = _unflatten(f"threshold/{name}", _HISTOGRAM, saved)
            saved = None

            prefixes = {name: self.dp.replicate(self.select[name].prefix) for name in active}
            for i, batch in enumerate(self._batches(start, False, f"thresholds, pass {level + 1}"), start=start):
                acts = self._activations(batch)
                valid = self.dp.shard(batch.valid)
                for name in active:
                    s = self.select[name]
                    a = acts[name]
                    acc[name].add(
                        self._histogram(a, valid, prefixes[name], s.depth, s.bits, s.extremes),
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

    def counts(self, thresholds: dict[str, np.ndarray], saved: dict | None) -> dict[str, Counts]:
        concepts = self.probe.concepts
        strategy = self.config.strategy or default_strategy()
        category = self.dp.replicate(concepts.category.astype(np.int32))
        device_thresholds = {name: self.dp.replicate(t.astype(np.float32)) for name, t in thresholds.items()}
        acc = {name: _Accumulator(_COUNTS) for name in self.layers}
        start = 0
        if saved is not None and str(saved["stage"]) == "tally":
            start = int(saved["batch"])
            for name in self.layers:
                acc[name].total = _unflatten(f"tally/{name}", _COUNTS, saved)
                self.top[name].load(_unflatten(f"tally/{name}/top", (0, 0, 0), saved))

        for i, batch in enumerate(self._batches(start, True, "tally"), start=start):
            acts = self._activations(batch)
            labels = LabelBatch(*(self.dp.shard(x) for x in batch.labels))
            _, _, sh, sw = labels.pixel.shape
            for name in self.layers:
                counts = self._tally(acts[name], labels, device_thresholds[name], category, concepts.num_categories,
                                     self.config.condition, strategy)  # fmt: skip
                acc[name].add(counts, labels.pixel.shape[0] * sh * sw)  # no count outgrows the pixels
                if self.config.top_k:
                    gather = functools.partial(self._gather_maps, acts[name])
                    self.top[name].add(to_host(self._image_max(acts[name])), self.plan[i], gather)
            tops = {f"{name}/top": self.top[name] for name in self.layers}
            self._maybe_save(functools.partial(self._state, "tally", i + 1, {**acc, **tops}))
        return {name: Counts(*acc[name].flush()) for name in self.layers}


def dissect(
    source,
    probe: BrodenDataset,
    config: DissectConfig = DissectConfig(),
    progress: Progress = _no_progress,
    parallel: DataParallel | None = None,
    resume: ResumeFile | None = None,
) -> dict[str, LayerResult]:
    """Dissects every layer of ``source`` on ``probe``; returns {layer: LayerResult}.

    ``parallel`` is the device mesh (default: every device); ``resume`` saves and restores
    the accumulated state so an interrupted run can continue.
    """
    start = time.perf_counter()
    run = _Run(source, probe, config, progress, parallel or DataParallel.create(), resume)
    saved = resume.load() if resume is not None else None
    thresholds = run.thresholds(saved)
    counts = run.counts(thresholds, saved)
    seconds = time.perf_counter() - start
    concepts = probe.concepts
    results = {}
    for name in run.layers:
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
            top_images=run.top[name].rows if config.top_k else None,
            top_activations=run.top[name].values if config.top_k else None,
            top_maps=run.top[name].maps if config.top_k else None,
        )
    return results
