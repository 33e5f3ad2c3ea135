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
from dissectjax.models.wiring import read_slice, replace_slice, unit_wiring


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
) -> dict:
    """Copies ``units`` of ``source`` (instance A) into ``slots`` of ``target`` (B); returns B's new variables.

    ``input_matching``: int [U_prev], B's slot of each of A's units in the layer below
    (from :func:`dissectjax.edit.matching.match`), reorders A's filter inputs to B's. With
    ``outgoing``, also the weights that read the units, their outputs reordered by
    ``output_matching`` (B's slot of each of A's units in the layer above; not needed when
    the readers are the classes). Every untouched array is shared with ``target``.
    """
    w = unit_wiring(model, layer)
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
            a = _from_matching(a, input_matching, w.inputs.axis)
        out = replace_slice(out, s, _put(read_slice(out, s), a, units, slots, s.axis))
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
                a = _from_matching(a, output_matching, w.outgoing_outputs[0].axis)
            out = replace_slice(out, s, _put(read_slice(out, s), a, units, slots, s.axis))
    return out


def _from_matching(a: jax.Array, matching: np.ndarray, axis: int) -> jax.Array:
    """Reorders A's channel axis into B's order: B's channel matching[i] gets A's channel i."""
    matching = np.asarray(matching)
    if matching.shape != (a.shape[axis],) or sorted(matching.tolist()) != list(range(a.shape[axis])):
        raise DissectError(f"a matching must be a permutation of {a.shape[axis]} channels")
    return jnp.take(a, np.argsort(matching), axis=axis)


def _put(b: jax.Array, a: jax.Array, units: np.ndarray, slots: np.ndarray, axis: int) -> jax.Array:
    axis = axis % b.ndim
    index = [slice(None)] * b.ndim
    index[axis] = slots
    source = [slice(None)] * a.ndim
    source[axis] = units
    return jnp.asarray(b).at[tuple(index)].set(jnp.asarray(a)[tuple(source)])
