"""Loss terms that localize concepts in units (added to the task loss by
:func:`dissectjax.train.losses.total_loss`, which leaves zero-strength terms out).

Every term is a pure function of a layer's activations (or a whitened layer's axes) and the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dissectjax.models.whitening import cayley
from dissectjax.stats.upsample import upsample


def concept_supervision_loss(maps: jax.Array, masks: jax.Array, pos_weight: float = 1.0, offset: float = 0.0):
    """Per-pixel logistic loss between chosen units' maps and their target concepts' masks.

    maps: float [B, h, w, K] (unit k's activation minus ``offset`` is the logit of concept k
    being there; an offset lets a rectified unit say "absent" with its zero);
    masks: [B, S, S', K] in {0, 1} at the label resolution; maps are upsampled to it
    bilinearly (as dissection does). ``pos_weight`` weighs concept pixels (they are rare).
    """
    logits = upsample(maps, masks.shape[1:3]) - offset
    target = masks.astype(jnp.float32)
    # softplus(-x) = -log sigmoid(x); softplus(x) = -log(1 - sigmoid(x))
    per_pixel = pos_weight * target * jax.nn.softplus(-logits) + (1.0 - target) * jax.nn.softplus(logits)
    return jnp.mean(per_pixel)


def l1_activity(acts: jax.Array) -> jax.Array:
    """Mean absolute activation (a sparsity pressure)."""
    return jnp.mean(jnp.abs(acts))


def class_selectivity_loss(acts: jax.Array, labels: jax.Array, num_classes: int, epsilon: float = 1e-6):
    """Minus the mean class selectivity of a layer's units (Leavitt and Morcos 2021):
    ``(mu_max - mu_rest) / (mu_max + mu_rest)`` of each unit's mean activation per class in the
    batch (mu_rest: the mean over the other classes present). acts [B, h, w, U] >= 0; labels int [B]."""
    per_image = acts.reshape(acts.shape[0], -1, acts.shape[-1]).mean(axis=1)  # [B, U]
    onehot = jax.nn.one_hot(labels, num_classes)  # [B, K]
    counts = onehot.sum(axis=0)  # [K]
    means = (onehot.T @ per_image) / jnp.maximum(counts, 1.0)[:, None]  # [K, U]
    present = (counts > 0)[:, None]
    top = jnp.argmax(jnp.where(present, means, -jnp.inf), axis=0)  # [U]
    mu_max = jnp.take_along_axis(means, top[None], axis=0)[0]
    others = present & (jnp.arange(num_classes)[:, None] != top[None])
    mu_rest = jnp.sum(jnp.where(others, means, 0.0), axis=0) / jnp.maximum(others.sum(axis=0), 1)
    return -jnp.mean((mu_max - mu_rest) / (mu_max + mu_rest + epsilon))


def alignment_loss(z: jax.Array, skew_param: jax.Array, masks: jax.Array) -> jax.Array:
    """Minus the mean, over concepts j, of axis j's mean activation on concept j's pixels.

    z: whitened activations [B, h, w, C] (gradient stopped here: only the rotation learns);
    masks: bool/float [B, h, w, K] at the layer's resolution, K <= C concepts for the first K axes.
    """
    k = masks.shape[-1]
    axes = jax.lax.stop_gradient(z) @ cayley(skew_param)[:, :k]  # [B, h, w, K]
    masks = masks.astype(jnp.float32)
    per_concept = jnp.sum(axes * masks, axis=(0, 1, 2)) / jnp.maximum(jnp.sum(masks, axis=(0, 1, 2)), 1.0)
    return -jnp.mean(per_concept)
