"""Matching units of two independently trained instances (Li et al. 2016, Convergent Learning).

Correlate every unit of A with every unit of B over all positions of a layer's maps on the
same images (streaming sums, so any number of images), then solve the one-to-one
assignment of maximal total correlation (Hungarian algorithm).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from dissectjax.errors import DissectError
from dissectjax.evaluate import batches
from dissectjax.models.layers import activation_fn


@jax.jit
def _moments(a: jax.Array, b: jax.Array):
    """Sums over positions of a [B, h, w, U], b [B, h, w, V]: n, sum a, sum b, sum a^2, sum b^2, sum ab^T."""
    a = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
    b = b.reshape(-1, b.shape[-1]).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    return (a.shape[0], a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), jnp.dot(a.T, b, precision=hi))


class Correlation:
    """Streaming Pearson correlation [U, V] between two layers' units (float64 on the host)."""

    def __init__(self):
        self._sums = None

    def add(self, a: jax.Array, b: jax.Array) -> None:
        if a.shape[:-1] != b.shape[:-1]:
            raise ValueError(f"maps of shape {a.shape} and {b.shape} do not line up position by position")
        m = [np.asarray(x, np.float64) for x in _moments(a, b)]
        self._sums = m if self._sums is None else [s + x for s, x in zip(self._sums, m)]

    def result(self) -> np.ndarray:
        if self._sums is None:
            raise ValueError("no activations were added")
        n, sa, sb, saa, sbb, sab = self._sums
        cov = sab / n - np.outer(sa / n, sb / n)
        var_a = np.maximum(saa / n - (sa / n) ** 2, 0.0)
        var_b = np.maximum(sbb / n - (sb / n) ** 2, 0.0)
        denom = np.sqrt(np.outer(var_a, var_b))
        return np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Matching:
    """B's slot for each of A's units, and how good the assignment is.

    slot: int [U], ``slot[u]`` = B's unit matched to A's unit u (a permutation when A and B
      have as many units; -1 for an A unit left over).
    correlation: float [U], correlation of each matched pair (NaN for one left over).
    random_mean, random_std: mean correlation of random one-to-one pairings (baseline).
    """

    slot: np.ndarray
    correlation: np.ndarray
    random_mean: float
    random_std: float

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.correlation))


def match(corr: np.ndarray, seed: int = 0, permutations: int = 1000) -> Matching:
    """One-to-one matching of maximal total correlation, with a random-pairing baseline.

    With more units in A than in B, the A units left over get slot -1 and correlation NaN.

    >>> match(np.array([[0.1, 0.9], [0.8, 0.2]]), permutations=10).slot.tolist()
    [1, 0]
    """
    rows, cols = linear_sum_assignment(-corr)
    slot = np.full(corr.shape[0], -1, np.int64)
    slot[rows] = cols
    pairs = np.where(slot >= 0, corr[np.arange(corr.shape[0]), np.maximum(slot, 0)], np.nan)
    rng = np.random.default_rng(seed)
    k = min(corr.shape)
    random = np.array([corr[rng.permutation(corr.shape[0])[:k], rng.permutation(corr.shape[1])[:k]].mean()
                       for _ in range(permutations)])  # fmt: skip
    return Matching(slot, pairs, float(random.mean()), float(random.std()))


def layer_correlation(model_a, vars_a, model_b, vars_b, layer: str, images: np.ndarray, batch: int = 250,
                      layer_b: str | None = None) -> np.ndarray:  # fmt: skip
    """float [U_A, U_B]: correlation of A's ``layer`` and B's ``layer_b`` (default: the same
    layer) over ``images`` and positions; the two layers' maps must line up position by position.

    One compiled activation function per architecture: two checkpoints of one architecture share it.
    """
    layer_b = layer_b or layer
    example = jnp.asarray(images[:1])
    fa = activation_fn(model_a, vars_a, [layer], example, jit=True)
    fb = activation_fn(model_b, vars_b, [layer_b], example, jit=True)
    shape_a = jax.eval_shape(fa, vars_a, example)[layer].shape
    shape_b = jax.eval_shape(fb, vars_b, example)[layer_b].shape
    if shape_a[:-1] != shape_b[:-1]:
        raise DissectError(f"A's {layer} maps are {shape_a[1:3]} and B's {layer_b} {shape_b[1:3]}: matching "
                           "correlates units position by position, so the maps must be the same size")  # fmt: skip
    corr = Correlation()
    for s in batches(len(images), batch):
        x = jnp.asarray(images[s])
        corr.add(fa(vars_a, x)[layer], fb(vars_b, x)[layer_b])
    return corr.result()


def layer_matching(model_a, vars_a, model_b, vars_b, layer: str, images: np.ndarray,
                   layer_b: str | None = None) -> Matching:  # fmt: skip
    """:func:`match` of :func:`layer_correlation`."""
    return match(layer_correlation(model_a, vars_a, model_b, vars_b, layer, images, layer_b=layer_b))
