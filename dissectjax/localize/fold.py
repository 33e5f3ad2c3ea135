"""Folding concept whitening into the convolution before it: a plain SceneNet, the same function.

At evaluation a concept-whitening layer is affine in its input, and its input is the
convolution's output, which is linear in the convolution's input:

    y = (conv(h; K) + b - mu) @ W @ R = conv(h; K @ (W R)) + (b - mu) @ (W R)

so each whitened axis j is exactly one convolution filter, ``K @ (W R)[:, j]``, with a bias.
:func:`fold_whitening` rewrites every whitened layer of a SceneNet that way and returns
the architecture without whitening: with BatchNorm, the bias goes into an identity
BatchNorm (mean 0, variance ``1 - epsilon``, scale 1). The folded network computes the same
logits and the same sown activations (to float32 rounding, tested), and every surgery tool
then applies to the aligned axes as to any unit: ablation, transplant, wiring, matching
(``dissectjax ablate``, ``match``, ``transplant`` and ``serve`` fold on load).

Only evaluation is preserved: training the folded network normalizes with batch
statistics again, as a plain SceneNet does.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from dissectjax.errors import DissectError
from dissectjax.localize.whitening import cayley
from dissectjax.models.scenenet import SceneNet

BATCH_NORM_EPSILON = 1e-5  # flax.linen.BatchNorm's default, used by SceneNet


def fold_whitening(model: SceneNet, variables: Mapping) -> tuple[SceneNet, dict]:
    """(SceneNet with ``whiten`` layers, its variables) -> (the same SceneNet without them,
    variables computing the same function at evaluation). Any model without whitened layers
    is returned as it is."""
    if not getattr(model, "whiten", ()):
        return model, variables
    if not isinstance(model, SceneNet):
        raise DissectError(f"fold_whitening folds SceneNet's concept-whitening layers, not {type(model).__name__}")
    params = dict(variables["params"])
    stats = dict(variables.get("batch_stats", {}))
    for layer in model.whiten:
        i = int(layer.removeprefix("conv"))
        conv, cw, bn = f"block{i}_conv", f"block{i}_cw", f"block{i}_bn"
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
