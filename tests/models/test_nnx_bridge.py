"""An NNX module dissected, ablated and transplanted through the same functions as linen models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ArraySource, ModelSource
from dissectjax.edit import UnitEdit, fold, transplant
from dissectjax.errors import DissectError
from dissectjax.models import nnx_bridge
from dissectjax.models.nnx_convnet import ConvNet

SHAPE = (20, 20, 3)


def images(n=5, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8))


def by_hand(module, x, layer=None, zero=()):
    """ConvNet's forward written out, with units of ``layer`` zeroed: (logits, {layer: activation})."""
    acts = {}
    h = x.astype(jnp.float32) / 255.0
    for i, conv in enumerate(module.conv(name) for name in module.layer_names):
        h = nnx.relu(conv(h))
        if f"conv{i + 1}" == layer and zero:
            h = h.at[..., list(zero)].set(0.0)
        acts[f"conv{i + 1}"] = h
    return module.classifier(h.mean(axis=(1, 2))), acts


def test_source_reads_the_sown_layers():
    module = ConvNet(rngs=nnx.Rngs(0))
    src = ModelSource.from_nnx(module, ["conv1", "conv3"], SHAPE)
    assert src.units == {"conv1": 32, "conv3": 96}
    x = images()
    forward, state = nnx_bridge.activation_fn(module, ["conv1", "conv3"], SHAPE)
    got = forward(state, x)
    _, want = by_hand(module, x)
    for name in ("conv1", "conv3"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    with pytest.raises(DissectError, match=r"unknown layer 'fc'.*it sows: conv1, conv2, conv3"):
        ModelSource.from_nnx(module, ["fc"], SHAPE)


def test_dissecting_an_nnx_module_equals_dissecting_its_activations(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    module = ConvNet(rngs=nnx.Rngs(1))
    config = DissectConfig(quantile=0.05, batch_size=8)
    got = dissect(ModelSource.from_nnx(module, ["conv2"], SHAPE), ds, config)["conv2"]
    x = jnp.stack([ds.load_image(i) for i in range(len(ds))])
    forward, state = nnx_bridge.activation_fn(module, ["conv2"], SHAPE)
    acts = np.asarray(forward(state, x)["conv2"]).transpose(0, 3, 1, 2)
    want = dissect(ArraySource(acts, "conv2", len(ds)), ds, config)["conv2"]
    np.testing.assert_array_equal(got.thresholds, want.thresholds)
    np.testing.assert_array_equal(got.intersection, want.intersection)
    np.testing.assert_array_equal(got.unit_area, want.unit_area)


def test_fold_removes_the_units_exactly():
    module = ConvNet(rngs=nnx.Rngs(2))
    split = nnx_bridge.Split.of(module)
    before = jax.tree.map(np.array, split.variables)
    ablated = split.merge(fold(module, split.variables, UnitEdit.zero("conv2", [3, 9], 64)))
    x = images()
    want, _ = by_hand(module, x, "conv2", (3, 9))
    got, _ = by_hand(ablated, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(by_hand(module, x)[0] - got)).max() > 1e-4  # the units mattered
    assert jax.tree.all(jax.tree.map(np.array_equal, before, nnx_bridge.Split.of(module).variables))  # pure


def test_transplant_carries_a_first_layer_unit_and_its_concept(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    a, b = ConvNet(rngs=nnx.Rngs(3)), ConvNet(rngs=nnx.Rngs(4))
    split_b = nnx_bridge.Split.of(b)
    moved = split_b.merge(transplant(b, nnx_bridge.Split.of(a).variables, split_b.variables, "conv1", [7], [20]))
    x = images()
    _, acts_a = by_hand(a, x)
    _, acts_b = by_hand(b, x)
    _, acts_moved = by_hand(moved, x)
    np.testing.assert_array_equal(acts_moved["conv1"][..., 20], acts_a["conv1"][..., 7])
    keep = [u for u in range(32) if u != 20]
    np.testing.assert_array_equal(acts_moved["conv1"][..., keep], acts_b["conv1"][..., keep])
    config = DissectConfig(quantile=0.05, batch_size=8)
    ra = dissect(ModelSource.from_nnx(a, ["conv1"], SHAPE), ds, config)["conv1"]
    rm = dissect(ModelSource.from_nnx(moved, ["conv1"], SHAPE), ds, config)["conv1"]
    np.testing.assert_array_equal(rm.intersection[20], ra.intersection[7])
    assert rm.labels.label[20] == ra.labels.label[7]
