"""Localizing pieces: the concept-whitening layer, concept supervision, regularizers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dissectjax.analysis.localize import (
    Recipe,
    alignment_loss,
    class_selectivity_loss,
    concept_supervision_loss,
    l1_activity,
)
from dissectjax.analysis.localize.recipe import concept_numbers
from dissectjax.data import synthetic
from dissectjax.edit import UnitEdit, fold, transplant
from dissectjax.errors import DissectError
from dissectjax.models.scenenet import SceneNet, fold_whitening
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.whitening import WHITENED, ConceptWhitening, cayley, whitening_matrix
from dissectjax.train import LossTerm, TrainState, cross_entropy, make_train_step, mirror, total_loss


def test_cayley_is_orthogonal_and_the_identity_at_zero():
    s = jax.random.normal(jax.random.key(0), (12, 12))
    r = cayley(s)
    np.testing.assert_allclose(r.T @ r, np.eye(12), atol=1e-5)
    np.testing.assert_array_equal(cayley(jnp.zeros((5, 5))), np.eye(5))


def test_whitening_matrix_whitens():
    a = jax.random.normal(jax.random.key(1), (500, 6)) @ jax.random.normal(jax.random.key(2), (6, 6))
    cov = jnp.cov(a.T, bias=True)
    w = whitening_matrix(cov, iterations=40)
    np.testing.assert_allclose(w @ cov @ w, np.eye(6), atol=1e-3)


class Tiny(nn.Module):
    """conv -> concept whitening -> pooled linear classifier."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(6, (3, 3))(x)
        x = ConceptWhitening(iterations=8, name="cw")(x, train)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def tiny_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    masks = np.zeros((16, 8, 8, 2), np.float32)  # two "concepts": the left and the bright half
    masks[:, :, :4, 0] = 1
    masks[..., 1] = x.mean(-1) > 0
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(masks)


def train_tiny(align_weight, steps=25):
    model = Tiny()
    x, y, masks = tiny_problem()
    variables = model.init(jax.random.key(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(params, stats, state):
        def loss_fn(p):
            logits, out = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats", WHITENED])  # fmt: skip
            z = out[WHITENED]["cw"]["z"]
            terms = [
                LossTerm(
                    "align",
                    align_weight,
                    lambda inter, batch: alignment_loss(inter["z"], p["cw"]["rotation"], batch["masks"]),
                )
            ]
            loss, _ = total_loss(cross_entropy(logits, y), terms, {"z": z}, {"masks": masks})
            return loss, out["batch_stats"]

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), new_stats, state

    rotations = []
    for _ in range(steps):
        params, stats, state = step(params, stats, state)
        rotations.append(cayley(params["cw"]["rotation"]))
    return model, params, stats, rotations


def test_alignment_weight_zero_is_plain_whitening():
    _, params, stats, _ = train_tiny(0.0)
    np.testing.assert_array_equal(params["cw"]["rotation"], 0.0)  # the task loss never moves the rotation
    h = jax.random.normal(jax.random.key(7), (4, 8, 8, 6))
    layer = {"params": params["cw"], "batch_stats": stats["cw"]}
    for train in (False, True):
        out, sown = ConceptWhitening(iterations=8).apply(layer, h, train, mutable=[WHITENED, "batch_stats"])
        np.testing.assert_array_equal(out, sown[WHITENED]["z"])  # the rotation is the identity: output = whitened


def test_rotation_stays_orthogonal_and_aligns():
    model, params, stats, rotations = train_tiny(1.0, steps=40)
    for r in rotations:
        np.testing.assert_allclose(r.T @ r, np.eye(6), atol=1e-5)
    assert np.abs(params["cw"]["rotation"]).max() > 1e-3  # it moved
    x, _, masks = tiny_problem()
    _, out = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats", WHITENED])
    z = out[WHITENED]["cw"]["z"]
    before = alignment_loss(z, jnp.zeros((6, 6)), masks)
    after = alignment_loss(z, params["cw"]["rotation"], masks)
    assert after < before - 0.1, (before, after)


def test_concept_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    maps = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
    masks = jnp.asarray(rng.random((2, 8, 8, 2)) < 0.3)
    loss = lambda m: concept_supervision_loss(m, masks, pos_weight=3.0)
    grad = np.asarray(jax.grad(loss)(maps))
    eps = 1e-2
    for index in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 3, 1, 0), (1, 1, 1, 1)]:
        e = np.zeros(maps.shape, np.float32)
        e[index] = eps
        numeric = (float(loss(maps + e)) - float(loss(maps - e))) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, rel=2e-2, abs=1e-5)


