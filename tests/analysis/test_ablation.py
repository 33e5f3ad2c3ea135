"""Ablation measures: balanced accuracy by its definition, batched edits equal one at a time."""

import jax.numpy as jnp
import numpy as np
import pytest
from scenenet_pair import MODEL, scenenet_pair

from dissectjax.analysis.ablation import balanced_accuracy, confusions, layer_data, single_unit_damage
from dissectjax.checkpoint import init_variables
from dissectjax.edit import UnitEdit, fold, with_edits
from dissectjax.errors import DissectError
from dissectjax.models import build_model


def test_balanced_accuracy_of_an_absent_class_is_not_a_number():
    conf = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    ba = balanced_accuracy(conf)
    assert np.isnan(ba[2]) and not np.isnan(ba[:2]).any()


def test_balanced_accuracy_matches_definition():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (truth, pred), 1)
    for c in range(4):
        recall = np.mean(pred[truth == c] == c)
        specificity = np.mean(pred[truth != c] != c)
        assert balanced_accuracy(conf)[c] == pytest.approx((recall + specificity) / 2)


def expected_confusion(logits, labels, classes):
    out = np.zeros((classes, classes), int)
    np.add.at(out, (labels, np.argmax(np.asarray(logits), axis=-1)), 1)
    return out


def test_batched_ablation_equals_one_at_a_time():
    a, _, images = scenenet_pair()
    labels = np.arange(6) % 12
    data = layer_data(MODEL, a, "conv5", np.asarray(images), labels)
    masks = np.eye(128, dtype=np.float32)[[0, 5, 77]]
    batched = confusions(MODEL, a, data, masks, batch=4, chunk=2)
    for m, conf in zip(masks, batched):
        logits = MODEL.apply(fold(MODEL, a, UnitEdit.from_mask("conv5", m)), images)
        np.testing.assert_array_equal(conf, expected_confusion(logits, labels, 12))


def test_models_without_a_resumable_forward_rerun_whole_with_the_edit():
    """LeNet-5 (no from_layer): mean ablation of fc1 units through the sow point."""
    model = build_model("lenet5")
    v = init_variables(model, (32, 32, 1), seed=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 32, 32, 1)).astype(np.uint8)
    labels = rng.integers(0, 10, 10)
    data = layer_data(model, v, "fc1", images, labels)
    masks = np.zeros((2, 120), np.float32)
    masks[1, [3, 7, 9]] = 1
    conf = confusions(model, v, data, masks, mode="mean", batch=4, chunk=2)
    plain = model.apply(v, jnp.asarray(images))
    edited = model.apply(with_edits(v, UnitEdit.to_values("fc1", [3, 7, 9], data.means)), jnp.asarray(images))
    np.testing.assert_array_equal(conf[0], expected_confusion(plain, labels, 10))
    np.testing.assert_array_equal(conf[1], expected_confusion(edited, labels, 10))
    base, damage = single_unit_damage(model, v, data)
    assert base.shape == (10,) and damage.shape == (120, 10)


def test_bad_ablations_are_clear_errors():
    a, _, images = scenenet_pair()
    with pytest.raises(DissectError, match="unknown layer 'block3_conv' for ablation in SceneNet; its sown layers"):
        layer_data(MODEL, a, "block3_conv", np.asarray(images), np.zeros(6, int))
    data = layer_data(MODEL, a, "conv5", np.asarray(images), np.zeros(6, int))
    with pytest.raises(DissectError, match="ablation mode must be one of zero, mean"):
        confusions(MODEL, a, data, np.zeros((1, 128)), mode="half")
    with pytest.raises(DissectError, match="unit masks of 96 units for conv5 with 128 units"):
        confusions(MODEL, a, data, np.zeros((1, 96)))
