"""Transplant: copy units of instance A into slots of instance B, as a pure edit of B's variables.

Which arrays move is the model's wiring (``model.unit_wiring(layer)``, :mod:`dissectjax.models.wiring`):
each unit's incoming filter, bias and normalization parameters and statistics, and
optionally the weights that read it. Independently trained instances order units
arbitrarily, so A's filter inputs are reordered to B's by a matching of the layer below
(:mod:`dissectjax.edit.matching`), and the outgoing weights' outputs by one of the layer above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.edit.unit_edit import check_units
from dissectjax.errors import DissectError
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.wiring import Slice, from_unit_axis, read_slice, replace_slice, unit_axis


def transplant(
    model,
    source: Mapping,
    target: Mapping,
    layer: str,
    units: Sequence[int],
    slots: Sequence[int],
    input_matching: np.ndarray | None = None,
    outgoing: bool = False,
    output_matching: np.ndarray | None = None,
    example=None,
) -> dict:
    """Copies ``units`` of ``source`` (instance A) into ``slots`` of ``target`` (B); returns B's new variables.

    ``input_matching``: int [U_prev], B's slot of each of A's units in the layer below
    (from :func:`dissectjax.edit.matching.match`), reorders A's filter inputs to B's. With
    ``outgoing``, also the weights that read the units, their outputs reordered by
    ``output_matching`` (B's slot of each of A's units in the layer above; not needed when
    the readers are the classes). Every untouched array is shared with ``target``.
    ``example``: a batch to trace the wiring from, for a model that declares none.
    """
    w = unit_wiring(model, layer, target, example)
    if w.transplant_refused:
        raise DissectError(f"cannot transplant units of {layer}: {w.transplant_refused}")
    units, slots = check_units(units, w.units, layer), check_units(slots, w.units, layer)
    if len(units) != len(slots):
        raise DissectError(f"{len(units)} units but {len(slots)} slots: give one slot per transplanted unit")
    if len(set(slots.tolist())) != len(slots):
        raise DissectError("each slot may receive only one unit")
    for s in w.incoming + w.outgoing:
        a, b = read_slice(source, s), read_slice(target, s)
        if a.shape != b.shape:
            raise DissectError(f"{'/'.join(map(str, s.path))} is {a.shape} in the source but {b.shape} in the target")
    out = target
    for s in w.incoming:
        a = read_slice(source, s)
        if w.inputs is not None and input_matching is not None and s.path == w.inputs.path:
            a = _from_matching(a, input_matching, w.inputs)
        out = replace_slice(out, s, _put(read_slice(out, s), a, units, slots, s))
    if outgoing:
        if w.outgoing_refused:
            raise DissectError(w.outgoing_refused)
        for s in w.outgoing:
            a = read_slice(source, s)
            if w.outgoing_outputs is not None:
                if output_matching is None:
                    raise DissectError(
                        f"outgoing weights of {layer} feed {w.next}: give its matching (output_matching)"
                    )
                a = _from_matching(a, output_matching, w.outgoing_outputs[0])
            out = replace_slice(out, s, _put(read_slice(out, s), a, units, slots, s))
    return out


def _from_matching(a: jax.Array, matching: np.ndarray, where: Slice) -> jax.Array:
    """Reorders A's channels along ``where``'s axis into B's order: B's channel matching[i] gets A's channel i."""
    matching = np.asarray(matching)
    view, axis = unit_axis(jnp.asarray(a), where)
    if matching.shape != (view.shape[axis],) or sorted(matching.tolist()) != list(range(view.shape[axis])):
        raise DissectError(f"a matching must be a permutation of {view.shape[axis]} channels")
    return from_unit_axis(jnp.take(view, np.argsort(matching), axis=axis), where, a.shape)


def _put(b: jax.Array, a: jax.Array, units: np.ndarray, slots: np.ndarray, where: Slice) -> jax.Array:
    """``b`` with its units ``slots`` along ``where`` replaced by ``a``'s units ``units``."""
    view_b, axis = unit_axis(jnp.asarray(b), where)
    view_a, _ = unit_axis(jnp.asarray(a), where)
    index = [slice(None)] * view_b.ndim
    index[axis] = slots
    source = [slice(None)] * view_a.ndim
    source[axis] = units
    return from_unit_axis(view_b.at[tuple(index)].set(view_a[tuple(source)]), where, b.shape)
