"""ResNet-18/34/50 in the ImageNet layout (He et al. 2016; torchvision's module structure,
so torchvision weights convert one to one: :mod:`dissectjax.convert`).

NHWC, any input size. Sown layers: ``conv1`` (after stem ReLU, H/2), ``layer1`` (H/4),
``layer2`` (H/8), ``layer3`` (H/16), ``layer4`` (H/32), each the output of its stage (the
residual stream), and inside each block ``layer{i}_{j}/relu1`` (and, in bottleneck blocks,
``layer{i}_{j}/relu2``): the units after each inner convolution, BatchNorm and ReLU.

Surgery (:meth:`ResNet.unit_wiring`): a block's inner units are ordinary units (their
convolution and BatchNorm in, the next convolution of the block out). A residual-stream
channel is not: every block of its stage writes it (its last convolution and BatchNorm,
the downsample), and where a stage begins with an identity shortcut (ResNet-18's
``layer1``) the stage below writes it too. Stream units are ablated exactly where the
stream is sown; folding reads only the kernels that read the stage output; transplanting
them is refused (docs/ARCHITECTURE.md, Surgery on residual networks).
Preprocessing (``mean``, ``std``, ``bgr``, ``value_range``; :func:`~dissectjax.models.ops.preprocess`)
is part of the model, so a checkpoint records what its network saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.errors import DissectError
from dissectjax.models.common import sow_layer
from dissectjax.models.ops import ImageNetInput
from dissectjax.models.wiring import Slice, Wiring, norm_slices


def _norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False, name="conv1")(x)
        y = sow_layer(self, "relu1", nn.relu(_norm(train, "bn1")(y)))
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
        y = sow_layer(self, "relu1", y)
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False, name="conv2")(y)
        y = sow_layer(self, "relu2", nn.relu(_norm(train, "bn2")(y)))
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

    # ---- surgery --------------------------------------------------------------------------
    @property
    def _expansion(self) -> int:
        return Bottleneck.expansion if self.bottleneck else 1

    def _has_downsample(self, stage: int) -> bool:
        """Whether block 0 of ``stage`` (1-based) has a projection shortcut (else an identity)."""
        return stage > 1 or self._expansion != 1  # stage 1 keeps the stem's width and stride only without expansion

    @property
    def inner_layers(self) -> tuple[str, ...]:
        """The sown units inside blocks: ``layer{i}_{j}/relu1`` (and ``/relu2`` in bottlenecks)."""
        inner = ("relu1", "relu2") if self.bottleneck else ("relu1",)
        return tuple(f"layer{i}_{j}/{c}" for i, blocks in enumerate(self.stage_sizes, start=1)
                     for j in range(blocks) for c in inner)  # fmt: skip

    def _space(self, stage: int) -> tuple[list[Slice], list[Slice], int]:
        """The residual stream of ``stage`` (1-based; 0 is the stem): (its writers' output
        axes, the kernels inside the stream that read it, the first stage sharing its channels)."""
        if stage == 0:
            return [Slice("params", ("stem_conv", "kernel"), -1), *norm_slices(("stem_bn",))], [], 0
        last = "conv3" if self.bottleneck else "conv2"
        bn = "bn3" if self.bottleneck else "bn2"
        writers, readers = [], []
        for j in range(self.stage_sizes[stage - 1]):
            block = f"layer{stage}_{j}"
            writers += [Slice("params", (block, last, "kernel"), -1), *norm_slices((block, bn))]
            if j > 0:
                readers.append(Slice("params", (block, "conv1", "kernel"), -2))
        first = stage
        if self._has_downsample(stage):
            block = f"layer{stage}_0"
            writers += [Slice("params", (block, "downsample_conv", "kernel"), -1),
                        *norm_slices((block, "downsample_bn"))]  # fmt: skip
        else:  # an identity shortcut: the channels continue the stage below's, which this stage's block 0 reads
            below_writers, below_readers, first = self._space(stage - 1)
            writers = below_writers + writers
            readers = [*below_readers, Slice("params", (f"layer{stage}_0", "conv1", "kernel"), -2), *readers]
        return writers, readers, first

    def _stream_readers(self, stage: int) -> list[Slice]:
        """The kernels that read the stream's value at the output of ``stage`` (0: the stem)."""
        if stage == len(self.stage_sizes):
            return [Slice("params", ("fc", "kernel"), -2)]
        block = f"layer{stage + 1}_0"
        readers = [Slice("params", (block, "conv1", "kernel"), -2)]
        if self._has_downsample(stage + 1):
            readers.append(Slice("params", (block, "downsample_conv", "kernel"), -2))
        return readers

    def _stream_name(self, stage: int) -> str:
        return "conv1" if stage == 0 else f"layer{stage}"

    def unit_wiring(self, layer: str) -> Wiring:
        """Where ``layer``'s units live (module docstring: inner units and stream units)."""
        streams = [self._stream_name(s) for s in range(len(self.stage_sizes) + 1)]
        if layer in streams:
            return self._stream_wiring(streams.index(layer))
        if layer in self.inner_layers:
            return self._inner_wiring(layer)
        raise DissectError(f"unknown layer {layer!r} for surgery on {type(self).__name__}; available layers: "
                           f"{', '.join(streams + list(self.inner_layers))}")  # fmt: skip

    def _stream_wiring(self, stage: int) -> Wiring:
        top = len(self.stage_sizes)
        # the stream's channels: shared with the stages above while they begin with an identity shortcut
        end = stage
        while end < top and not self._has_downsample(end + 1):
            end += 1
        writers, readers, first = self._space(end)
        name = self._stream_name(stage)
        own, _, _ = self._space(stage)
        outgoing = self._stream_readers(stage)
        internal = [s for s in writers if s not in own] + [s for s in readers if s not in outgoing]
        for later in range(stage + 1, end + 1):
            internal += [s for s in self._stream_readers(later) if s not in internal]
        internal = [s for s in internal if s not in outgoing]
        units = self.width * (2 ** (stage - 1) * self._expansion if stage else 1)
        shared = [self._stream_name(s) for s in range(first, end + 1)]
        stream = stage > 0 or end > stage
        return Wiring(
            layer=name,
            units=units,
            incoming=tuple(own),
            inputs=Slice("params", ("stem_conv", "kernel"), -2) if stage == 0 else None,
            outgoing=tuple(outgoing),
            outgoing_outputs=None,
            previous=None if stage == 0 else self._stream_name(stage - 1),
            next=None if stage == top else self._stream_name(stage + 1),
            outgoing_refused=None if stage == top else (
                f"the weights that read {name} feed different layers (the next block's inner units and its "
                "shortcut), so there is no one layer to match their outputs to"),
            transplant_refused=None if not stream else (
                f"{name} is a residual stream: each of its channels is written by every block of "
                f"{' and '.join(shared)} (their last convolution and BatchNorm, and the projection shortcut), not "
                "by one unit's own parameters; transplant the units inside a block (layer4_1/relu1) instead, or "
                "ablate stream units where the stream is sown"),
            fold_refused=None if end == stage else (
                f"the identity shortcut of {self._stream_name(stage + 1)}_0 also carries {name}'s channels into "
                f"the {self._stream_name(stage + 1)} stream, and no weight reads that"),
            internal=tuple(internal),
        )  # fmt: skip

    def _inner_wiring(self, layer: str) -> Wiring:
        block, relu = layer.split("/")
        stage, j = (int(x) for x in block.removeprefix("layer").split("_"))
        k = int(relu.removeprefix("relu"))
        width = self.width * 2 ** (stage - 1)
        reader = (block, f"conv{k + 1}", "kernel")
        last_inner = k == (2 if self.bottleneck else 1)
        if k == 1:  # reads the stream entering the block: the stage below's for block 0, else this stage's
            previous = self._stream_name(stage - 1 if j == 0 else stage)
        else:
            previous = f"{block}/relu{k - 1}"
        return Wiring(
            layer=layer,
            units=width,
            incoming=(Slice("params", (block, f"conv{k}", "kernel"), -1), *norm_slices((block, f"bn{k}"))),
            inputs=Slice("params", (block, f"conv{k}", "kernel"), -2),
            outgoing=(Slice("params", reader, -2),),
            outgoing_outputs=(Slice("params", reader, -1),),
            previous=previous,
            next=self._stream_name(stage) if last_inner else f"{block}/relu{k + 1}",
        )


class ResNet18(ResNet):
    """ResNet-18: basic blocks, stages of 2, 2, 2, 2."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet50(ResNet):
    """ResNet-50: bottleneck blocks, stages of 3, 4, 6, 3."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    bottleneck: bool = True
