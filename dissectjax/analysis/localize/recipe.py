"""What a localizing training run asks for: which concepts, in which layer's units, by which terms.

    Recipe -> model (SceneNet, whitened where asked) + loss terms -> dissectjax.train.train_scene_classifier

Target concept k goes to unit k of ``layer`` (axis k when the layer is concept-whitened),
for k = 0..K-1. A recipe is stored in the checkpoint's config (``"localize"``), so the
measurements (:mod:`dissectjax.analysis.localize.modularity`) know what each network was asked to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from dissectjax.analysis.localize.losses import (
    alignment_loss,
    class_selectivity_loss,
    concept_supervision_loss,
    l1_activity,
)
from dissectjax.data import synthetic
from dissectjax.errors import DissectError
from dissectjax.models.scenenet import SceneNet
from dissectjax.train.losses import LossTerm

PIXEL_CATEGORIES = synthetic.PIXEL_CATEGORIES


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Localizing terms for one training run; a strength of 0 leaves a term out."""

    layer: str = "conv5"
    concepts: tuple[str, ...] = ()  # target concept names of the synthetic vocabulary, for units 0..K-1
    concept: float = 0.0  # per-pixel logistic supervision of units 0..K-1 by their concepts
    l1: float = 0.0  # L1 of the layer's activations
    selectivity: float = 0.0  # class selectivity of the layer's units (the term is minus the selectivity)
    whiten: bool = False  # the layer's BatchNorm becomes concept whitening
    align: float = 0.0  # concept whitening: align axes 0..K-1 with the concepts
    pos_weight: float = 4.0  # concept supervision: weight of concept pixels
    offset: float = 2.0  # concept supervision: a unit's activation minus this is its logit

    def __post_init__(self):
        if any(v < 0 for v in (self.concept, self.l1, self.selectivity, self.align)):
            raise DissectError("localizing strengths must be >= 0")
        if self.align and not self.whiten:
            raise DissectError("axis alignment (align) needs a concept-whitened layer: set whiten")
        if (self.concept or self.align) and not self.concepts:
            raise DissectError("concept supervision and alignment need target concepts (concepts=(name, ...))")

    @property
    def is_baseline(self) -> bool:
        return not (self.concept or self.l1 or self.selectivity or self.whiten)

    def numbers(self) -> list[int]:
        """The Broden label numbers of the target concepts (pixel-level labels of the synthetic scenes)."""
        return concept_numbers(self.concepts)

    def model(self, num_classes: int = 12) -> SceneNet:
        model = SceneNet(num_classes=num_classes, whiten=(self.layer,) if self.whiten else ())
        names = model.layer_names
        if self.layer not in names:
            raise DissectError(f"cannot localize in {self.layer!r}: SceneNet's layers are {', '.join(names)}")
        width = model.widths[names.index(self.layer)]
        if len(self.concepts) > width:
            raise DissectError(f"{len(self.concepts)} target concepts but {self.layer} has only {width} units")
        return model

    def terms(self, num_classes: int = 12) -> list[LossTerm]:
        """The loss terms (strength-0 terms are included: :func:`~dissectjax.train.losses.total_loss` drops them)."""
        layer, k = self.layer, len(self.concepts)
        module = SceneNet.whitening_module(self.layer)

        def concept(inter: Mapping, batch: Mapping):
            return concept_supervision_loss(inter["layers"][layer][..., :k], batch["masks"], self.pos_weight,
                                            offset=self.offset)  # fmt: skip

        def align(inter: Mapping, batch: Mapping):
            z = inter["whitened"][module]["z"]  # [B, h, w, C] at the layer's resolution
            return alignment_loss(z, inter["params"][module]["rotation"], any_pool(batch["masks"], z.shape[1:3]))

        return [
            LossTerm("concept", self.concept, concept),
            LossTerm("l1", self.l1, lambda inter, batch: l1_activity(inter["layers"][layer])),
            LossTerm("selectivity", self.selectivity,
                     lambda inter, batch: class_selectivity_loss(inter["layers"][layer], batch["labels"], num_classes)),
            LossTerm("align", self.align, align),
        ]  # fmt: skip

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "concepts": list(self.concepts)}

    @classmethod
    def from_json(cls, data: Mapping) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DissectError(f"a localizing recipe with unknown fields {unknown} (written by another version?); "
                               f"known fields: {sorted(known)}")  # fmt: skip
        return cls(**{**data, "concepts": tuple(data.get("concepts", ()))})


def any_pool(masks, shape: Sequence[int]):
    """[B, S, S', K] -> [B, h, w, K]: a cell is set where any of its label pixels is (S = h * r)."""
    b, s, t, k = masks.shape
    h, w = shape
    if s % h or t % w:
        raise DissectError(f"label maps {s}x{t} are not a multiple of the layer's {h}x{w}")
    return masks.reshape(b, h, s // h, w, t // w, k).max(axis=(2, 4))


def concept_numbers(names: Sequence[str]) -> list[int]:
    """Broden label numbers of pixel-level concepts of the synthetic scenes, by name."""
    table = {label.name: label for label in synthetic.label_table() if label.category in PIXEL_CATEGORIES}
    missing = [n for n in names if n not in table]
    if missing:
        raise DissectError(
            f"unknown target concept(s) {', '.join(missing)}: the synthetic scenes' pixel-level concepts are "
            f"{', '.join(sorted(table))}"
        )
    if len(set(names)) != len(names):
        raise DissectError(f"target concepts must be distinct, got {', '.join(names)}")
    return [table[n].number for n in names]


__all__ = ["Recipe", "any_pool", "concept_numbers"]
