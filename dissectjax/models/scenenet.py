"""SceneNet: a five-conv, AlexNet-shaped scene classifier small enough to train on a CPU.

Input uint8 or float [B, H, W, 3] (any H, W; 64 x 64 for the synthetic scenes). Layers
sown after their ReLU: ``conv1`` and ``conv2`` (H/2), ``conv3``, ``conv4``, ``conv5`` (H/4),
then global average pooling and a linear classifier. Parameters live in modules
``block{i}_conv`` and ``block{i}_bn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.models.common import sow_layer

MEAN, STD = 0.5, 0.25


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32, roughly zero-mean unit-variance."""
    return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


class SceneNet(nn.Module):
    num_classes: int = 12
    widths: Sequence[int] = (32, 64, 96, 96, 128)
    batch_norm: bool = True
    whiten: Sequence[str] = ()  # layers whose BatchNorm is a concept-whitening layer (dissectjax.localize)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, from_layer: str | None = None) -> jax.Array:
        """Logits [B, classes].

        With ``from_layer="conv{k}"``, ``images`` is instead that layer's activation
        [B, h, w, U] and only the layers above it run (to measure interventions on a layer
        without recomputing what lies below it).
        """
        start = 0
        if from_layer is None:
            x = preprocess(images)
        else:
            names = [f"conv{i}" for i in range(1, len(self.widths) + 1)]
            if from_layer not in names:
                raise ValueError(f"from_layer must be one of {names}, got {from_layer!r}")
            start, x = names.index(from_layer) + 1, images
            if start == 2:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        strides = (2, 1, 1, 1, 1)
        kernels = (5, 3, 3, 3, 3)
        for i, (width, stride, kernel) in enumerate(zip(self.widths, strides, kernels), start=1):
            if i <= start:
                continue
            x = nn.Conv(
                width,
                (kernel, kernel),
                strides=stride,
                padding="SAME",
                use_bias=not self.batch_norm,
                name=f"block{i}_conv",
            )(x)
            if f"conv{i}" in self.whiten:
                from dissectjax.localize.whitening import ConceptWhitening

                x = ConceptWhitening(name=f"block{i}_cw")(x, train)
            elif self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"block{i}_bn")(x)
            x = sow_layer(self, f"conv{i}", nn.relu(x))
            if i == 2:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)
