"""Writing and reading dissection results (docs/ARCHITECTURE.md, Outputs), atomically.

    DIR/concepts.csv            index,number,name,category
    DIR/summary.json            per layer: units, detectors, unique detectors, timing, provenance
    DIR/<layer>/units.csv       NetDissect tally.csv layout, one row per unit
    DIR/<layer>/counts.npz      thresholds, intersection, unit_area, concept_area, iou, categories;
                                top_images, top_activations, top_maps (the top-k images per unit)
    DIR/top_images.npz          rows [R], images uint8 [R, H, W, 3], label_size [2]: the probe
                                images that are some unit's top image, for reports

The whole directory is written under a temporary name beside ``DIR`` and renamed into
place at the end, so a failed run never leaves a partial result that looks finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import tempfile
from collections.abc import Mapping

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.dissect.result import LayerResult
from dissectjax.errors import DissectError
from dissectjax.output_dir import add_to_manifest
from dissectjax.stats.labels import (
    DETECTOR_RULES,
    distinct_labels,
    distinct_per_category,
    label_units,
    passes,
    unique_detectors,
    unique_detectors_tables,
)

TOP_IMAGE_SIZE = 128  # longest side of the stored top images


def versions() -> dict[str, str]:
    import flax
    import jax

    from dissectjax.version import __version__

    return {
        "dissectjax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": str(jax.device_count()),
    }


def layer_summary(result: LayerResult) -> dict:
    """One layer of summary.json. Unique detectors under both rules ({category: n, ..., "total"}):
    ``unique_detectors`` the best-label rule, ``unique_detectors_tables`` the NetDissect-tables
    rule; ``detector_rule`` how scores were compared with ``iou_threshold`` (">=" or ">")."""
    return {
        "units": result.units,
        "detectors": result.detectors,
        "unique_detectors": result.unique,
        "unique_detectors_tables": result.unique_tables,
        "quantile": result.quantile,
        "iou_threshold": result.iou_threshold,
        "detector_rule": result.detector_rule,
        "condition": result.condition,
        "images": result.images,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images / max(result.seconds, 1e-9), 2),
    }


def write_concepts(path: str, concepts: Concepts) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "number", "name", "category"])
        for i, (number, name, k) in enumerate(zip(concepts.numbers, concepts.names, concepts.category)):
            w.writerow([i, int(number), name, concepts.categories[k]])


def write_units(path: str, result: LayerResult) -> None:
    c = result.concepts
    cats = c.categories
    header = ["unit", "category", "label", "score", "threshold"]
    for cat in cats:
        header += [f"{cat}-label", f"{cat}-truth", f"{cat}-activation", f"{cat}-intersect", f"{cat}-iou"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for u in range(result.units):
            label = int(result.labels.label[u])
            row = [
                u,
                cats[c.category[label]],
                c.names[label],
                f"{result.labels.score[u]:.6f}",
                repr(float(result.thresholds[u])),
            ]
            for k in range(len(cats)):
                best = int(result.labels.best_per_category[u, k])
                if best < 0:
                    row += ["", 0, int(result.unit_area[u, k]), 0, f"{0.0:.6f}"]
                else:
                    row += [
                        c.names[best],
                        int(result.concept_area[best]),
                        int(result.unit_area[u, k]),
                        int(result.intersection[u, best]),
                        f"{result.iou[u, best]:.6f}",
                    ]
            w.writerow(row)


def write_counts(path: str, result: LayerResult) -> None:
    top = {}
    if result.top_images is not None:
        top = {"top_images": result.top_images, "top_activations": result.top_activations}
        if result.top_maps is not None:
            top["top_maps"] = result.top_maps.astype(np.float32)
    np.savez(
        path,
        **top,
        thresholds=np.asarray(result.thresholds, np.float32),
        intersection=result.intersection.astype(np.int64),
        unit_area=result.unit_area.astype(np.int64),
        concept_area=result.concept_area.astype(np.int64),
        iou=result.iou.astype(np.float64),
        categories=np.array(result.concepts.categories, dtype=str),
    )


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder, then renames it
    (readers see the old file or the new one, never a part); the folder is created if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
    add_to_manifest(path)  # a file added to a dissectjax output stays part of it


def write_results(directory: str, results: Mapping[str, LayerResult], info: Mapping) -> None:
    """Writes every layer's results and the summary into ``directory`` (which exists)."""
    concepts = next(iter(results.values())).concepts
    write_concepts(os.path.join(directory, "concepts.csv"), concepts)
    for name, result in results.items():
        layer_dir = os.path.join(directory, *name.split("/"))
        os.makedirs(layer_dir, exist_ok=True)
        write_units(os.path.join(layer_dir, "units.csv"), result)
        write_counts(os.path.join(layer_dir, "counts.npz"), result)
    summary = {
        **info,
        "layers": {name: layer_summary(r) for name, r in results.items()},
        "versions": versions(),
    }
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def write_top_images(path: str, results: Mapping[str, LayerResult], dataset) -> None:
    """Saves every probe image that is some unit's top image, resized to fit TOP_IMAGE_SIZE.

    All images share the first one's display size (probe sets are one size in practice);
    ``label_size`` is the resolution the masks were tallied at.
    """
    from PIL import Image

    tops = [r.top_images for r in results.values() if r.top_images is not None]
    rows = np.unique(np.concatenate([t.ravel() for t in tops])) if tops else np.zeros(0, np.int64)
    rows = rows[rows >= 0]
    if not rows.size:
        return
    h, w = dataset.image_size(int(rows[0]))
    scale = min(1.0, TOP_IMAGE_SIZE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL order: (width, height)
    images = np.stack([
        np.asarray(Image.fromarray(dataset.load_image(int(r))).resize(size, Image.BILINEAR)) for r in rows
    ])  # fmt: skip
    np.savez(path, rows=rows, images=images, label_size=np.array(dataset.label_size(int(rows[0]))))


def read_concepts(path: str) -> Concepts:
    """The concepts of ``DIR/concepts.csv`` (categories in order of first appearance)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    categories = tuple(dict.fromkeys(r["category"] for r in rows))
    return Concepts(
        numbers=np.array([int(r["number"]) for r in rows], np.int64),
        names=tuple(r["name"] for r in rows),
        category=np.array([categories.index(r["category"]) for r in rows], np.int64),
        categories=categories,
    )


def read_results(directory: str) -> tuple[dict[str, LayerResult], dict]:
    """The layers of a dissection output directory, and its summary.json.

    Labels and both unique-detector counts are recomputed from counts.npz with the summary's
    threshold and comparison (">=" for directories written before ``detector_rule`` was recorded).
    """
    summary_path = os.path.join(directory, "summary.json")
    if not os.path.isfile(summary_path):
        raise DissectError(
            f"{directory} is not a dissection output (no summary.json); run `dissectjax dissect ... --out DIR` first"
        )
    with open(summary_path) as f:
        summary = json.load(f)
    concepts = read_concepts(os.path.join(directory, "concepts.csv"))
    results = {}
    for name, info in summary["layers"].items():
        path = os.path.join(directory, *name.split("/"), "counts.npz")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise DissectError(f"{path} is missing: the output directory is incomplete; rerun the dissection") from None
        categories = tuple(str(c) for c in arrays["categories"])
        if categories != concepts.categories:
            concepts = dataclasses.replace(concepts, categories=categories, category=np.array(
                [categories.index(concepts.categories[k]) for k in concepts.category], np.int64))  # fmt: skip
        threshold, rule = info["iou_threshold"], info.get("detector_rule", DETECTOR_RULES[0])
        labels = label_units(arrays["iou"], concepts.category, concepts.num_categories, threshold, rule)
        results[name] = LayerResult(
            name=name,
            concepts=concepts,
            thresholds=arrays["thresholds"],
            intersection=arrays["intersection"],
            unit_area=arrays["unit_area"],
            concept_area=arrays["concept_area"],
            iou=arrays["iou"],
            labels=labels,
            unique=unique_detectors(labels, concepts.category, list(concepts.categories)),
            unique_tables=unique_detectors_tables(arrays["iou"], labels, list(concepts.categories), threshold, rule),
            quantile=info["quantile"],
            iou_threshold=threshold,
            detector_rule=rule,
            condition=info["condition"],
            images=info["images"],
            seconds=info["seconds"],
            top_images=arrays.get("top_images"),
            top_activations=arrays.get("top_activations"),
            top_maps=arrays.get("top_maps"),
        )
    return results, summary


def unique_from_tally_csv(path: str, threshold: float, rule: str) -> dict[str, dict[str, int]]:
    """Unique detectors under both rules from a tally CSV in NetDissect's layout (its tally.csv,
    or a dissectjax ``units.csv``): columns ``unit,category,label,score``, then per category
    ``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou`` (other columns ignored).

    Returns ``{"best_label": {category: n, ..., "total": sum}, "tables": {...}}``, categories
    in column order: ``best_label`` counts the distinct ``label`` among rows whose ``score``
    passes ``threshold`` under ``rule`` (">=" or ">"); ``tables`` counts, per category, the
    distinct ``<cat>-label`` among rows whose ``<cat>-iou`` passes (NetDissect's CVPR 2017 tables).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    cats = [c.removesuffix("-label") for c in columns if c.endswith("-label")]
    missing = [c for c in ["category", "label", "score", *(f"{k}-iou" for k in cats)] if c not in columns]
    if missing or not cats:
        column = (missing or ["<category>-label"])[0]
        raise DissectError(f"{path} is not a tally CSV in NetDissect's layout: no column {column!r}")
    unknown = {r["category"] for r in rows} - set(cats)
    if unknown:
        raise DissectError(f"{path}: category {sorted(unknown)[0]!r} of a unit's label has no -label column")
    names = np.array([[r[f"{k}-label"] for k in cats] for r in rows], dtype=str).reshape(len(rows), len(cats))
    scores = np.array([[float(r[f"{k}-iou"]) for k in cats] for r in rows], np.float64).reshape(names.shape)
    label = np.array([r["label"] for r in rows], dtype=str)
    label_category = np.array([cats.index(r["category"]) for r in rows], np.int64)
    score = np.array([float(r["score"]) for r in rows], np.float64)
    return {
        "best_label": distinct_labels(label, label_category, passes(score, threshold, rule), cats),
        "tables": distinct_per_category(names, (names != "") & passes(scores, threshold, rule), cats),
    }


def read_top_images(directory: str) -> dict | None:
    """``{rows, images, label_size}`` of ``DIR/top_images.npz``, or None if absent."""
    path = os.path.join(directory, "top_images.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_csv(path: str, rows: list[dict]) -> None:
    """Writes dict rows as a CSV table atomically (:func:`write_atomic`), creating the folder;
    the header is the first row's keys."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, text.getvalue().encode())
