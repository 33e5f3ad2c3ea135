"""Intersection and area counts of thresholded unit masks against concept labels.

For one batch (docs/ARCHITECTURE.md, Semantics 2-3): upsample each unit's map to the label
size, threshold it, and count

* ``intersection [U, C]``: pixels inside both the unit's mask and the concept's labels,
* ``unit_area [U, K]``: pixels inside the unit's mask, in images where category ``k`` has
  a label (every valid image when ``condition`` is False),
* ``concept_area [C]``: pixels labelled with the concept.

All counts are int32 sums over the batch and add exactly across batches and devices.

Labels arrive *normalized* (see :func:`dissectjax.data.probe.normalize_labels`): in one
image, a concept appears at most once per pixel across the label layers, and a concept
given as an image-level label has no pixel labels. Then a pixel-level concept's mask is
the sum of per-layer one-hots, and an image-level concept covers every pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dissectjax.errors import DissectError
from dissectjax.stats.upsample import upsample

STRATEGIES = ("segment", "dense", "sparse")
_F32_EXACT = 1 << 24  # float32 sums of 0/1 values are exact below this


class LabelBatch(NamedTuple):
    """Concept labels of a batch, as concept column indices (``-1`` = none).

    pixel: int32 [B, L, sh, sw], L label layers (all pixel-level categories).
    image: int32 [B, M], image-level labels, padded with -1.
    valid: bool [B], False for rows that only pad the batch.
    """

    pixel: jax.Array
    image: jax.Array
    valid: jax.Array


class Counts(NamedTuple):
    """Integer counts of one batch (or a sum of batches)."""

    intersection: jax.Array  # [U, C]
    unit_area: jax.Array  # [U, K]
    concept_area: jax.Array  # [C]


def default_strategy() -> str:
    """One-hot matrix products on accelerators; on the CPU, the sparse tally
    (:mod:`dissectjax.stats.sparse`), which touches only pixels that can be above threshold."""
    return "sparse" if jax.default_backend() == "cpu" else "dense"


def prepare_labels(labels: LabelBatch, num_concepts: int):
    """Label-side terms of a batch, whatever the strategy.

    Returns ids int32 [B, L, S] (concept index, ``num_concepts`` for none or padding),
    whole int32 [B, C] (1 where an image-level label covers the image) and pixel_count
    int32 [B, C] (pixels of each concept in each image).
    """
    batch, layers, sh, sw = labels.pixel.shape
    valid = labels.valid
    pixel_labels = jnp.where(valid[:, None, None, None], labels.pixel.astype(jnp.int32), -1)
    ids = jnp.where(pixel_labels < 0, num_concepts, pixel_labels).reshape(batch, layers, sh * sw)
    image_labels = jnp.where(valid[:, None], labels.image.astype(jnp.int32), -1)
    image_ids = jnp.where(image_labels < 0, num_concepts, image_labels)
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None, None], ids.shape)
    pixel_count = jnp.zeros((batch, num_concepts + 1), jnp.int32).at[rows, ids].add(1)[:, :num_concepts]
    image_rows = jnp.broadcast_to(jnp.arange(batch)[:, None], image_ids.shape)
    whole = jnp.zeros((batch, num_concepts + 1), jnp.int32).at[image_rows, image_ids].max(1)[:, :num_concepts]
    return ids, whole, pixel_count


def assemble_counts(
    area, pixel_inter, whole, pixel_count, valid, concept_category, num_categories: int, condition: bool, pixels: int
) -> Counts:
    """Counts from the mask areas [B, U] and pixel-level intersections [U, C] of a batch."""
    batch = area.shape[0]
    intersection = pixel_inter + area.T @ whole
    present = (pixel_count > 0) | (whole > 0)  # [B, C]
    category_onehot = jax.nn.one_hot(concept_category, num_categories, dtype=jnp.int32)  # [C, K]
    if condition:
        labelled = (present.astype(jnp.int32) @ category_onehot) > 0  # [B, K]
    else:
        labelled = jnp.broadcast_to(valid[:, None], (batch, num_categories))
    unit_area = area.T @ labelled.astype(jnp.int32)
    concept_area = jnp.sum(pixel_count, axis=0) + jnp.sum(whole, axis=0) * pixels
    return Counts(intersection, unit_area, concept_area)


def tally(
    acts: jax.Array,
    thresholds: jax.Array,
    labels: LabelBatch,
    concept_category: jax.Array,
    num_categories: int,
    condition: bool = True,
    strategy: str = "segment",
) -> Counts:
    """Counts for one batch, touching every (unit, pixel) pair.

    Args:
      acts: float [B, h, w, U] activations at the layer's native resolution.
      thresholds: float32 [U].
      labels: the batch's :class:`LabelBatch`, label maps of size [sh, sw].
      concept_category: int32 [C], the category index of each concept.
      num_categories: K (static).
      condition: count a unit's area for category k only in images labelled with k.
      strategy: "segment" (segment sums) or "dense" (one-hot matmul, best on GPU/TPU);
        identical results. (The "sparse" strategy is :mod:`dissectjax.stats.sparse`.)
    """
    if strategy not in ("segment", "dense"):  # "sparse" lives in dissectjax.stats.sparse
        raise ValueError(f"tally() computes 'segment' or 'dense', not {strategy!r}")
    batch, layers, sh, sw = labels.pixel.shape
    pixels = sh * sw
    num_concepts = concept_category.shape[0]
    ids, whole, pixel_count = prepare_labels(labels, num_concepts)
    mask = upsample(acts, (sh, sw)).reshape(batch, pixels, -1) > thresholds  # [B, S, U]
    area = jnp.sum(mask, axis=1, dtype=jnp.int32) * labels.valid[:, None]  # [B, U]
    if layers == 0:  # image-level categories only
        pixel_inter = jnp.zeros((area.shape[1], num_concepts), jnp.int32)
    elif strategy == "segment":
        flat_mask = mask.reshape(batch * pixels, -1).astype(jnp.int32)
        pixel_inter = sum(
            jax.ops.segment_sum(flat_mask, ids[:, layer].reshape(-1), num_segments=num_concepts + 1)
            for layer in range(layers)
        )[:num_concepts].T
    else:
        if batch * pixels >= _F32_EXACT:
            raise DissectError(
                f"a batch of {batch} images of {sh}x{sw} labels is too large for exact dense tallies "
                f"(at most {_F32_EXACT - 1} pixels): lower batch_size to {max(1, (_F32_EXACT - 1) // pixels)}"
            )
        dtype = jnp.bfloat16  # 0/1 values are exact; accumulation is float32
        onehot = sum(jax.nn.one_hot(ids[:, layer], num_concepts, dtype=dtype) for layer in range(layers))
        pixel_inter = jnp.einsum("bsu,bsc->uc", mask.astype(dtype), onehot, preferred_element_type=jnp.float32)
        pixel_inter = pixel_inter.astype(jnp.int32)
    return assemble_counts(
        area, pixel_inter, whole, pixel_count, labels.valid, concept_category, num_categories, condition, pixels
    )
