"""Neuron specialization: statistics against per-example brute force, views against NumPy, style tags."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dissectjax.analysis.specialize import (
    accuracy_by_group,
    anomalies,
    top_inputs,
    unit_activations,
    weighted_mean_inputs,
)
from dissectjax.data.digits import DEFAULT_STYLES, StyledDigitsConfig, styled_digits, with_rates
from dissectjax.edit import UnitEdit
from dissectjax.models import build_model
from dissectjax.models.common import INTERMEDIATES, PERTURBATIONS
from dissectjax.train import ClassUnitStats, StatsSpec, init_state, make_train_step
from dissectjax.train.class_stats import sown_layer_shapes

LAYERS = ("conv1", "conv2", "fc1")


@pytest.fixture(scope="module")
def lenet():
    model = build_model("lenet5")
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 1)))["params"]
    images, labels, tags = styled_digits(StyledDigitsConfig(size=40, seed=5))
    return model, params, images, labels, tags


def brute_force_stats(model, params, x, y, layers):
    """Per-class sums one example at a time: jax.grad of the example's own loss with respect
    to each layer's activation (summed over positions), its mean and mean rectified activation."""
    shapes = sown_layer_shapes(model, {"params": params}, layers, x.shape[1:])
    grad = {k: np.zeros((10, s[-1])) for k, s in shapes.items()}
    act = {k: np.zeros((10, s[-1])) for k, s in shapes.items()}
    relu = {k: np.zeros((10, s[-1])) for k, s in shapes.items()}
    for i in range(len(x)):
        zeros = {k: jnp.zeros((1, *s)) for k, s in shapes.items()}

        def loss(d, i=i):
            logits = model.apply({"params": params, PERTURBATIONS: d}, x[i : i + 1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[i : i + 1])[0]

        g = jax.grad(loss)(zeros)
        _, state = model.apply({"params": params}, x[i : i + 1], mutable=[INTERMEDIATES])
        for k in layers:
            axes = tuple(range(1, g[k].ndim - 1))
            grad[k][int(y[i])] += np.asarray(g[k]).sum(axis=axes)[0] if axes else np.asarray(g[k])[0]
            a = np.asarray(state[INTERMEDIATES][k], np.float64)
            act[k][int(y[i])] += a.mean(axis=axes)[0] if axes else a[0]
            r = np.maximum(a, 0)
            relu[k][int(y[i])] += r.mean(axis=axes)[0] if axes else r[0]
    return grad, act, relu


def test_class_gradient_statistics_equal_per_example_gradients(lenet):
    """The statistics a train step gathers (an auxiliary output of its backward pass) are the
    per-class sums of each example's own activation gradients, computed one at a time."""
    model, params, images, labels, _ = lenet
    x = jnp.asarray(images[:12], jnp.float32) / 255.0
    y = jnp.asarray(labels[:12])
    opt = optax.adam(1e-3)
    spec = StatsSpec(LAYERS, 10)
    state = init_state(model, {"params": params}, opt, spec, x.shape[1:])
    assert all(float(np.abs(np.asarray(v)).max()) == 0 for v in jax.tree.leaves(state.class_stats))  # starts at zero
    after, _, _ = make_train_step(model, opt, stats=spec)(state, {"images": x, "labels": y}, jax.random.key(0))
    stats = after.class_stats
    grad, act, relu = brute_force_stats(model, params, x, y, LAYERS)  # at the parameters before the step
    for k in LAYERS:
        np.testing.assert_allclose(np.asarray(stats.grad[k]), grad[k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(stats.act[k]), act[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(stats.relu[k]), relu[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats.count), np.bincount(np.asarray(y), minlength=10))


def test_train_step_accumulates_and_plain_step_matches(lenet):
    """The statistics ride along: parameters after a step are the same with or without them,
    and each step adds its batch's sums to the state's."""
    model, params, images, labels, _ = lenet
    x, y = jnp.asarray(images[:16]), jnp.asarray(labels[:16])
    batch, key = {"images": x, "labels": y}, jax.random.key(0)
    opt = optax.adam(1e-3)
    spec = StatsSpec(LAYERS, 10)
    with_stats = init_state(model, {"params": params}, opt, spec, x.shape[1:])
    plain = init_state(model, {"params": params}, opt)
    s1, l1, _ = make_train_step(model, opt, stats=spec)(with_stats, batch, key)
    s0, l0, _ = make_train_step(model, opt)(plain, batch, key)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(np.asarray(s1.class_stats.count).sum()) == 16 and s0.class_stats is None
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    # a second step adds the sums found at the updated parameters
    s2, _, _ = make_train_step(model, opt, stats=spec)(s1, batch, key)
    grad, act, _ = brute_force_stats(model, s1.params, x, y, ("fc1",))
    np.testing.assert_array_equal(np.asarray(s2.class_stats.count), 2 * np.bincount(np.asarray(y), minlength=10))
    np.testing.assert_allclose(np.asarray(s2.class_stats.grad["fc1"]) - np.asarray(s1.class_stats.grad["fc1"]),
                               grad["fc1"], rtol=1e-4, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(np.asarray(s2.class_stats.act["fc1"]) - np.asarray(s1.class_stats.act["fc1"]),
                               act["fc1"], rtol=1e-4, atol=1e-5)  # fmt: skip


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
    acts, logits = unit_activations(model, params, images, "fc1", UnitEdit.zero("fc1", [3, 7], 120))
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
