"""Choosing a concept's units on planted ground truth, and measuring a network split by the concept."""

import numpy as np
import pytest

from dissectjax.analysis.ablation import layer_data
from dissectjax.analysis.knowledge import ConceptDamage, KnowledgeMeasure, concept_damage, concept_units
from dissectjax.errors import DissectError
from dissectjax.evaluate import predict
from tests.analysis.test_debug import CUE, Planted, planted_variables, scenes


def test_the_concept_unit_is_the_one_whose_ablation_hurts_images_with_the_concept():
    # the cue is the concept: clean scenes carry it on class A's images only, where unit CUE adds to A's logit
    model, variables = Planted(), planted_variables()
    images, labels = scenes(400, 0.0, seed=3)
    has = images[:, 0, CUE, 0] > 0
    damage = concept_damage(model, variables, layer_data(model, variables, "hidden", images[has], labels[has]),
                            layer_data(model, variables, "hidden", images[~has], labels[~has]))  # fmt: skip
    assert damage.with_concept[CUE] > 0 and damage.without[CUE] == pytest.approx(0.0, abs=1e-6)
    # unit 1 looks like the concept by IoU (ranked first) but its ablation hurts only images without it
    iou = np.array([0.0, 0.9, 0.0, 0.0, 0.5])
    assert damage.specific[1] < 0 < damage.specific[CUE]
    assert concept_units(iou, damage, k=1, candidates=2).tolist() == [CUE]
    assert concept_units(iou, damage, k=2, candidates=2).tolist() == [CUE, 1]


def test_concept_units_refuses_impossible_requests():
    damage = ConceptDamage(np.zeros(3), np.zeros(3))
    with pytest.raises(DissectError, match="k must be between 1 and the layer's 3 units"):
        concept_units(np.zeros(3), damage, k=4)
    with pytest.raises(DissectError, match="1 candidate units cannot give k = 2"):
        concept_units(np.zeros(3), damage, k=2, candidates=1)


def test_knowledge_measure_splits_accuracy_by_the_concept():
    model, variables = Planted(), planted_variables()
    images, labels = scenes(300, 0.3, seed=5)
    has = images[:, 0, CUE, 0] > 0
    r = KnowledgeMeasure(model, variables, images, labels, has)("B", variables)
    right = predict(model, variables, images) == labels
    assert (r.with_concept, r.without, r.overall) == (right[has].mean(), right[~has].mean(), right.mean())
    assert r.parameters_changed == 0 and r.with_concept < r.without  # the cue misleads images of other classes
    with pytest.raises(DissectError, match="some with the concept and some without"):
        KnowledgeMeasure(model, variables, images, labels, np.ones(300, bool))
