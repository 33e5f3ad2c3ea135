"""The one unit edit: which units of a layer, replaced by what.

    UnitEdit(layer, mask [U], value [U])
        -> with_edits(variables, edit)   applied where the layer is sown (any sown model)
        -> fold(model, variables, edit)  folded into the weights that read the units
                                         (models that declare their wiring; zero values)
        -> edit.apply_to(acts)           applied to stored activations of the layer

All three compute :func:`dissectjax.models.common.edit_units`: unit u becomes ``value[u]``
wherever ``mask[u] > 0``. An edit is a pytree (the layer name is static), so a jitted
function that takes one compiles once per layer and shape, whichever units it names.

>>> import numpy as np
>>> edit = UnitEdit.zero("conv5", [1, 3], num_units=4)
>>> edit.units.tolist()
[1, 3]
>>> np.asarray(edit.apply_to(np.ones((1, 4), np.float32))).tolist()
[[1.0, 0.0, 1.0, 0.0]]
>>> sorted(with_edits({"params": {}}, edit)["unit_edits"])
['conv5']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dissectjax.errors import DissectError
from dissectjax.models.common import UNIT_EDITS, edit_entries, edit_units, nested
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.wiring import from_unit_axis, read_slice, replace_slice, unit_axis


def check_units(units: Sequence[int], num_units: int, layer: str) -> np.ndarray:
    """int64 [k]: ``units`` as an array, each checked to lie in ``0 .. num_units - 1``."""
    units = np.atleast_1d(np.asarray(units))
    if units.size and not np.issubdtype(units.dtype, np.integer):
        raise DissectError(f"units of {layer} must be integers, got {units.tolist()}")
    if units.size and (units.min() < 0 or units.max() >= num_units):
        bad = units[(units < 0) | (units >= num_units)][0]
        raise DissectError(f"unit {int(bad)} is out of range for layer {layer} ({num_units} units: 0..{num_units - 1})")
    return units.astype(np.int64)


@struct.dataclass
class UnitEdit:
    """Units of one layer set to values: unit u becomes ``value[u]`` where ``mask[u] > 0``.

    layer: the sown layer's name (static); mask: float32 [U], 1 for edited units;
    value: float32 [U], what each edited unit outputs (0 ablates; a unit's dataset mean
    is mean ablation).
    """

    layer: str = struct.field(pytree_node=False)
    mask: jax.Array
    value: jax.Array

    @classmethod
    def to_values(cls, layer: str, units: Sequence[int], values) -> UnitEdit:
        """``units`` of ``layer`` set to their entries of ``values`` float [U]."""
        values = np.asarray(values, np.float32)
        if values.ndim != 1:
            raise DissectError(f"values for {layer} must have one entry per unit, got shape {values.shape}")
        mask = np.zeros(len(values), np.float32)
        mask[check_units(units, len(values), layer)] = 1.0
        return cls(layer, mask, values)

    @classmethod
    def constant(cls, layer: str, units: Sequence[int], num_units: int, value: float) -> UnitEdit:
        """``units`` of ``layer`` set to one ``value``."""
        return cls.to_values(layer, units, np.full(num_units, value, np.float32))

    @classmethod
    def zero(cls, layer: str, units: Sequence[int], num_units: int) -> UnitEdit:
        """``units`` of ``layer`` ablated to zero."""
        return cls.constant(layer, units, num_units, 0.0)

    @classmethod
    def from_mask(cls, layer: str, mask, values=None) -> UnitEdit:
        """An edit from a mask float [U] (traced or concrete); ``values`` default to zero."""
        mask = jnp.asarray(mask, jnp.float32)
        if mask.ndim != 1:
            raise DissectError(f"a unit mask for {layer} has shape {mask.shape}; expected [units]")
        values = jnp.zeros_like(mask) if values is None else jnp.asarray(values, jnp.float32)
        if values.shape != mask.shape:
            raise DissectError(f"values of shape {values.shape} for a mask of shape {mask.shape} ({layer})")
        return cls(layer, mask, values)

    @property
    def num_units(self) -> int:
        return int(np.shape(self.mask)[0])

    @property
    def units(self) -> np.ndarray:
        """int64 [k]: the edited units (concrete edits only)."""
        return np.flatnonzero(np.asarray(self.mask) > 0)

    def apply_to(self, acts: jax.Array) -> jax.Array:
        """The layer's activations [..., U] with the edit applied."""
        if acts.shape[-1] != self.num_units:
            raise DissectError(f"an edit of {self.num_units} units applied to {self.layer} with {acts.shape[-1]}")
        return edit_units(acts, self.mask, self.value)


def with_edits(variables: Mapping, *edits: UnitEdit) -> dict:
    """``variables`` plus the ``unit_edits`` collection that applies ``edits`` where their layers
    are sown (:func:`dissectjax.models.common.sow_layer`); pass the result to ``model.apply``.
    A layer sown in a submodule (``layer4_1/conv1``) is edited there."""
    flat = edit_entries(variables.get(UNIT_EDITS, {}))
    for edit in edits:
        if edit.layer in flat:
            raise DissectError(f"two edits of layer {edit.layer}: combine them into one")
        flat[edit.layer] = {"mask": edit.mask, "value": edit.value}
    return {**variables, UNIT_EDITS: nested(flat)}


def fold(model, variables: Mapping, edit: UnitEdit, example=None) -> dict:
    """Variables in which the edited units are removed from the weights that read them.

    Exact for zero values, also when the next layer is normalized (its statistics see a
    zero input channel); a nonzero value is not a weight edit in general (a convolution's
    padding sees zeros at the border), so it is refused. Needs the model's wiring
    (``model.unit_wiring``), or an ``example`` batch to trace it from; the mask may be
    traced, so one compiled program serves any units.
    """
    w = unit_wiring(model, edit.layer, variables, example)
    if w.fold_refused:
        raise DissectError(f"{edit.layer}: {w.fold_refused}; apply the edit where the layer is sown "
                           "(dissectjax.edit.with_edits) instead")  # fmt: skip
    if np.shape(edit.mask) != (w.units,):
        raise DissectError(f"an edit of {np.shape(edit.mask)[0]} units for layer {edit.layer} with {w.units} units")
    if not isinstance(edit.value, jax.core.Tracer) and np.any(np.asarray(edit.value)[np.asarray(edit.mask) > 0]):
        raise DissectError(
            f"only zero edits fold into weights exactly; apply this edit of {edit.layer} where the layer is sown "
            "(dissectjax.edit.with_edits) instead"
        )
    keep = 1.0 - edit.mask
    out = variables
    for s in w.outgoing:
        x = read_slice(out, s)
        view, axis = unit_axis(x, s)
        shape = [1] * view.ndim
        shape[axis] = -1
        out = replace_slice(out, s, from_unit_axis(view * keep.reshape(shape).astype(x.dtype), s, x.shape))
    return out
