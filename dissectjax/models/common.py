"""What every dissectable model shares: a layer's activation, named, sown and editable.

``sow_layer`` is the one place a model exposes a layer. Besides sowing the activation, it
honours two optional variable collections passed to ``model.apply`` (absent by default,
never created by ``init``, so checkpoints and normal calls are unchanged):

* ``unit_edits``: ``{layer: {"mask": [U], "value": [U]}}`` replaces unit u's activation
  by ``value[u]`` wherever ``mask[u] > 0`` (:func:`edit_units`; built by
  :class:`dissectjax.edit.UnitEdit`, the one way the package edits units);
* ``perturbations``: ``{layer: zeros like x}`` added through linen's ``perturb``, so that
  the gradient of a loss with respect to it is the gradient with respect to the activation;
* ``layer_values``: ``{layer: [B, h, w, U]}`` (dense layers also [B, 1, 1, U]) replaces
  the layer's activation outright, so that only the network above it matters: under
  ``jit`` XLA drops the layers below as dead code (how an edit of stored activations is
  measured on any sown model).

A layer sown inside a submodule is named by its path (``layer4_1/conv1``); its entries in
these collections nest the same way (:func:`nested`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

INTERMEDIATES = "intermediates"
UNIT_EDITS = "unit_edits"
PERTURBATIONS = "perturbations"
LAYER_VALUES = "layer_values"


EDIT_COLLECTIONS = (UNIT_EDITS, PERTURBATIONS, LAYER_VALUES)  # what sow_layer reads; never stored


def hashable_kwargs(kwargs: dict) -> dict:
    """Model arguments with JSON's lists as tuples: modules are hashable (static arguments of
    jitted functions).

    >>> hashable_kwargs({"widths": [4, 8], "num_classes": 3})
    {'widths': (4, 8), 'num_classes': 3}
    """
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def nested(entries: dict[str, object]) -> dict:
    """``{"a/b": x, "c": y}`` -> ``{"a": {"b": x}, "c": y}``: a collection keyed by layer path.

    >>> nested({"layer4_1/conv1": 1, "conv5": 2})
    {'layer4_1': {'conv1': 1}, 'conv5': 2}
    """
    return traverse_util.unflatten_dict(entries, sep="/")


def edit_entries(collection) -> dict[str, dict]:
    """A ``unit_edits`` collection -> ``{layer path: {"mask", "value"}}``.

    >>> edit_entries({"layer4_1": {"relu1": {"mask": 1, "value": 0}}})
    {'layer4_1/relu1': {'mask': 1, 'value': 0}}
    """
    flat = traverse_util.flatten_dict(dict(collection), sep="/", is_leaf=lambda _, node: "mask" in node)
    return {layer: dict(entry) for layer, entry in flat.items()}


def edited_value(value: jax.Array, replacement: jax.Array | None = None, edit: dict | None = None) -> jax.Array:
    """A sown layer's value after its ``layer_values`` entry (``replacement``, reshaped to it)
    and its ``unit_edits`` entry (``{"mask", "value"}``), where given: the one rule every
    sow function applies (:func:`sow_layer`, :func:`dissectjax.models.nnx_bridge.sow_layer`)."""
    if replacement is not None:
        value = jnp.reshape(replacement, value.shape).astype(value.dtype)
    if edit is not None:
        value = edit_units(value, edit["mask"], edit["value"])
    return value


def _replace(_previous, new):
    return new


def edit_units(x: jax.Array, mask: jax.Array, value: jax.Array) -> jax.Array:
    """[..., U] activations with unit u replaced by ``value[u]`` where ``mask[u] > 0``.

    >>> import jax.numpy as jnp
    >>> edit_units(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([0.0, 1.0, 0.0]), jnp.array([0.0, -5.0, 0.0]))
    Array([[ 1., -5.,  3.]], dtype=float32)
    """
    return jnp.where(mask > 0, value.astype(x.dtype), x)


def sow_layer(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
    """Applies any replacement, unit edit and perturbation of ``name``, sows the result (the bare
    array), returns it."""
    value = edited_value(value, module.get_variable(LAYER_VALUES, name), module.get_variable(UNIT_EDITS, name))
    if module.has_variable(PERTURBATIONS, name):
        value = module.perturb(name, value, collection=PERTURBATIONS)
    sow_value(module, name, value)
    return value


def sow_value(module: nn.Module, name: str, value: jax.Array) -> None:
    """Sows ``value`` as ``name`` in ``intermediates``: the bare array, replacing any earlier one."""
    module.sow(INTERMEDIATES, name, value, reduce_fn=_replace, init_fn=lambda: None)
