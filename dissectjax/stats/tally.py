"""Intersection and area counts of thresholded unit masks against concept labels.

For one batch (docs/ARCHITECTURE.md, Semantics 2-3): upsample each unit's map to the label
size, threshold it, and count

* ``intersection [U, C]``: pixels inside both the unit's mask and the concept's labels,
* ``unit_area [U, K]``: pixels inside the unit's mask, in the images that the rules'
  ``area`` names: where category ``k`` has a label (``"image"``), where the unit's mask
  covers a pixel of category ``k`` or ``k`` labels the whole image (``"mask"``), or every
  valid image (``"all"``),
* ``concept_area [C]``: pixels labelled with the concept (with repeats: label occurrences).

All counts are int32 sums over the batch and add exactly across batches and devices.

Labels arrive as stored (:class:`LabelBatch`): a concept may repeat across the label layers
of a pixel, and an image-level label may also label pixels. The rules
(:class:`dissectjax.stats.semantics.Rules`) say what a repeat counts: ``netdissect`` counts a
concept once per pixel (:func:`prepare_labels` drops the repeats on the device), ``lite``
counts every occurrence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dissectjax.errors import DissectError
from dissectjax.stats.semantics import Rules, rules
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


def drop_repeats(pixel: jax.Array, image: jax.Array) -> jax.Array:
    """The pixel labels with every concept at most once per pixel (earlier layers keep it) and
    none of the row's image-level concepts (an image-level label already covers every pixel).

    pixel: int32 [B, L, S] concept indices (-1 = none); image: int32 [B, M] (-1 = none).
    """
    keep_out = jnp.any((pixel[..., None] == image[:, None, None, :]) & (image[:, None, None, :] >= 0), axis=-1)
    for layer in range(1, pixel.shape[1]):  # L is small and static
        repeat = jnp.any(pixel[:, layer : layer + 1] == pixel[:, :layer], axis=1)
        keep_out = keep_out.at[:, layer].set(keep_out[:, layer] | repeat)
    return jnp.where(keep_out, -1, pixel)


def prepare_labels(labels: LabelBatch, num_concepts: int, repeats: bool = False):
    """Label-side terms of a batch, whatever the strategy.

    Returns ids int32 [B, L, S] (concept index, ``num_concepts`` for none or padding),
    whole int32 [B, C] (image-level labels of each concept in each image) and pixel_count
    int32 [B, C] (pixel labels of each concept in each image). Without ``repeats`` a concept
    counts once per pixel (:func:`drop_repeats`; whole is 0 or 1); with ``repeats`` every
    occurrence counts, in any layer and as often as an image-level label is given.
    """
    batch, layers, sh, sw = labels.pixel.shape
    valid = labels.valid
    pixel_labels = jnp.where(valid[:, None, None, None], labels.pixel.astype(jnp.int32), -1)
    pixel_labels = pixel_labels.reshape(batch, layers, sh * sw)
    image_labels = jnp.where(valid[:, None], labels.image.astype(jnp.int32), -1)
    if not repeats:
        pixel_labels = drop_repeats(pixel_labels, image_labels)
    ids = jnp.where(pixel_labels < 0, num_concepts, pixel_labels)
    image_ids = jnp.where(image_labels < 0, num_concepts, image_labels)
    cells = (jnp.arange(batch, dtype=jnp.int32)[:, None, None] * (num_concepts + 1) + ids).ravel()  # 1-D: faster
    pixel_count = jnp.zeros(batch * (num_concepts + 1), jnp.int32).at[cells].add(1)
    pixel_count = pixel_count.reshape(batch, num_concepts + 1)[:, :num_concepts]
    image_rows = jnp.broadcast_to(jnp.arange(batch)[:, None], image_ids.shape)
    whole = jnp.zeros((batch, num_concepts + 1), jnp.int32).at[image_rows, image_ids]
    whole = (whole.add(1) if repeats else whole.max(1))[:, :num_concepts]
    return ids, whole, pixel_count


def label_categories(ids: jax.Array, concept_category: jax.Array, num_categories: int) -> jax.Array:
    """int32 [B, L, S]: the category of each pixel label (``num_categories`` for none), from
    ids [B, L, S] as :func:`prepare_labels` returns them."""
    return jnp.append(concept_category.astype(jnp.int32), num_categories)[ids]


def covered_categories(mask: jax.Array, ids: jax.Array, concept_category: jax.Array, num_categories: int):
    """bool [B, U, K]: unit u's mask covers, in image b, a pixel labelled (in any layer) with a
    concept of category k. mask bool [B, S, U]; ids int32 [B, L, S]."""
    cats = label_categories(ids, concept_category, num_categories)
    in_category = sum(jax.nn.one_hot(cats[:, layer], num_categories, dtype=jnp.float32)
                      for layer in range(ids.shape[1]))  # fmt: skip
    # float32 sums of 0/1 products over one image's pixels are exact (S < 2**24)
    hits = jnp.einsum("bsu,bsk->buk", mask.astype(jnp.float32), in_category)
    return hits > 0


def assemble_counts(
    area, pixel_inter, whole, pixel_count, valid, concept_category, num_categories: int, rule: Rules, pixels: int,
    covered=None,
) -> Counts:  # fmt: skip
    """Counts from the mask areas [B, U] and pixel-level intersections [U, C] of a batch.

    ``covered`` bool [B, U, K] (:func:`covered_categories`) is needed by the ``"mask"`` area rule.
    """
    batch = area.shape[0]
    intersection = pixel_inter + area.T @ whole
    category_onehot = jax.nn.one_hot(concept_category, num_categories, dtype=jnp.int32)  # [C, K]
    if rule.area == "mask":
        whole_category = ((whole > 0).astype(jnp.int32) @ category_onehot) > 0  # [B, K]
        counted = covered | whole_category[:, None, :]  # [B, U, K]
        unit_area = jnp.einsum("bu,buk->uk", area, counted.astype(jnp.int32))
    else:
        if rule.area == "image":
            present = (pixel_count > 0) | (whole > 0)  # [B, C]
            labelled = (present.astype(jnp.int32) @ category_onehot) > 0  # [B, K]
        else:
            labelled = jnp.broadcast_to(valid[:, None], (batch, num_categories))
        unit_area = area.T @ labelled.astype(jnp.int32)
    concept_area = jnp.sum(pixel_count, axis=0) + jnp.sum(whole, axis=0) * pixels
    return Counts(intersection, unit_area, concept_area)


def count_bound(labels: LabelBatch, rule: Rules) -> int:
    """The most any count can grow in one batch: its pixels, times the label occurrences a
    pixel can hold where repeats count (so int32 accumulation can flush in time)."""
    batch, layers, sh, sw = labels.pixel.shape
    return batch * sh * sw * ((layers + labels.image.shape[1]) if rule.repeats else 1)


def tally(
    acts: jax.Array,
    thresholds: jax.Array,
    labels: LabelBatch,
    concept_category: jax.Array,
    num_categories: int,
    rule: Rules = rules(),
    strategy: str = "segment",
) -> Counts:
    """Counts for one batch, touching every (unit, pixel) pair.

    Args:
      acts: float [B, h, w, U] activations at the layer's native resolution.
      thresholds: float32 [U].
      labels: the batch's :class:`LabelBatch`, label maps of size [sh, sw].
      concept_category: int32 [C], the category index of each concept.
      num_categories: K (static).
      rule: the counting rules (static, :func:`dissectjax.stats.semantics.rules`): where a
        unit's area counts, and whether label repeats count.
      strategy: "segment" (segment sums) or "dense" (one-hot matmul, best on GPU/TPU);
        identical results. (The "sparse" strategy is :mod:`dissectjax.stats.sparse`.)
    """
    if strategy not in ("segment", "dense"):  # "sparse" lives in dissectjax.stats.sparse
        raise ValueError(f"tally() computes 'segment' or 'dense', not {strategy!r}")
    batch, layers, sh, sw = labels.pixel.shape
    pixels = sh * sw
    num_concepts = concept_category.shape[0]
    ids, whole, pixel_count = prepare_labels(labels, num_concepts, rule.repeats)
    mask = upsample(acts, (sh, sw)).reshape(batch, pixels, -1) > thresholds  # [B, S, U]
    area = jnp.sum(mask, axis=1, dtype=jnp.int32) * labels.valid[:, None]  # [B, U]; padding rows have no labels
    if layers == 0:  # image-level categories only
        pixel_inter = jnp.zeros((area.shape[1], num_concepts), jnp.int32)
    elif strategy == "segment":
        flat_mask = mask.reshape(batch * pixels, -1).astype(jnp.int32)
        pixel_inter = sum(
            jax.ops.segment_sum(flat_mask, ids[:, layer].reshape(-1), num_segments=num_concepts + 1)
            for layer in range(layers)
        )[:num_concepts].T
    else:
        occurrences = pixels * (layers if rule.repeats else 1)  # the most one image adds to a count
        if batch * occurrences >= _F32_EXACT:
            most = max(1, (_F32_EXACT - 1) // occurrences)
            raise DissectError(
                f"a batch of {batch} images of {sh}x{sw} labels is too large for exact dense tallies "
                f"(at most {_F32_EXACT - 1} label pixels): lower batch_size to {most}"
            )
        dtype = jnp.bfloat16  # small integers are exact; accumulation is float32
        onehot = sum(jax.nn.one_hot(ids[:, layer], num_concepts, dtype=dtype) for layer in range(layers))
        pixel_inter = jnp.einsum("bsu,bsc->uc", mask.astype(dtype), onehot, preferred_element_type=jnp.float32)
        pixel_inter = pixel_inter.astype(jnp.int32)
    covered = covered_categories(mask, ids, concept_category, num_categories) if rule.area == "mask" else None
    return assemble_counts(
        area, pixel_inter, whole, pixel_count, labels.valid, concept_category, num_categories, rule, pixels, covered
    )
