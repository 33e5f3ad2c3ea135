"""LeNet-5 (LeCun et al. 1998) for 32 x 32 grayscale digits.

Sown layers: ``conv1`` [B, 28, 28, 6], ``conv2`` [B, 10, 10, 16] (after their tanh),
``fc1`` [B, 120], ``fc2`` [B, 84]. Input uint8/float [B, 32, 32, 1] (or 3 channels,
averaged to gray). Parameter modules keep LeCun's names: C1, C3, F5, F6, output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.models.common import sow_layer
from dissectjax.models.wiring import ChainLayer, Wiring, chain_wiring


class LeNet5(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = images.astype(jnp.float32)
        if jnp.issubdtype(images.dtype, jnp.integer):
            x = x / 255.0
        if x.shape[-1] == 3:
            x = jnp.mean(x, axis=-1, keepdims=True)
        x = sow_layer(self, "conv1", nn.tanh(nn.Conv(6, (5, 5), padding="VALID", name="C1")(x)))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = sow_layer(self, "conv2", nn.tanh(nn.Conv(16, (5, 5), padding="VALID", name="C3")(x)))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
        x = sow_layer(self, "fc1", nn.tanh(nn.Dense(120, name="F5")(x)))
        x = sow_layer(self, "fc2", nn.tanh(nn.Dense(84, name="F6")(x)))
        return nn.Dense(self.num_classes, name="output")(x)

    def unit_wiring(self, layer: str) -> Wiring:
        """A plain chain C1 -> C3 -> F5 -> F6 -> output; F5 reads conv2's 5 x 5 pooled map
        flattened (25 positions per unit, for the 32 x 32 input)."""
        chain = [ChainLayer("conv1", ("C1",), 6), ChainLayer("conv2", ("C3",), 16),
                 ChainLayer("fc1", ("F5",), 120, reads_positions=25), ChainLayer("fc2", ("F6",), 84)]  # fmt: skip
        return chain_wiring(chain, ("output",), layer, "LeNet5")
