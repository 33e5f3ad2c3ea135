"""Bilinear resampling of activation maps, with one exact arithmetic for every strategy.

Half-pixel centers with edge clamping: output sample ``i`` of ``n_out`` reads the input at
``s = (i + 0.5) * n_in / n_out - 0.5``, clipped to ``[0, n_in - 1]``, between samples
``lo = floor(s)`` and ``hi = min(lo + 1, n_in - 1)`` with weight ``frac = s - lo`` on ``hi``.
For upsampling this is ``jax.image.resize(..., 'bilinear')``; unlike it, downsampling is not
antialiased, so every ratio follows the same formula (docs/ARCHITECTURE.md, Semantics 2).

Every tally strategy interpolates with :func:`lerp`, first along rows, then along columns,
so a pixel has the same float32 value whichever strategy (dense or sparse) computes it.
``lerp`` never leaves the interval of its two inputs, so an interpolated pixel never
exceeds the largest of its four corners: where every corner is at or below a threshold,
so is the pixel (a plain weighted sum can round above it), which is what lets the sparse
strategy skip such regions and still agree exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def sample_coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lo int [n_out], hi int [n_out], frac float32 [n_out] of each output sample."""
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (s - lo).astype(np.float32)
    for a in (lo, hi, frac):
        a.setflags(write=False)
    return lo, hi, frac


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """float32 [n_out, n_in]: row i holds the two bilinear weights of output sample i."""
    lo, hi, frac = sample_coords(n_out, n_in)
    w = np.zeros((n_out, n_in), np.float64)
    np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    w.setflags(write=False)
    return w.astype(np.float32)


def lerp(a: jax.Array, b: jax.Array, frac: jax.Array) -> jax.Array:
    """``a + frac * (b - a)``, kept inside ``[min(a, b), max(a, b)]`` (exact when a == b)."""
    return jnp.clip(a + frac * (b - a), jnp.minimum(a, b), jnp.maximum(a, b))


def upsample(acts: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, U] -> [B, sh, sw, U] float32, bilinear (see module docstring)."""
    _, h, w, _ = acts.shape
    ylo, yhi, fy = sample_coords(size[0], h)
    xlo, xhi, fx = sample_coords(size[1], w)
    acts = acts.astype(jnp.float32)
    rows = lerp(acts[:, ylo], acts[:, yhi], jnp.asarray(fy)[None, :, None, None])  # [B, sh, w, U]
    return lerp(rows[:, :, xlo], rows[:, :, xhi], jnp.asarray(fx)[None, None, :, None])
