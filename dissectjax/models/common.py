"""What every dissectable model shares: sowing a layer's activation under a stable name."""

from __future__ import annotations

import flax.linen as nn
import jax

INTERMEDIATES = "intermediates"


def _replace(_previous, new):
    return new


def sow_layer(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
    """Stores ``value`` (the bare array, not a tuple) as intermediate ``name``; returns it."""
    module.sow(INTERMEDIATES, name, value, reduce_fn=_replace, init_fn=lambda: None)
    return value
