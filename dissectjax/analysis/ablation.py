"""Measuring what a network loses when units are edited, per class.

The layer's activations are computed once per image (:class:`LayerData`). Every
intervention is a :class:`~dissectjax.edit.UnitEdit` applied to those stored activations,
which are then given to the model in place of the layer (the ``layer_values`` collection of
:func:`~dissectjax.models.common.sow_layer`), so only the network above the layer runs: XLA
drops the layers below as dead code. That is exact wherever every path from the input to
the output passes through the layer (plain chains, ResNet stage outputs; decided on the
traced computation, :func:`~dissectjax.models.layers.depends_only_on`); where a path bypasses
it (a layer inside a residual block, whose shortcut skips it), the network reruns whole with
the edit where the layer is sown. Either way the logits are those of the edited network
(tested against folding the edit into the weights). Many edits are vmapped
per compiled call; what comes back per edit is three counts per class (:class:`ClassCounts`),
so a thousand classes cost no K x K confusion matrices.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.edit import UnitEdit, with_edits
from dissectjax.errors import DissectError
from dissectjax.evaluate import layer_maps
from dissectjax.models.common import LAYER_VALUES, nested
from dissectjax.models.layers import depends_only_on, sown_layer_names

ABLATION_MODES = ("zero", "mean")
LAYER_BATCH = 250  # images per forward pass when a layer's activations are stored


@dataclasses.dataclass
class LayerData:
    """A layer's activations [N, h, w, U] (dense layers [N, 1, 1, U]) on N labelled images
    (uint8 [N, H, W, C]), and the labels [N]."""

    layer: str
    acts: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    above: bool = False  # whether the output depends on the images only through this layer

    @property
    def means(self) -> np.ndarray:
        """float32 [U]: each unit's mean activation over images and positions."""
        return self.acts.mean(axis=(0, 1, 2)).astype(np.float32)

    @property
    def units(self) -> int:
        return int(self.acts.shape[-1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def layer_data(model: nn.Module, variables, layer: str, images: np.ndarray, labels: np.ndarray,
               batch: int = LAYER_BATCH) -> LayerData:  # fmt: skip
    """Runs the model once over ``images`` and keeps ``layer``'s activations (a sown layer: where edits apply)."""
    sown = sown_layer_names(model, variables, jnp.asarray(images[:1]))
    if layer not in sown:
        raise DissectError(f"unknown layer {layer!r} for ablation in {type(model).__name__}; its sown layers: "
                           f"{', '.join(sown)}")  # fmt: skip
    acts = layer_maps(model, variables, [layer], images, batch)[layer]
    above = depends_only_on(model, variables, layer, jnp.asarray(images[:1]))
    return LayerData(layer, acts, np.asarray(images), np.asarray(labels), int(model.num_classes), above)


@dataclasses.dataclass(frozen=True)
class ClassCounts:
    """Per-class outcomes of M networks (e.g. M edits) on one labelled set, int64 [M, K] each.

    hits: images of class k predicted as k; actual: images of class k; predicted: images
    predicted as k.
    """

    hits: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray

    @classmethod
    def from_confusion(cls, confusion) -> ClassCounts:
        """From [..., K, K] counts (true class, predicted class).

        >>> ClassCounts.from_confusion(np.array([[3, 1], [0, 4]])).balanced_accuracy().tolist()
        [0.875, 0.875]
        """
        confusion = np.asarray(confusion, np.int64)
        return cls(np.diagonal(confusion, axis1=-2, axis2=-1).copy(), confusion.sum(-1), confusion.sum(-2))

    def recall(self) -> np.ndarray:
        """float [M, K]: the fraction of each class predicted right (NaN for a class without images)."""
        return np.where(self.actual > 0, self.hits / np.maximum(self.actual, 1), np.nan)

    def balanced_accuracy(self) -> np.ndarray:
        """float [M, K]: (recall + specificity) / 2 of each class as a one-vs-rest decision.

        NaN for a class that has no images (or is the only class): it was not measured.
        """
        total = self.actual.sum(-1, keepdims=True)
        negatives = total - self.actual
        false_positives = self.predicted - self.hits
        specificity = np.where(negatives > 0, (negatives - false_positives) / np.maximum(negatives, 1), np.nan)
        return (self.recall() + specificity) / 2


@dataclasses.dataclass(frozen=True)
class PerClass:
    """A sweep's tally: int32 [3, K] hits, actual and predicted per class (:class:`ClassCounts`)."""

    num_classes: int

    def __call__(self, logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
        pred = jnp.argmax(logits, axis=-1)
        k = self.num_classes
        hits = jnp.zeros(k, jnp.int32).at[labels].add((pred == labels) & valid, mode="drop")
        actual = jnp.zeros(k, jnp.int32).at[labels].add(valid, mode="drop")
        predicted = jnp.zeros(k, jnp.int32).at[pred].add(valid, mode="drop")
        return jnp.stack([hits, actual, predicted])


@functools.partial(jax.jit, static_argnames=("model", "tally", "above"))
def _edit_tallies(model, variables, edits: UnitEdit, acts, images, labels, valid, tally, above):
    """``tally(logits, labels, valid)`` of one batch under each of M stacked edits ([M, ...]).
    ``above``: run only the network above the edited layer, from ``acts`` (``images`` are then
    zeros of the right shape, dead code); else rerun it whole from ``images`` with the edit
    where the layer is sown."""

    def one(edit: UnitEdit):
        if above:
            edited = {**variables, LAYER_VALUES: nested({edit.layer: edit.apply_to(acts)})}
        else:
            edited = with_edits(variables, edit)
        return tally(model.apply(edited, images), labels, valid)

    return jax.vmap(one)(edits)


def edit_sweep(model, variables, data: LayerData, masks: np.ndarray, values: np.ndarray, tally, chunk: int = 16,
               batch: int = LAYER_BATCH):  # fmt: skip
    """Each mask's units (float [M, U]) set to ``values`` [U]: ``tally`` (a hashable callable
    ``(logits [B, K], labels [B], valid [B]) -> pytree``) summed over ``data``'s images, as
    float64/int64 arrays [M, ...]. Edits go through the model ``chunk`` at a time (vmapped),
    images ``batch`` at a time, both padded to one compiled shape."""
    masks = np.atleast_2d(np.asarray(masks, np.float32))
    if masks.shape[1] != data.units:
        raise DissectError(f"unit masks of {masks.shape[1]} units for {data.layer} with {data.units} units")
    values = jnp.asarray(np.asarray(values, np.float32))
    chunks = []
    no_images = jnp.zeros((batch, *data.image_shape), jnp.uint8) if data.above else None  # dead code: made once
    for m in range(0, len(masks), chunk):
        part = masks[m : m + chunk]
        if len(part) < chunk:  # pad to keep one compiled shape
            part = np.concatenate([part, np.zeros((chunk - len(part), data.units), np.float32)])
        edits = UnitEdit(data.layer, jnp.asarray(part), jnp.broadcast_to(values, part.shape))
        summed = None
        for i in range(0, len(data.acts), batch):
            acts, labels = data.acts[i : i + batch], data.labels[i : i + batch]
            images = no_images if data.above else data.images[i : i + batch]
            valid = np.ones(batch, bool)
            if len(acts) < batch:
                pad = batch - len(acts)
                valid[len(acts) :] = False
                acts = np.concatenate([acts, np.zeros((pad, *acts.shape[1:]), acts.dtype)])
                labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
                if not data.above:
                    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            t = _edit_tallies(model, variables, edits, jnp.asarray(acts), jnp.asarray(images), jnp.asarray(labels),
                              jnp.asarray(valid), tally, data.above)  # fmt: skip
            t = jax.tree.map(_widened, t)
            summed = t if summed is None else jax.tree.map(np.add, summed, t)
        chunks.append(summed)
    return jax.tree.map(lambda *parts: np.concatenate(parts)[: len(masks)], *chunks)


def _widened(x) -> np.ndarray:
    """A device tally as float64 or int64, so sums over many batches stay exact."""
    return np.asarray(x, np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64)


def class_counts(model, variables, data: LayerData, masks: np.ndarray, mode: str = "zero", chunk: int = 16,
                 batch: int = LAYER_BATCH) -> ClassCounts:  # fmt: skip
    """Per-class counts [M, K] with each mask's units (float [M, U]) set to zero or their mean."""
    counts = edit_sweep(model, variables, data, masks, ablation_values(data, mode), PerClass(data.num_classes), chunk,
                        batch)  # fmt: skip
    return ClassCounts(counts[:, 0], counts[:, 1], counts[:, 2])


def ablation_values(data: LayerData, mode: str) -> np.ndarray:
    """float32 [U]: what an ablated unit outputs: zero, or its mean over ``data``."""
    if mode not in ABLATION_MODES:
        raise DissectError(f"ablation mode must be one of {', '.join(ABLATION_MODES)}, got {mode!r}")
    return np.zeros(data.units, np.float32) if mode == "zero" else data.means


def single_unit_damage(model, variables, data: LayerData, mode: str = "zero", chunk: int = 16,
                       batch: int = LAYER_BATCH) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(baseline balanced accuracy [K], damage [U, K]: its drop when each unit alone is ablated)."""
    masks = np.concatenate([np.zeros((1, data.units), np.float32), np.eye(data.units, dtype=np.float32)])
    ba = class_counts(model, variables, data, masks, mode, chunk=chunk, batch=batch).balanced_accuracy()
    return ba[0], ba[0][None] - ba[1:]


def ranked_units(damage: np.ndarray, cls: int) -> np.ndarray:
    """Units ordered by how much their single ablation hurts class ``cls`` (most first)."""
    return np.argsort(-damage[:, cls], kind="stable")
