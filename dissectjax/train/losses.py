"""The training objective: the task's cross-entropy plus weighted auxiliary terms.

    loss = cross_entropy(logits, labels) + sum_i strength_i * term_i(intermediates, batch)

:func:`total_loss` drops terms of strength 0 before tracing, so a zero strength changes
nothing at all (training is bit-identical to training without the term).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits [B, K] against integer labels [B].

    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log 4
    1.3863
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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
