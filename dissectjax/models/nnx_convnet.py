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

from dissectjax.errors import DissectError
from dissectjax.models.wiring import Slice, Wiring


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
        names = [f"conv{i + 1}" for i in range(len(self.widths))]
        if layer not in names:
            raise DissectError(f"unknown layer {layer!r} for surgery on ConvNet; available layers: {', '.join(names)}")
        i = names.index(layer)
        last = i == len(names) - 1
        reader = ("classifier", "kernel") if last else ("convs", i + 1, "kernel")
        return Wiring(
            layer=layer,
            units=self.widths[i],
            incoming=(Slice("params", ("convs", i, "kernel"), -1), Slice("params", ("convs", i, "bias"), 0)),
            inputs=None if i == 0 else Slice("params", ("convs", i, "kernel"), -2),
            outgoing=(Slice("params", reader, 0 if last else -2),),
            outgoing_outputs=None if last else (Slice("params", reader, -1),),
            previous=None if i == 0 else names[i - 1],
            next=None if last else names[i + 1],
        )
