"""Throughput benchmarks of dissection (``dissectjax bench``; results in BENCHMARKS.md).

Workloads:

* ``broden-scale``: ResNet-18 ``layer4`` shapes: 512 units at 7 x 7 (224 px input),
  112 x 112 segmentations, 1,200 concepts in 6 categories (object in two label layers,
  part, material, color pixel-level; scene, texture image-level), activations and labels
  generated in memory (a pool of distinct rows, cycled to the requested size).
* ``small``: the demo's SceneNet (random init, all five conv layers) on synthetic scenes.
* ``semantics``: broden-scale data with planted units (each responds to one concept,
  plus noise), dissected under both counting rules (``netdissect`` and ``lite``) at
  q = 0.005 and 0.05: detectors, unique detectors under both rules, the planted units' IoU
  with their concept, and each pass's speed, in one table (docs/SEMANTICS.md).

Timings exclude compilation: a warm-up run compiles every program first (on the whole
workload in memory; on the first 8 batches of the on-disk set, whose timed run may still
compile a size of compacted arrays it meets for the first time).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax
import numpy as np

from dissectjax.data.broden_disk import BRODEN_CATEGORIES, BRODEN_PIXEL_LAYERS, blocky, broden_concepts, broden_labels
from dissectjax.data.memory import InMemoryProbe
from dissectjax.data.probe import ProbeBatch
from dissectjax.dissect import DissectConfig, Passes
from dissectjax.dissect.cache import PLACES, ROOM, Pipeline, default_decode_workers
from dissectjax.dissect.driver import device_memory
from dissectjax.errors import DissectError
from dissectjax.flags import OneLineParser, fraction, non_negative_int, positive_float, positive_int
from dissectjax.parallel import DataParallel


def broden_scale(pool: int = 256, size: int | None = None, units: int = 512, seed: int = 0):
    """(probe, activations [pool, 7, 7, units] float32) of the broden-scale workload."""
    rng = np.random.default_rng(seed)
    concepts = broden_concepts()
    pixel, image = broden_labels(rng, pool, concepts)
    probe = InMemoryProbe(concepts, pixel, image, size=size)
    # spatially smooth, ReLU'd activations: a few units fire strongly on a few images
    low = rng.gamma(1.5, size=(pool, 4, 4, units)).astype(np.float32)
    acts = np.maximum(jax.image.resize(low, (pool, 7, 7, units), "bilinear") - 1.0, 0.0)
    return probe, np.asarray(acts, np.float32)


class PooledSource:
    """Activations of row i = pool entry i % P (one layer)."""

    needs_images = False

    def __init__(self, acts: np.ndarray, name: str = "layer4"):
        self._acts = acts
        self.layers = [name]
        self.units = {name: acts.shape[-1]}
        self.description = f"{len(acts)} pooled activation rows"

    def activations(self, batch: ProbeBatch, parallel: DataParallel):
        rows = np.where(batch.index >= 0, batch.index % len(self._acts), 0)
        return {self.layers[0]: parallel.shard(self._acts[rows])}


@dataclasses.dataclass
class Timing:
    images: int
    threshold_seconds: float
    tally_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.threshold_seconds + self.tally_seconds

    def rates(self) -> dict[str, float]:
        return {
            "pass 1 (thresholds)": self.images / self.threshold_seconds,
            "pass 2 (tally)": self.images / self.tally_seconds,
            "end to end": self.images / self.total_seconds,
        }


def time_dissection(source, probe, config: DissectConfig, parallel: DataParallel | None = None, warmup=None,
                    pipeline: Pipeline = Pipeline()):  # fmt: skip
    """(Timing, thresholds, counts) of one dissection, after a warm-up run on ``warmup``
    (default: the same probe set, so that every program the timed run needs is compiled
    first: the sparse tally compiles one program per size of its compacted arrays)."""
    parallel = parallel or DataParallel.create()
    warmup = probe if warmup is None else warmup
    warm = Passes(source, warmup, config, parallel=parallel, pipeline=pipeline)
    warm.counts(warm.thresholds())
    passes = Passes(source, probe, config, parallel=parallel, pipeline=pipeline)
    start = time.perf_counter()
    thresholds = passes.thresholds()
    middle = time.perf_counter()
    counts = passes.counts(thresholds)
    end = time.perf_counter()
    return Timing(len(probe), middle - start, end - middle), thresholds, counts


def _first_rows(probe, n):
    batch = probe.load_batch(np.arange(min(n, len(probe))), images=False, labels=True)
    return batch.labels.pixel, batch.labels.image


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: ``VmHWM`` of /proc/self/status where there is
    one (it starts afresh when a process starts, unlike ``getrusage``'s ``ru_maxrss``, which on
    Linux a child started from a larger parent inherits), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- the command ------------------------------------------------------------------------
def _baseline():
    """benchmarks/baseline_numpy.py of the source tree, or None in an installed copy."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "baseline_numpy.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("baseline_numpy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_broden_scale(images: int, pool: int, baseline_images: int, batch_size: int, quantile: float, say=print):
    """Times dissectjax (and the NumPy baseline on ``baseline_images``) on broden-scale data."""
    parallel = DataParallel.create()
    probe, acts = broden_scale(pool=pool, size=images)
    source = PooledSource(acts)
    config = DissectConfig(quantile=quantile, batch_size=batch_size)
    say(
        f"broden-scale: {images} images (pool {pool}), 512 units 7x7 -> 112x112, {len(probe.concepts)} concepts, "
        f"{jax.device_count()} {jax.default_backend()} device(s), batch {parallel.global_batch_size(batch_size)}"
    )
    baseline = _baseline() if baseline_images else None
    if baseline is not None:  # first, while no thread of this process has run yet, after a warm-up
        n = min(baseline_images, pool)
        pixel, image = _first_rows(probe, n)
        tally = functools.partial(baseline.tally, concept_category=probe.concepts.category,
                                  num_categories=probe.concepts.num_categories)  # fmt: skip
        tally(acts[:8], pixel[:8], image[:8], baseline.thresholds(acts[:8], quantile))
        start = time.perf_counter()
        base_thresholds = baseline.thresholds(acts[:n], quantile)
        middle = time.perf_counter()
        ref = tally(acts[:n], pixel, image, base_thresholds)
        base = Timing(n, middle - start, time.perf_counter() - middle)
    # in memory, as the baseline's: copied onto the device by the first pass, read there by the
    # others, where they take at most ROOM of its free memory
    free = device_memory()
    place = "device" if free is None or images * acts[0].nbytes <= ROOM * free * jax.local_device_count() else "none"
    timing, _, _ = time_dissection(source, probe, config, parallel, pipeline=Pipeline(cache=place))
    rows = {"dissectjax": timing.rates()}
    extra = {}
    if baseline is not None:
        rows["numpy baseline (Lite-style)"] = base.rates()
        rows["ratio"] = {k: rows["dissectjax"][k] / v for k, v in base.rates().items()}
        # the same masks: dissectjax's tally of the baseline's rows at the baseline's thresholds
        small = Passes(source, InMemoryProbe(probe.concepts, pixel, image), config, parallel=parallel)
        counts = small.counts({"layer4": base_thresholds})["layer4"]
        extra["max |intersection difference| vs baseline"] = int(np.abs(counts.intersection - ref[0]).max())
        extra["baseline images"] = n
    return rows, extra


PLANTED_LAYERS = (0, 2, 3, 4)  # object, part, material, color: the pixel layers planted units read
SOURCES = {  # Broden's mix: which categories each source dataset labels, and its share of the rows
    "ade": ({"object", "part", "color", "scene"}, 0.55),
    "pascal": ({"object", "part", "color"}, 0.25),
    "opensurfaces": ({"material", "color"}, 0.15),
    "dtd": ({"texture"}, 0.05),  # image-level labels only
}


def semantics_fixture(images: int, units: int = 512, seed: int = 0):
    """(probe, activations [images, 7, 7, units]) shaped like broden-scale, but labelled like
    Broden: each row comes from one source dataset that labels only some categories (one in
    twenty rows has image-level labels only), concepts are Zipf-distributed (a few common, many
    rare), and the second object layer may repeat the first's label at a pixel."""
    rng = np.random.default_rng(seed)
    probe, acts = broden_scale(pool=images, units=units, seed=seed)  # its concepts and activations; labels below
    concepts = probe.concepts
    cols = {c: np.flatnonzero(concepts.category == k) for k, c in enumerate(BRODEN_CATEGORIES)}

    def zipf(n):
        p = 1.0 / np.arange(1, n + 1)
        return p / p.sum()

    coverage = {"object": 0.6, "part": 0.05, "material": 0.3, "color": 1.0}  # parts: small regions
    pixel = np.stack([blocky(rng, images, 112, 8, cols[c], coverage[c], None if c == "color" else zipf(len(cols[c])))
                      for c in BRODEN_PIXEL_LAYERS], axis=1)  # fmt: skip
    pixel[:, 1] = np.where(rng.random((images, 1, 1)) < 0.3, pixel[:, 1], -1)
    source = rng.choice(list(SOURCES), images, p=[share for _, share in SOURCES.values()])
    labelled = {c: np.array([c in SOURCES[s][0] for s in source]) for c in BRODEN_CATEGORIES}
    for layer, c in enumerate(BRODEN_PIXEL_LAYERS):
        pixel[~labelled[c], layer] = -1
    scene = np.where(labelled["scene"], rng.choice(cols["scene"], images, p=zipf(len(cols["scene"]))), -1)
    texture = np.where(labelled["texture"], rng.choice(cols["texture"], images, p=zipf(len(cols["texture"]))), -1)
    probe = InMemoryProbe(concepts, pixel.astype(np.int16), np.stack([scene, texture], 1).astype(np.int32))
    return probe, acts


def plant_units(probe: InMemoryProbe, acts: np.ndarray, planted: int, seed: int = 0):
    """Makes units 0 .. planted - 1 of ``acts`` [P, 7, 7, U] respond to one concept each: the
    concept's share of each 16 x 16 cell of the 112 x 112 label map, plus the unit's random
    activation at a quarter strength. Concepts are the most frequent of each pixel layer, the layers in turn.
    Returns (acts, concept index of each planted unit int [planted])."""
    rng = np.random.default_rng(seed)
    pixel = probe._pixel  # [P, L, 112, 112], the pool
    pool = len(pixel)
    ranked = {}
    for layer in PLANTED_LAYERS:
        values, counts = np.unique(pixel[:, layer][pixel[:, layer] >= 0], return_counts=True)
        ranked[layer] = list(values[np.argsort(-counts, kind="stable")])
    acts = acts.copy()
    concepts = np.zeros(planted, np.int64)
    for u in range(planted):
        left = [layer for layer in PLANTED_LAYERS if ranked[layer]]  # colours run out first
        if not left:
            raise DissectError(f"only {u} concepts label pixels; cannot plant {planted} units")
        layer = left[u % len(left)]
        concepts[u] = ranked[layer].pop(0)
        share = (pixel[:, layer] == concepts[u]).reshape(pool, 7, 16, 7, 16).mean(axis=(2, 4))
        acts[..., u] = 4.0 * share * rng.uniform(0.8, 1.2, (pool, 1, 1)) + 0.25 * acts[..., u]
    return acts.astype(np.float32), concepts


def run_semantics(images: int, planted: int, batch_size: int, quantiles=(0.005, 0.05), units: int = 512, say=print):
    """Both counting rules on one planted fixture (:func:`semantics_fixture`, :func:`plant_units`):
    {(semantics, q): row of the table}."""
    from dissectjax.stats.labels import iou, label_units, unique_detectors, unique_detectors_tables

    parallel = DataParallel.create()
    probe, acts = semantics_fixture(images, units)
    acts, concepts = plant_units(probe, acts, planted)
    source = PooledSource(acts)
    say(f"semantics: {images} images, {units} units ({planted} planted) 7x7 -> 112x112, "
        f"{len(probe.concepts)} concepts, {jax.device_count()} {jax.default_backend()} device(s)")  # fmt: skip
    rows = {}
    for quantile in quantiles:
        for semantics in ("netdissect", "lite"):
            config = DissectConfig(quantile=quantile, batch_size=batch_size, semantics=semantics)
            timing, _, counts = time_dissection(source, probe, config, parallel)
            c = counts["layer4"]
            table = iou(c.intersection, c.unit_area, c.concept_area, probe.concepts.category)
            labels = label_units(table, probe.concepts.category, probe.concepts.num_categories, config.iou_threshold)
            categories = list(probe.concepts.categories)
            planted_iou = table[np.arange(planted), concepts]
            part = probe.concepts.category[concepts] == list(BRODEN_CATEGORIES).index("part")
            rows[semantics, quantile] = {
                "detectors": int(labels.detector.sum()),
                "unique (best label)": unique_detectors(labels, probe.concepts.category, categories)["total"],
                "unique (tables)": unique_detectors_tables(table, labels, categories, config.iou_threshold)["total"],
                "planted IoU (mean)": float(planted_iou.mean()),
                "planted part IoU (mean)": float(planted_iou[part].mean()) if part.any() else float("nan"),
                "planted found": int(np.sum(labels.label[:planted] == concepts)),
                **timing.rates(),
            }
    return rows


def format_semantics(rows: dict, planted: int) -> str:
    """The table of :func:`run_semantics`, one row per (semantics, quantile)."""
    cols = ["detectors", "unique (best label)", "unique (tables)", "planted IoU (mean)", "planted part IoU (mean)",
            "planted found", "pass 1 (thresholds)", "pass 2 (tally)"]  # fmt: skip
    lines = ["| semantics | q | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (semantics, quantile), r in rows.items():
        cells = [str(r["detectors"]), str(r["unique (best label)"]), str(r["unique (tables)"]),
                 f"{r['planted IoU (mean)']:.3f}", f"{r['planted part IoU (mean)']:.3f}",
                 f"{r['planted found']}/{planted}",
                 f"{r['pass 1 (thresholds)']:,.1f} img/s", f"{r['pass 2 (tally)']:,.1f} img/s"]  # fmt: skip
        lines.append(f"| {semantics} | {quantile} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_small(images: int, batch_size: int, quantile: float, say=print):
    """Times the demo's workload: SceneNet (random init) conv1-conv5 on synthetic scenes."""
    from dissectjax.checkpoint import init_variables
    from dissectjax.data.open import open_probe
    from dissectjax.dissect.sources import ModelSource
    from dissectjax.models import build_model

    parallel = DataParallel.create()
    probe, _ = open_probe(f"synthetic:{images}")
    model = build_model("scenenet")
    source = ModelSource(model, init_variables(model, (64, 64, 3)), [f"conv{i}" for i in range(1, 6)], (64, 64, 3))
    say(f"small: SceneNet conv1-conv5 (416 units) on {images} synthetic scenes, 64 px, 32 x 32 labels, "
        f"{len(probe.concepts)} concepts, {jax.device_count()} {jax.default_backend()} device(s)")  # fmt: skip
    timing, _, _ = time_dissection(source, probe, DissectConfig(quantile=quantile, batch_size=batch_size), parallel)
    return {"dissectjax": timing.rates()}, {}


def decode_rates(probe, rows: int = 128) -> dict[str, float]:
    """Rows per second one core decodes (this process, one thread): images alone, label maps alone."""
    sample = np.arange(min(rows, len(probe)))
    rates = {}
    for what, images, labels in (("images", True, False), ("label maps", False, True)):
        start = time.perf_counter()
        for i in range(0, len(sample), 16):
            probe.load_batch(sample[i : i + 16], images, labels)
        rates[what] = len(sample) / (time.perf_counter() - start)
    return rates


def time_forward(source, probe, config: DissectConfig, parallel: DataParallel, decode_workers: int) -> float:
    """Seconds of the pipeline without statistics: decode every image and run the forward pass."""
    from dissectjax.data.probe import batch_plan, iterate_batches
    from dissectjax.dissect.driver import per_device_batch

    plan = batch_plan(probe, parallel.global_batch_size(per_device_batch(config, len(probe))))
    start = time.perf_counter()
    last = None
    for batch in iterate_batches(probe, [parallel.local_rows(r) for r in plan], images=True, labels=False,
                                 processes=decode_workers):  # fmt: skip
        last = source.activations(batch, parallel)
    jax.block_until_ready(last)
    return time.perf_counter() - start


def run_broden_disk(images: int, distinct: int, model: str, layer: str, checkpoint: str | None, batch_size: int,
                    quantile: float, decode_workers: int, cache: str, counts_out: str | None = None,
                    say=print):  # fmt: skip
    """End to end from files on disk (:mod:`dissectjax.data.broden_disk`): decode, the forward
    pass, both passes; beside it the same pipeline with no statistics (forward only). With
    ``counts_out``, the thresholds and counts are saved there (.npz), to compare with a peer's."""
    from dissectjax.data.broden import BrodenDataset
    from dissectjax.data.broden_disk import ensure_broden_disk
    from dissectjax.dissect.sources import model_source

    parallel = DataParallel.create()
    global_batch = parallel.global_batch_size(batch_size)
    start = time.perf_counter()
    probe = BrodenDataset(ensure_broden_disk(images, distinct))
    warm = BrodenDataset(ensure_broden_disk(min(images, 8 * global_batch), distinct))  # the set's first rows
    made = time.perf_counter() - start
    source, name = model_source([layer], (224, 224, 3), checkpoint, None if checkpoint else model)
    config = DissectConfig(quantile=quantile, batch_size=batch_size)
    pipeline = Pipeline(cache=cache, decode_workers=decode_workers)
    say(f"broden-disk: {images} rows ({min(distinct, images)} distinct files), {name} {layer} "
        f"({source.units[layer]} units, {source.map_shapes[layer][0]}x{source.map_shapes[layer][1]}) at 224 px, "
        f"{len(probe.concepts)} concepts, {jax.device_count()} {jax.default_backend()} device(s), batch "
        f"{global_batch}, {decode_workers or 'no'} decoding processes (set ready in {made:.0f} s)")  # fmt: skip
    decode = decode_rates(probe)
    time_forward(source, warm, config, parallel, 0)  # compiles the forward pass
    forward = time_forward(source, probe, config, parallel, decode_workers)
    warm_passes = Passes(source, warm, config, parallel=parallel, pipeline=pipeline)
    warm_passes.counts(warm_passes.thresholds())
    passes = Passes(source, probe, config, parallel=parallel, pipeline=pipeline)
    place = passes.cache.place if passes.cache is not None else "none"
    start = time.perf_counter()
    thresholds = passes.thresholds()
    middle = time.perf_counter()
    counts = passes.counts(thresholds)[layer]
    end = time.perf_counter()
    dissection = end - start
    if counts_out:
        np.savez(counts_out, thresholds=thresholds[layer], intersection=counts.intersection,
                 unit_area=counts.unit_area, concept_area=counts.concept_area, seconds=dissection)  # fmt: skip
    rows = {
        "decode, images (one core)": (decode["images"], None),
        "decode, label maps (one core)": (decode["label maps"], None),
        "forward only (decode + forward pass)": (images / forward, forward),
        "pass 1 (decode + forward + thresholds)": (images / (middle - start), middle - start),
        "pass 2 (label maps + tally)": (images / (end - middle), end - middle),
        "dissection end to end": (images / dissection, dissection),
    }
    extra = {"activations kept": place, "dissection / forward only": f"{dissection / forward:.2f}x"}
    return rows, extra


def format_stages(rows: dict) -> str:
    """A table of (images/s, seconds or None) per stage."""
    lines = ["| stage | images/s | seconds |", "|---|---|---|"]
    for stage, (rate, seconds) in rows.items():
        lines.append(f"| {stage} | {rate:,.1f} | {'' if seconds is None else f'{seconds:,.1f}'} |")
    return "\n".join(lines)


def broden_scale_roofline(rate: float, peak_tflops: float, bandwidth_tbs: float) -> dict[str, str]:
    """The dense tally's bound per image: a [S, U] x [S, C] product and its one-hot operand."""
    pixels, units, concepts = 112 * 112, 512, sum(BRODEN_CATEGORIES.values())
    flops = 2.0 * pixels * units * concepts
    onehot_bytes = 2.0 * 2 * pixels * concepts  # bf16, written then read
    compute = peak_tflops * 1e12 / flops
    memory = bandwidth_tbs * 1e12 / onehot_bytes
    bound = min(compute, memory)
    return {
        "tally GEMM per image": f"{flops / 1e9:.1f} GFLOP",
        "roofline (compute, memory)": f"{compute:,.0f} img/s at {peak_tflops:.0f} TFLOP/s, "
        f"{memory:,.0f} img/s at {bandwidth_tbs:.1f} TB/s",
        "measured pass 2 / roofline": f"{rate / bound:.1%}",
    }


def peak_rss_of(call: str) -> float:
    """Peak RSS (MB) of a fresh Python process that runs ``call``, an expression over this module."""
    import subprocess

    code = f"from dissectjax import bench; bench.{call}; print(bench.peak_rss_mb())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise DissectError(f"the memory check's process failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(p.stdout.strip().splitlines()[-1])


def memory_check(images: int, pool: int, batch_size: int) -> dict[str, str]:
    """Peak RSS of broden-scale dissections of N and 8N images, each in a fresh process."""
    out = {}
    for n in (images, 8 * images):
        rss = peak_rss_of(f"run_broden_scale({n}, {pool}, 0, {batch_size}, 0.005, say=lambda *_: None)")
        out[f"peak RSS, {n} images"] = f"{rss:,.0f} MB"
    return out


def disk_memory_check(images: int, distinct: int, model: str, layer: str, checkpoint: str | None,
                      batch_size: int, decode_workers: int) -> dict[str, str]:  # fmt: skip
    """Peak RSS of broden-disk runs, each in a fresh process: N and 8N images keeping no
    activations (flat in N), and N and 8N keeping them (``auto``: they grow with N). The sets
    are generated first, here, so that no measured process includes their generation."""
    from dissectjax.data.broden_disk import ensure_broden_disk

    for n in (images, 8 * images):
        ensure_broden_disk(n, distinct)
    out = {}
    for cache in ("none", "auto"):
        for n in (images, 8 * images):
            call = (f"run_broden_disk({n}, {distinct}, {model!r}, {layer!r}, {checkpoint!r}, {batch_size}, 0.005, "
                    f"{decode_workers}, {cache!r}, say=lambda *_: None)")  # fmt: skip
            out[f"peak RSS, {n} images, activations kept: {cache}"] = f"{peak_rss_of(call):,.0f} MB"
    return out


def format_rates(rows: dict) -> str:
    cols = ["pass 1 (thresholds)", "pass 2 (tally)", "end to end"]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        unit = "x" if name == "ratio" else " img/s"
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:,.1f}{unit}" for c in cols) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="dissectjax bench", description="dissection throughput benchmarks")
    p.add_argument("--workload", choices=["broden-scale", "broden-disk", "small", "semantics"], default="broden-scale")
    p.add_argument("--images", type=positive_int, default=512)
    p.add_argument(
        "--pool", type=positive_int, default=256, help="distinct generated rows, cycled (default: %(default)s)"
    )
    p.add_argument(
        "--baseline-images", type=non_negative_int, default=64, help="rows timed for the NumPy baseline (0: skip)"
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per device and batch")
    p.add_argument("--quantile", type=fraction, default=0.005)
    p.add_argument(
        "--distinct",
        type=positive_int,
        default=2048,
        help="broden-disk: distinct rows written as files, cycled (default: %(default)s)",
    )
    p.add_argument("--model", default="resnet18", help="broden-disk: registered model (default: %(default)s)")
    p.add_argument("--layer", default="layer4", help="broden-disk: the layer dissected (default: %(default)s)")
    p.add_argument("--checkpoint", help="broden-disk: weights to load (default: random initialization)")
    p.add_argument(
        "--decode-workers",
        type=non_negative_int,
        default=default_decode_workers(),
        help="broden-disk: decoding processes, 0 for threads (default: %(default)s)",
    )
    p.add_argument(
        "--cache-activations",
        choices=PLACES,
        default="auto",
        help="broden-disk: where activations are kept between passes (default: %(default)s)",
    )
    p.add_argument("--counts-out", help="broden-disk: save the thresholds and counts here (.npz)")
    p.add_argument("--planted", type=positive_int, default=64, help="semantics: units planted (default: %(default)s)")
    p.add_argument("--memory", action="store_true", help="also peak RSS at N and 8N images (fresh processes)")
    p.add_argument("--peak-tflops", type=positive_float, default=790.0, help="accelerator bf16 peak, for the roofline")
    p.add_argument("--bandwidth", type=positive_float, default=3.35, help="accelerator memory TB/s, for the roofline")
    return p


def main(argv=None) -> int:
    """``dissectjax bench``: bad flags and bad input (DissectError) end in one line on stderr and status 2."""
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:  # bad flags (status 2, one line already printed), --help (0)
        return int(e.code or 0)
    try:
        return _run(a)
    except DissectError as e:
        print(f"dissectjax bench: error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    if a.workload == "semantics":
        if a.planted > 512:
            raise DissectError(f"--planted {a.planted} is more than the workload's 512 units")
        print(format_semantics(run_semantics(a.images, a.planted, a.batch_size), a.planted))
        print(f"peak RSS of this process: {peak_rss_mb():,.0f} MB")
        return 0
    if a.workload == "broden-disk":
        rows, extra = run_broden_disk(a.images, a.distinct, a.model, a.layer, a.checkpoint, a.batch_size, a.quantile,
                                      a.decode_workers, a.cache_activations, a.counts_out)  # fmt: skip
        if a.memory:
            extra.update(disk_memory_check(a.images, a.distinct, a.model, a.layer, a.checkpoint, a.batch_size,
                                           a.decode_workers))  # fmt: skip
        print(format_stages(rows))
        for k, v in extra.items():
            print(f"{k}: {v}")
        print(f"peak RSS of this process: {peak_rss_mb():,.0f} MB")
        return 0
    if a.workload == "small":
        rows, extra = run_small(a.images, a.batch_size, a.quantile)
    else:
        rows, extra = run_broden_scale(a.images, a.pool, a.baseline_images, a.batch_size, a.quantile)
        if jax.default_backend() != "cpu":
            extra.update(broden_scale_roofline(rows["dissectjax"]["pass 2 (tally)"], a.peak_tflops, a.bandwidth))
        if a.memory:
            extra.update(memory_check(a.images, a.pool, a.batch_size))
    print(format_rates(rows))
    for k, v in extra.items():
        print(f"{k}: {v}")
    print(f"peak RSS of this process: {peak_rss_mb():,.0f} MB")
    return 0
