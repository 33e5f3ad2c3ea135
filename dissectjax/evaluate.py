"""Batched inference over arrays of images: the one place the package runs a model forward.

    (model, variables, images [N, H, W, C]) -> logits [N, K], predictions [N], accuracy,
                                               a layer's maps [N, h, w, U] or unit means [N, U]

Variables are arguments of the compiled functions (the model is static), so every
checkpoint of an architecture reuses one program per batch shape. Unit edits ride in the
variables (:func:`dissectjax.edit.with_edits`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.models.common import INTERMEDIATES
from dissectjax.models.layers import activation_fn

BATCH_SIZE = 256


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, ``batch_size`` rows each (the last may be shorter).

    >>> [(s.start, s.stop) for s in batches(5, 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _concat(parts: list) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in parts])


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: nn.Module, variables, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _logits_and_unit_means(model: nn.Module, variables, images: jax.Array, layer: str):
    logits, state = model.apply(variables, images, train=False, mutable=[INTERMEDIATES])
    acts = state[INTERMEDIATES][layer]
    return logits, jnp.mean(acts, axis=tuple(range(1, acts.ndim - 1))) if acts.ndim > 2 else acts


def logits(model: nn.Module, variables, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """float32 [N, K]: the model's outputs."""
    return _concat([_logits(model, variables, jnp.asarray(images[s])) for s in batches(len(images), batch_size)])


def predict(model: nn.Module, variables, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """int [N]: the predicted class of each image."""
    return np.argmax(logits(model, variables, images, batch_size), axis=-1)


def accuracy(model: nn.Module, variables, images: np.ndarray, labels: np.ndarray,
             batch_size: int = BATCH_SIZE) -> float:  # fmt: skip
    """The fraction of ``images`` whose predicted class is their label."""
    return float(np.mean(predict(model, variables, images, batch_size) == labels))


def unit_means_and_logits(model: nn.Module, variables, images: np.ndarray, layer: str,
                          batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(float32 [N, U]: each unit's mean activation over the positions of ``layer``, float32 [N, K] logits)."""
    parts = [_logits_and_unit_means(model, variables, jnp.asarray(images[s]), layer)
             for s in batches(len(images), batch_size)]  # fmt: skip
    return _concat([a for _, a in parts]), _concat([z for z, _ in parts])


def layer_maps(model: nn.Module, variables, layers: Sequence[str], images: np.ndarray,
               batch_size: int = BATCH_SIZE) -> dict[str, np.ndarray]:  # fmt: skip
    """{layer: float32 [N, h, w, U]}: the layers' activation maps (dense layers as [N, 1, 1, U])."""
    fn = activation_fn(model, variables, layers, jnp.asarray(images[:1]), jit=True)
    parts = [fn(variables, jnp.asarray(images[s])) for s in batches(len(images), batch_size)]
    return {name: _concat([p[name] for p in parts]) for name in layers}
