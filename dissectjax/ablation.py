"""Measuring what a network loses when units are removed, per class.

The layer's activations are computed once per image; every intervention then reruns only
the layers above it (``model.apply(..., from_layer=layer)``), vmapped over many unit
masks per compiled call. Zeroing a unit's activation this way gives exactly the logits of
:func:`dissectjax.surgery.zero_out` (tested).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.models.layers import activation_fn
from dissectjax.surgery import wiring


@dataclasses.dataclass
class LayerData:
    """A layer's activations [N, h, w, U] on N labelled images, and the labels [N]."""

    layer: str
    acts: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def means(self) -> np.ndarray:
        """float32 [U]: each unit's mean activation over images and positions."""
        return self.acts.mean(axis=(0, 1, 2)).astype(np.float32)


def layer_data(model: nn.Module, variables, layer: str, images: np.ndarray, labels: np.ndarray, batch: int = 250):
    """Runs the model once over ``images`` and keeps ``layer``'s activations."""
    wiring(model, layer)  # validates the layer
    fn = jax.jit(activation_fn(model, variables, [layer], jnp.asarray(images[:1])))
    acts = np.concatenate([np.asarray(fn(jnp.asarray(images[i : i + batch]))[layer]) for i in
                           range(0, len(images), batch)])  # fmt: skip
    return LayerData(layer, acts, np.asarray(labels), int(model.num_classes))


def balanced_accuracy(confusion: np.ndarray) -> np.ndarray:
    """[..., K, K] counts (true class, predicted class) -> [..., K]: (recall + specificity) / 2.

    NaN for a class that has no examples (or is the only class): it was not measured.
    """
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum(axis=(-2, -1))[..., None]
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    actual = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    recall = np.where(actual > 0, hits / np.maximum(actual, 1), np.nan)
    negatives = total - actual
    specificity = np.where(negatives > 0, (negatives - (predicted - hits)) / np.maximum(negatives, 1), np.nan)
    return (recall + specificity) / 2


@functools.partial(jax.jit, static_argnames=("model", "layer", "num_classes"))
def _confusions(model, variables, layer, acts, labels, masks, values, num_classes):
    """[M, K, K] confusion counts with the masked units set to ``values`` (one mask per row)."""

    def one(mask):
        x = jnp.where(mask > 0, values, acts)
        pred = jnp.argmax(model.apply(variables, x, from_layer=layer), axis=-1)
        return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, pred].add(1, mode="drop")

    return jax.vmap(one)(masks)


def confusions(model, variables, data: LayerData, masks: np.ndarray, mode: str = "zero", chunk: int = 16,
               batch: int = 250) -> np.ndarray:  # fmt: skip
    """int [M, K, K]: confusion matrices with each mask's units ablated (``zero`` or ``mean``)."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    masks = np.atleast_2d(np.asarray(masks, np.float32))
    values = np.zeros(masks.shape[1], np.float32) if mode == "zero" else data.means
    out = np.zeros((len(masks), data.num_classes, data.num_classes), np.int64)
    for m in range(0, len(masks), chunk):
        part = masks[m : m + chunk]
        if len(part) < chunk:  # pad to keep one compiled shape
            part = np.concatenate([part, np.zeros((chunk - len(part), masks.shape[1]), np.float32)])
        for i in range(0, len(data.acts), batch):
            acts, labels = data.acts[i : i + batch], data.labels[i : i + batch]
            if len(acts) < batch:
                pad = batch - len(acts)
                acts = np.concatenate([acts, np.zeros((pad, *acts.shape[1:]), acts.dtype)])
                labels = np.concatenate([labels, np.full(pad, data.num_classes, labels.dtype)])  # dropped
            c = _confusions(model, variables, data.layer, jnp.asarray(acts), jnp.asarray(labels), jnp.asarray(part),
                            jnp.asarray(values), data.num_classes)  # fmt: skip
            out[m : m + chunk] += np.asarray(c)[: len(masks) - m]
    return out


def single_unit_damage(model, variables, data: LayerData, mode: str = "zero") -> tuple[np.ndarray, np.ndarray]:
    """(baseline balanced accuracy [K], damage [U, K]: its drop when each unit alone is ablated)."""
    units = data.acts.shape[-1]
    masks = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
    ba = balanced_accuracy(confusions(model, variables, data, masks, mode))
    return ba[0], ba[0][None] - ba[1:]


def ranked_units(damage: np.ndarray, cls: int) -> np.ndarray:
    """Units ordered by how much their single ablation hurts class ``cls`` (most first)."""
    return np.argsort(-damage[:, cls], kind="stable")
