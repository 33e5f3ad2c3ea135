"""A small NNX convolutional classifier: the example of an NNX model dissected and operated on.

Three 3x3 convolutions (stride 2 after the first), sown as ``conv1``-``conv3`` after ReLU,
global average pooling and a linear classifier. ``unit_wiring`` tells surgery where each
layer's units live in the parameters (``nnx.to_pure_dict`` paths).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dissectjax.models.wiring import ChainLayer, Wiring, chain_wiring


class ConvNet(nnx.Module):
    def __init__(self, widths: Sequence[int] = (32, 64, 96), num_classes: int = 12, *, rngs: nnx.Rngs):
        self.widths = tuple(widths)
        channels = (3, *self.widths)
        convs = [nnx.Conv(channels[i], channels[i + 1], (3, 3), strides=1 if i == 0 else 2, rngs=rngs)
                 for i in range(len(self.widths))]  # fmt: skip
        self.convs = nnx.List(convs) if hasattr(nnx, "List") else convs  # nnx.List: Flax 0.12 and later
        self.classifier = nnx.Linear(self.widths[-1], num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else images
        for i, conv in enumerate(self.convs):
            x = nnx.relu(conv(x))
            self.sow(nnx.Intermediate, f"conv{i + 1}", x)
        return self.classifier(x.mean(axis=(1, 2)))

    def unit_wiring(self, layer: str) -> Wiring:
        chain = [ChainLayer(f"conv{i + 1}", ("convs", i), width) for i, width in enumerate(self.widths)]
        return chain_wiring(chain, ("classifier",), layer, "ConvNet")
