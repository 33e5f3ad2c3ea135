"""SceneNet: a five-conv, AlexNet-shaped scene classifier small enough to train on a CPU.

Input uint8 or float [B, H, W, 3] (any H, W; 64 x 64 for the synthetic scenes). Layers
sown after their ReLU: ``conv1`` and ``conv2`` (H/2), ``conv3``, ``conv4``, ``conv5`` (H/4),
then global average pooling and a linear classifier. Parameters live in modules
``block{i}_conv`` and ``block{i}_bn`` (``block{i}_cw`` where a layer is concept-whitened:
:mod:`dissectjax.models.whitening`).

The model owns its surgery description: :meth:`SceneNet.unit_wiring` says where each
layer's units live in the variables, and :func:`fold_whitening` turns whitened layers into
plain units (the same function at evaluation) so that every edit applies to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dissectjax.errors import DissectError
from dissectjax.models.common import sow_layer
from dissectjax.models.whitening import ConceptWhitening, cayley
from dissectjax.models.wiring import ChainLayer, Wiring, chain_wiring

MEAN, STD = 0.5, 0.25


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32, roughly zero-mean unit-variance."""
    return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


class SceneNet(nn.Module):
    num_classes: int = 12
    widths: Sequence[int] = (32, 64, 96, 96, 128)
    batch_norm: bool = True
    whiten: Sequence[str] = ()  # layers whose BatchNorm is a concept-whitening layer (models.whitening)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The sown layers, bottom to top: ``conv1`` .. ``conv{len(widths)}``."""
        return tuple(f"conv{i}" for i in range(1, len(self.widths) + 1))

    @staticmethod
    def whitening_module(layer: str) -> str:
        """The submodule that concept-whitens ``layer`` (where ``layer`` is in ``whiten``)."""
        return f"block{layer.removeprefix('conv')}_cw"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, classes]."""
        x = preprocess(images)
        strides = (2, 1, 1, 1, 1)
        kernels = (5, 3, 3, 3, 3)
        for i, (width, stride, kernel) in enumerate(zip(self.widths, strides, kernels), start=1):
            x = nn.Conv(
                width,
                (kernel, kernel),
                strides=stride,
                padding="SAME",
                use_bias=not self.batch_norm,
                name=f"block{i}_conv",
            )(x)
            if f"conv{i}" in self.whiten:
                x = ConceptWhitening(name=self.whitening_module(f"conv{i}"))(x, train)
            elif self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"block{i}_bn")(x)
            x = sow_layer(self, f"conv{i}", nn.relu(x))
            if i == 2:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)

    def unit_wiring(self, layer: str) -> Wiring:
        """Where ``layer``'s units live: conv kernel (and bias, or BatchNorm scale, bias and
        statistics) in, the next conv's (or the classifier's) kernel out."""
        names = self.layer_names
        if layer not in names:
            raise DissectError(f"unknown layer {layer!r} for surgery on SceneNet; available layers: {', '.join(names)}")
        if layer in self.whiten:
            raise DissectError(
                f"{layer} is concept-whitened: each of its units mixes all of the convolution's filters, so it has no "
                "weights of its own to edit. Fold the whitening first (the same function at evaluation): "
                "model, variables = dissectjax.models.scenenet.fold_whitening(model, variables)"
            )
        chain = [ChainLayer(name, (f"block{i}_conv",), width, bias=not self.batch_norm,
                            norm=(f"block{i}_bn",) if self.batch_norm else None)
                 for i, (name, width) in enumerate(zip(names, self.widths), start=1)]  # fmt: skip
        w = chain_wiring(chain, ("classifier",), layer, "SceneNet")
        if w.next is not None and w.next in self.whiten:
            w = dataclasses.replace(w, outgoing_refused=(
                f"{w.next} is concept-whitened: its units mix the output channels of the weights that read {layer}. "
                "Fold the whitening first: model, variables = dissectjax.models.scenenet.fold_whitening(model, "
                "variables)"))  # fmt: skip
        return w


BATCH_NORM_EPSILON = 1e-5  # flax.linen.BatchNorm's default, used by SceneNet


def fold_whitening(model: SceneNet, variables: Mapping) -> tuple[SceneNet, dict]:
    """(SceneNet with ``whiten`` layers, its variables) -> (the same SceneNet without them,
    variables computing the same function at evaluation). Any model without whitened layers
    is returned as it is.

    At evaluation a concept-whitening layer is affine in its input, the convolution's output:

        y = (conv(h; K) + b - mu) @ W @ R = conv(h; K @ (W R)) + (b - mu) @ (W R)

    so each whitened axis j is exactly one convolution filter, ``K @ (W R)[:, j]``, with a
    bias; with BatchNorm the bias goes into an identity BatchNorm (mean 0, variance
    ``1 - epsilon``, scale 1). The folded network computes the same logits and sown
    activations (to float32 rounding, tested). Only evaluation is preserved: training the
    folded network normalizes with batch statistics again.
    """
    if not getattr(model, "whiten", ()):
        return model, variables
    if not isinstance(model, SceneNet):
        raise DissectError(f"fold_whitening folds SceneNet's concept-whitening layers, not {type(model).__name__}")
    params = dict(variables["params"])
    stats = dict(variables.get("batch_stats", {}))
    for layer in model.whiten:
        i = int(layer.removeprefix("conv"))
        conv, cw, bn = f"block{i}_conv", SceneNet.whitening_module(layer), f"block{i}_bn"
        mix = stats[cw]["whitening"] @ cayley(params[cw]["rotation"])  # [C, C]: W R (W symmetric)
        kernel = params[conv]["kernel"]  # [kh, kw, C_in, C]
        bias = params[conv].get("bias", jnp.zeros(kernel.shape[-1], kernel.dtype)) - stats[cw]["mean"]
        folded_kernel = jnp.einsum("hwic,cd->hwid", kernel, mix)
        folded_bias = bias @ mix
        del params[cw], stats[cw]
        if model.batch_norm:
            params[conv] = {"kernel": folded_kernel}
            c = folded_bias.shape[0]
            params[bn] = {"scale": jnp.ones(c, jnp.float32), "bias": folded_bias}
            stats[bn] = {"mean": jnp.zeros(c, jnp.float32), "var": jnp.full(c, 1.0 - BATCH_NORM_EPSILON, jnp.float32)}
        else:
            params[conv] = {"kernel": folded_kernel, "bias": folded_bias}
    plain = model.clone(whiten=())
    out = {**variables, "params": params}
    if stats or "batch_stats" in variables:
        out["batch_stats"] = stats
    return plain, out
