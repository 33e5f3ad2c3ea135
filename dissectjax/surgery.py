"""Surgery on units: ablation and transplant as pure edits of variable pytrees.

A layer's units live in slices of the parameter tree (:class:`Wiring`): their own filter,
bias and normalization (``incoming``), and the weights of the layers that read them
(``outgoing``). Every edit returns new variables that share every untouched array with the
input: the original pytrees are never changed.

* :func:`zero_out` removes units exactly by zeroing the weights that read them (exact
  also when the next layer is normalized: its statistics see a zero input channel);
  the unit mask is an array, so one compiled function serves any set of units.
* :func:`replace_activations` sets units' activations to given values (e.g. their dataset
  means) by intercepting the module that produces them (``nn.intercept_methods``).
* :func:`transplant` copies units from instance A into slots of instance B, with B's
  input channels permuted by a matching of the layer below (:mod:`dissectjax.matching`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.models.scenenet import SceneNet


@dataclasses.dataclass(frozen=True)
class Slice:
    """The unit axis ``axis`` of the array at ``collection/path``."""

    collection: str
    path: tuple[str, ...]
    axis: int


@dataclasses.dataclass(frozen=True)
class Wiring:
    """Where a layer's units sit in a model's variables.

    incoming: the units' own parameters and statistics (unit axis).
    inputs: the incoming kernel's input-channel axis (None for the first layer).
    outgoing: parameters that read the units (their input axis).
    outgoing_outputs: those parameters' output axis, indexed by the next layer's units
      (None where the readers are the classes).
    producer: the submodule whose output is the units' pre-activation.
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
    producer: str
    previous: str | None
    next: str | None
    outgoing_refused: str | None = None


def wiring(model: nn.Module, layer: str) -> Wiring:
    """The wiring of ``layer`` in ``model``: SceneNet's conv1-conv5, or what a model that has a
    ``unit_wiring(layer)`` method (e.g. an NNX module, :mod:`dissectjax.nnx_tools`) says."""
    if hasattr(model, "unit_wiring"):
        return model.unit_wiring(layer)
    if not isinstance(model, SceneNet):
        raise DissectError(f"surgery supports SceneNet layers so far, not {type(model).__name__}")
    names = [f"conv{i}" for i in range(1, len(model.widths) + 1)]
    if layer not in names:
        raise DissectError(f"unknown layer {layer!r} for surgery on SceneNet; available layers: {', '.join(names)}")
    if layer in model.whiten:
        raise DissectError(
            f"{layer} is concept-whitened: each of its units mixes all of the convolution's filters, so it has no "
            "weights of its own to edit. Fold the whitening first (the same function at evaluation): "
            "model, variables = dissectjax.localize.fold_whitening(model, variables)"
        )
    i = names.index(layer) + 1
    conv, bn = f"block{i}_conv", f"block{i}_bn"
    incoming = [Slice("params", (conv, "kernel"), -1)]
    if model.batch_norm:
        incoming += [Slice("params", (bn, "scale"), 0), Slice("params", (bn, "bias"), 0),
                     Slice("batch_stats", (bn, "mean"), 0), Slice("batch_stats", (bn, "var"), 0)]  # fmt: skip
    else:
        incoming.append(Slice("params", (conv, "bias"), 0))
    last = i == len(names)
    reader = ("classifier", "kernel") if last else (f"block{i + 1}_conv", "kernel")
    return Wiring(
        layer=layer,
        units=model.widths[i - 1],
        incoming=tuple(incoming),
        inputs=None if i == 1 else Slice("params", (conv, "kernel"), -2),
        outgoing=(Slice("params", reader, 0 if last else -2),),
        outgoing_outputs=None if last else (Slice("params", reader, -1),),
        producer=bn if model.batch_norm else conv,
        previous=None if i == 1 else names[i - 2],
        next=None if last else names[i],
        outgoing_refused=None if last or names[i] not in model.whiten else (
            f"{names[i]} is concept-whitened: its units mix the output channels of the weights that read {layer}. "
            "Fold the whitening first: model, variables = dissectjax.localize.fold_whitening(model, variables)"),
    )  # fmt: skip


# ---- pure tree edits --------------------------------------------------------------------
def get(variables: Mapping, where: Slice) -> jax.Array:
    node = variables[where.collection]
    for key in where.path:
        node = node[key]
    return node


def _replace(variables: Mapping, where: Slice, value) -> dict:
    """A copy of ``variables`` with one leaf replaced; every other subtree is shared."""

    def rebuild(node, path):
        if not path:
            return value
        out = dict(node)
        out[path[0]] = rebuild(node[path[0]], path[1:])
        return out

    out = dict(variables)
    out[where.collection] = rebuild(variables[where.collection], where.path)
    return out


