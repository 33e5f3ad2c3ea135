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

    slot: int [U], ``slot[u]`` = B's unit matched to A's unit u (a permutation).
    correlation: float [U], correlation of each matched pair.
    random_mean, random_std: mean matched correlation of random permutations (baseline).
    """

    slot: np.ndarray
    correlation: np.ndarray
    random_mean: float
    random_std: float

    @property
    def mean(self) -> float:
        return float(self.correlation.mean())


def match(corr: np.ndarray, seed: int = 0, permutations: int = 1000) -> Matching:
    """One-to-one matching of maximal total correlation, with a random-permutation baseline."""
    if corr.shape[0] != corr.shape[1]:
        raise DissectError(f"one-to-one matching needs as many units in A as in B, got {corr.shape}")
    rows, cols = linear_sum_assignment(-corr)
    slot = np.empty(corr.shape[0], np.int64)
    slot[rows] = cols
    rng = np.random.default_rng(seed)
    n = corr.shape[0]
    random = np.array([corr[np.arange(n), rng.permutation(n)].mean() for _ in range(permutations)])
    return Matching(slot, corr[np.arange(n), slot], float(random.mean()), float(random.std()))


def layer_correlation(model_a, vars_a, model_b, vars_b, layer: str, images: np.ndarray, batch: int = 250):
    """float [U_A, U_B]: correlation of ``layer``'s units of A and B over ``images`` and positions.

    One compiled activation function per architecture: two checkpoints of one architecture share it.
    """
    example = jnp.asarray(images[:1])
    fa = activation_fn(model_a, vars_a, [layer], example, jit=True)
    fb = fa if model_b == model_a else activation_fn(model_b, vars_b, [layer], example, jit=True)
    corr = Correlation()
    for s in batches(len(images), batch):
        x = jnp.asarray(images[s])
        corr.add(fa(vars_a, x)[layer], fb(vars_b, x)[layer])
    return corr.result()


def layer_matching(model_a, vars_a, model_b, vars_b, layer: str, images: np.ndarray) -> Matching:
    """:func:`match` of :func:`layer_correlation`."""
    return match(layer_correlation(model_a, vars_a, model_b, vars_b, layer, images))
