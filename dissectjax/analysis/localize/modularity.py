"""Measuring localized knowledge: trained variants against a baseline, on one probe set.

    networks (model, variables, recipe) + probe set + held-out scenes with target masks
        -> per network: accuracy, detectors, unique detectors
        -> per network and target concept: its unit, the unit's IoU with the concept, the
           best IoU of any unit, the IoU after a random rotation of the layer, and the
           ablation specificity of the unit
        -> per localized network and target: transplant into the baseline

A network's unit for a target concept is the unit its recipe trained for it (unit k for
the recipe's k-th concept, by concept supervision or axis alignment), otherwise its best
unit for the concept (highest IoU): the baseline is measured at its best. Concept-whitened layers are folded into plain
units first (:func:`~dissectjax.models.scenenet.fold_whitening`, the same function), so
every measurement applies to every variant alike.

*Rotation control*: the layer is rotated at random and dissected again; reported are the
IoU of the same index after rotation and the best IoU of any rotated direction (a unit
basis that carries a concept beats the best random direction). *Ablation specificity* of
a unit for concept c: zero the unit; the accuracy drop on held-out scenes that contain c
minus the drop on scenes that do not. *Transplant*: a trained unit moves into the
baseline's matched slot (correlation on held-out scenes), its filter's inputs reordered by
the matching of the layer below, and its outgoing weights copied where they are the
classifier's (the last layer); measured are the slot's IoU with the concept in the receiving network (does it keep its
concept?), the receiver's accuracy, and the slot's specificity there (does it use it?).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import numpy as np

from dissectjax.analysis.chimera import ProjectedSource, random_rotation
from dissectjax.analysis.localize.recipe import Recipe
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.edit import UnitEdit, layer_matching, transplant, with_edits
from dissectjax.errors import DissectError
from dissectjax.evaluate import predict
from dissectjax.models.scenenet import fold_whitening
from dissectjax.models.unit_wiring import unit_wiring

ROTATED = "rotated"  # the dissected name of the randomly rotated layer
ROTATION_SEEDS = 1000  # rotation k is drawn with seed ROTATION_SEEDS + k, apart from training seeds


@dataclasses.dataclass(frozen=True)
class Network:
    """A trained network and what it was asked to localize (``Recipe()`` for a baseline)."""

    name: str
    model: nn.Module
    variables: Mapping
    recipe: Recipe


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Held-out scenes: images uint8 [N, H, W, 3], labels int [N], masks bool [N, S, S, K] of the K targets."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def contains(self, k: int) -> np.ndarray:
        """bool [N]: the scenes where target k covers at least one label pixel."""
        return self.masks[..., k].any(axis=(1, 2))


def specificity(
    model: nn.Module,
    variables: Mapping,
    layer: str,
    unit: int,
    held: HeldOut,
    k: int,
    correct: np.ndarray | None = None,
) -> float:
    """Accuracy drop on scenes with target k minus the drop on the others, when ``unit`` is zeroed.
    ``correct``: bool [N], the intact network's hits on ``held`` where the caller has them already."""
    if correct is None:
        correct = predict(model, variables, held.images) == held.labels
    ablated = with_edits(variables, UnitEdit.zero(layer, [unit], unit_wiring(model, layer).units))
    kept = predict(model, ablated, held.images) == held.labels
    has = held.contains(k)
    if has.all() or not has.any():
        raise DissectError(f"target {k} is in {'all' if has.any() else 'none'} of the held-out scenes: "
                           "specificity needs scenes with and without it")  # fmt: skip
    return float((correct[has].mean() - kept[has].mean()) - (correct[~has].mean() - kept[~has].mean()))


def measure(
    net: Network, concepts: Sequence[int], probe, held: HeldOut, layer: str, config: DissectConfig, seed: int = 0
) -> tuple[dict, list[dict]]:
    """(summary, one row per target) for one network; ``concepts``: the targets' indices in the probe set."""
    model, variables = fold_whitening(net.model, net.variables)
    units = unit_wiring(model, layer).units
    source = ModelSource(model, variables, [layer], held.images.shape[1:])
    views = {layer: np.eye(units), ROTATED: random_rotation(units, ROTATION_SEEDS + seed).T}
    results = dissect(ProjectedSource(source, layer, views), probe, config)
    r, rotated = results[layer], results[ROTATED]
    correct = predict(model, variables, held.images) == held.labels
    accuracy = float(correct.mean())
    summary = {"network": net.name, "accuracy": accuracy, "detectors": r.detectors, "unique": r.unique["total"]}
    rows = []
    for k, c in enumerate(concepts):
        best = int(np.argmax(r.iou[:, c]))
        trained = trained_unit(net.recipe, probe.concepts.names[c])
        unit = best if trained is None else trained
        rows.append({
            "network": net.name, "target": k, "concept": probe.concepts.names[c],
            "unit": unit, "trained_unit": trained is not None, "iou": float(r.iou[unit, c]), "best_unit": best,
            "best_iou": float(r.iou[best, c]), "rotated_iou": float(rotated.iou[unit, c]),
            "rotated_best_iou": float(rotated.iou[:, c].max()),
            "specificity": specificity(model, variables, layer, unit, held, k, correct),
        })  # fmt: skip
    return summary, rows


