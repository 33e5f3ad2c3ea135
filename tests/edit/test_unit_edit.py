"""The one unit edit: at the sow point, on stored activations, folded into weights; all agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scenenet_pair import MODEL, SHAPE, changed, leaves, scenenet_pair

from dissectjax.checkpoint import init_variables
from dissectjax.edit import UnitEdit, fold, with_edits
from dissectjax.errors import DissectError
from dissectjax.models import build_model
from dissectjax.models.common import LAYER_VALUES
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.wiring import read_slice


@pytest.fixture(scope="module")
def instances():
    return scenenet_pair()


def sown(variables, images, layer):
    _, state = MODEL.apply(variables, images, mutable=["intermediates"])
    return state["intermediates"][layer]


@pytest.mark.parametrize("layer, reader", [("conv2", "['params']['block3_conv']['kernel']"),
                                           ("conv5", "['params']['classifier']['kernel']")])  # fmt: skip
def test_fold_touches_only_the_readers(instances, layer, reader):
    a, _, _ = instances
    out = fold(MODEL, a, UnitEdit.zero(layer, [1, 4], unit_wiring(MODEL, layer).units))
    assert changed(a, out) == {reader}
    w = unit_wiring(MODEL, layer)
    kernel = np.asarray(read_slice(out, w.outgoing[0]))
    np.testing.assert_array_equal(np.take(kernel, [1, 4], axis=w.outgoing[0].axis), 0)
    first = next(k for k in leaves(a) if "block1_conv" in jax.tree_util.keystr(k))
    assert leaves(a)[first] is leaves(out)[first]  # shared, not copied


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4", "conv5"])
def test_the_three_applications_agree(instances, layer):
    """Folded into weights, applied where the layer is sown, and applied to stored activations
    before running the layers above: the same logits."""
    a, _, images = instances
    units = unit_wiring(MODEL, layer).units
    for edit in (UnitEdit.zero(layer, range(units), units), UnitEdit.zero(layer, [0, 3], units)):
        folded = MODEL.apply(fold(MODEL, a, edit), images)
        at_sow = MODEL.apply(with_edits(a, edit), images)
        above = MODEL.apply({**a, LAYER_VALUES: {layer: edit.apply_to(sown(a, images, layer))}}, 0 * images)
        np.testing.assert_allclose(folded, at_sow, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(at_sow, above, rtol=1e-5, atol=1e-5)


def test_values_are_what_the_edited_units_output(instances):
    a, _, images = instances
    means = np.asarray(sown(a, images, "conv4").mean(axis=(0, 1, 2)))
    edit = UnitEdit.to_values("conv4", [0, 8, 50], means)
    acts = np.asarray(sown(with_edits(a, edit), images, "conv4"))
    for u in (0, 8, 50):
        np.testing.assert_array_equal(acts[..., u], means[u])
    np.testing.assert_array_equal(acts[..., 1], np.asarray(sown(a, images, "conv4"))[..., 1])
    with pytest.raises(DissectError, match="only zero edits fold"):
        fold(MODEL, a, edit)


def test_one_compiled_program_for_any_unit_set(instances):
    a, _, images = instances
    folded = jax.jit(lambda e: MODEL.apply(fold(MODEL, a, e), images))
    at_sow = jax.jit(lambda e: MODEL.apply(with_edits(a, e), images))
    for units in ([0], [1, 2, 3], list(range(50))):
        edit = UnitEdit.zero("conv3", units, 96)
        folded(edit), at_sow(edit)
    assert folded._cache_size() == 1 and at_sow._cache_size() == 1


def test_edits_apply_to_any_sown_model():
    """No wiring needed where the layer is sown: LeNet-5's dense fc1, ResNet's stage output."""
    for name, shape, layer, kwargs in (
        ("lenet5", (32, 32, 1), "fc1", {}),
        ("resnet18", (32, 32, 3), "layer2", {"width": 8, "num_classes": 10}),
    ):
        model = build_model(name, **kwargs)  # a narrow ResNet: the same graph, a tenth of the time
        v = init_variables(model, shape)
        x = jnp.ones((2, *shape), jnp.uint8)
        _, state = model.apply(v, x, mutable=["intermediates"])
        units = state["intermediates"][layer].shape[-1]
        _, edited = model.apply(with_edits(v, UnitEdit.constant(layer, [1, 2], units, 3.0)), x,
                                mutable=["intermediates"])  # fmt: skip
        np.testing.assert_array_equal(np.asarray(edited["intermediates"][layer])[..., 1:3], 3.0)


def test_bad_edits_are_clear_errors(instances):
    a, _, _ = instances
    with pytest.raises(DissectError, match=r"unknown layer 'conv9'.*available layers: conv1"):
        unit_wiring(MODEL, "conv9")
    with pytest.raises(DissectError, match=r"unit 96 is out of range for layer conv3 \(96 units"):
        UnitEdit.zero("conv3", [96], 96)
    with pytest.raises(DissectError, match="two edits of layer conv3"):
        with_edits(a, UnitEdit.zero("conv3", [1], 96), UnitEdit.zero("conv3", [2], 96))
    with pytest.raises(DissectError, match="the identity shortcut of layer1_0 also carries conv1's channels"):
        fold(build_model("resnet18"), {}, UnitEdit.zero("conv1", [1], 64))
    with pytest.raises(DissectError, match=r"Dense declares no unit wiring .* without tracing it"):
        fold(nn.Dense(3), {}, UnitEdit.zero("x", [1], 4))
    with pytest.raises(DissectError, match="an edit of 96 units for layer conv2 with 64 units"):
        fold(MODEL, a, UnitEdit.zero("conv2", [1], 96))
    with pytest.raises(DissectError, match=r"an edit of 128 units applied to conv5 with 96"):
        UnitEdit.zero("conv5", [1], 128).apply_to(np.zeros((1, *SHAPE[:2], 96), np.float32))
