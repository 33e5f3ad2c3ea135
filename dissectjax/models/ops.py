"""Small operations the ImageNet-family models share: input preprocessing, adaptive pooling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1] (torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: jax.Array, mean: Sequence[float], std: Sequence[float], bgr: bool, value_range: float):
    """uint8 RGB [B, H, W, 3] (0-255; floats are taken as already in [0, 1]) -> normalized float32.

    Channels are reversed when ``bgr``; pixel values are scaled to ``[0, value_range]``
    (1 for torchvision models, 255 for Caffe-converted ones), then ``(x - mean) / std``
    per channel, in the model's channel order.
    """
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = x / 255.0
    if bgr:
        x = x[..., ::-1]
    x = x * value_range
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class ImageNetInput(nn.Module):
    """Fields and method shared by models that take ImageNet-style inputs: how the pixels they
    were trained on were prepared (saved with a checkpoint as model arguments)."""

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    bgr: bool = False
    value_range: float = 1.0

    def normalize(self, images: jax.Array) -> jax.Array:
        return preprocess(images, self.mean, self.std, self.bgr, self.value_range)


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, oh, ow, C], PyTorch's AdaptiveAvgPool2d: output cell i averages input
    rows ``floor(i * H / oh)`` to ``ceil((i + 1) * H / oh)`` (exclusive), and likewise for columns."""
    _, h, w, _ = x.shape
    oh, ow = size
    if (h, w) == (oh, ow):
        return x
    bins = lambda n, m: [(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i in range(m)]
    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h, oh)]  # each [B, W, C]
    x = jnp.stack(rows, axis=1)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w, ow)]
    return jnp.stack(cols, axis=2)
