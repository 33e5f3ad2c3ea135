"""Measuring what a network loses when units are edited, per class.

The layer's activations are computed once per image (:class:`LayerData`). Every
intervention is a :class:`~dissectjax.edit.UnitEdit` applied to those stored activations,
after which a model that can resume its forward pass above a sown layer (SceneNet's
``from_layer``) runs only the layers above it; any other sown model reruns whole, with
the edit applied where the layer is sown (:func:`~dissectjax.edit.with_edits`). Either way
the logits are those of the edited network (tested against folding the edit into the
weights). Many edits are vmapped per compiled call.
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
from dissectjax.models.layers import sown_layer_names

ABLATION_MODES = ("zero", "mean")
LAYER_BATCH = 250  # images per forward pass when a layer's activations are stored


@dataclasses.dataclass
class LayerData:
    """A layer's activations [N, h, w, U] on N labelled images (uint8 [N, H, W, C]), and the labels [N]."""

    layer: str
    acts: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def means(self) -> np.ndarray:
        """float32 [U]: each unit's mean activation over images and positions."""
        return self.acts.mean(axis=(0, 1, 2)).astype(np.float32)

    @property
    def units(self) -> int:
        return int(self.acts.shape[-1])


def layer_data(model: nn.Module, variables, layer: str, images: np.ndarray, labels: np.ndarray,
               batch: int = LAYER_BATCH) -> LayerData:  # fmt: skip
    """Runs the model once over ``images`` and keeps ``layer``'s activations (a sown layer: where edits apply)."""
    sown = sown_layer_names(model, variables, jnp.asarray(images[:1]))
    if layer not in sown:
        raise DissectError(f"unknown layer {layer!r} for ablation in {type(model).__name__}; its sown layers: "
                           f"{', '.join(sown)}")  # fmt: skip
    acts = layer_maps(model, variables, [layer], images, batch)[layer]
    return LayerData(layer, acts, np.asarray(images), np.asarray(labels), int(model.num_classes))


def balanced_accuracy(confusion: np.ndarray) -> np.ndarray:
    """[..., K, K] counts (true class, predicted class) -> [..., K]: (recall + specificity) / 2.

    NaN for a class that has no examples (or is the only class): it was not measured.

    >>> balanced_accuracy(np.array([[3, 1], [0, 4]])).tolist()
    [0.875, 0.875]
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


def resumes_above(model: nn.Module, layer: str) -> bool:
    """Whether ``model`` can run only the layers above ``layer`` (``from_layer``)."""
    return layer in getattr(model, "layer_names", ())


@functools.partial(jax.jit, static_argnames=("model", "num_classes", "from_layer"))
def _confusions(model, variables, edits: UnitEdit, acts, images, labels, num_classes, from_layer):
    """[M, K, K] confusion counts of the network under each of M stacked edits."""

    def one(edit: UnitEdit):
        if from_layer:
            logits = model.apply(variables, edit.apply_to(acts), from_layer=edit.layer)
        else:
            logits = model.apply(with_edits(variables, edit), images)
        pred = jnp.argmax(logits, axis=-1)
        return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, pred].add(1, mode="drop")

    return jax.vmap(one)(edits)


def confusions(model, variables, data: LayerData, masks: np.ndarray, mode: str = "zero", chunk: int = 16,
               batch: int = LAYER_BATCH) -> np.ndarray:  # fmt: skip
    """int [M, K, K]: confusion matrices with each mask's units (float [M, U]) set to zero or their mean."""
    if mode not in ABLATION_MODES:
        raise DissectError(f"ablation mode must be one of {', '.join(ABLATION_MODES)}, got {mode!r}")
    masks = np.atleast_2d(np.asarray(masks, np.float32))
    if masks.shape[1] != data.units:
        raise DissectError(f"unit masks of {masks.shape[1]} units for {data.layer} with {data.units} units")
    values = np.zeros(data.units, np.float32) if mode == "zero" else data.means
    from_layer = resumes_above(model, data.layer)
    out = np.zeros((len(masks), data.num_classes, data.num_classes), np.int64)
    for m in range(0, len(masks), chunk):
        part = masks[m : m + chunk]
        if len(part) < chunk:  # pad to keep one compiled shape
            part = np.concatenate([part, np.zeros((chunk - len(part), data.units), np.float32)])
        edits = UnitEdit(data.layer, jnp.asarray(part), jnp.broadcast_to(jnp.asarray(values), part.shape))
        for i in range(0, len(data.acts), batch):
            acts, images, labels = data.acts[i : i + batch], data.images[i : i + batch], data.labels[i : i + batch]
            if len(acts) < batch:
                pad = batch - len(acts)
                acts = np.concatenate([acts, np.zeros((pad, *acts.shape[1:]), acts.dtype)])
                images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
                labels = np.concatenate([labels, np.full(pad, data.num_classes, labels.dtype)])  # dropped
            c = _confusions(model, variables, edits, jnp.asarray(acts) if from_layer else None,
                            None if from_layer else jnp.asarray(images), jnp.asarray(labels), data.num_classes,
                            from_layer)  # fmt: skip
            out[m : m + chunk] += np.asarray(c)[: len(masks) - m]
    return out


def single_unit_damage(model, variables, data: LayerData, mode: str = "zero") -> tuple[np.ndarray, np.ndarray]:
    """(baseline balanced accuracy [K], damage [U, K]: its drop when each unit alone is ablated)."""
    masks = np.concatenate([np.zeros((1, data.units), np.float32), np.eye(data.units, dtype=np.float32)])
    ba = balanced_accuracy(confusions(model, variables, data, masks, mode))
    return ba[0], ba[0][None] - ba[1:]


def ranked_units(damage: np.ndarray, cls: int) -> np.ndarray:
    """Units ordered by how much their single ablation hurts class ``cls`` (most first)."""
    return np.argsort(-damage[:, cls], kind="stable")