def test_class_selectivity_matches_numpy():
    rng = np.random.default_rng(4)
    acts = rng.random((10, 3, 3, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    per_image = acts.mean(axis=(1, 2))
    means = np.stack([per_image[labels == k].mean(0) for k in range(4) if np.any(labels == k)])  # class 3 absent
    top = means.max(0)
    rest = (means.sum(0) - top) / (len(means) - 1)
    expected = -np.mean((top - rest) / (top + rest + 1e-6))
    assert float(class_selectivity_loss(jnp.asarray(acts), jnp.asarray(labels), 4)) == pytest.approx(expected, rel=1e-5)


def test_zero_strength_regularizers_leave_training_bit_identical():
    """make_train_step with terms of strength 0 trains bit-identically to a plain cross-entropy step."""
    model = SceneNet(num_classes=4, widths=(8, 8, 8, 8, 8))
    rng = np.random.default_rng(5)
    batch = {"images": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
             "labels": jnp.asarray(rng.integers(0, 4, 8))}  # fmt: skip
    variables = model.init(jax.random.key(0), batch["images"])
    opt = optax.adam(1e-2)

    def terms(strength):
        selectivity = lambda inter, b: class_selectivity_loss(inter["layers"]["conv5"], b["labels"], 4)
        return [LossTerm("l1", strength, lambda inter, b: l1_activity(inter["layers"]["conv5"])),
                LossTerm("selectivity", strength, selectivity)]  # fmt: skip

    def run(step):
        state = TrainState(variables["params"], variables["batch_stats"], opt.init(variables["params"]))
        for i in range(3):
            state, *_ = step(state, batch, jax.random.key(i))
        return state.params

    @jax.jit
    def plain(train_state, batch, key):
        params, stats, state = train_state.params, train_state.batch_stats, train_state.opt_state
        flip = jax.random.bernoulli(key, 0.5, (8, 1, 1, 1))
        images = jnp.where(flip, batch["images"][:, :, ::-1], batch["images"])

        def loss_fn(p):
            logits, out = model.apply({"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
            return cross_entropy(logits, batch["labels"]), out["batch_stats"]

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return (TrainState(optax.apply_updates(params, updates), new_stats, state),)

    baseline = run(plain)
    zero = run(make_train_step(model, opt, terms(0.0), augment=mirror))
    strong = run(make_train_step(model, opt, terms(0.5), augment=mirror))
    assert jax.tree.all(jax.tree.map(np.array_equal, baseline, zero))
    assert not jax.tree.all(jax.tree.map(np.array_equal, baseline, strong))


def test_train_step_mirrors_masks_with_their_images():
    model = SceneNet(num_classes=4, widths=(8, 8, 8, 8, 8))
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    masks = images[..., :1] > 128  # [B, H, W, 1]: a mask that must move with its image
    batch = {"images": jnp.asarray(images), "labels": jnp.asarray(rng.integers(0, 4, 16)), "masks": jnp.asarray(masks)}
    mismatch = lambda inter, b: jnp.mean(jnp.abs((b["images"][..., :1] > 128).astype(jnp.float32) - b["masks"]))
    variables = model.init(jax.random.key(0), batch["images"])
    opt = optax.sgd(0.0)
    step = make_train_step(model, opt, [LossTerm("mismatch", 1e-3, mismatch)], augment=mirror)
    unflipped = jnp.mean(jnp.abs((jnp.asarray(images)[:, :, ::-1, :1] > 128).astype(jnp.float32) - masks))
    assert unflipped > 0.1  # flipping only the images would show
    state = TrainState(variables["params"], variables["batch_stats"], opt.init(variables["params"]))
    flipped = mirror(batch, jax.random.key(1))["images"]
    assert np.any(flipped != batch["images"])  # this key mirrors some images: the test is not empty
    *_, values = step(state, batch, jax.random.key(1))
    assert float(values["mismatch"]) == 0.0


def random_whitened_scenenet(batch_norm=True, seed=0):
    """A SceneNet with whitened conv3 and conv5, trained statistics and non-trivial rotations."""
    model = SceneNet(num_classes=5, widths=(8, 8, 8, 8, 12), whiten=("conv3", "conv5"), batch_norm=batch_norm)
    x = jax.random.randint(jax.random.key(seed), (6, 32, 32, 3), 0, 256).astype(jnp.uint8)
    variables = model.init(jax.random.key(seed + 1), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    params = dict(variables["params"])
    for i, name in enumerate(("block3_cw", "block5_cw")):
        shape = params[name]["rotation"].shape
        params[name] = {"rotation": 0.3 * jax.random.normal(jax.random.key(seed + 10 + i), shape)}
    return model, {"params": params, "batch_stats": updates["batch_stats"]}, x


@pytest.mark.parametrize("batch_norm", [True, False])
def test_folded_whitening_computes_the_same_function(batch_norm):
    model, variables, x = random_whitened_scenenet(batch_norm)
    plain, folded = fold_whitening(model, variables)
    assert plain.whiten == () and plain.batch_norm == batch_norm
    assert not any(k.endswith("_cw") for k in folded["params"])
    logits, sown = model.apply(variables, x, mutable=["intermediates"])
    logits_f, sown_f = plain.apply(folded, x, mutable=["intermediates"])
    np.testing.assert_allclose(logits_f, logits, atol=1e-5)
    for layer, value in sown["intermediates"].items():
        assert np.abs(value).max() > 0.1, layer  # not an empty comparison
        np.testing.assert_allclose(sown_f["intermediates"][layer], value, atol=1e-5, err_msg=layer)
    assert fold_whitening(plain, folded)[1] is folded  # nothing to fold: returned as it is


def test_surgery_on_whitened_axes_goes_through_folding():
    model, variables, x = random_whitened_scenenet()
    with pytest.raises(DissectError, match="fold_whitening"):
        unit_wiring(model, "conv5")
    assert unit_wiring(model, "conv4").next == "conv5"  # the layer below stays editable (its filters, and ablation)
    with pytest.raises(DissectError, match="fold_whitening"):  # but conv5's output channels are not units
        transplant(model, variables, variables, "conv4", [0], [1], outgoing=True, output_matching=np.arange(12))
    plain, folded = fold_whitening(model, variables)
    # a receiver with the donor's layers below conv5 but its own conv5: the moved axes must arrive exactly
    receiver = plain.init(jax.random.key(42), x)
    below = lambda tree: {k: v for k, v in tree.items() if not k.startswith("block5")}
    params = {**receiver["params"], **below(folded["params"])}
    receiver = {"params": params, "batch_stats": {**receiver["batch_stats"], **below(folded["batch_stats"])}}
    moved = transplant(plain, folded, receiver, "conv5", [0, 1], [7, 3], outgoing=True)
    _, donor_sown = model.apply(variables, x, mutable=["intermediates"])
    _, moved_sown = plain.apply(moved, x, mutable=["intermediates"])
    axes = donor_sown["intermediates"]["conv5"]
    slots = moved_sown["intermediates"]["conv5"]
    np.testing.assert_allclose(slots[..., [7, 3]], axes[..., [0, 1]], atol=1e-5)
    with pytest.raises(DissectError, match="fold_whitening"):  # the whitened layer's axes are no units to fold
        fold(model, variables, UnitEdit.zero("conv5", [2], 12))
    ablated = fold(plain, folded, UnitEdit.zero("conv5", [2], 12))
    np.testing.assert_array_equal(ablated["params"]["classifier"]["kernel"][2], 0.0)


def test_recipe_validates_and_names_concepts():
    with pytest.raises(DissectError, match="set whiten"):
        Recipe(concepts=("star",), align=1.0)
    with pytest.raises(DissectError, match="need target concepts"):
        Recipe(concept=0.5)
    with pytest.raises(DissectError, match=r"unknown target concept.*nosuch"):
        concept_numbers(["star", "nosuch"])
    with pytest.raises(DissectError, match="only 32 units"):
        Recipe(layer="conv1", concepts=tuple(synthetic.OBJECTS * 3)[:33], concept=1.0).model()
    recipe = Recipe(concepts=("star", "crown"), whiten=True, align=1.0)
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert recipe.model().whiten == ("conv5",) and not recipe.is_baseline and Recipe().is_baseline
    assert [t.name for t in recipe.terms() if t.strength] == ["align"]


def test_masks_come_with_the_classification_scenes():
    config = synthetic.SyntheticConfig(size=6, seed=7)
    numbers = concept_numbers(["star", "red"])
    images, labels, masks = synthetic.generate_with_masks(config, numbers)
    ref_images, ref_labels = synthetic.generate_classification(config)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)
    for i in range(6):
        row = synthetic.generate_row(config, i)
        layers = [m for maps in row.pixel.values() for m in maps]
        for k, n in enumerate(numbers):
            np.testing.assert_array_equal(masks[i, ..., k], np.any([m == n for m in layers], axis=0))
    assert masks[..., 1].any()  # red is everywhere in the scenes: the test is not empty
