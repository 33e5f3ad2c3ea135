"""Compaction of sparse boolean masks: the indices of their True entries, in a static size.

``jnp.nonzero(mask, size=n)`` runs two prefix sums and a scatter over the whole mask; on
the CPU, XLA's prefix sum over hundreds of thousands of entries costs more than the rest
of a tally step. Here the mask is packed into 32-bit words, so the one prefix sum runs over
a thirty-second of the entries, and each output finds its word by binary search and its
bit by population counts: work proportional to the mask's words plus the output size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_WORD = 32


def nonzero(mask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The flat indices of ``mask``'s True entries in ascending order, padded with 0 to
    ``size`` entries (the first ``size`` of them if there are more), and their number.

    The same indices as ``jnp.nonzero(mask.ravel(), size=size, fill_value=0)[0]``.

    Args:
      mask: bool [...], any shape (read flat, row-major).
      size: the static number of indices to return.

    Returns:
      indices int32 [size], count int32 [] (all True entries, which may exceed ``size``).
    """
    packed, counts = _words(mask.ravel())
    words = packed.shape[0]
    ends = jnp.cumsum(counts)  # set bits up to and including each word
    rank = jnp.arange(size, dtype=jnp.int32)
    word = jnp.minimum(jnp.searchsorted(ends, rank, side="right", method="scan"), words - 1).astype(jnp.int32)
    within = rank - (ends[word] - counts[word])  # the wanted set bit's rank inside its word
    upto = _set_through(packed[word])
    bit = jnp.sum(upto <= within[:, None], axis=1, dtype=jnp.int32)  # upto rises: the first bit past ``within``
    total = ends[-1]
    return jnp.where(rank < total, word * _WORD + bit, 0), total


def nonzero_nd(mask: jax.Array, size: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """:func:`nonzero` as one index array per axis of ``mask`` (each int32 [size]), like
    ``jnp.nonzero(mask, size=size, fill_value=0)``, and the count."""
    flat, total = nonzero(mask, size)
    return tuple(i.astype(jnp.int32) for i in jnp.unravel_index(flat, mask.shape)), total


def count_through(mask: jax.Array) -> jax.Array:
    """int32 [N]: the True entries of the bool mask [N] at or before each position, i.e.
    ``jnp.cumsum(mask)``, from one prefix sum over 32-bit words and population counts."""
    packed, counts = _words(mask)
    before = jnp.cumsum(counts) - counts
    return (before[:, None] + _set_through(packed)).ravel()[: mask.shape[0]]


def _words(flat: jax.Array) -> tuple[jax.Array, jax.Array]:
    """bool [N] -> its bits packed into uint32 words [ceil(N / 32)] (entry i of a word at bit
    i), and each word's set bits, int32."""
    words = -(-flat.shape[0] // _WORD)
    bits = jnp.pad(flat, (0, words * _WORD - flat.shape[0])).reshape(words, _WORD)
    shifts = jnp.arange(_WORD, dtype=jnp.uint32)
    packed = jnp.sum(bits.astype(jnp.uint32) << shifts, axis=1, dtype=jnp.uint32)  # distinct bits: sum == or
    return packed, jax.lax.population_count(packed).astype(jnp.int32)


def _set_through(packed: jax.Array) -> jax.Array:
    """int32 [..., 32]: the set bits of each word [...] at or below each bit position
    ((2 << 31) - 1 wraps to all ones)."""
    below = (jnp.uint32(2) << jnp.arange(_WORD, dtype=jnp.uint32)) - 1
    return jax.lax.population_count(packed[..., None] & below).astype(jnp.int32)
