"""Wiring inferred by tracing a model (dissectjax.models.traced_wiring): it agrees with the
declared wirings, drives fold and transplant on a model that declares none, and refuses
what it cannot tell apart (skip connections, normalization across units, mixing reshapes)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.edit import UnitEdit, fold, transplant, with_edits
from dissectjax.errors import DissectError
from dissectjax.models import LeNet5, SceneNet, build_model
from dissectjax.models.common import sow_layer
from dissectjax.models.traced_wiring import traced_wiring
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.wiring import Slice, read_slice

KEY = jax.random.PRNGKey(0)


def abstract(model, shape):
    """(variables as ShapeDtypeStructs, an example batch likewise): tracing reads only shapes."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init, KEY, x), x


def normal(variables, slices):
    """Slices with axes counted from the start, as a set (declared wirings count kernels' from the end)."""
    if slices is None:
        return None
    slices = [slices] if isinstance(slices, Slice) else slices
    return {(s.collection, s.path, s.axis % len(read_slice(variables, s).shape), s.positions) for s in slices}


def assert_same(variables, traced, declared):
    assert traced.layer == declared.layer and traced.units == declared.units
    for field in ("incoming", "inputs", "outgoing", "outgoing_outputs"):
        assert normal(variables, getattr(traced, field)) == normal(variables, getattr(declared, field)), field
    assert (traced.previous, traced.next) == (declared.previous, declared.next)
    assert traced.outgoing_refused is traced.transplant_refused is traced.fold_refused is None


@pytest.mark.parametrize("batch_norm", [True, False])
def test_scenenet_matches_its_declared_wiring(batch_norm):
    model = SceneNet(widths=(4, 6, 8, 8, 10), batch_norm=batch_norm)
    variables, x = abstract(model, (2, 32, 32, 3))
    for layer in model.layer_names:
        assert_same(variables, traced_wiring(model, variables, x, layer), model.unit_wiring(layer))


def test_alexnet_adaptive_pool_and_flatten_match_its_declared_wiring():
    model = build_model("alexnet")  # conv5 -> max pool -> adaptive average pool (crops, means, stacks) -> fc6
    variables, x = abstract(model, (2, 67, 67, 3))
    for layer in ("conv4", "conv5", "fc6", "fc7"):
        assert_same(variables, traced_wiring(model, variables, x, layer), model.unit_wiring(layer))
    assert traced_wiring(model, variables, x, "conv5").outgoing[0].positions == 36


@jax.custom_vjp
def clipped(x):
    return jnp.clip(x, 0.0, 6.0)


clipped.defvjp(lambda x: (clipped(x), x), lambda x, g: (g * ((x > 0) & (x < 6)),))


@pytest.mark.parametrize(
    "activation",
    [clipped, jax.checkpoint(jnp.tanh), nn.swish, lambda x: nn.leaky_relu(x, 0.1), lambda x: x.astype(jnp.bfloat16)],
    ids=["custom_vjp", "checkpoint", "swish", "leaky_relu", "convert"],
)
def test_activations_are_looked_inside(activation):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = sow_layer(self, "a", activation(nn.Conv(4, (3, 3), name="c1")(x)))
            x = sow_layer(self, "b", nn.relu(nn.Conv(5, (3, 3), name="c2")(x.astype(jnp.float32))))
            return nn.Dense(2, name="head")(x.mean((1, 2)))

    model = Net()
    variables, x = abstract(model, (2, 8, 8, 3))
    a = traced_wiring(model, variables, x, "a")
    assert set(a.incoming) == {Slice("params", ("c1", "kernel"), -1), Slice("params", ("c1", "bias"), 0)}
    assert a.outgoing == (Slice("params", ("c2", "kernel"), -2),) and a.next == "b"
    assert a.fold_refused is None  # each maps 0 to 0: zeroing the readers' weights is zeroing the units
    assert traced_wiring(model, variables, x, "b").previous == "a"


def test_lenet_flatten_and_dense_chain():
    model = LeNet5()
    variables, x = abstract(model, (2, 32, 32, 1))
    w = {layer: traced_wiring(model, variables, x, layer) for layer in ("conv1", "conv2", "fc1", "fc2")}
    p = "params"
    assert (w["conv1"].previous, w["conv1"].inputs, w["conv1"].next) == (None, None, "conv2")
    # conv2 -> avg_pool -> flatten [B, 5, 5, 16] -> [B, 400] -> F5: 25 positions per unit
    assert normal(variables, w["conv2"].outgoing) == {(p, ("F5", "kernel"), 0, 25)}
    assert normal(variables, w["conv2"].outgoing_outputs) == {(p, ("F5", "kernel"), 1, 1)}
    assert (w["conv2"].previous, w["conv2"].next) == ("conv1", "fc1")
    assert normal(variables, w["fc1"].inputs) == {(p, ("F5", "kernel"), 0, 25)}
    assert normal(variables, w["fc1"].incoming) == {(p, ("F5", "kernel"), 1, 1), (p, ("F5", "bias"), 0, 1)}
    assert (w["fc1"].previous, w["fc1"].next) == ("conv2", "fc2")
    assert normal(variables, w["fc1"].outgoing) == {(p, ("F6", "kernel"), 0, 1)}
    assert normal(variables, w["fc2"].outgoing) == {(p, ("output", "kernel"), 0, 1)}
    assert (w["fc2"].previous, w["fc2"].next, w["fc2"].outgoing_outputs) == ("fc1", None, None)
    if hasattr(model, "unit_wiring"):
        for layer, traced in w.items():
            assert_same(variables, traced, model.unit_wiring(layer))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return sow_layer(self, "b", nn.gelu(nn.Conv(5, (3, 3), name="conv")(x)))


