"""ResNet-18/34/50 in the ImageNet layout (He et al. 2016; torchvision's module structure,
so torchvision weights convert one to one: :mod:`dissectjax.convert`).

NHWC, any input size. Sown layers: ``conv1`` (after stem ReLU, H/2), ``layer1`` (H/4),
``layer2`` (H/8), ``layer3`` (H/16), ``layer4`` (H/32), each the output of its stage.
Preprocessing (``mean``, ``std``, ``bgr``, ``value_range``; :func:`~dissectjax.models.ops.preprocess`)
is part of the model, so a checkpoint records what its network saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.models.common import sow_layer
from dissectjax.models.ops import ImageNetInput


def _norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False, name="conv1")(x)
        y = nn.relu(_norm(train, "bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv2")(y)
        y = _norm(train, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False, name="downsample_conv")(x)
            x = _norm(train, "downsample_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, as torchvision's v1.5) -> 1x1 with 4x the width."""

    features: int
    stride: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = self.features * self.expansion
        y = nn.relu(_norm(train, "bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False, name="conv2")(y)
        y = nn.relu(_norm(train, "bn2")(y))
        y = _norm(train, "bn3")(nn.Conv(out, (1, 1), use_bias=False, name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = nn.Conv(out, (1, 1), self.stride, use_bias=False, name="downsample_conv")(x)
            x = _norm(train, "downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(ImageNetInput):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    width: int = 64
    bottleneck: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = self.normalize(images)
        x = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False, name="stem_conv")(x)
        x = sow_layer(self, "conv1", nn.relu(_norm(train, "stem_bn")(x)))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if self.bottleneck else BasicBlock
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, stride, name=f"layer{i + 1}_{j}")(x, train)
            x = sow_layer(self, f"layer{i + 1}", x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


class ResNet18(ResNet):
    """ResNet-18: basic blocks, stages of 2, 2, 2, 2."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet50(ResNet):
    """ResNet-50: bottleneck blocks, stages of 3, 4, 6, 3."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    bottleneck: bool = True
