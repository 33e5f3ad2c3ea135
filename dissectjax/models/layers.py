"""Reading layer activations out of any linen model.

A layer is either an intermediate the model sows (``conv5``, ``layer4``:
docs/ARCHITECTURE.md, Layers) or, for models that sow nothing, any submodule's output, named by its module
path joined with ``/`` (``Backbone_0/Conv_3``) and captured with ``capture_intermediates``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from flax import traverse_util

from dissectjax.errors import DissectError
from dissectjax.models.common import INTERMEDIATES, LAYER_VALUES, nested

try:  # jax >= 0.4.30
    from jax.extend.core import Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import Literal

CALL = "__call__"


def _named_outputs(tree) -> dict[str, object]:
    """intermediates pytree -> {layer name: value}; captured outputs are 1-tuples."""
    out = {}
    for path, value in traverse_util.flatten_dict(tree, is_leaf=lambda _, v: not isinstance(v, dict)).items():
        name = "/".join(path[:-1] if path[-1] == CALL else path)
        out[name] = value[-1] if isinstance(value, tuple) else value  # captured outputs, NNX sows: tuples
    return out


def check_linen(model) -> None:
    """A model these functions can run: a Flax linen module, else an error saying what to use."""
    if not isinstance(model, nn.Module):
        raise DissectError(
            f"{type(model).__name__} is not a Flax linen module (linen's model.apply runs it here); for an NNX module "
            "use dissectjax.models.nnx_bridge (ModelSource.from_nnx to dissect it; fold and transplant on "
            "nnx_bridge.Split(module).variables), or wrap it with flax.nnx.bridge.ToLinen"
        )


def _apply(model: nn.Module, variables, images, capture):
    check_linen(model)
    return model.apply(variables, images, train=False, mutable=[INTERMEDIATES], capture_intermediates=capture)


def sown_layer_names(model: nn.Module, variables, images) -> tuple[str, ...]:
    """The layers ``model`` sows (where unit edits apply), for a batch like ``images``."""
    sown = jax.eval_shape(lambda x: _apply(model, variables, x, False), images)[1].get(INTERMEDIATES, {})
    return tuple(_named_outputs(sown))


def layer_shapes(model: nn.Module, variables, images) -> dict[str, tuple[int, ...]]:
    """Every dissectable layer name -> activation shape for a batch like ``images``.

    Sown layers first, then captured submodule outputs (those whose names do not clash).
    """
    return _layer_shapes(model, variables, images)[1]


def _layer_shapes(model: nn.Module, variables, images) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    """(the sown layers' names, every dissectable layer's shape): one abstract run each for
    the sown layers and for the captured submodule outputs."""
    sown = jax.eval_shape(lambda x: _apply(model, variables, x, False), images)[1].get(INTERMEDIATES, {})
    names = {k: tuple(v.shape) for k, v in _named_outputs(sown).items()}
    sown_names = tuple(names)
    try:
        captured = jax.eval_shape(lambda x: _apply(model, variables, x, _not_sown(names)), images)[1]
        for k, v in _named_outputs(captured.get(INTERMEDIATES, {})).items():
            if k and k not in names and hasattr(v, "shape"):
                names[k] = tuple(v.shape)
    except Exception:  # models whose outputs cannot all be captured still list their sown layers
        pass
    return sown_names, names


def _not_sown(sown: dict) -> Callable[[nn.Module, str], bool]:
    def keep(module: nn.Module, method: str) -> bool:
        return method == CALL and module.path != () and "/".join(module.path) not in sown

    return keep


@dataclasses.dataclass(frozen=True)
class LayerForward:
    """A pure ``(variables, images) -> {layer: [B, h, w, U]}`` of one architecture's layers.

    Hashable and compared by value (model, layers, captured submodules), so compiled
    versions are shared by every checkpoint of the architecture. Dense layers [B, U] come
    back as [B, 1, 1, U]; ``captured`` names layers read from submodule outputs.
    """

    model: nn.Module
    layers: tuple[str, ...]
    captured: frozenset[str] = frozenset()

    def __call__(self, variables, images: jax.Array) -> dict[str, jax.Array]:
        capture = False
        if self.captured:

            def capture(module: nn.Module, method: str) -> bool:
                return method == CALL and "/".join(module.path) in self.captured

        _, state = _apply(self.model, variables, images, capture)
        found = _named_outputs(state.get(INTERMEDIATES, {}))
        return {name: found[name][:, None, None, :] if found[name].ndim == 2 else found[name] for name in self.layers}


@functools.lru_cache(maxsize=64)
def compiled(forward: Callable) -> Callable:
    """``jax.jit(forward)``, one per distinct (hashable) forward function: every checkpoint of
    an architecture goes through one compiled program per shape."""
    return jax.jit(forward)


def activation_fn(
    model: nn.Module, variables, layers: Sequence[str], example_images, jit: bool = False
) -> Callable[[object, jax.Array], dict[str, jax.Array]]:
    """A pure function ``(variables, images) -> {layer: [B, h, w, U]}`` that includes the named layers.

    It returns every sown layer besides any captured ones named, so that a layer's values
    are the same whichever other layers are asked for. ``variables`` and ``example_images``
    only validate the names against the model (an unknown name is a :class:`DissectError`
    listing the available ones); the function takes any variables of the architecture.
    With ``jit``, it is compiled once per architecture and shape (:func:`compiled`),
    whichever checkpoint is passed.
    """
    sown_names, shapes = _layer_shapes(model, variables, example_images)
    unknown = [name for name in layers if name not in shapes]
    if unknown:
        raise DissectError(
            f"unknown layer {unknown[0]!r} for model {type(model).__name__}; available layers: {', '.join(shapes)}"
        )
    for name in layers:
        if len(shapes[name]) not in (2, 4):
            raise DissectError(f"layer {name!r} has shape {shapes[name]}; expected [B, h, w, U] or [B, U]")
    captured = [name for name in layers if name not in sown_names]
    # every sown layer, whichever are asked for: one program per architecture, so a layer's
    # values do not depend on which other layers are read with it (XLA fuses by outputs)
    forward = LayerForward(model, (*sown_names, *captured), frozenset(captured))
    return compiled(forward) if jit else forward


def depends_only_on(model: nn.Module, variables, layer: str, example_images) -> bool:
    """Whether ``model``'s output, given ``layer``'s values (the ``layer_values`` collection),
    no longer depends on the images: true where everything from the input to the output
    passes through the layer (a plain chain, a ResNet stage output), false where a path
    bypasses it (a skip connection around a layer inside a residual block).

    Decided on the traced computation, conservatively: an operation with any input that
    depends on the images is taken to depend on them.
    """
    sown = jax.eval_shape(lambda x: _apply(model, variables, x, False), example_images)[1][INTERMEDIATES]
    value = _named_outputs(sown)[layer]  # a ShapeDtypeStruct: the layer's shape and dtype

    def logits(images, values):
        return model.apply({**variables, LAYER_VALUES: nested({layer: values})}, images, train=False)

    closed = jax.make_jaxpr(logits)(example_images, value)
    jaxpr = closed.jaxpr
    tainted = {id(jaxpr.invars[0])}
    for eqn in jaxpr.eqns:
        if any(id(v) in tainted for v in eqn.invars if not isinstance(v, Literal)):
            tainted.update(id(v) for v in eqn.outvars)
    return not any(id(v) in tainted for v in jaxpr.outvars if not isinstance(v, Literal))
