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
from collections.abc import Mapping, Sequence

from dissectjax.errors import DissectError


@dataclasses.dataclass(frozen=True)
class Slice:
    """The unit axis ``axis`` of the array at ``collection/path`` of a variable tree.

    ``positions > 1``: the axis holds ``positions x units`` entries, position-major with the
    unit fastest, as a dense layer reads a flattened ``[h, w, U]`` map (LeNet's ``F5``,
    AlexNet's ``fc6``); unit u is entries ``u, U + u, 2U + u, ...``.
    """

    collection: str
    path: tuple[str | int, ...]
    axis: int
    positions: int = 1


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
    transplant_refused: why the units cannot be moved to another instance, if they cannot
      (a residual stream's channel is written by every block of its stage, not by one
      unit's parameters); edits where the layer is sown still apply.
    fold_refused: why zeroing ``outgoing`` is not the same as zeroing the units, if it is not
      (a parameter-free reader such as an identity shortcut also reads them).
    internal: parameters that read the units' channels inside the computation that writes
      them (a residual stage's later blocks read the stream its earlier blocks wrote). They
      are not readers of the layer's output (folding leaves them), but a permutation of the
      units permutes them too.
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
    transplant_refused: str | None = None
    fold_refused: str | None = None
    internal: tuple[Slice, ...] = ()


@dataclasses.dataclass(frozen=True)
class ChainLayer:
    """One layer of a plain chain (each layer's units read only by the next layer's kernel).

    module: path of its convolution or dense module (``kernel`` [..., in, out], optional
    ``bias`` [out]); norm: path of the BatchNorm after it, if any (scale, bias, mean, var);
    reads_positions: how many spatial positions its kernel reads per unit of the layer
    below (a dense layer after a flatten of [h, w, U]: ``h * w``; else 1).
    """

    name: str
    module: tuple[str | int, ...]
    units: int
    bias: bool = True
    norm: tuple[str | int, ...] | None = None
    reads_positions: int = 1


def norm_slices(norm: tuple[str | int, ...]) -> list[Slice]:
    """A BatchNorm's per-unit parameters and statistics at module path ``norm``."""
    return [Slice("params", (*norm, "scale"), 0), Slice("params", (*norm, "bias"), 0),
            Slice("batch_stats", (*norm, "mean"), 0), Slice("batch_stats", (*norm, "var"), 0)]  # fmt: skip


def chain_wiring(chain: Sequence[ChainLayer], classifier: tuple[str | int, ...], layer: str, model: str,
                 classifier_positions: int = 1) -> Wiring:  # fmt: skip
    """The wiring of ``layer`` in a plain chain of ``chain`` layers ending in a ``classifier``
    dense module (read after pooling to ``classifier_positions`` positions, usually 1)."""
    names = [c.name for c in chain]
    if layer not in names:
        raise DissectError(f"unknown layer {layer!r} for surgery on {model}; available layers: {', '.join(names)}")
    i = names.index(layer)
    here = chain[i]
    kernel = (*here.module, "kernel")
    incoming = [Slice("params", kernel, -1)]
    if here.bias:
        incoming.append(Slice("params", (*here.module, "bias"), 0))
    if here.norm is not None:
        incoming += norm_slices(here.norm)
    last = i == len(chain) - 1
    reader = classifier if last else chain[i + 1].module
    positions = classifier_positions if last else chain[i + 1].reads_positions
    return Wiring(
        layer=layer,
        units=here.units,
        incoming=tuple(incoming),
        inputs=None if i == 0 else Slice("params", kernel, -2, here.reads_positions),
        outgoing=(Slice("params", (*reader, "kernel"), -2, positions),),
        outgoing_outputs=None if last else (Slice("params", (*reader, "kernel"), -1),),
        previous=None if i == 0 else names[i - 1],
        next=None if last else names[i + 1],
    )


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


def unit_axis(x, where: Slice):
    """(``x`` with the slice's axis split into [positions, units] where positions > 1, the units' axis).

    >>> import numpy as np
    >>> view, axis = unit_axis(np.arange(6).reshape(6, 1), Slice("params", ("fc",), 0, positions=3))
    >>> view.shape, axis
    ((3, 2, 1), 1)
    """
    axis = where.axis % x.ndim
    if where.positions == 1:
        return x, axis
    if x.shape[axis] % where.positions:
        raise DissectError(f"{'/'.join(map(str, where.path))} axis {axis} has {x.shape[axis]} entries, not a "
                           f"multiple of {where.positions} positions")  # fmt: skip
    shape = (*x.shape[:axis], where.positions, x.shape[axis] // where.positions, *x.shape[axis + 1 :])
    return x.reshape(shape), axis + 1


def from_unit_axis(view, where: Slice, shape: tuple[int, ...]):
    """The inverse of :func:`unit_axis`: ``view`` back in the array's own ``shape``."""
    return view if where.positions == 1 else view.reshape(shape)
