"""Concept whitening (in the spirit of Chen, Bei and Rudin, Nature Machine Intelligence 2020).

    x [B, h, w, C] --centre, whiten (W = Sigma^-1/2)--> z --rotate (R orthogonal)--> z R

A drop-in for a normalization layer. Whitening decorrelates the channels; the rotation
``R = cayley(S)`` of a free parameter ``S`` is orthogonal by construction (to float
precision, at every step), so it moves no information, only which axis carries what.
The task loss does not train ``R`` (its gradient is stopped); only
:func:`dissectjax.analysis.localize.losses.alignment_loss` does, pulling axis j towards concept j: the mean of
``z R[:, j]`` over pixels of concept j is pushed up. With alignment weight 0, ``R``
stays the identity and the layer is plain whitening.

Whitening uses coupled Newton-Schulz iterations (as IterNorm, Huang et al. 2019):
differentiable, no eigendecomposition. Running statistics (mean, whitening matrix) serve at evaluation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

WHITENED = "whitened"  # the collection where the layer sows z (before rotation) for the alignment loss


def cayley(skew_param: jax.Array) -> jax.Array:
    """[C, C] -> orthogonal [C, C]: ``(I - A)^-1 (I + A)`` with ``A = P - P^T`` skew-symmetric."""
    a = skew_param - skew_param.T
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    return jnp.linalg.solve(eye - a, eye + a)


def whitening_matrix(cov: jax.Array, iterations: int = 5) -> jax.Array:
    """An approximation of ``cov^-1/2`` [C, C]: coupled Newton-Schulz iterations on the
    trace-normalized matrix (``Y -> cov^1/2``, ``Z -> cov^-1/2``; the coupled form stays
    stable in float32 where the single iteration diverges once converged)."""
    trace = jnp.trace(cov)
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
    y, z = cov / trace, eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / jnp.sqrt(trace)


class ConceptWhitening(nn.Module):
    """Whitening then rotation over the channel axis; output [B, h, w, C]."""

    momentum: float = 0.9
    epsilon: float = 1e-5
    iterations: int = 5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        skew = self.param("rotation", nn.initializers.zeros, (c, c), jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        whiten = self.variable("batch_stats", "whitening", lambda: jnp.eye(c, dtype=jnp.float32))
        if train:
            flat = x.reshape(-1, c).astype(jnp.float32)
            mu = flat.mean(axis=0)
            centred = flat - mu
            cov = centred.T @ centred / flat.shape[0] + self.epsilon * jnp.eye(c, dtype=jnp.float32)
            w = whitening_matrix(cov, self.iterations)
            if not self.is_initializing():
                m = self.momentum
                mean.value = m * mean.value + (1 - m) * jax.lax.stop_gradient(mu)
                whiten.value = m * whiten.value + (1 - m) * jax.lax.stop_gradient(w)
        else:
            mu, w = mean.value, whiten.value
        z = (x.astype(jnp.float32) - mu) @ w  # w is symmetric
        if not self.is_initializing():  # init returns the variables to keep, not activations
            self.sow(WHITENED, "z", z, reduce_fn=lambda _, new: new, init_fn=lambda: None)
        return z @ cayley(jax.lax.stop_gradient(skew))