class Custom(nn.Module):
    """conv -> BatchNorm -> relu (sown "a"), max pool, conv -> gelu (sown "block/b"), mean, dense.
    It declares no wiring."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv_a")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn_a")(x)
        x = sow_layer(self, "a", nn.relu(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = Block(name="block")(x)
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def random_variables(model, x, seed):
    """Concrete variables without compiling ``init``: random weights and statistics (variances > 0)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        low, high = (0.5, 1.5) if path[-1].key == "var" else (-1.0, 1.0)
        return jnp.asarray(rng.uniform(low, high, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, KEY, x))


@pytest.fixture(scope="module")
def custom():
    model = Custom()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))

    def run(variables):
        logits, state = forward(variables, x)
        return np.asarray(logits), state["intermediates"]

    return model, x, run


def test_custom_model_wiring(custom):
    model, x, _ = custom
    variables = random_variables(model, x, 0)
    a = traced_wiring(model, variables, x, "a")
    assert unit_wiring(model, "a", variables, x) == a  # the fallback for a model that declares none
    assert set(a.incoming) == {
        Slice("params", ("conv_a", "kernel"), -1),
        *(Slice("params", ("bn_a", k), 0) for k in ("scale", "bias")),
        *(Slice("batch_stats", ("bn_a", k), 0) for k in ("mean", "var")),
    }
    assert (a.units, a.inputs, a.previous, a.next) == (4, None, None, "block/b")
    assert a.outgoing == (Slice("params", ("block", "conv", "kernel"), -2),)
    assert a.outgoing_outputs == (Slice("params", ("block", "conv", "kernel"), -1),)
    b = traced_wiring(model, variables, x, "block/b")  # inside a submodule; gelu is x * f(x)
    conv = ("block", "conv")
    assert set(b.incoming) == {Slice("params", (*conv, "kernel"), -1), Slice("params", (*conv, "bias"), 0)}
    assert b.inputs == Slice("params", (*conv, "kernel"), -2)
    assert (b.previous, b.next, b.outgoing_outputs) == ("a", None, None)
    assert b.outgoing == (Slice("params", ("head", "kernel"), -2),)


@pytest.mark.parametrize("layer, units, num_units", [("a", [1, 3], 4), ("block/b", [0, 2, 4], 5)])
def test_fold_of_traced_wiring_is_zeroing_the_units(custom, layer, units, num_units):
    model, x, run = custom
    variables = random_variables(model, x, 0)
    edit = UnitEdit.zero(layer, units, num_units)
    expected, _ = run(with_edits(variables, edit))
    folded, _ = run(fold(model, variables, edit, example=x))
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, run(variables)[0], atol=1e-4)  # the edit changes something


def test_transplant_through_traced_wiring(custom):
    model, x, run = custom
    source, target = random_variables(model, x, 1), random_variables(model, x, 2)
    perm = np.array([2, 0, 3, 1])  # the target's slot of each of the source's units of "a"
    moved = transplant(model, source, target, "a", units=range(4), slots=perm, example=x)
    logits_s, acts_s = run(source)
    _, acts_m = run(moved)
    np.testing.assert_allclose(acts_m["a"][..., perm], acts_s["a"], rtol=1e-5, atol=1e-5)
    # block/b's filters read "a" in the target's order: reorder their inputs by the matching
    moved = transplant(model, source, moved, "block/b", range(5), range(5), perm, outgoing=True, example=x)
    logits_m, acts_m = run(moved)
    np.testing.assert_allclose(acts_m["block"]["b"], acts_s["block"]["b"], rtol=1e-5, atol=1e-5)
    bias = np.asarray(target["params"]["head"]["bias"] - source["params"]["head"]["bias"])
    np.testing.assert_allclose(logits_m, logits_s + bias, rtol=1e-5, atol=1e-5)  # all but the classes' bias


class Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "stem", nn.relu(nn.Conv(4, (3, 3), name="stem_conv")(x)))
        x = sow_layer(self, "res", nn.relu(x + nn.Conv(4, (3, 3), name="conv")(x)))
        return nn.Dense(2)(x.mean((1, 2)))