def _check_units(w: Wiring, units) -> np.ndarray:
    units = np.atleast_1d(np.asarray(units))
    if units.size and (units.min() < 0 or units.max() >= w.units):
        bad = units[(units < 0) | (units >= w.units)][0]
        raise DissectError(f"unit {int(bad)} is out of range for layer {w.layer} ({w.units} units: 0..{w.units - 1})")
    return units.astype(np.int64)


def unit_mask(model: nn.Module, layer: str, units: Sequence[int]) -> np.ndarray:
    """float32 [U]: 1 for the named units of ``layer``."""
    w = wiring(model, layer)
    mask = np.zeros(w.units, np.float32)
    mask[_check_units(w, units)] = 1.0
    return mask


def _along(mask: jax.Array, ndim: int, axis: int) -> jax.Array:
    shape = [1] * ndim
    shape[axis] = -1
    return mask.reshape(shape)


def zero_out(model: nn.Module, variables: Mapping, layer: str, mask: jax.Array) -> dict:
    """Removes the units where ``mask`` is 1 by zeroing every weight that reads them.

    ``mask`` float [U] (or bool); jit-able: a traced mask reuses one compiled program.
    """
    w = wiring(model, layer)
    if np.shape(mask) != (w.units,):
        raise DissectError(f"unit mask of shape {np.shape(mask)} for layer {layer} with {w.units} units")
    keep = 1.0 - jnp.asarray(mask, jnp.float32)
    out = variables
    for s in w.outgoing:
        x = get(out, s)
        out = _replace(out, s, x * _along(keep, x.ndim, s.axis).astype(x.dtype))
    return out


def replace_activations(model: nn.Module, layer: str, mask: jax.Array, values: jax.Array):
    """A context in which ``layer``'s units where ``mask`` is 1 output ``values`` instead.

    Use around ``model.apply`` (inside or outside jit). Works by intercepting the module
    that computes the units' pre-activation; SceneNet's ReLU maps a value v >= 0 to
    itself, so ``values`` must be non-negative.
    """
    w = wiring(model, layer)
    if np.shape(mask) != (w.units,) or np.shape(values) != (w.units,):
        raise DissectError(f"mask and values must have shape ({w.units},) for layer {layer}")
    mask = jnp.asarray(mask, bool)
    values = jnp.maximum(jnp.asarray(values, jnp.float32), 0.0)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path == (w.producer,):
            out = jnp.where(mask, values.astype(out.dtype), out)
        return out

    return nn.intercept_methods(interceptor)


def transplant(
    model: nn.Module,
    source: Mapping,
    target: Mapping,
    layer: str,
    units: Sequence[int],
    slots: Sequence[int],
    input_matching: np.ndarray | None = None,
    outgoing: bool = False,
    output_matching: np.ndarray | None = None,
) -> dict:
    """Copies ``units`` of ``source`` (instance A) into ``slots`` of ``target`` (B).

    Copies each unit's filter, bias and normalization parameters and statistics. A's
    filter reads A's input channels; ``input_matching`` (int [U_prev]: B's slot of each
    of A's units in the layer below, from :func:`dissectjax.matching.match`) reorders them
    to B's. With ``outgoing``, also the weights that read the unit, their output channels
    reordered by ``output_matching`` (B's slot of each of A's units in the layer above;
    not needed when the readers are the classes). Returns new variables for B.
    """
    w = wiring(model, layer)
    units, slots = _check_units(w, units), _check_units(w, slots)
    if len(units) != len(slots):
        raise DissectError(f"{len(units)} units but {len(slots)} slots: give one slot per transplanted unit")
    if len(set(slots.tolist())) != len(slots):
        raise DissectError("each slot may receive only one unit")
    for s in w.incoming + w.outgoing:
        a, b = get(source, s), get(target, s)
        if a.shape != b.shape:
            raise DissectError(f"{'/'.join(s.path)} is {a.shape} in the source but {b.shape} in the target")
    out = target
    for s in w.incoming:
        a = get(source, s)
        if w.inputs is not None and input_matching is not None and s.path == w.inputs.path:
            a = _from_matching(a, input_matching, w.inputs.axis)
        out = _replace(out, s, _put(get(out, s), a, units, slots, s.axis))
    if outgoing:
        if w.outgoing_refused:
            raise DissectError(w.outgoing_refused)
        for s in w.outgoing:
            a = get(source, s)
            if w.outgoing_outputs is not None:
                if output_matching is None:
                    raise DissectError(
                        f"outgoing weights of {layer} feed {w.next}: give its matching (output_matching)"
                    )
                a = _from_matching(a, output_matching, w.outgoing_outputs[0].axis)
            out = _replace(out, s, _put(get(out, s), a, units, slots, s.axis))
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
