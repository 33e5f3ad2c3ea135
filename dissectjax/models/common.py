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

INTERMEDIATES = "intermediates"
UNIT_EDITS = "unit_edits"
PERTURBATIONS = "perturbations"
LAYER_VALUES = "layer_values"


def nested(entries: dict[str, object]) -> dict:
    """``{"a/b": x, "c": y}`` -> ``{"a": {"b": x}, "c": y}``: a collection keyed by layer path.

    >>> nested({"layer4_1/conv1": 1, "conv5": 2})
    {'layer4_1': {'conv1': 1}, 'conv5': 2}
    """
    out: dict = {}
    for name, value in entries.items():
        *parents, leaf = name.split("/")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


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
    if module.has_variable(LAYER_VALUES, name):
        value = jnp.reshape(module.get_variable(LAYER_VALUES, name), value.shape).astype(value.dtype)
    if module.has_variable(UNIT_EDITS, name):
        edit = module.get_variable(UNIT_EDITS, name)
        value = edit_units(value, edit["mask"], edit["value"])
    if module.has_variable(PERTURBATIONS, name):
        value = module.perturb(name, value, collection=PERTURBATIONS)
    sow_value(module, name, value)
    return value


def sow_value(module: nn.Module, name: str, value: jax.Array) -> None:
    """Sows ``value`` as ``name`` in ``intermediates``: the bare array, replacing any earlier one."""
    module.sow(INTERMEDIATES, name, value, reduce_fn=_replace, init_fn=lambda: None)