class ChannelNorm(nn.Module):
    after: bool = False  # LayerNorm over channels between the layer and its reader, else before the layer

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3))(x)
        x = sow_layer(self, "a", nn.relu(x if self.after else nn.LayerNorm()(x)))
        return nn.Dense(2)((nn.LayerNorm()(x) if self.after else x).mean((1, 2)))


class MixingReshape(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "a", nn.relu(nn.Conv(4, (3, 3))(x)))
        b, h, w, u = x.shape
        return nn.Dense(2)(nn.Conv(3, (3,))(x.reshape(b, h, w * u)).mean(1))


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "a", nn.relu(nn.Conv(4, (3, 3))(x)))
        q = x.reshape(x.shape[0], -1, 4)
        y = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, q)) @ q
        return nn.Dense(2)(y.mean(1))


@pytest.mark.parametrize(
    "model, layer, reason",
    [
        (Residual(), "res", r"`add` .* joins values from several sources .*skip or residual connection"),
        (Residual(), "stem", r"`add` .* combines the units with another image-dependent value: a skip or residual"),
        (ChannelNorm(), "a", r"shared by all units, computed by reduce_sum over axes \(3,\) .*LayerNorm"),
        (ChannelNorm(after=True), "a", r"reduction over the unit axis .*LayerNorm"),
        (MixingReshape(), "a", r"reshape \[2, 8, 8, 4\] -> \[2, 8, 32\] mixes the unit axis"),
        (Attention(), "a", r"multiplies two image-dependent values \(attention"),
    ],
    ids=["residual", "skip-reader", "layernorm-before", "layernorm-after", "reshape", "attention"],
)
def test_refusals_name_the_operation_and_the_way_out(model, layer, reason):
    variables, x = abstract(model, (2, 8, 8, 3))
    with pytest.raises(DissectError, match=reason) as info:
        traced_wiring(model, variables, x, layer)
    message = str(info.value)
    assert f"{type(model).__name__}'s layer {layer!r}" in message and "unit_wiring(layer)" in message
    assert "dissectjax/models/scenenet.py" in message


class Sigmoid(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "a", nn.relu(nn.Conv(4, (3, 3))(x)))
        x = nn.relu(nn.Conv(4, (3, 3))(nn.sigmoid(x)))  # an unsown conv between "a" and "c"
        x = sow_layer(self, "c", nn.relu(nn.Conv(4, (3, 3))(x)))
        return nn.Dense(2)(x.mean((1, 2)))


def test_doubts_become_the_wirings_refusals():
    model = Sigmoid()
    variables, x = abstract(model, (2, 8, 8, 3))
    a = traced_wiring(model, variables, x, "a")
    assert "`logistic`" in a.fold_refused and "not zeroing the unit" in a.fold_refused
    assert a.next is None and "before any sown layer" in a.outgoing_refused
    c = traced_wiring(model, variables, x, "c")
    assert c.previous is None and c.inputs is None and "cannot be aligned" in c.transplant_refused
    with pytest.raises(DissectError, match="sows no layer 'b'; sown layers: a, c"):
        traced_wiring(model, variables, x, "b")


class PostNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "a", nn.relu(nn.Conv(4, (3, 3), name="c1")(x)))
        x = nn.BatchNorm(use_running_average=True, name="bn")(x)  # per unit, after the sow point
        x = sow_layer(self, "b", nn.relu(nn.Conv(5, (3, 3), name="c2")(x)))
        return nn.Dense(2)(x.mean((1, 2)))


def test_per_unit_parameters_after_the_sow_point_belong_to_the_units():
    model = PostNorm()
    variables, x = abstract(model, (2, 8, 8, 3))
    a = traced_wiring(model, variables, x, "a")
    assert {Slice("params", ("bn", "scale"), 0), Slice("batch_stats", ("bn", "mean"), 0)} <= set(a.incoming)
    assert a.next == "b" and "maps a zeroed unit to a nonzero value" in a.fold_refused  # BatchNorm's shift
    assert traced_wiring(model, variables, x, "b").previous == "a"


class TwoReaders(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sow_layer(self, "a", nn.relu(nn.Conv(4, (3, 3), name="c1")(x)))
        y = sow_layer(self, "y", nn.relu(nn.Conv(5, (3, 3), name="cy")(x)))
        z = sow_layer(self, "z", nn.relu(nn.Dense(6, name="dz")(x)))  # a dense layer over channels
        return nn.Dense(2)(jnp.concatenate([y.mean((1, 2)), z.mean((1, 2))], axis=-1))


def test_readers_that_feed_different_layers():
    model = TwoReaders()
    variables, x = abstract(model, (2, 8, 8, 3))
    a = traced_wiring(model, variables, x, "a")
    assert a.outgoing == (Slice("params", ("cy", "kernel"), -2), Slice("params", ("dz", "kernel"), -2))
    assert (a.next, a.outgoing_outputs) == (None, None) and "feed different layers (y, z)" in a.outgoing_refused
    for layer in ("y", "z"):
        with pytest.raises(DissectError, match="concatenation along the unit axis"):
            traced_wiring(model, variables, x, layer)
