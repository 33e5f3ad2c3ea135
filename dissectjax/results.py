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
import math
import os
import platform
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.dissect.result import LayerResult
from dissectjax.errors import DissectError, one_line
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
from dissectjax.stats.semantics import SEMANTICS

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
    rule; ``detector_rule`` how scores were compared with ``iou_threshold`` (">=" or ">");
    ``semantics`` the counting rules ("netdissect" or "lite", docs/SEMANTICS.md)."""
    return {
        "units": result.units,
        "detectors": result.detectors,
        "unique_detectors": result.unique,
        "unique_detectors_tables": result.unique_tables,
        "quantile": result.quantile,
        "iou_threshold": result.iou_threshold,
        "detector_rule": result.detector_rule,
        "condition": result.condition,
        "semantics": result.semantics,
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
        layer_dir = layer_directory(directory, name, named_by="the dissection")
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


# ---- reading, checked: every file of an output directory may be damaged or hostile --------------
def read_csv_table(path: str, columns: Sequence[str], expected: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of the CSV table ``path``: UTF-8 text (a byte order mark is accepted) whose
    header holds ``columns``. Anything else is a DissectError naming the file and ``expected``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise DissectError(f"{path} is missing; expected {expected}") from None
    except UnicodeDecodeError as e:
        raise DissectError(f"{path}: byte {e.start} is not UTF-8 text ({e.reason}); expected {expected}") from None
    except csv.Error as e:
        raise DissectError(f"{path}: malformed CSV ({one_line(e)}); expected {expected}") from None
    except OSError as e:
        raise DissectError(f"{path}: cannot read it ({one_line(e)}); expected {expected}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DissectError(f"{path} has no column {missing[0]!r} (its header: {','.join(header)[:200]!r}); "
                           f"expected {expected}")  # fmt: skip
    return header, rows


MAX_NPZ_BYTES = 4 << 30  # decompressed; a result or statistics file is megabytes (ResNet-50 layer4: ~30 MB)


def read_npz(path: str, expected: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path``, loaded with ``allow_pickle=False``. A file that
    is missing, not an archive, truncated or damaged, or that would decompress to more than
    :data:`MAX_NPZ_BYTES` (a zip bomb), is a DissectError naming it and ``expected``."""
    try:
        if zipfile.is_zipfile(path):  # sizes from the archive's directory, before anything is inflated
            with zipfile.ZipFile(path) as archive:
                size = sum(member.file_size for member in archive.infolist())
            if size > MAX_NPZ_BYTES:
                raise DissectError(f"{path} would decompress to {size / 2**30:.1f} GiB, more than any dissectjax "
                                   f"file holds ({MAX_NPZ_BYTES / 2**30:.0f} GiB); expected {expected}")  # fmt: skip
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except FileNotFoundError:
        raise DissectError(f"{path} is missing; expected {expected}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # what NumPy and zipfile raise
        raise DissectError(f"{path} is not a readable .npz archive ({one_line(e)[:200]}); "
                           f"expected {expected}") from None  # fmt: skip


KINDS: dict[str, Callable[[np.dtype], bool]] = {  # what an array of each kind may hold
    "numbers": lambda d: d.kind in "iuf",
    "integers": lambda d: d.kind in "iu",
    "text": lambda d: d.kind == "U",
    "uint8": lambda d: d == np.uint8,
}


def check_arrays(
    path: str,
    arrays: Mapping[str, np.ndarray],
    spec: Mapping[str, tuple[tuple[int | str, ...], str]],
    dims: dict[str, int],
    expected: str,
    optional: Sequence[str] = (),
) -> dict[str, int]:
    """Checks that ``arrays`` (read from ``path``) hold every array of ``spec`` (``{name: (axes,
    kind)}``, ``optional`` ones aside) with its axes and a dtype of its kind (:data:`KINDS`).

    An axis is a number, or a name bound to the first size seen (or given in ``dims``), so that
    ``("U", "C")`` asks for the same U and C everywhere. Returns ``dims`` with the names bound.

    >>> check_arrays("x.npz", {"a": np.zeros((2, 3)), "b": np.zeros(2, int)},
    ...              {"a": (("U", "C"), "numbers"), "b": (("U",), "integers")}, {}, "counts")
    {'U': 2, 'C': 3}
    >>> check_arrays("x.npz", {"a": np.zeros((2, 3))}, {"a": (("U", 4), "numbers")}, {}, "counts")
    Traceback (most recent call last):
    dissectjax.errors.DissectError: x.npz: array 'a' has shape [2, 3]; expected [U, 4] = [2, 4] (counts)
    """
    dims = dict(dims)
    for name, (axes, kind) in spec.items():
        if name not in arrays:
            if name in optional:
                continue
            raise DissectError(f"{path} lacks the array {name!r} (it holds {', '.join(sorted(arrays)) or 'none'}); "
                               f"expected {expected}")  # fmt: skip
        array = arrays[name]
        if not KINDS[kind](array.dtype):
            raise DissectError(f"{path}: array {name!r} holds {array.dtype}; expected {kind} ({expected})")
        if array.ndim == len(axes):
            bound = [dims.setdefault(a, n) if isinstance(a, str) else a for a, n in zip(axes, array.shape)]
            if list(array.shape) == bound:
                continue
        want = ", ".join(map(str, axes))
        sizes = ", ".join(str(dims.get(a, a)) for a in axes)
        raise DissectError(f"{path}: array {name!r} has shape {list(array.shape)}; expected [{want}]"
                           + (f" = [{sizes}]" if sizes != want else "") + f" ({expected})")  # fmt: skip
    return dims


def layer_directory(directory: str, name: str, named_by: str = "summary.json") -> str:
    """Where layer ``name`` lives in an output ``directory``: ``DIR/a/b`` for a layer ``a/b`` (a module
    path). A name that would lead anywhere else (empty parts, ``.``, ``..``, a leading ``/``, a
    backslash or NUL) is refused, never followed.

    >>> layer_directory("out", "block1/conv")
    'out/block1/conv'
    >>> layer_directory("out", "../etc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dissectjax.errors.DissectError: summary.json names layer '../etc', which is not a plain name inside out; ...
    """
    parts = name.split("/") if isinstance(name, str) else [""]
    bad = lambda p: p in ("", ".", "..") or any(c in p for c in ("\\", "\0", os.sep, os.altsep or "/"))
    if any(bad(p) for p in parts):
        raise DissectError(
            f"{named_by} names layer {name!r}, which is not a plain name inside {directory}; expected "
            "a layer name such as conv5 or block1/conv (parts joined by '/', none empty, '.' or '..')"
        )
    return os.path.join(directory, *parts)


def read_concepts(path: str) -> Concepts:
    """The concepts of ``DIR/concepts.csv`` (categories in order of first appearance), checked:
    UTF-8 CSV with columns ``index,number,name,category``, one row per array column in order
    (``index`` 0, 1, ...), label numbers increasing in 1 .. 65535."""
    expected = "the concepts.csv a dissection writes (index,number,name,category; one row per concept)"
    _, rows = read_csv_table(path, ("index", "number", "name", "category"), expected)
    if not rows:
        raise DissectError(f"{path} lists no concepts; expected {expected}")
    numbers = []
    for line, (i, r) in enumerate(enumerate(rows), start=2):
        try:
            index, number = int(r["index"]), int(r["number"])
        except (TypeError, ValueError):
            raise DissectError(f"{path} line {line}: index {r['index']!r} and number {r['number']!r} must be "
                               f"integers; expected {expected}") from None  # fmt: skip
        if index != i or not 0 < number < 1 << 16 or (numbers and number <= numbers[-1]) or r["category"] is None:
            raise DissectError(f"{path} line {line}: index {index}, number {number}; expected index {i} and a label "
                               "number in 1 .. 65535 above the previous row's, in a full row "
                               f"({expected})")  # fmt: skip
        numbers.append(number)
    categories = tuple(dict.fromkeys(r["category"] for r in rows))
    return Concepts(
        numbers=np.array(numbers, np.int64),
        names=tuple(r["name"] for r in rows),
        category=np.array([categories.index(r["category"]) for r in rows], np.int64),
        categories=categories,
    )


_SUMMARY = 'a JSON object {"layers": {LAYER: {"quantile": q, "iou_threshold": t, ...}}, ...} as dissect writes it'
_FINITE = lambda x: isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
_LAYER_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {  # what read_results uses of a layer's summary
    "quantile": (lambda x: _FINITE(x) and 0 < x < 1, "a number between 0 and 1"),
    "iou_threshold": (lambda x: _FINITE(x) and 0 <= x <= 1, "a number between 0 and 1"),
    "condition": (lambda x: isinstance(x, bool), "true or false"),
    "images": (lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0, "an integer >= 0"),
    "seconds": (lambda x: _FINITE(x) and x >= 0, "a number >= 0"),
}
_TEXT_FIELDS = ("model", "dataset", "checkpoint", "activations", "split")  # read by the report and the app


def read_summary(directory: str) -> dict:
    """``DIR/summary.json``, checked: a JSON object whose ``layers`` map plain layer names
    (:func:`layer_directory`) to objects with the fields :func:`read_results` uses."""
    path = os.path.join(directory, "summary.json")
    if not os.path.isfile(path):
        raise DissectError(
            f"{directory} is not a dissection output (no summary.json); run `dissectjax dissect ... --out DIR` first"
        )
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except UnicodeDecodeError as e:
        raise DissectError(f"{path}: byte {e.start} is not UTF-8 text ({e.reason}); expected {_SUMMARY}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; nesting too deep: RecursionError
        raise DissectError(f"{path} is not valid JSON ({one_line(e)[:200]}); expected {_SUMMARY}") from None
    except OSError as e:
        raise DissectError(f"{path}: cannot read it ({one_line(e)}); expected {_SUMMARY}") from None
    if not isinstance(summary, dict):
        raise DissectError(f"{path} holds a JSON {type(summary).__name__}; expected {_SUMMARY}")
    layers = summary.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise DissectError(f"{path}: 'layers' is {_shown(layers)}; expected {_SUMMARY}")
    for key in _TEXT_FIELDS:
        if key in summary and not isinstance(summary[key], str):
            raise DissectError(f"{path}: {key!r} is {_shown(summary[key])}; expected a string")
    for name, info in layers.items():
        layer_directory(directory, name)
        if not isinstance(info, dict):
            raise DissectError(f"{path}: layer {name!r} is {_shown(info)}; expected {_SUMMARY}")
        for key, (ok, what) in _LAYER_FIELDS.items():
            if key not in info:
                raise DissectError(f"{path}: layer {name!r} lacks {key!r}; expected {_SUMMARY}")
            if not ok(info[key]):
                raise DissectError(f"{path}: layer {name!r} has {key} {_shown(info[key])}; expected {what}")
        if info.get("detector_rule", DETECTOR_RULES[0]) not in DETECTOR_RULES:
            raise DissectError(f"{path}: layer {name!r} has detector_rule {_shown(info['detector_rule'])}; expected "
                               f"one of {', '.join(map(repr, DETECTOR_RULES))}")  # fmt: skip
        if info.get("semantics", SEMANTICS[0]) not in SEMANTICS:
            raise DissectError(f"{path}: layer {name!r} has semantics {_shown(info['semantics'])}; expected "
                               f"one of {', '.join(map(repr, SEMANTICS))}")  # fmt: skip
    return summary


def _shown(value, limit: int = 60) -> str:
    """A JSON value for a message, cut to ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COUNTS_EXPECTED = "the counts.npz a dissection writes for the layer (C = concepts of concepts.csv); rerun it"
COUNTS_ARRAYS = {
    "thresholds": (("U",), "numbers"),
    "intersection": (("U", "C"), "integers"),
    "unit_area": (("U", "K"), "integers"),
    "concept_area": (("C",), "integers"),
    "iou": (("U", "C"), "numbers"),
    "categories": (("K",), "text"),
    "top_images": (("U", "k"), "integers"),
    "top_activations": (("U", "k"), "numbers"),
    "top_maps": (("U", "k", "h", "w"), "numbers"),
}
TOP_ARRAYS = ("top_images", "top_activations", "top_maps")  # written only with top images


def read_counts(path: str, concepts: Concepts) -> dict[str, np.ndarray]:
    """The arrays of a layer's ``counts.npz`` (:data:`COUNTS_ARRAYS`), checked against the
    concepts of ``concepts.csv``: C columns, and every concept's category among ``categories``."""
    arrays = read_npz(path, _COUNTS_EXPECTED)
    check_arrays(path, arrays, COUNTS_ARRAYS, {"C": len(concepts)}, _COUNTS_EXPECTED, optional=TOP_ARRAYS)
    if "top_maps" in arrays and "top_images" not in arrays:
        raise DissectError(f"{path} has top_maps without top_images; expected {_COUNTS_EXPECTED}")
    categories = [str(c) for c in arrays["categories"]]
    lacking = [c for c in concepts.categories if c not in categories]
    if lacking or len(set(categories)) != len(categories):
        raise DissectError(f"{path}: categories {categories} do not name each category of concepts.csv once "
                           f"({', '.join(concepts.categories)}); expected the files of one dissection")  # fmt: skip
    return arrays


def read_results(directory: str) -> tuple[dict[str, LayerResult], dict]:
    """The layers of a dissection output directory, and its summary.json.

    Labels and both unique-detector counts are recomputed from counts.npz with the summary's
    threshold and comparison (">=" for directories written before ``detector_rule`` was recorded;
    "netdissect" semantics before ``semantics`` was).
    Every file is checked as it is read (:func:`read_summary`, :func:`read_concepts`,
    :func:`read_counts`): damaged or hostile files are a DissectError naming the file.
    """
    summary = read_summary(directory)
    concepts = read_concepts(os.path.join(directory, "concepts.csv"))
    results = {}
    for name, info in summary["layers"].items():
        arrays = read_counts(os.path.join(layer_directory(directory, name), "counts.npz"), concepts)
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
            semantics=info.get("semantics", SEMANTICS[0]),
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
    layout = "a tally CSV in NetDissect's layout"
    columns, rows = read_csv_table(path, (), layout)
    cats = [c.removesuffix("-label") for c in columns if c.endswith("-label")]
    missing = [c for c in ["category", "label", "score", *(f"{k}-iou" for k in cats)] if c not in columns]
    if missing or not cats:
        column = (missing or ["<category>-label"])[0]
        raise DissectError(f"{path} is not {layout}: no column {column!r}")
    unknown = {r["category"] for r in rows} - set(cats)
    if unknown:
        raise DissectError(f"{path}: category {sorted(unknown)[0]!r} of a unit's label has no -label column")

    def numbers(column: str) -> np.ndarray:
        try:
            return np.array([float(r[column]) for r in rows], np.float64)
        except (TypeError, ValueError):
            raise DissectError(
                f"{path}: column {column!r} holds a value that is not a number; expected {layout}"
            ) from None

    names = np.array([[r[f"{k}-label"] or "" for k in cats] for r in rows], dtype=str).reshape(len(rows), len(cats))
    scores = np.stack([numbers(f"{k}-iou") for k in cats], axis=1).reshape(names.shape)
    label = np.array([r["label"] or "" for r in rows], dtype=str)
    label_category = np.array([cats.index(r["category"]) for r in rows], np.int64)
    score = numbers("score")
    return {
        "best_label": distinct_labels(label, label_category, passes(score, threshold, rule), cats),
        "tables": distinct_per_category(names, (names != "") & passes(scores, threshold, rule), cats),
    }


TOP_IMAGES_ARRAYS = {"rows": (("R",), "integers"), "images": (("R", "H", "W", 3), "uint8"),
                     "label_size": ((2,), "integers")}  # fmt: skip


def read_top_images(directory: str) -> dict | None:
    """``{rows, images, label_size}`` of ``DIR/top_images.npz`` (checked), or None if absent."""
    path = os.path.join(directory, "top_images.npz")
    if not os.path.isfile(path):
        return None
    expected = "the top_images.npz a dissection writes (rows [R], images uint8 [R, H, W, 3], label_size [2])"
    arrays = read_npz(path, expected)
    check_arrays(path, arrays, TOP_IMAGES_ARRAYS, {}, expected)
    if np.any(arrays["label_size"] < 1) or np.any(np.diff(arrays["rows"]) <= 0) or np.any(arrays["rows"] < 0):
        raise DissectError(f"{path}: label_size {arrays['label_size'].tolist()} must be positive and rows "
                           f"increasing dataset rows; expected {expected}")  # fmt: skip
    return arrays


def write_csv(path: str, rows: list[dict]) -> None:
    """Writes dict rows as a CSV table atomically (:func:`write_atomic`), creating the folder;
    the header is the first row's keys."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, text.getvalue().encode())
