"""Answers to the questions people ask of a dissection, as objects.

Each view holds plain data (``to_json()``, what the app's API returns) and renders itself
as HTML (``_repr_html_``, so it shows in Jupyter). The static report is a page of
:class:`LayerView` s; the app serves the same views as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dissectjax.dissect.result import LayerResult
from dissectjax.report import html as h
from dissectjax.report.dissection import Dissection


def _round(x: float) -> float:
    return round(float(x), 6)


UNIQUE_RULES = (("best-label rule", "unique"), ("NetDissect-tables rule", "unique_tables"))  # (name, LayerResult field)


def unique_summary(r: LayerResult) -> str:
    """'unique detectors: best-label rule 11 (object 7, part 4); NetDissect-tables rule 13 (...)'."""
    parts = []
    for name, field in UNIQUE_RULES:
        counts = getattr(r, field)
        per = ", ".join(f"{k} {n}" for k, n in counts.items() if k != "total" and n)
        parts.append(f"{name} {counts['total']}" + (f" ({per})" if per else ""))
    return "unique detectors: " + "; ".join(parts)


@dataclasses.dataclass
class LayerView:
    """One layer: 'X/Y units are detectors covering Z concepts', detectors per concept, unit cards."""

    dissection: Dissection
    layer: str

    def header(self) -> str:
        r = self.dissection.layer(self.layer)
        n = r.unique["total"]
        return f"{self.layer}: {r.detectors}/{r.units} units are detectors covering {n} concept{'' if n == 1 else 's'}"

    def concept_counts(self) -> dict[str, list[tuple[str, int]]]:
        """{category: [(concept, detectors)]}, most detectors first, concepts with none left out."""
        r = self.dissection.layer(self.layer)
        labels = r.labels.label[r.labels.detector]
        counts = np.bincount(labels, minlength=len(r.concepts))
        groups = {}
        for k, category in enumerate(r.concepts.categories):
            found = [c for c in np.flatnonzero(counts) if r.concepts.category[c] == k]
            found.sort(key=lambda c: (-counts[c], r.concepts.names[c]))
            groups[category] = [(r.concepts.names[c], int(counts[c])) for c in found]
        return groups

    def units(self) -> list[dict]:
        r = self.dissection.layer(self.layer)
        return [self.dissection.unit_label(self.layer, u) for u in range(r.units)]

    def to_json(self) -> dict:
        r = self.dissection.layer(self.layer)
        return {
            "layer": self.layer,
            "units": r.units,
            "detectors": r.detectors,
            "unique_detectors": r.unique,
            "unique_detectors_tables": r.unique_tables,
            "detector_rule": r.detector_rule,
            "semantics": r.semantics,
            "header": self.header(),
            "concepts": {k: [{"concept": c, "detectors": n} for c, n in v] for k, v in self.concept_counts().items()},
            "unit_labels": [{**u, "iou": _round(u["iou"])} for u in self.units()],
        }

    def html(self, images: bool = True) -> str:
        cards = "".join(
            h.unit_card(self.layer, u, self.dissection.strip(self.layer, u["unit"]) if images else None)
            for u in self.units()
        )
        return (
            f'<section class="layer" id="layer-{h.esc(self.layer)}" data-layer="{h.esc(self.layer)}">'
            f"<h2>{h.esc(self.header())}</h2>"
            f'<p class="unique">{h.esc(unique_summary(self.dissection.layer(self.layer)))}</p>'
            f"{h.concept_bars(self.concept_counts())}"
            f'<div class="cards">{cards}</div></section>'
        )

    def _repr_html_(self) -> str:
        return f"<style>{h.STYLE}</style>{self.html()}"


@dataclasses.dataclass
class UnitView:
    """Everything about one unit: label, top images with its mask, IoU per concept and,
    when given, per-class statistics ({name: float [K]} over ``classes``)."""

    dissection: Dissection
    layer: str
    unit: int
    top_concepts: int = 10
    classes: Sequence[str] = ()
    per_class: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.dissection.check_unit(self.layer, self.unit)

    def concepts(self) -> list[dict]:
        r = self.dissection.layer(self.layer)
        scores = r.iou[self.unit]
        best = np.argsort(-scores, kind="stable")[: self.top_concepts]
        return [
            {"concept": r.concepts.names[c], "category": r.concepts.categories[r.concepts.category[c]],
             "iou": _round(scores[c])}
            for c in best
        ]  # fmt: skip

    def to_json(self) -> dict:
        info = self.dissection.unit_label(self.layer, self.unit)
        out = {"layer": self.layer, **info, "iou": _round(info["iou"]), "concepts": self.concepts(),
               "top_images": self.dissection.strip(self.layer, self.unit)}  # fmt: skip
        if self.per_class:
            out["per_class"] = [
                {"class": name, **{key: _round(v[k]) for key, v in self.per_class.items()}}
                for k, name in enumerate(self.classes)
            ]
        return out

    def _repr_html_(self) -> str:
        data = self.to_json()
        parts = [
            f"<style>{h.STYLE}</style>",
            h.unit_card(self.layer, self.dissection.unit_label(self.layer, self.unit), data["top_images"]),
            h.table(
                ["concept", "category", "IoU"], [[c["concept"], c["category"], c["iou"]] for c in data["concepts"]]
            ),
        ]
        if "per_class" in data:
            keys = list(self.per_class)
            parts.append(
                h.table(["class", *keys], [[row["class"], *(row[k] for k in keys)] for row in data["per_class"]])
            )
        return "".join(parts)


@dataclasses.dataclass
class ConceptQuery:
    """Which units detect a concept: every layer's units ranked by IoU with it."""

    dissection: Dissection
    concept: str
    layer: str | None = None
    limit: int = 20

    def rows(self) -> list[dict]:
        c = self.dissection.concept_index(self.concept)
        layers = [self.layer] if self.layer else list(self.dissection.layers)
        rows = []
        for name in layers:
            r = self.dissection.layer(name)
            for u in range(r.units):
                rows.append({
                    "layer": name, "unit": u, "iou": _round(r.iou[u, c]),
                    "label": r.concepts.names[r.labels.label[u]],
                    "detector": bool(r.labels.detector[u] and r.labels.label[u] == c),
                })  # fmt: skip
        rows.sort(key=lambda x: (-x["iou"], list(self.dissection.layers).index(x["layer"]), x["unit"]))
        return rows[: self.limit]

    def to_json(self) -> dict:
        rows = self.rows()
        return {"concept": self.concept, "detectors": sum(r["detector"] for r in rows), "units": rows}

    def _repr_html_(self) -> str:
        rows = self.rows()
        return f"<style>{h.STYLE}</style><h3>units for {h.esc(self.concept)}</h3>" + h.table(
            ["layer", "unit", "IoU", "unit's label", "detector of it"],
            [[r["layer"], r["unit"], r["iou"], r["label"], "yes" if r["detector"] else ""] for r in rows],
        )


