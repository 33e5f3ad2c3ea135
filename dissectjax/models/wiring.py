"""Where a layer's units live in a model's variables: what a model declares for surgery.

A model that supports weight surgery answers ``model.unit_wiring(layer) -> Wiring``: the
slices of its variable tree that hold each unit's own parameters (``incoming``) and the
parameters that read the unit (``outgoing``). Edits (:mod:`dissectjax.edit`) read only
this description, never a model's class or module names.

>>> tree = {"params": {"conv": {"kernel": [[1.0, 2.0]]}}}
>>> read_slice(tree, Slice("params", ("conv", "kernel"), -1))
[[1.0, 2.0]]
>>> replace_slice(tree, Slice("params", ("conv", "kernel"), -1), "new")["params"]["conv"]["kernel"]
'new'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from dissectjax.errors import DissectError


@dataclasses.dataclass(frozen=True)
class Slice:
    """The unit axis ``axis`` of the array at ``collection/path`` of a variable tree."""

    collection: str
    path: tuple[str | int, ...]
    axis: int


@dataclasses.dataclass(frozen=True)
class Wiring:
    """Where a layer's units sit in a model's variables.

    incoming: the units' own parameters and statistics (unit axis).
    inputs: the incoming kernel's input-channel axis (None for the first layer).
    outgoing: parameters that read the units (their input axis).
    outgoing_outputs: those parameters' output axis, indexed by the next layer's units
      (None where the readers are the classes).
    previous, next: the neighbouring dissectable layers (None at the ends).
    outgoing_refused: why the outgoing weights cannot be transplanted, if they cannot (their
      output axis is not the next layer's units, e.g. when that layer is concept-whitened).
    """

    layer: str
    units: int
    incoming: tuple[Slice, ...]
    inputs: Slice | None
    outgoing: tuple[Slice, ...]
    outgoing_outputs: tuple[Slice, ...] | None
    previous: str | None
    next: str | None
    outgoing_refused: str | None = None


def read_slice(variables: Mapping, where: Slice):
    """The array ``where`` points at."""
    node = variables[where.collection]
    for key in where.path:
        node = node[key]
    return node


def replace_slice(variables: Mapping, where: Slice, value) -> dict:
    """A copy of ``variables`` with the array at ``where`` replaced; every other subtree is shared."""

    def rebuild(node, path):
        if not path:
            return value
        out = dict(node)
        out[path[0]] = rebuild(node[path[0]], path[1:])
        return out

    out = dict(variables)
    out[where.collection] = rebuild(variables[where.collection], where.path)
    return out


def unit_wiring(model, layer: str) -> Wiring:
    """``model.unit_wiring(layer)``, or an error saying that the model declares none."""
    if not hasattr(model, "unit_wiring"):
        raise DissectError(
            f"{type(model).__name__} declares no unit wiring (a unit_wiring(layer) method), so its units cannot be "
            "folded into weights or transplanted; edits applied where a layer is sown (dissectjax.edit.with_edits) "
            "work on any model"
        )
    return model.unit_wiring(layer)
