"""What every dissectable model shares: a layer's activation, named, sown and editable.

``sow_layer`` is the one place a model exposes a layer. Besides sowing the activation, it
honours two optional variable collections passed to ``model.apply`` (absent by default,
never created by ``init``, so checkpoints and normal calls are unchanged):

* ``unit_edits``: ``{layer: {"keep": [U], "fill": [U]}}`` replaces the activation x by
  ``x * keep + fill`` per unit (``keep = 0, fill = 0`` ablates a unit to zero);
* ``perturbations``: ``{layer: zeros like x}`` added through linen's ``perturb``, so that
  the gradient of a loss with respect to it is the gradient with respect to the activation.
"""

from __future__ import annotations

import flax.linen as nn
import jax

INTERMEDIATES = "intermediates"
UNIT_EDITS = "unit_edits"
PERTURBATIONS = "perturbations"


def _replace(_previous, new):
    return new


def sow_layer(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
    """Applies any unit edit and perturbation of ``name``, sows the result (the bare array), returns it."""
    if module.has_variable(UNIT_EDITS, name):
        edit = module.get_variable(UNIT_EDITS, name)
        value = value * edit["keep"].astype(value.dtype) + edit["fill"].astype(value.dtype)
    if module.has_variable(PERTURBATIONS, name):
        value = module.perturb(name, value, collection=PERTURBATIONS)
    module.sow(INTERMEDIATES, name, value, reduce_fn=_replace, init_fn=lambda: None)
    return value
