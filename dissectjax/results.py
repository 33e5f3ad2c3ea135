"""Writing dissection results (DESIGN.md section 6), atomically.

    DIR/concepts.csv            index,number,name,category
    DIR/summary.json            per layer: units, detectors, unique detectors, timing, provenance
    DIR/<layer>/units.csv       NetDissect tally.csv layout, one row per unit
    DIR/<layer>/counts.npz      thresholds, intersection, unit_area, concept_area, iou, categories

The whole directory is written under a temporary name beside ``DIR`` and renamed into
place at the end, so a failed run never leaves a partial result that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.dissect import LayerResult
from dissectjax.errors import DissectError


def versions() -> dict[str, str]:
    import flax
    import jax

    from dissectjax import __version__

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
    return {
        "units": result.units,
        "detectors": result.detectors,
        "unique_detectors": result.unique,
        "quantile": result.quantile,
        "iou_threshold": result.iou_threshold,
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


def looks_like_output(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "summary.json"))


def check_output_path(out: str) -> str:
    """The absolute path of ``out`` if a result may be written there, else a DissectError."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not (os.path.isdir(out) and (not os.listdir(out) or looks_like_output(out))):
        raise DissectError(f"--out {out} exists and is not a dissectjax output directory; choose another path")
    return out


@contextlib.contextmanager
def atomic_directory(out: str) -> Iterator[str]:
    """Yields a fresh temporary directory that replaces ``out`` when the block succeeds.

    ``out`` may be absent, empty, or a previous dissectjax output (replaced whole); any
    other existing path is refused, so unrelated work is never overwritten.
    """
    out = check_output_path(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        yield tmp
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "previous"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
