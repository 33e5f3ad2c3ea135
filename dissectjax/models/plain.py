"""Plain convolutional networks of the ImageNet era, in torchvision's layout: AlexNet and VGG-16.

A network is a list of convolutions (each followed by ReLU, sown under its name) and max
pools, an adaptive average pool, and three fully connected layers; that is all either
needs, so one module serves both. Sown layers: AlexNet ``conv1``-``conv5``, VGG-16
``conv1_1``-``conv5_3`` (after ReLU, as NetDissect dissects them), and ``fc6``, ``fc7``.
Dropout is left out: it is the identity at evaluation, which is what dissection runs.
Submodules are named after their place in torchvision's ``features`` / ``classifier``
sequences (``features_0``, ``classifier_1``), so converted weights map by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from dissectjax.models.common import sow_layer
from dissectjax.models.ops import ImageNetInput, adaptive_avg_pool
from dissectjax.models.wiring import ChainLayer, Wiring, chain_wiring

# (name, features, kernel, stride, padding) for a convolution; "pool" for a 3x3/2 (AlexNet) or 2x2/2 max pool
ALEXNET = (
    ("conv1", 64, 11, 4, 2), "pool", ("conv2", 192, 5, 1, 2), "pool", ("conv3", 384, 3, 1, 1),
    ("conv4", 256, 3, 1, 1), ("conv5", 256, 3, 1, 1), "pool",
)  # fmt: skip
VGG16 = tuple(
    item
    for stage, (features, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1)
    for item in (*((f"conv{stage}_{i}", features, 3, 1, 1) for i in range(1, convs + 1)), "pool")
)


class PlainNet(ImageNetInput):
    """Convolutions and pools from ``layers``, then adaptive pooling to ``pooled`` and fc6-fc8."""

    layers: Sequence = ALEXNET
    pool_window: int = 3  # AlexNet 3 (overlapping), VGG 2
    pooled: tuple[int, int] = (6, 6)
    classifier_index: tuple[int, int, int] = (1, 4, 6)  # AlexNet; VGG: (0, 3, 6)
    hidden: int = 4096
    num_classes: int = 1000

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = self.normalize(images)
        indices = iter(self._feature_indices())
        for item in self.layers:
            if item == "pool":
                x = nn.max_pool(x, (self.pool_window,) * 2, (2, 2), padding="VALID")
            else:
                name, features, kernel, stride, padding = item
                x = nn.Conv(features, (kernel, kernel), stride, padding=padding, name=f"features_{next(indices)}")(x)
                x = sow_layer(self, name, nn.relu(x))
        x = adaptive_avg_pool(x, tuple(self.pooled)).reshape(x.shape[0], -1)  # (h, w, c) order
        fc6, fc7, fc8 = (f"classifier_{i}" for i in self.classifier_index)
        x = sow_layer(self, "fc6", nn.relu(nn.Dense(self.hidden, name=fc6)(x)))
        x = sow_layer(self, "fc7", nn.relu(nn.Dense(self.hidden, name=fc7)(x)))
        return nn.Dense(self.num_classes, name=fc8)(x)

    def unit_wiring(self, layer: str) -> Wiring:
        """A plain chain: each convolution read by the next (through pools), the last one by
        ``fc6`` through the adaptive pool's flattened ``pooled`` map, then fc6 -> fc7 -> fc8."""
        convs = [item for item in self.layers if item != "pool"]
        chain = [ChainLayer(name, (f"features_{index}",), features)
                 for (name, features, *_), index in zip(convs, self._feature_indices())]  # fmt: skip
        fc6, fc7, fc8 = (f"classifier_{i}" for i in self.classifier_index)
        chain += [ChainLayer("fc6", (fc6,), self.hidden, reads_positions=self.pooled[0] * self.pooled[1]),
                  ChainLayer("fc7", (fc7,), self.hidden)]  # fmt: skip
        return chain_wiring(chain, (fc8,), layer, type(self).__name__)

    def _feature_indices(self) -> list[int]:
        """Each convolution's position in torchvision's ``features`` sequence (conv, ReLU, ..., pool)."""
        out, index = [], 0
        for item in self.layers:
            if item != "pool":
                out.append(index)
            index += 1 if item == "pool" else 2
        return out


class AlexNet(PlainNet):
    """AlexNet (torchvision's layout): conv1-conv5, overlapping 3x3 pools, fc6, fc7."""

    layers: Sequence = ALEXNET
    pool_window: int = 3
    pooled: tuple[int, int] = (6, 6)
    classifier_index: tuple[int, int, int] = (1, 4, 6)


class VGG16Net(PlainNet):
    """VGG-16 (torchvision's layout): conv1_1-conv5_3, 2x2 pools, fc6, fc7."""

    layers: Sequence = VGG16
    pool_window: int = 2
    pooled: tuple[int, int] = (7, 7)
    classifier_index: tuple[int, int, int] = (0, 3, 6)


__all__ = ["ALEXNET", "VGG16", "AlexNet", "PlainNet", "VGG16Net"]