@dataclasses.dataclass
class LayerComparison:
    """Two layers side by side: detectors and unique detectors per category (best-label rule:
    ``*_unique``; NetDissect-tables rule: ``*_unique_tables``), shared concepts."""

    dissection: Dissection
    a: str
    b: str

    def to_json(self) -> dict:
        ra, rb = self.dissection.layer(self.a), self.dissection.layer(self.b)
        found = {}
        for name, r in ((self.a, ra), (self.b, rb)):
            found[name] = {r.concepts.names[c] for c in np.unique(r.labels.label[r.labels.detector])}
        per_category = []
        for k, category in enumerate(ra.concepts.categories):
            row = {"category": category}
            for tag, r in (("a", ra), ("b", rb)):
                in_k = r.concepts.category[r.labels.label] == k
                row[f"{tag}_detectors"] = int(np.sum(r.labels.detector & in_k))
                row[f"{tag}_unique"] = r.unique[category]
                row[f"{tag}_unique_tables"] = r.unique_tables[category]
            per_category.append(row)
        layers = {
            tag: {"layer": name, "units": r.units, "detectors": r.detectors, "unique": r.unique["total"],
                  "unique_tables": r.unique_tables["total"]}
            for tag, name, r in (("a", self.a, ra), ("b", self.b, rb))
        }  # fmt: skip
        return {
            **layers,
            "per_category": per_category,
            "both": sorted(found[self.a] & found[self.b]),
            "only_a": sorted(found[self.a] - found[self.b]),
            "only_b": sorted(found[self.b] - found[self.a]),
        }

    def _repr_html_(self) -> str:
        d = self.to_json()
        head = ["category"] + [f"{layer} {column}" for layer in (self.a, self.b)
                               for column in ("detectors", "unique (best label)", "unique (tables)")]  # fmt: skip
        keys = [f"{tag}_{key}" for tag in "ab" for key in ("detectors", "unique", "unique_tables")]
        rows = [[r["category"]] + [r[key] for key in keys] for r in d["per_category"]]
        shared = (f"<p>concepts in both: {h.esc(', '.join(d['both']) or 'none')}<br>only {h.esc(self.a)}: "
                  f"{h.esc(', '.join(d['only_a']) or 'none')}<br>only {h.esc(self.b)}: "
                  f"{h.esc(', '.join(d['only_b']) or 'none')}</p>")  # fmt: skip
        return f"<style>{h.STYLE}</style>" + h.table(head, rows) + shared


@dataclasses.dataclass
class AblationView:
    """Per-class accuracy and balanced accuracy of a classifier before and after ablating units.

    accuracy, balanced: float [2, K] (row 0 before, row 1 after); NaN where a class has no images.
    """

    layer: str
    units: Sequence[int]
    classes: Sequence[str]
    accuracy: np.ndarray
    balanced: np.ndarray
    images: int

    def to_json(self) -> dict:
        num = lambda x: None if np.isnan(x) else _round(x)
        rows = [
            {"class": name, "accuracy_before": num(self.accuracy[0, k]), "accuracy_after": num(self.accuracy[1, k]),
             "accuracy_change": num(self.accuracy[1, k] - self.accuracy[0, k]),
             "balanced_before": num(self.balanced[0, k]), "balanced_after": num(self.balanced[1, k])}
            for k, name in enumerate(self.classes)
        ]  # fmt: skip
        return {"layer": self.layer, "units": [int(u) for u in self.units], "images": self.images, "classes": rows}

    def _repr_html_(self) -> str:
        d = self.to_json()
        head = ["class", "accuracy before", "accuracy after", "change", "balanced before", "balanced after"]
        rows = [[r["class"], r["accuracy_before"], r["accuracy_after"], r["accuracy_change"], r["balanced_before"],
                 r["balanced_after"]] for r in d["classes"]]  # fmt: skip
        units = ", ".join(str(u) for u in self.units) or "none"
        return f"<style>{h.STYLE}</style><h3>{h.esc(self.layer)}: ablating units {units}</h3>" + h.table(head, rows)
