"""Moving a concept between instances: instance A's units for a concept, transplanted into an
instance B that never saw it, measured on images with the concept and without.

    A's dissection IoU with the concept [U]             (which units look like the concept)
      + concept_damage(A, with, without)                 (which of them A needs for it, by ablation)
      -> concept_units(...)                              A's k units for the concept
      -> transplant into B's matched slots               inputs reordered by the layer below's
         (incoming filter, normalization, and the        matching; readers' weights copied
         weights that read the units)
      -> KnowledgeMeasure(...)(name, variables)          B's accuracy with / without the concept

Baselines a claim needs beside it (:func:`transplant_baselines` builds them): A's random k
units moved the same way, and fine-tuning B on the same images while changing only the
parameters the transplant changes (same slots, same count), or every parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from dissectjax.analysis.ablation import LAYER_BATCH, LayerData, ablation_values, edit_sweep
from dissectjax.analysis.debug import TrueLabel, changed_parameters
from dissectjax.errors import DissectError
from dissectjax.evaluate import predict


@dataclasses.dataclass(frozen=True)
class ConceptDamage:
    """What ablating each unit alone costs the right label's mean log-probability, on images
    with the concept (``with_concept`` [U]) and without it (``without`` [U])."""

    with_concept: np.ndarray
    without: np.ndarray

    @property
    def specific(self) -> np.ndarray:
        """float [U]: the damage on images with the concept beyond the damage on the rest."""
        return self.with_concept - self.without


def concept_damage(model, variables, with_concept: LayerData, without: LayerData, mode: str = "zero",
                   chunk: int = 16, batch: int = LAYER_BATCH) -> ConceptDamage:  # fmt: skip
    """Ablates every unit of the layer alone (one vmapped sweep per set); see :class:`ConceptDamage`."""
    if with_concept.layer != without.layer or with_concept.units != without.units:
        raise DissectError("images with and without the concept must come from the same layer")
    if not len(with_concept.labels) or not len(without.labels):
        raise DissectError("concept damage needs images with the concept and images without it; one set is empty")
    masks = np.concatenate([np.zeros((1, without.units), np.float32), np.eye(without.units, dtype=np.float32)])
    values = ablation_values(without, mode)

    def drop(data: LayerData) -> np.ndarray:
        _, truth = edit_sweep(model, variables, data, masks, values, TrueLabel(), chunk, batch)
        return (truth[0] - truth[1:]) / len(data.labels)

    return ConceptDamage(drop(with_concept), drop(without))


def concept_units(iou: np.ndarray, damage: ConceptDamage, k: int, candidates: int | None = None) -> np.ndarray:
    """int [k]: among the ``candidates`` units with the highest IoU with the concept (default
    3k), the k whose ablation hurts images with the concept most beyond the rest, best first."""
    iou = np.asarray(iou, np.float64)
    if not 0 < k <= len(iou):
        raise DissectError(f"k must be between 1 and the layer's {len(iou)} units, got {k}")
    candidates = min(len(iou), candidates or 3 * k)
    if candidates < k:
        raise DissectError(f"{candidates} candidate units cannot give k = {k}")
    pool = np.argsort(-iou, kind="stable")[:candidates]
    return pool[np.argsort(-damage.specific[pool], kind="stable")][:k]


@dataclasses.dataclass(frozen=True)
class KnowledgeResult:
    """One network measured on held-out images with the concept and without."""

    name: str
    units: tuple[int, ...]  # A's units moved (empty for B itself and the fine-tunes)
    slots: tuple[int, ...]  # B's units changed
    with_concept: float  # accuracy on images with the concept
    without: float  # accuracy on images without it
    overall: float
    parameters_changed: int
    seconds: float
    setting: str = ""  # e.g. the fine-tune rate chosen

    def row(self) -> dict:
        return {**dataclasses.asdict(self), "units": " ".join(map(str, self.units)),
                "slots": " ".join(map(str, self.slots))}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class KnowledgeMeasure:
    """B's accuracy on held-out ``images`` [N, H, W, C] with ``labels`` [N], split by
    ``has_concept`` bool [N]; parameters changed are counted against B's ``original`` variables.

    ``KnowledgeMeasure(model, original, images, labels, has_concept)(name, variables) -> KnowledgeResult``
    """

    model: object
    original: Mapping
    images: np.ndarray
    labels: np.ndarray
    has_concept: np.ndarray

    def __post_init__(self):
        has = np.asarray(self.has_concept, bool)
        if has.shape != np.shape(self.labels) or has.all() or not has.any():
            raise DissectError("held-out images must include some with the concept and some without it")

    def __call__(self, name: str, variables: Mapping, units: Sequence[int] = (), slots: Sequence[int] = (),
                 seconds: float = 0.0, original: Mapping | None = None,
                 setting: str = "") -> KnowledgeResult:  # fmt: skip
        right = predict(self.model, variables, self.images) == self.labels
        has = np.asarray(self.has_concept, bool)
        return KnowledgeResult(
            name=name,
            units=tuple(int(u) for u in units),
            slots=tuple(int(s) for s in slots),
            with_concept=float(right[has].mean()),
            without=float(right[~has].mean()),
            overall=float(right.mean()),
            parameters_changed=changed_parameters(self.original if original is None else original, variables),
            seconds=round(seconds, 3),
            setting=setting,
        )


@dataclasses.dataclass(frozen=True)
class LabelledSplit:
    """Labelled images split by whether they show the concept: uint8 [N, H, W, C], int [N], bool [N]."""

    images: np.ndarray
    labels: np.ndarray
    has_concept: np.ndarray


def move_concept(model, source: Mapping, target: Mapping, layer: str, iou: np.ndarray, chosen: LabelledSplit,
                 held_out: LabelledSplit, k: int, candidates: int | None = None, random_draws: int = 3,
                 steps: int = 100, rates: Sequence[float] = (1e-3, 3e-4, 1e-4), seed: int = 0,
                 example=None) -> dict:  # fmt: skip
    """A's (``source``) k units for a concept into B's (``target``) matched slots, against baselines.

    ``iou`` float [U]: A's units' dissection IoU with the concept. ``chosen``: the images that
    pick the units (ablation), match the instances, and that the fine-tune baselines train on
    (at the best of ``rates`` on a held-out quarter of them; none with ``steps = 0``);
    ``held_out``: the images every network is measured on. Returns {"units": per-candidate
    rows, "results": one :class:`KnowledgeResult` row per network, "variables": the
    transplanted B, "slots": B's slots}.
    """
    from dissectjax.analysis.ablation import layer_data
    from dissectjax.analysis.debug import finetune_selected, timed, unit_parameter_mask
    from dissectjax.edit import layer_matching, transplant
    from dissectjax.models.unit_wiring import unit_wiring

    w = unit_wiring(model, layer, target, example)
    if w.transplant_refused:
        raise DissectError(f"cannot transplant units of {layer}: {w.transplant_refused}")
    has = np.asarray(chosen.has_concept, bool)
    damage = concept_damage(model, source, layer_data(model, source, layer, chosen.images[has], chosen.labels[has]),
                            layer_data(model, source, layer, chosen.images[~has], chosen.labels[~has]))  # fmt: skip
    units = concept_units(iou, damage, k, candidates)
    here = layer_matching(model, source, model, target, layer, chosen.images)
    below = layer_matching(model, source, model, target, w.previous, chosen.images).slot if w.previous else None
    above = layer_matching(model, source, model, target, w.next, chosen.images).slot if w.next else None

    def moved(picked):
        slots = here.slot[picked]
        return transplant(model, source, target, layer, picked, slots, below, True, above, example), slots

    measure = KnowledgeMeasure(model, target, held_out.images, held_out.labels, held_out.has_concept)
    (result, slots), seconds = timed(moved, units)
    rows = [measure("B (target)", target), measure("A (source)", source, original=source),
            measure(f"transplant: A's {k} concept units", result, units, slots, seconds)]  # fmt: skip
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(w.units), units)
    for d in range(random_draws):
        picked = rng.choice(others, k, replace=False)
        (randomly, random_slots), seconds = timed(moved, picked)
        rows.append(measure(f"transplant: A's random {k} units (draw {d + 1})", randomly, picked, random_slots,
                            seconds))  # fmt: skip
    tunes = [(f"fine-tune B's {k} slots", unit_parameter_mask(model, target, layer, slots, example), slots),
             ("fine-tune all of B", None, ())] if steps else []  # fmt: skip
    for name, mask, changed in tunes:
        tuned, seconds = timed(finetune_selected, model, target, chosen.images, chosen.labels, mask, rates, steps, seed)
        rows.append(measure(name, tuned.variables, (), changed, seconds, setting=f"rate {tuned.learning_rate:g}"))
    pool = np.argsort(-np.asarray(iou), kind="stable")[: min(len(iou), candidates or 3 * k)]
    unit_rows = [
        {"unit": int(u), "iou": round(float(iou[u]), 6), "damage_with": round(float(damage.with_concept[u]), 6),
         "damage_without": round(float(damage.without[u]), 6), "specific": round(float(damage.specific[u]), 6),
         "chosen": bool(u in units), "slot": int(here.slot[u]),
         "match_correlation": round(float(here.correlation[u]), 6)}
        for u in pool
    ]  # fmt: skip
    return {"units": unit_rows, "results": [r.row() for r in rows], "variables": result, "slots": slots,
            "chosen": units, "matching_mean": float(here.mean)}  # fmt: skip
