"""Neuron specialization: statistics against per-example brute force, views against NumPy, style tags."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dissectjax.data.digits import DEFAULT_STYLES, StyledDigitsConfig, styled_digits, with_rates
from dissectjax.models import build_model
from dissectjax.models.common import INTERMEDIATES, PERTURBATIONS
from dissectjax.specialize import (
    ClassUnitStats,
    ablation_edits,
    accuracy_by_group,
    anomalies,
    layer_units,
    loss_grads_and_stats,
    make_train_step,
    top_inputs,
    unit_activations,
    weighted_mean_inputs,
    zero_stats,
)

LAYERS = ("conv1", "conv2", "fc1")


@pytest.fixture(scope="module")
def lenet():
    model = build_model("lenet5")
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 1)))["params"]
    images, labels, tags = styled_digits(StyledDigitsConfig(size=40, seed=5))
    return model, params, images, labels, tags


def test_class_gradient_statistics_equal_per_example_gradients(lenet):
    model, params, images, labels, _ = lenet
    x = jnp.asarray(images[:12], jnp.float32) / 255.0
    y = jnp.asarray(labels[:12])
    _, _, stats = loss_grads_and_stats(model, params, x, y, LAYERS, 10)
    shapes = layer_units(model, params, LAYERS, x.shape[1:])
    expected = {k: np.zeros((10, s[-1])) for k, s in shapes.items()}
    acts_expected = {k: np.zeros((10, s[-1])) for k, s in shapes.items()}
    for i in range(len(x)):  # one example at a time: jax.grad of its own loss
        zeros = {k: jnp.zeros((1, *s)) for k, s in shapes.items()}

        def loss(d, i=i):
            logits = model.apply({"params": params, PERTURBATIONS: d}, x[i : i + 1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[i : i + 1])[0]

        g = jax.grad(loss)(zeros)
        _, state = model.apply({"params": params}, x[i : i + 1], mutable=[INTERMEDIATES])
        for k in LAYERS:
            axes = tuple(range(1, g[k].ndim - 1))
            expected[k][int(y[i])] += np.asarray(g[k]).sum(axis=axes)[0] if axes else np.asarray(g[k])[0]
            a = np.asarray(state[INTERMEDIATES][k], np.float64)
            acts_expected[k][int(y[i])] += a.mean(axis=axes)[0] if axes else a[0]
    for k in LAYERS:
        np.testing.assert_allclose(np.asarray(stats.grad[k]), expected[k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(stats.act[k]), acts_expected[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats.count), np.bincount(np.asarray(y), minlength=10))


def test_train_step_accumulates_and_plain_step_matches(lenet):
    """The statistics ride along: parameters after a step are the same with or without them."""
    model, params, images, labels, _ = lenet
    x, y = jnp.asarray(images[:16]), jnp.asarray(labels[:16])
    opt = optax.adam(1e-3)
    stats = zero_stats(layer_units(model, params, LAYERS, x.shape[1:]), 10)
    p1, _, s1, l1 = make_train_step(model, opt, LAYERS, 10)(params, opt.init(params), stats, x, y)
    p0, _, s0, l0 = make_train_step(model, opt, (), 10)(params, opt.init(params), stats, x, y)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(np.asarray(s1.count).sum()) == 16 and int(np.asarray(s0.count).sum()) == 0
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)


def test_weighted_mean_inputs_equal_numpy(lenet):
    model, params, images, labels, _ = lenet
    got = weighted_mean_inputs(model, params, images, labels, "fc1", batch_size=16)
    acts, _ = unit_activations(model, params, images, "fc1")
    w = np.maximum(acts.astype(np.float64), 0)
    x = images[..., 0] / 255.0
    for k in range(10):
        rows = labels == k
        den = w[rows].sum(0)
        num = np.einsum("iu,ihw->uhw", w[rows], x[rows])
        expected = np.where(den[:, None, None] > 0, num / np.maximum(den, 1e-30)[:, None, None], 0)
        np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6)


def test_ablation_edit_zeroes_the_unit_and_changes_only_through_it(lenet):
    model, params, images, labels, tags = lenet
    acts, logits = unit_activations(model, params, images, "fc1", ablation_edits("fc1", [3, 7], 120))
    assert np.all(acts[:, [3, 7]] == 0) and np.any(acts[:, 0] != 0)
    _, base = unit_activations(model, params, images, "fc1")
    assert np.abs(logits - base).max() > 0
    accs = accuracy_by_group(model, params, images, labels, tags)
    assert set(accs) == set(tags)


def test_anomalies_rank_a_planted_unit_first():
    k, u = 10, 6
    count = np.full(k, 100)
    rng = np.random.default_rng(0)
    grad = rng.normal(0, 0.01, (k, u)) * 100
    act = rng.normal(0, 1, (k, u)) * 100
    grad[7, 4], act[7, 4] = -0.2 * 100, -3.0 * 100  # pushed up for class 7, low on class 7
    stats = ClassUnitStats(count, {"fc": grad}, {"fc": act}, {"fc": np.maximum(act, 0)})
    ranked = anomalies(stats, "fc")
    assert (ranked[0]["unit"], ranked[0]["class"]) == (4, 7)
    assert all(r["push"] > 0 and r["act_z"] < 0 for r in ranked)


def test_stats_save_and_load(tmp_path):
    stats = ClassUnitStats(np.arange(3), {"a": np.ones((3, 2))}, {"a": np.zeros((3, 2))}, {"a": np.full((3, 2), 2.0)})
    stats.save(tmp_path / "s.npz")
    back = ClassUnitStats.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.relu["a"], stats.relu["a"])
    np.testing.assert_array_equal(back.count, stats.count)


def test_top_inputs():
    acts = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 0.0]])
    np.testing.assert_array_equal(top_inputs(acts, 2), [[1, 2], [0, 1]])


def test_style_tags_match_what_was_drawn():
    """Rates as configured, and the drawn strokes where the tags say: a crossbar, a base."""
    config = with_rates(StyledDigitsConfig(size=3000, seed=1), 7, {"plain": 0.4, "crossed": 0.4, "hook": 0.2})
    images, labels, tags = styled_digits(config)
    for digit, styles in config.style_table().items():
        of_digit = tags[labels == digit]
        for style, rate in styles:
            assert abs(np.mean(of_digit == f"{digit}-{style}") - rate) < 0.1
    assert set(np.unique(tags[labels == 3])) == {"3"}
    x = images[..., 0] / 255.0
    # the crossbar: rows 14-18 right of the stem (columns 19-24); the base of a 1: rows 26-30 left of it
    bar = lambda t: x[tags == t][:, 14:19, 19:25].mean()
    assert bar("7-crossed") > 2 * bar("7-plain")
    base = lambda t: x[tags == t][:, 26:31, 8:14].mean()
    assert base("1-base") > 2 * base("1-plain")
    assert DEFAULT_STYLES[7][1][0] == "crossed"


def test_styled_digits_are_deterministic():
    a = styled_digits(StyledDigitsConfig(size=20, seed=4))
    b = styled_digits(StyledDigitsConfig(size=20, seed=4))
    np.testing.assert_array_equal(a[0], b[0])
    assert list(a[2]) == list(b[2])
