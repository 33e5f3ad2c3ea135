"""Flax NNX models through the same dissection and surgery functions as linen ones.

    module --nnx.split--> Split(graphdef, params, rest) --pure dict--> variables {"params": ...}
        dissection: ModelSource.from_nnx(module, layers, image_shape) (over NNXForward)
        surgery:    fold(module, variables, UnitEdit) / transplant(module, ...) -> variables
        back:       split.merge(variables) -> a new module (nnx.merge)

    NNX class --NNXModel (a linen module: flax.nnx.bridge.ToLinen)--> checkpoints and every
        command (dissect, ablate, match, transplant, serve): the registered ``nnx_convnet``

The forward pass merges the split state inside the traced function, so it is as pure as
a linen ``apply``; layers are what the module sows as ``nnx.Intermediate`` (captured with
``nnx.capture`` where this Flax has it). Surgery needs the module to describe where its
units live: a method ``unit_wiring(layer) -> dissectjax.models.wiring.Wiring`` over the pure
dict's paths.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.core import FrozenDict
from flax.nnx import bridge

from dissectjax.errors import DissectError
from dissectjax.models.common import (
    EDIT_COLLECTIONS,
    INTERMEDIATES,
    LAYER_VALUES,
    UNIT_EDITS,
    edit_entries,
    edited_value,
    hashable_kwargs,
    sow_value,
)

# What NNXModel passes to the sown layers of the NNX module it runs, for the duration of one
# call: {layer: activation -> edited activation}. Set and reset around the call (as flax sets
# its own module context), never left behind.
_LAYER_HOOKS: contextvars.ContextVar[Mapping[str, Callable] | None] = contextvars.ContextVar(
    "layer_hooks", default=None
)


def sow_layer(module: nnx.Module, name: str, value: jax.Array) -> jax.Array:
    """NNX's :func:`dissectjax.models.common.sow_layer`: applies the replacement or unit edit of
    ``name`` that :class:`NNXModel` passes in (none outside it), sows the result as an
    ``nnx.Intermediate``, returns it."""
    hook = (_LAYER_HOOKS.get() or {}).get(name)
    if hook is not None:
        value = hook(value)
    module.sow(nnx.Intermediate, name, value)
    return value


@contextlib.contextmanager
def _layer_hooks(hooks: Mapping[str, Callable]) -> Iterator[None]:
    token = _LAYER_HOOKS.set(hooks)
    try:
        yield
    finally:
        _LAYER_HOOKS.reset(token)


def _hooks(collections: Mapping) -> dict[str, Callable]:
    """{layer: edit} from the ``layer_values`` and ``unit_edits`` collections (linen's contract)."""
    values = traverse_util.flatten_dict(dict(collections.get(LAYER_VALUES, {})), sep="/")
    edits = edit_entries(collections.get(UNIT_EDITS, {}))
    return {layer: functools.partial(edited_value, replacement=values.get(layer), edit=edits.get(layer))
            for layer in {*values, *edits}}  # fmt: skip


class NNXModel(bridge.ToLinen):
    """An NNX module class as a linen module (``flax.nnx.bridge.ToLinen``), so that its
    checkpoints go through every command: parameters are the linen ``params`` collection at
    the module's ``nnx.to_pure_dict`` paths, its sown layers are linen intermediates, and the
    ``unit_edits`` and ``layer_values`` collections reach the layers it sows with
    :func:`sow_layer`. ``kwargs`` must be hashable (a FrozenDict of tuples)."""

    @property
    def num_classes(self) -> int | None:
        return self.kwargs.get("num_classes")

    def _abstract(self) -> nnx.Module:
        """An instance of the NNX class with shapes only (nothing is initialized)."""
        return nnx.eval_shape(lambda: self.nnx_class(*self.args, **self.kwargs, rngs=nnx.Rngs(0)))

    def unit_wiring(self, layer: str):
        """The NNX class's own wiring, read from an abstract instance."""
        module = self._abstract()
        if not hasattr(module, "unit_wiring"):
            raise DissectError(f"{self.nnx_class.__name__} declares no unit wiring (a unit_wiring(layer) method)")
        return module.unit_wiring(layer)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Logits; sown layers go to linen's ``intermediates`` as bare arrays, like linen models'."""
        del train  # the NNX modules here have no training-only behaviour
        if self.is_initializing():  # ToLinen creates the parameters (the module sows outside nnx.capture once)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"Using 'Module.sow\(\)' outside", DeprecationWarning)
                return super().__call__(images)
        graphdef, state = nnx.split(self._abstract())
        stored = {name: dict(value) for name, value in self.variables.items()
                  if name not in (*EDIT_COLLECTIONS, INTERMEDIATES)}  # fmt: skip
        nnx.replace_by_pure_dict(state, _merged(stored.values()))
        with _layer_hooks(_hooks(self.variables)):
            out, sown = _run(nnx.merge(graphdef, state), images)
        for name, value in sown.items():
            sow_value(self, name, value)
        return out


def _merged(trees) -> dict:
    """One nested dict from collections whose paths are disjoint (``params``, ``batch_stats``)."""
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


def nnx_model(nnx_class: type, **kwargs) -> NNXModel:
    """``NNXModel`` of ``nnx_class`` built with ``kwargs`` (lists become tuples: hashable)."""
    return NNXModel(nnx_class, kwargs=FrozenDict(hashable_kwargs(kwargs)))


def _run(module: nnx.Module, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs ``module``: (its output, what it sowed as ``nnx.Intermediate``: {name: array})."""
    if hasattr(nnx, "capture"):
        out, state = nnx.capture(module, nnx.Intermediate)(images)
    else:  # older Flax: sown values stay on the module until popped
        out = module(images)
        state = nnx.pop(module, nnx.Intermediate)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state), is_leaf=lambda _, v: not isinstance(v, dict))
    return out, {"/".join(map(str, k)): v[-1] if isinstance(v, tuple) else v for k, v in flat.items()}


