"""ResNet-18/34 in the ImageNet layout (He et al. 2016; torchvision's module structure).

NHWC, any input size. Sown layers: ``conv1`` (after stem ReLU, H/2), ``layer1`` (H/4),
``layer2`` (H/8), ``layer3`` (H/16), ``layer4`` (H/32), each the output of its stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.models.common import sow_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv2")(y)
        y = norm("bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False, name="downsample_conv")(x)
            x = norm("downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    width: int = 64

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = images.astype(jnp.float32)
        if jnp.issubdtype(images.dtype, jnp.integer):
            x = x / 255.0
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False, name="stem_conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(x)
        x = sow_layer(self, "conv1", nn.relu(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.width * 2**i, stride, name=f"layer{i + 1}_{j}")(x, train)
            x = sow_layer(self, f"layer{i + 1}", x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def ResNet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)
