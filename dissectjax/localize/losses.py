"""Loss terms that localize concepts in units, and the sum that leaves zero-strength terms out.

    task loss + sum_i strength_i * term_i(intermediates, batch)

Every term is a pure function of a layer's activations and the batch; ``total_loss``
drops terms of strength 0 before tracing, so a zero strength changes nothing at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

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


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """``strength * fn(intermediates, batch)``; ``fn`` reads the layers it needs from ``intermediates``."""

    name: str
    strength: float
    fn: Callable[[Mapping, Mapping], jax.Array]


def total_loss(task: jax.Array, terms: Sequence[LossTerm], intermediates: Mapping, batch: Mapping):
    """(task + the weighted terms, {name: term value}); terms of strength 0 are not computed."""
    values = {t.name: t.fn(intermediates, batch) for t in terms if t.strength != 0}
    weighted = sum((t.strength * values[t.name] for t in terms if t.name in values), start=jnp.zeros_like(task))
    return task + weighted if values else task, values