def trained_unit(recipe: Recipe, concept: str) -> int | None:
    """The unit ``recipe`` trained for ``concept`` (by supervision or alignment), or None."""
    if (recipe.concept or recipe.align) and concept in recipe.concepts:
        return recipe.concepts.index(concept)
    return None


def probe_concepts(probe, names: Sequence[str]) -> list[int]:
    """The probe set's concept index of each name (an error names what is missing or ambiguous)."""
    out = []
    for name in names:
        found = np.flatnonzero(np.asarray(probe.concepts.names) == name)
        if len(found) != 1:
            problem = "no concept" if not len(found) else f"{len(found)} concepts"
            raise DissectError(f"the probe set has {problem} named {name!r}")
        out.append(int(found[0]))
    return out


def transplant_into(
    donor: Network, receiver: Network, concepts: Sequence[int], probe, held: HeldOut, layer: str,
    config: DissectConfig,
) -> list[dict]:  # fmt: skip
    """Moves the donor's trained units for the targets ``concepts`` (probe indices; targets it was
    not trained for are skipped) into the receiver's matched slots: the filters with their
    inputs reordered by the matching of the layer below, and the outgoing weights too where
    the readers are the classes (the layer is the last)."""
    picked = [(k, trained_unit(donor.recipe, probe.concepts.names[c]), c) for k, c in enumerate(concepts)]
    picked = [(k, u, c) for k, u, c in picked if u is not None]
    if not picked:
        return []
    units = [u for _, u, _ in picked]
    model, a = fold_whitening(donor.model, donor.variables)
    receiving, b = fold_whitening(receiver.model, receiver.variables)
    if model != receiving:
        raise DissectError(f"cannot transplant between different architectures: {model} and {receiving}")
    w = unit_wiring(model, layer)
    here = layer_matching(model, a, model, b, layer, held.images).slot
    below = None if w.previous is None else layer_matching(model, a, model, b, w.previous, held.images).slot
    slots = [int(here[u]) for u in units]
    moved = transplant(model, a, b, layer, units, slots, below, outgoing=w.next is None, output_matching=None)
    r = dissect(ModelSource(model, moved, [layer], held.images.shape[1:]), probe, config)[layer]
    before = float(np.mean(predict(model, b, held.images) == held.labels))
    correct = predict(model, moved, held.images) == held.labels
    after = float(correct.mean())
    return [{"donor": donor.name, "receiver": receiver.name, "target": k, "concept": probe.concepts.names[c],
             "unit": int(u), "slot": slot, "iou_after": float(r.iou[slot, c]),
             "accuracy_before": before, "accuracy_after": after,
             "specificity_after": specificity(model, moved, layer, slot, held, k, correct)}
            for (k, u, c), slot in zip(picked, slots)]  # fmt: skip


def compare(
    networks: Sequence[Network], baseline: str, probe, held: HeldOut, concepts: Sequence[int],
    config: DissectConfig = DissectConfig(batch_size=100), seed: int = 0, move: bool = True, log=print,
) -> dict:  # fmt: skip
    """Every measurement for every network; with ``move``, each network trained for the targets
    gives its target units to the baseline. Returns ``{"networks": [...], "targets": [...],
    "transplants": [...]}`` (rows as dicts)."""
    names = [n.name for n in networks]
    if baseline not in names:
        raise DissectError(f"baseline {baseline!r} is not among the networks ({', '.join(names)})")
    if len(set(names)) != len(names):
        raise DissectError(f"network names must be distinct, got {', '.join(names)}")
    layers = {n.recipe.layer for n in networks if not n.recipe.is_baseline}
    if len(layers) > 1:
        raise DissectError(f"the variants localize in different layers ({', '.join(sorted(layers))}): compare one")
    layer = layers.pop() if layers else networks[0].recipe.layer
    for k, c in enumerate(concepts):  # before any work: specificity needs scenes with and without each target
        has = held.contains(k)
        if has.all() or not has.any():
            where = "all" if has.any() else "none"
            raise DissectError(
                f"{probe.concepts.names[c]} is in {where} of the {len(has)} held-out scenes: choose targets that "
                "some scenes have and some lack"
            )
    out = {"networks": [], "targets": [], "transplants": []}
    for net in networks:
        summary, rows = measure(net, concepts, probe, held, layer, config, seed)
        out["networks"].append(summary)
        out["targets"] += rows
        ious = ", ".join(f"{r['concept']} {r['iou']:.3f}" for r in rows)
        log(f"{net.name}: accuracy {summary['accuracy']:.3f}, {summary['detectors']} detectors, "
            f"{summary['unique']} unique; target IoU {ious}")  # fmt: skip
    receiver = next(n for n in networks if n.name == baseline)
    for net in networks:
        if move and net.name != baseline and (net.recipe.concept or net.recipe.align):
            moved = transplant_into(net, receiver, concepts, probe, held, layer, config)
            out["transplants"] += moved
            if moved:
                log(f"{net.name} -> {baseline}: IoU in the receiver " + ", ".join(
                f"{m['concept']} {m['iou_after']:.3f}" for m in moved))  # fmt: skip
    return out
