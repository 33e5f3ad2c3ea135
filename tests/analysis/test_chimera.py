"""The rotation test: Q^a is a rotation path from I to Q; a = 0 is the plain dissection."""

import numpy as np
import pytest

from dissectjax.analysis.chimera import (
    ProjectedSource,
    point_name,
    random_directions,
    random_rotation,
    rotated_source,
    rotation_power,
)
from dissectjax.checkpoint import demo_checkpoint, load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ArraySource, ModelSource


@pytest.mark.parametrize("units", [2, 5, 16, 33])
def test_fractional_powers_of_a_random_rotation(units):
    q = random_rotation(units, seed=units)
    np.testing.assert_allclose(q @ q.T, np.eye(units), atol=1e-10)
    assert np.linalg.det(q) == pytest.approx(1.0)
    np.testing.assert_array_equal(rotation_power(q, 0.0), np.eye(units))
    np.testing.assert_allclose(rotation_power(q, 1.0), q, atol=1e-9)
    half = rotation_power(q, 0.5)
    np.testing.assert_allclose(half @ half.T, np.eye(units), atol=1e-9)
    np.testing.assert_allclose(half @ half, q, atol=1e-9)
    np.testing.assert_allclose(rotation_power(q, 0.25) @ rotation_power(q, 0.5), rotation_power(q, 0.75), atol=1e-9)
    assert np.linalg.det(rotation_power(q, 0.3)) == pytest.approx(1.0)


def test_alpha_zero_is_the_plain_dissection_and_rotations_differ(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = np.random.default_rng(0).gamma(2.0, size=(len(ds), 6, 4, 4)).astype(np.float32)
    base = ArraySource(acts, "layer", len(ds))
    config = DissectConfig(0.05, batch_size=8)
    plain = dissect(base, ds, config)["layer"]
    rotated = dissect(rotated_source(base, "layer", [0.0, 1.0], [3]), ds, config)
    zero = rotated[point_name("layer", 0.0, 3)]
    np.testing.assert_array_equal(zero.thresholds, plain.thresholds)
    np.testing.assert_array_equal(zero.intersection, plain.intersection)
    np.testing.assert_array_equal(zero.unit_area, plain.unit_area)
    assert not np.array_equal(rotated[point_name("layer", 1.0, 3)].intersection, plain.intersection)


def test_rotations_of_a_trained_layer_are_dissected_in_one_run(tmp_path):
    model, variables, meta = load_checkpoint(demo_checkpoint())
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=200, seed=1), cache_dir=str(tmp_path)))
    base = ModelSource(model, variables, ["conv5"], tuple(meta["input_shape"]))
    source = rotated_source(base, "conv5", [0, 1], [0, 1])
    results = dissect(source, probe, DissectConfig(batch_size=100))
    plain = dissect(base, probe, DissectConfig(batch_size=100))["conv5"]
    np.testing.assert_array_equal(results[point_name("conv5", 0, 1)].intersection, plain.intersection)
    turned = results[point_name("conv5", 1, 0)]
    changed = np.mean(turned.labels.label != plain.labels.label)
    assert changed > 0.5  # the rotated basis is another set of directions, dissected afresh


def test_random_directions_are_unit_norm_projections(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = np.random.default_rng(1).gamma(2.0, size=(len(ds), 6, 4, 4)).astype(np.float32)
    d = random_directions(6, 9, seed=0)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0)
    base = ArraySource(acts, "layer", len(ds))
    views = {"own": np.eye(6)[:, [2]], "random": d}
    results = dissect(ProjectedSource(base, "layer", views), ds, DissectConfig(0.05, batch_size=8))
    plain = dissect(base, ds, DissectConfig(0.05, batch_size=8))["layer"]
    assert results["random"].units == 9
    np.testing.assert_array_equal(results["own"].intersection[0], plain.intersection[2])  # unit 2 as a direction
    with pytest.raises(ValueError, match="expected"):
        ProjectedSource(base, "layer", {"bad": np.ones((5, 2))})


def test_learned_combinations_recover_planted_directions():
    from dissectjax.analysis.multiunit import fit_concepts, top_k_views

    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(4000, 12)).astype(np.float32) * np.linspace(0.5, 3, 12, dtype=np.float32)
    truth = rng.normal(size=(12, 3))
    y = (x - x.mean(0)) / x.std(0) @ truth > 1.0
    w = fit_concepts(x, y, steps=400)
    for c in range(3):
        direction = w[:, c] * x.std(0)  # back to the standardized space the concept was defined in
        cosine = direction @ truth[:, c] / np.linalg.norm(direction) / np.linalg.norm(truth[:, c])
        assert cosine > 0.9, cosine
    iou = rng.random((12, 3))
    views = top_k_views(iou, np.ones(12), ks=(1, 4))
    np.testing.assert_array_equal(np.flatnonzero(views["top-1"][:, 0]), [np.argmax(iou[:, 0])])
    assert set(np.flatnonzero(views["top-4"][:, 2])) == set(np.argsort(-iou[:, 2])[:4])


def test_rotated_dissection_equals_dissecting_numpy_rotated_activations(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = np.random.default_rng(2).gamma(2.0, size=(len(ds), 6, 4, 4)).astype(np.float32)
    q = rotation_power(random_rotation(6, 5), 0.6)
    rotated = np.einsum("nuhw,vu->nvhw", acts.astype(np.float64), q).astype(np.float32)  # Q^a x at each position
    config = DissectConfig(0.05, batch_size=8)
    numpy_side = dissect(ArraySource(rotated, "layer", len(ds)), ds, config)["layer"]
    ours = dissect(rotated_source(ArraySource(acts, "layer", len(ds)), "layer", [0.6], [5]), ds, config)
    ours = ours[point_name("layer", 0.6, 5)]
    np.testing.assert_allclose(ours.thresholds, numpy_side.thresholds, rtol=1e-5)
    # counts agree up to pixels within float32 rounding of a threshold
    assert np.abs(ours.intersection - numpy_side.intersection).max() <= 3
    np.testing.assert_array_equal(ours.labels.label, numpy_side.labels.label)


def test_summaries_average_both_counting_rules_over_seeds():
    from types import SimpleNamespace

    from dissectjax.analysis.chimera import summarize

    def result(detectors, best, tables, scores):
        return SimpleNamespace(detectors=detectors, unique={"total": best, "object": best}, labels=SimpleNamespace(
            score=np.array(scores)), unique_tables={"total": tables, "object": tables})  # fmt: skip

    s = summarize([result(10, 4, 6, [0.1, 0.3]), result(14, 2, 8, [0.2, 0.2])], ["object"])
    assert s["views"] == 2 and s["detectors"] == 12 and s["detectors_std"] == 2
    assert (s["unique"], s["unique_std"], s["unique_tables"], s["unique_tables_std"]) == (3, 1, 7, 1)
    assert s["mean_iou"] == pytest.approx(0.2) and s["mean_iou_std"] == pytest.approx(0.0)
    assert s["unique_object"] == 3
