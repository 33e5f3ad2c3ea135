"""A small NNX convolutional classifier: the example of an NNX model dissected and operated on.

Three 3x3 convolutions (stride 2 after the first), sown as ``conv1``-``conv3`` after ReLU
(:func:`dissectjax.models.nnx_bridge.sow_layer`, so edits apply where they are sown),
global average pooling and a linear classifier. The convolutions are the attributes
``block1``.. (parameter paths ``block1/kernel``), and ``unit_wiring`` tells surgery where each
layer's units live in the parameters (``nnx.to_pure_dict`` paths).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dissectjax.models.nnx_bridge import sow_layer
from dissectjax.models.wiring import ChainLayer, Wiring, chain_wiring


class ConvNet(nnx.Module):
    def __init__(self, widths: Sequence[int] = (32, 64, 96), num_classes: int = 12, *, rngs: nnx.Rngs):
        self.widths = tuple(widths)
        channels = (3, *self.widths)
        for i in range(len(self.widths)):
            setattr(self, f"block{i + 1}", nnx.Conv(channels[i], channels[i + 1], (3, 3), strides=1 if i == 0 else 2,
                                                   rngs=rngs))  # fmt: skip
        self.classifier = nnx.Linear(self.widths[-1], num_classes, rngs=rngs)
        self.num_classes = num_classes

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(f"conv{i + 1}" for i in range(len(self.widths)))

    def conv(self, layer: str) -> nnx.Conv:
        """The convolution of sown layer ``conv{i}``: attribute ``block{i}``."""
        return getattr(self, layer.replace("conv", "block"))

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else images
        for name in self.layer_names:
            x = sow_layer(self, name, nnx.relu(self.conv(name)(x)))
        return self.classifier(x.mean(axis=(1, 2)))

    def unit_wiring(self, layer: str) -> Wiring:
        chain = [ChainLayer(name, (name.replace("conv", "block"),), width)
                 for name, width in zip(self.layer_names, self.widths)]  # fmt: skip
        return chain_wiring(chain, ("classifier",), layer, "ConvNet")
