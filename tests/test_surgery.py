"""Surgery: pure edits that touch exactly the right slices, exact ablation, transplant, matching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.ablation import LayerData, balanced_accuracy, confusions
from dissectjax.checkpoint import init_variables
from dissectjax.errors import DissectError
from dissectjax.matching import Correlation, match
from dissectjax.models import build_model
from dissectjax.surgery import get, replace_activations, transplant, unit_mask, wiring, zero_out

MODEL = build_model("scenenet", num_classes=12)
SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def instances():
    a = jax.device_get(init_variables(MODEL, SHAPE, seed=1))
    b = jax.device_get(init_variables(MODEL, SHAPE, seed=2))
    rng = np.random.default_rng(0)
    # non-trivial normalization parameters and statistics, so copying them is visible
    for v in (a, b):
        for k in v["batch_stats"]:
            v["params"][k]["scale"] = rng.uniform(0.5, 2, v["params"][k]["scale"].shape).astype(np.float32)
            v["params"][k]["bias"] = rng.normal(size=v["params"][k]["bias"].shape).astype(np.float32)
            v["batch_stats"][k]["mean"] = rng.normal(size=v["batch_stats"][k]["mean"].shape).astype(np.float32)
            v["batch_stats"][k]["var"] = rng.uniform(0.5, 2, v["batch_stats"][k]["var"].shape).astype(np.float32)
    images = jnp.asarray(rng.integers(0, 256, (6, *SHAPE)), jnp.uint8)
    return a, b, images


def leaves(tree):
    return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def changed(before, after):
    a, b = leaves(before), leaves(after)
    assert a.keys() == b.keys()
    return {jax.tree_util.keystr(k) for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))}


@pytest.mark.parametrize("layer, reader", [("conv2", "['params']['block3_conv']['kernel']"),
                                           ("conv5", "['params']['classifier']['kernel']")])  # fmt: skip
def test_zero_out_touches_only_the_readers(instances, layer, reader):
    a, _, _ = instances
    out = zero_out(MODEL, a, layer, unit_mask(MODEL, layer, [1, 4]))
    assert changed(a, out) == {reader}
    w = wiring(MODEL, layer)
    kernel = np.asarray(get(out, w.outgoing[0]))
    np.testing.assert_array_equal(np.take(kernel, [1, 4], axis=w.outgoing[0].axis), 0)
    assert (
        leaves(a)[next(k for k in leaves(a) if "block1_conv" in jax.tree_util.keystr(k))]
        is leaves(out)[next(k for k in leaves(out) if "block1_conv" in jax.tree_util.keystr(k))]
    )  # shared, not copied


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4", "conv5"])
def test_zero_out_equals_zeroed_layer_output(instances, layer):
    a, _, images = instances
    units = wiring(MODEL, layer).units
    full = MODEL.apply(zero_out(MODEL, a, layer, np.ones(units, np.float32)), images)
    with replace_activations(MODEL, layer, np.ones(units, bool), np.zeros(units)):
        intercepted = MODEL.apply(a, images)
    _, state = MODEL.apply(a, images, mutable=["intermediates"])
    head = MODEL.apply(a, jnp.zeros_like(state["intermediates"][layer]), from_layer=layer)
    np.testing.assert_allclose(full, intercepted, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full, head, rtol=1e-5, atol=1e-5)
    some = unit_mask(MODEL, layer, [0, 3])
    partial = MODEL.apply(zero_out(MODEL, a, layer, some), images)
    acts = state["intermediates"][layer] * (1 - some)
    np.testing.assert_allclose(partial, MODEL.apply(a, acts, from_layer=layer), rtol=1e-5, atol=1e-5)


def test_zero_out_compiles_once_for_any_unit_set(instances):
    a, _, images = instances
    fn = jax.jit(lambda m: MODEL.apply(zero_out(MODEL, a, "conv3", m), images))
    for units in ([0], [1, 2, 3], list(range(50))):
        fn(jnp.asarray(unit_mask(MODEL, "conv3", units)))
    assert fn._cache_size() == 1


def test_replace_activations_sets_the_units(instances):
    a, _, images = instances
    values = np.linspace(0.5, 2.0, 96).astype(np.float32)
    mask = unit_mask(MODEL, "conv3", [5, 7]) > 0
    with replace_activations(MODEL, "conv3", mask, values):
        _, state = MODEL.apply(a, images, mutable=["intermediates"])
    acts = np.asarray(state["intermediates"]["conv3"])
    np.testing.assert_allclose(acts[..., 5], values[5])
    np.testing.assert_allclose(acts[..., 7], values[7])
    assert np.abs(acts[..., 6] - values[6]).max() > 0.1


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
    with pytest.raises(DissectError, match=r"unknown layer 'conv9'.*available layers: conv1"):
        wiring(MODEL, "conv9")
    with pytest.raises(DissectError, match=r"unit 96 is out of range for layer conv3 \(96 units"):
        unit_mask(MODEL, "conv3", [96])
    with pytest.raises(DissectError, match="2 units but 1 slots"):
        transplant(MODEL, a, b, "conv3", [1, 2], [3])
    narrow = build_model("scenenet", num_classes=12, widths=(32, 64, 96, 80, 128))
    other = jax.device_get(init_variables(narrow, SHAPE))
    with pytest.raises(DissectError, match=r"block4_conv/kernel is .* in the source but .* in the target"):
        transplant(MODEL, other, a, "conv4", [1], [1])
    with pytest.raises(DissectError, match="surgery supports SceneNet layers so far, not ResNet"):
        wiring(build_model("resnet18"), "layer4")


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


def test_batched_ablation_equals_one_at_a_time(instances):
    a, _, images = instances
    _, state = MODEL.apply(a, images, mutable=["intermediates"])
    labels = np.arange(6) % 12
    data = LayerData("conv5", np.asarray(state["intermediates"]["conv5"]), labels, 12)
    masks = np.eye(128, dtype=np.float32)[[0, 5, 77]]
    batched = confusions(MODEL, a, data, masks, batch=4, chunk=2)
    for m, conf in zip(masks, batched):
        pred = np.argmax(MODEL.apply(zero_out(MODEL, a, "conv5", m), images), axis=-1)
        expected = np.zeros((12, 12), int)
        np.add.at(expected, (labels, pred), 1)
        np.testing.assert_array_equal(conf, expected)


def test_matching_recovers_a_permutation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5, 5, 16)).astype(np.float32)
    perm = rng.permutation(16)
    b = np.empty_like(a)
    b[..., perm] = a + 0.3 * rng.normal(size=a.shape).astype(np.float32)  # A's unit u is B's unit perm[u]
    corr = Correlation()
    for i in range(0, 40, 16):
        corr.add(jnp.asarray(a[i : i + 16]), jnp.asarray(b[i : i + 16]))
    c = corr.result()
    ref = np.corrcoef(a.reshape(-1, 16).T, b.reshape(-1, 16).T)[:16, 16:]
    np.testing.assert_allclose(c, ref, atol=1e-5)
    m = match(c)
    np.testing.assert_array_equal(m.slot, perm)
    assert m.mean > 0.9 and abs(m.random_mean) < 0.1


def test_mean_replacement_two_ways_agree(instances):
    a, _, images = instances
    _, state = MODEL.apply(a, images, mutable=["intermediates"])
    acts = state["intermediates"]["conv4"]
    means = np.asarray(acts.mean(axis=(0, 1, 2)))
    mask = unit_mask(MODEL, "conv4", [0, 8, 50]) > 0
    with replace_activations(MODEL, "conv4", mask, means):
        intercepted = MODEL.apply(a, images)
    head = MODEL.apply(a, jnp.where(mask, means, acts), from_layer="conv4")
    np.testing.assert_allclose(intercepted, head, rtol=1e-5, atol=1e-5)
