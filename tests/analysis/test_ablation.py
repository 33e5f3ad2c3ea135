"""Ablation measures: balanced accuracy by its definition, batched edits equal one at a time."""

import jax.numpy as jnp
import numpy as np
import pytest
from scenenet_pair import MODEL, scenenet_pair

from dissectjax.analysis.ablation import ClassCounts, class_counts, layer_data, single_unit_damage
from dissectjax.checkpoint import init_variables
from dissectjax.edit import UnitEdit, fold, with_edits
from dissectjax.errors import DissectError
from dissectjax.models import build_model


def test_balanced_accuracy_of_an_absent_class_is_not_a_number():
    conf = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    ba = ClassCounts.from_confusion(conf).balanced_accuracy()
    assert np.isnan(ba[2]) and not np.isnan(ba[:2]).any()


def test_balanced_accuracy_matches_definition():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (truth, pred), 1)
    for c in range(4):
        recall = np.mean(pred[truth == c] == c)
        specificity = np.mean(pred[truth != c] != c)
        assert ClassCounts.from_confusion(conf).balanced_accuracy()[c] == pytest.approx((recall + specificity) / 2)


def expected_counts(logits, labels, classes):
    """(hits, actual, predicted) per class, by brute force."""
    pred = np.argmax(np.asarray(logits), axis=-1)
    return [np.bincount(labels[pred == labels], minlength=classes), np.bincount(labels, minlength=classes),
            np.bincount(pred, minlength=classes)]  # fmt: skip


def assert_counts(counts, m, expected):
    for got, want in zip((counts.hits[m], counts.actual[m], counts.predicted[m]), expected):
        np.testing.assert_array_equal(got, want)


def test_batched_ablation_equals_one_at_a_time():
    a, _, images = scenenet_pair()
    labels = np.arange(6) % 12
    data = layer_data(MODEL, a, "conv5", np.asarray(images), labels)
    masks = np.eye(128, dtype=np.float32)[[0, 5, 77]]
    batched = class_counts(MODEL, a, data, masks, batch=4, chunk=2)
    for i, m in enumerate(masks):
        logits = MODEL.apply(fold(MODEL, a, UnitEdit.from_mask("conv5", m)), images)
        assert_counts(batched, i, expected_counts(logits, labels, 12))


def test_mean_ablation_of_a_dense_layer_runs_only_the_layers_above():
    """LeNet-5 fc1 ([B, U], stored as [B, 1, 1, U]): mean ablation from stored activations equals the edit
    applied where the layer is sown."""
    model = build_model("lenet5")
    v = init_variables(model, (32, 32, 1), seed=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 32, 32, 1)).astype(np.uint8)
    labels = rng.integers(0, 10, 10)
    data = layer_data(model, v, "fc1", images, labels)
    masks = np.zeros((2, 120), np.float32)
    masks[1, [3, 7, 9]] = 1
    assert data.above
    counts = class_counts(model, v, data, masks, mode="mean", batch=4, chunk=2)
    plain = model.apply(v, jnp.asarray(images))
    edited = model.apply(with_edits(v, UnitEdit.to_values("fc1", [3, 7, 9], data.means)), jnp.asarray(images))
    assert_counts(counts, 0, expected_counts(plain, labels, 10))
    assert_counts(counts, 1, expected_counts(edited, labels, 10))
    base, damage = single_unit_damage(model, v, data)
    assert base.shape == (10,) and damage.shape == (120, 10)


def test_bad_ablations_are_clear_errors():
    a, _, images = scenenet_pair()
    with pytest.raises(DissectError, match="unknown layer 'block3_conv' for ablation in SceneNet; its sown layers"):
        layer_data(MODEL, a, "block3_conv", np.asarray(images), np.zeros(6, int))
    data = layer_data(MODEL, a, "conv5", np.asarray(images), np.zeros(6, int))
    with pytest.raises(DissectError, match="ablation mode must be one of zero, mean"):
        class_counts(MODEL, a, data, np.zeros((1, 128)), mode="half")
    with pytest.raises(DissectError, match="unit masks of 96 units for conv5 with 128 units"):
        class_counts(MODEL, a, data, np.zeros((1, 96)))
