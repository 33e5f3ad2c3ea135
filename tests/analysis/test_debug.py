"""Debugging on planted ground truth: a network built by hand whose unit K carries a shortcut.

Images are one row of K + 1 pixels: pixel c is bright for class c, pixel K is the cue. The
hidden layer copies the pixels (unit c reads pixel c, unit K the cue); the classifier reads
unit c for class c, and also unit K for class A with weight 1.5. Clean data puts the cue on
class A's images only, so the shortcut is invisible there; on the shifted set the cue lands on
other classes' images, and every one of them is predicted A: the bug.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.analysis.ablation import layer_data
from dissectjax.analysis.debug import (
    FixMeasure,
    blame,
    changed_parameters,
    finetune,
    mean_units,
    rescale_units,
    unit_parameter_mask,
    zero_units,
)
from dissectjax.models.common import sow_layer

K, A, CUE = 4, 0, 4


class Planted(nn.Module):
    num_classes: int = K

    @nn.compact
    def __call__(self, images, train=False):
        x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
        h = sow_layer(self, "hidden", nn.relu(nn.Dense(K + 1, name="fc")(x)))
        return nn.Dense(self.num_classes, name="classifier")(h)


def planted_variables():
    hidden = {"kernel": jnp.eye(K + 1), "bias": jnp.zeros(K + 1)}
    out = np.zeros((K + 1, K), np.float32)
    out[np.arange(K), np.arange(K)] = 1.0
    out[CUE, A] = 1.5  # the shortcut
    return {"params": {"fc": hidden, "classifier": {"kernel": jnp.asarray(out), "bias": jnp.zeros(K)}}}


def scenes(n, cue_on_other_classes, seed):
    """uint8 [n, 1, K + 1, 1] images and labels; the cue on every class-A image, and on other
    classes' images with probability ``cue_on_other_classes``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    pixels = rng.integers(0, 40, (n, K + 1))
    pixels[np.arange(n), labels] = rng.integers(200, 255, n)
    cue = (labels == A) | (rng.random(n) < cue_on_other_classes)
    pixels[:, CUE] = np.where(cue, 255, 0)
    return pixels.astype(np.uint8).reshape(n, 1, K + 1, 1), labels.astype(np.int32)


@pytest.fixture(scope="module")
def planted():
    model, variables = Planted(), planted_variables()
    clean = scenes(400, 0.0, seed=1)
    shifted = scenes(400, 0.5, seed=2)
    predicted = np.asarray(jnp.argmax(model.apply(variables, shifted[0]), -1))
    wrong = predicted != shifted[1]
    failing = (shifted[0][wrong], shifted[1][wrong])
    passing = (clean[0], clean[1])
    return model, variables, clean, failing, passing


def test_the_planted_shortcut_is_the_bug(planted):
    model, variables, clean, failing, _ = planted
    assert np.mean(np.asarray(jnp.argmax(model.apply(variables, clean[0]), -1)) == clean[1]) == 1.0
    assert len(failing[1]) > 100 and np.all(np.asarray(jnp.argmax(model.apply(variables, failing[0]), -1)) == A)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_blame_ranks_the_shortcut_unit_first(planted, mode):
    model, variables, _, failing, passing = planted
    f = layer_data(model, variables, "hidden", *failing)
    p = layer_data(model, variables, "hidden", *passing)
    b = blame(model, variables, f, p, mode, chunk=3, batch=64)  # chunks and batches padded
    assert b.ranked()[0] == CUE
    assert b.fixed[CUE] == len(failing[1]) and b.broken[CUE] == 0 and b.gain[CUE] > 0
    assert np.all(b.fixed[:K] <= 0)  # a class's own unit fixes nothing
    if mode == "zero":  # and, zeroed, costs its class (class A keeps the shortcut)
        assert np.all(b.broken[1:K] > 0) and b.broken[A] == 0


def test_zero_and_rescale_fixes_remove_the_errors_and_nothing_else(planted):
    model, variables, clean, failing, _ = planted
    zeroed = zero_units(model, variables, "hidden", [CUE], example=clean[0][:1])
    r = FixMeasure(model, variables, failing, clean)("zero", zeroed, [CUE])
    assert r.failing_accuracy == 1.0 and abs(r.clean_accuracy - 1.0) < 0.01 and r.agreement == 1.0
    assert r.parameters_changed == 1  # the one nonzero weight that read the cue: the shortcut
    scaled = rescale_units(model, variables, "hidden", [CUE], 0.0, example=clean[0][:1])
    jax.tree.map(np.testing.assert_array_equal, scaled["params"], zeroed["params"])
    half = rescale_units(model, variables, "hidden", [CUE], 0.5, example=clean[0][:1])
    assert float(half["params"]["classifier"]["kernel"][CUE, A]) == 0.75 and changed_parameters(variables, half) == 1


def test_mean_fix_holds_the_unit_where_it_is_sown(planted):
    model, variables, clean, failing, passing = planted
    p = layer_data(model, variables, "hidden", *passing)
    held = mean_units(variables, "hidden", [CUE], p.means)
    r = FixMeasure(model, variables, failing, clean)("mean", held, [CUE])
    assert r.failing_accuracy == 1.0 and r.clean_accuracy == 1.0 and r.parameters_changed == 1


def test_constrained_finetune_moves_only_the_units_parameters(planted):
    model, variables, clean, failing, _ = planted
    mask = unit_parameter_mask(model, variables, "hidden", [CUE], example=clean[0][:1])
    assert float(sum(m.sum() for m in jax.tree.leaves(mask))) == (K + 1) + 1 + K  # filter, bias, outgoing row
    tuned = finetune(model, variables, failing[0][:32], failing[1][:32], mask, steps=60, learning_rate=0.05)
    for m, before, after in zip(jax.tree.leaves(mask), jax.tree.leaves(variables["params"]),
                                jax.tree.leaves(tuned["params"])):  # fmt: skip
        moved = np.asarray(before) != np.asarray(after)
        assert not np.any(moved & (np.asarray(m) == 0))
    r = FixMeasure(model, variables, failing, clean)("finetune", tuned, [CUE])
    assert r.failing_accuracy > 0.9 and r.parameters_changed <= (K + 1) + 1 + K
