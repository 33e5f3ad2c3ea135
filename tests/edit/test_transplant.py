"""Transplant: exactly the named slices move, matchings read the right channels, bad requests are errors."""

import jax
import numpy as np
import pytest
from scenenet_pair import MODEL, SHAPE, changed, scenenet_pair

from dissectjax.checkpoint import init_variables
from dissectjax.edit import transplant
from dissectjax.errors import DissectError
from dissectjax.models import build_model


@pytest.fixture(scope="module")
def instances():
    return scenenet_pair()


def test_transplant_into_itself_is_the_identity(instances):
    a, _, _ = instances
    out = transplant(MODEL, a, a, "conv3", [2, 9], [2, 9], input_matching=np.arange(64), outgoing=True,
                     output_matching=np.arange(96))  # fmt: skip
    assert changed(a, out) == set()


def test_transplant_changes_exactly_the_named_slices(instances):
    a, b, _ = instances
    out = transplant(MODEL, a, b, "conv4", [2, 9], [30, 1])
    assert changed(b, out) == {
        "['params']['block4_conv']['kernel']", "['params']['block4_bn']['scale']", "['params']['block4_bn']['bias']",
        "['batch_stats']['block4_bn']['mean']", "['batch_stats']['block4_bn']['var']",
    }  # fmt: skip
    kb, ka = np.asarray(out["params"]["block4_conv"]["kernel"]), np.asarray(a["params"]["block4_conv"]["kernel"])
    np.testing.assert_array_equal(kb[..., 30], ka[..., 2])
    np.testing.assert_array_equal(kb[..., 1], ka[..., 9])
    untouched = [u for u in range(96) if u not in (30, 1)]
    np.testing.assert_array_equal(kb[..., untouched], np.asarray(b["params"]["block4_conv"]["kernel"])[..., untouched])
    np.testing.assert_array_equal(out["batch_stats"]["block4_bn"]["var"][30], a["batch_stats"]["block4_bn"]["var"][2])
    # b itself is unchanged
    assert not np.array_equal(np.asarray(b["params"]["block4_conv"]["kernel"])[..., 30], ka[..., 2])


def test_transplant_with_matching_reads_the_right_inputs(instances):
    a, _, images = instances
    # B = A with conv3's units permuted (and conv4's inputs permuted accordingly): the same function
    perm = np.random.default_rng(3).permutation(96)  # A's unit u sits in B's slot perm[u]
    b = jax.tree.map(lambda x: x, a)
    b = transplant(MODEL, a, b, "conv3", np.arange(96), perm, input_matching=np.arange(64), outgoing=True,
                   output_matching=np.arange(96))  # fmt: skip
    np.testing.assert_allclose(MODEL.apply(b, images), MODEL.apply(a, images), rtol=1e-5, atol=1e-5)
    # moving conv4's unit 7 from A into B needs conv3's matching to read the right channels
    c = transplant(MODEL, a, b, "conv4", [7], [7], input_matching=perm)
    np.testing.assert_allclose(MODEL.apply(c, images), MODEL.apply(a, images), rtol=1e-5, atol=1e-5)
    wrong = transplant(MODEL, a, jax.tree.map(lambda x: x, b), "conv4", [7], [7])
    wrong = transplant(MODEL, jax.tree.map(lambda x: x, a), wrong, "conv4", [7], [7], input_matching=np.arange(96))
    assert np.abs(np.asarray(MODEL.apply(wrong, images)) - np.asarray(MODEL.apply(a, images))).max() > 1e-4


def test_bad_requests_are_clear_errors(instances):
    a, b, _ = instances
    with pytest.raises(DissectError, match="2 units but 1 slots"):
        transplant(MODEL, a, b, "conv3", [1, 2], [3])
    with pytest.raises(DissectError, match="each slot may receive only one unit"):
        transplant(MODEL, a, b, "conv3", [1, 2], [3, 3])
    narrow = build_model("scenenet", num_classes=12, widths=(32, 64, 96, 80, 128))
    other = jax.device_get(init_variables(narrow, SHAPE))
    with pytest.raises(DissectError, match=r"block4_conv/kernel is .* in the source but .* in the target"):
        transplant(MODEL, other, a, "conv4", [1], [1])
    with pytest.raises(DissectError, match="layer4 is a residual stream: each of its channels is written by every"):
        transplant(build_model("resnet18"), {}, {}, "layer4", [1], [1])
    with pytest.raises(DissectError, match="give its matching"):
        transplant(MODEL, a, b, "conv3", [1], [1], outgoing=True)