def _sown(module: nnx.Module, images: jax.Array) -> dict[str, jax.Array]:
    """Runs ``module`` and returns what it sowed as ``nnx.Intermediate``: {name: array}."""
    return _run(module, images)[1]


def call(module: nnx.Module, images: jax.Array) -> jax.Array:
    """The module's output, with whatever it sows captured and dropped (nothing piles up on it)."""
    if hasattr(nnx, "capture"):
        return nnx.capture(module, nnx.Intermediate)(images)[0]
    out = module(images)
    nnx.pop(module, nnx.Intermediate)
    return out


@dataclasses.dataclass(frozen=True)
class NNXForward:
    """A pure, hashable ``(state, images) -> {layer: [B, h, w, U]}`` of a module's sown layers
    (dense layers [B, U] as [B, 1, 1, U]); ``state`` is the module's ``nnx.split`` state."""

    graphdef: nnx.GraphDef
    layers: tuple[str, ...]

    def __call__(self, state: nnx.State, images: jax.Array) -> dict[str, jax.Array]:
        sown = _sown(nnx.merge(self.graphdef, state), images)
        return {name: sown[name].reshape(sown[name].shape[0], 1, 1, -1) if sown[name].ndim == 2 else sown[name]
                for name in self.layers}  # fmt: skip


def activation_fn(module: nnx.Module, layers: Sequence[str], image_shape) -> tuple[NNXForward, nnx.State]:
    """(forward, state): ``forward(state, images)`` gives the module's sown layers; unknown
    names are an error listing the sown ones."""
    graphdef, state = nnx.split(module)
    available = jax.eval_shape(lambda x: _sown(nnx.merge(graphdef, state), x), jnp.zeros((1, *image_shape), jnp.uint8))
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise DissectError(
            f"unknown layer {unknown[0]!r} for {type(module).__name__}; it sows: {', '.join(available) or 'nothing'}"
        )
    return NNXForward(graphdef, tuple(layers)), state


@dataclasses.dataclass(frozen=True)
class Split:
    """A module split into its structure, its parameters and everything else (e.g. statistics)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State

    @classmethod
    def of(cls, module: nnx.Module) -> Split:
        return cls(*nnx.split(module, nnx.Param, ...))

    @property
    def variables(self) -> dict:
        """The parameters as linen-style variables ``{"params": pure dict}``, what surgery edits."""
        return {"params": nnx.to_pure_dict(self.params)}

    def merge(self, variables: dict) -> nnx.Module:
        """A new module with ``variables`` in place of the parameters (this split is not changed)."""
        params = jax.tree.map(lambda x: x, self.params)  # a copy of the containers
        nnx.replace_by_pure_dict(params, variables["params"])
        return nnx.merge(self.graphdef, params, self.rest)
