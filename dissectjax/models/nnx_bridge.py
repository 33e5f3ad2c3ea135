"""Flax NNX models through the same dissection and surgery functions as linen ones.

    module --nnx.split--> Split(graphdef, params, rest) --pure dict--> variables {"params": ...}
        dissection: ModelSource.from_nnx(module, layers, image_shape) (over NNXForward)
        surgery:    fold(module, variables, UnitEdit) / transplant(module, ...) -> variables
        back:       split.merge(variables) -> a new module (nnx.merge)

The forward pass merges the split state inside the traced function, so it is as pure as
a linen ``apply``; layers are what the module sows as ``nnx.Intermediate`` (captured with
``nnx.capture`` where this Flax has it). Surgery needs the module to describe where its
units live: a method ``unit_wiring(layer) -> dissectjax.models.wiring.Wiring`` over the pure
dict's paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from dissectjax.errors import DissectError


def _sown(module: nnx.Module, images: jax.Array) -> dict[str, jax.Array]:
    """Runs ``module`` and returns what it sowed as ``nnx.Intermediate``: {name: array}."""
    if hasattr(nnx, "capture"):
        _, state = nnx.capture(module, nnx.Intermediate)(images)
    else:  # older Flax: sown values stay on the module until popped
        module(images)
        state = nnx.pop(module, nnx.Intermediate)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state), is_leaf=lambda _, v: not isinstance(v, dict))
    return {"/".join(map(str, k)): v[-1] if isinstance(v, tuple) else v for k, v in flat.items()}


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
