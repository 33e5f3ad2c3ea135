"""Bilinear resampling of activation maps as two small matrix products.

Half-pixel centers with edge clamping: output pixel ``i`` of ``n_out`` samples the input at
``s = (i + 0.5) * n_in / n_out - 0.5``, clipped to ``[0, n_in - 1]``. For upsampling this is
exactly ``jax.image.resize(..., 'bilinear')``; unlike it, downsampling is not antialiased,
so every ratio follows the same formula (DESIGN.md section 5, step 2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """float32 [n_out, n_in]: row i holds the two bilinear weights of output sample i."""
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = s - lo
    w = np.zeros((n_out, n_in), np.float64)
    np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    w.setflags(write=False)
    return w.astype(np.float32)


def upsample(acts: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, U] -> [B, sh, sw, U] float32, bilinear (see module docstring)."""
    _, h, w, _ = acts.shape
    wy = jnp.asarray(interpolation_matrix(size[0], h))
    wx = jnp.asarray(interpolation_matrix(size[1], w))
    hi = jax.lax.Precision.HIGHEST  # no TF32/bf16 shortcuts: masks compare against thresholds
    rows = jnp.einsum("yh,bhwu->bywu", wy, acts.astype(jnp.float32), precision=hi)
    return jnp.einsum("xw,bywu->byxu", wx, rows, precision=hi)
