"""Models sow their layers; any linen model's submodules can be read; checkpoints round-trip."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.checkpoint import init_variables, load_checkpoint, save_checkpoint
from dissectjax.errors import DissectError
from dissectjax.models import MODELS, build_model
from dissectjax.models.layers import activation_fn, layer_shapes

SOWN = {
    "scenenet": ((64, 64, 3), {"conv1": (32, 32, 32), "conv2": (32, 32, 64), "conv5": (16, 16, 128)}),
    "resnet18": ((96, 80, 3), {"conv1": (48, 40, 64), "layer1": (24, 20, 64), "layer4": (3, 3, 512)}),
    "lenet5": ((32, 32, 1), {"conv1": (28, 28, 6), "conv2": (10, 10, 16), "fc1": (120,), "fc2": (84,)}),
    "resnet50": ((64, 64, 3), {"layer1": (16, 16, 256), "layer4": (2, 2, 2048)}),
    "alexnet": ((67, 67, 3), {"conv1": (16, 16, 64), "conv5": (3, 3, 256), "fc7": (4096,)}),
    "vgg16": ((32, 32, 3), {"conv1_1": (32, 32, 64), "conv5_3": (2, 2, 512), "fc6": (4096,)}),
    "nnx_convnet": ((32, 32, 3), {"conv1": (32, 32, 32), "conv2": (16, 16, 64), "conv3": (8, 8, 96)}),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sown_layers(name):
    shape, expected = SOWN[name]
    model = build_model(name)
    x = jnp.zeros((2, *shape), jnp.uint8)
    variables = init_variables(model, shape)
    _logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    for layer, s in expected.items():
        value = state["intermediates"][layer]
        assert isinstance(value, jax.Array) and value.shape == (2, *s)  # the bare array, not a tuple
    assert set(expected) <= set(layer_shapes(model, variables, x))


def test_unknown_names_list_the_alternatives():
    models = "alexnet, lenet5, nnx_convnet, resnet18, resnet50, scenenet, vgg16"
    with pytest.raises(DissectError, match=f"available models: {models}"):
        build_model("alexnet9")
    model = build_model("lenet5")
    x = jnp.zeros((1, 32, 32, 1), jnp.uint8)
    with pytest.raises(DissectError, match=r"unknown layer 'conv3' .* available layers: conv1, conv2, fc1, fc2"):
        activation_fn(model, init_variables(model, (32, 32, 1)), ["conv3"], x)


class Plain(nn.Module):
    """A model that sows nothing: its layers are reached by module path."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), name="stem")(x.astype(jnp.float32)))
        x = Block(name="block")(x)
        return nn.Dense(3)(x.mean((1, 2)))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(5, (3, 3), strides=2, name="inner")(x)


def test_capture_reads_any_submodule():
    model = Plain()
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(0), x)
    compiled = init_variables(model, x.shape[1:])  # the compiled init gives the eager values
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(compiled)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {"stem", "block", "block/inner"} <= set(layer_shapes(model, variables, x))
    fn = jax.jit(activation_fn(model, variables, ["stem", "block/inner", "Dense_0"], x))
    out = fn(variables, x)
    expected = nn.Conv(4, (3, 3)).apply({"params": variables["params"]["stem"]}, x.astype(jnp.float32))
    np.testing.assert_allclose(out["stem"], expected, rtol=1e-6)
    assert out["block/inner"].shape == (2, 4, 4, 5) and out["Dense_0"].shape == (2, 1, 1, 3)
    # the variables are an argument: other variables of the architecture, the same function
    other = model.init(jax.random.PRNGKey(1), x)
    expected = nn.Conv(4, (3, 3)).apply({"params": other["params"]["stem"]}, x.astype(jnp.float32))
    np.testing.assert_allclose(fn(other, x)["stem"], expected, rtol=1e-6)


def test_checkpoint_round_trip_and_other_device_count(tmp_path):
    model = build_model("scenenet", num_classes=12)
    variables = init_variables(model, (64, 64, 3), seed=3)
    path = str(tmp_path / "ckpt")
    save_checkpoint(path, "scenenet", {"num_classes": 12}, (64, 64, 3), variables, val_accuracy=0.5)
    with pytest.raises(DissectError, match="already exists"):
        save_checkpoint(path, "scenenet", {"num_classes": 12}, (64, 64, 3), variables)
    _, restored, config = load_checkpoint(path)
    assert config["val_accuracy"] == 0.5
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), jax.device_get(restored))
    np.save(tmp_path / "kernel.npy", np.asarray(variables["params"]["block5_conv"]["kernel"]))
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from dissectjax.checkpoint import load_checkpoint
        assert jax.device_count() == 8
        _, v, _ = load_checkpoint({path!r})
        np.testing.assert_array_equal(np.asarray(v["params"]["block5_conv"]["kernel"]),
                                      np.load({str(tmp_path / "kernel.npy")!r}))
        print("restored on", jax.device_count(), "devices")
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and "restored on 8 devices" in p.stdout, p.stderr[-2000:]
