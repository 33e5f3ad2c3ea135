"""Reading layer activations out of any linen model.

A layer is either an intermediate the model sows (``conv5``, ``layer4``: DESIGN.md
section 3) or, for models that sow nothing, any submodule's output, named by its module
path joined with ``/`` (``Backbone_0/Conv_3``) and captured with ``capture_intermediates``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from flax import traverse_util

from dissectjax.errors import DissectError
from dissectjax.models.common import INTERMEDIATES

CALL = "__call__"


def _named_outputs(tree) -> dict[str, object]:
    """intermediates pytree -> {layer name: value}; captured outputs are 1-tuples."""
    out = {}
    for path, value in traverse_util.flatten_dict(tree, is_leaf=lambda _, v: not isinstance(v, dict)).items():
        if path[-1] == CALL:
            out["/".join(path[:-1])] = value[0] if isinstance(value, tuple) else value
        else:
            out["/".join(path)] = value
    return out


def _apply(model: nn.Module, variables, images, capture):
    return model.apply(variables, images, train=False, mutable=[INTERMEDIATES], capture_intermediates=capture)


def layer_shapes(model: nn.Module, variables, images) -> dict[str, tuple[int, ...]]:
    """Every dissectable layer name -> activation shape for a batch like ``images``.

    Sown layers first, then captured submodule outputs (those whose names do not clash).
    """
    sown = jax.eval_shape(lambda x: _apply(model, variables, x, False), images)[1].get(INTERMEDIATES, {})
    names = {k: tuple(v.shape) for k, v in _named_outputs(sown).items()}
    try:
        captured = jax.eval_shape(lambda x: _apply(model, variables, x, _not_sown(names)), images)[1]
        for k, v in _named_outputs(captured.get(INTERMEDIATES, {})).items():
            if k and k not in names and hasattr(v, "shape"):
                names[k] = tuple(v.shape)
    except Exception:  # models whose outputs cannot all be captured still list their sown layers
        pass
    return names


def _not_sown(sown: dict) -> Callable[[nn.Module, str], bool]:
    def keep(module: nn.Module, method: str) -> bool:
        return method == CALL and module.path != () and "/".join(module.path) not in sown

    return keep


def activation_fn(
    model: nn.Module, variables, layers: Sequence[str], example_images
) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """A pure function ``images -> {layer: [B, h, w, U]}`` for the named layers.

    Validates the names against the model (an unknown name is a :class:`DissectError`
    listing the available ones). Dense layers [B, U] come back as [B, 1, 1, U].
    """
    shapes = layer_shapes(model, variables, example_images)
    unknown = [name for name in layers if name not in shapes]
    if unknown:
        raise DissectError(
            f"unknown layer {unknown[0]!r} for model {type(model).__name__}; available layers: {', '.join(shapes)}"
        )
    for name in layers:
        if len(shapes[name]) not in (2, 4):
            raise DissectError(f"layer {name!r} has shape {shapes[name]}; expected [B, h, w, U] or [B, U]")
    sown = jax.eval_shape(lambda x: _apply(model, variables, x, False), example_images)[1].get(INTERMEDIATES, {})
    sown_names = set(_named_outputs(sown))
    wanted = set(layers)
    capture = None
    if not wanted <= sown_names:
        missing = wanted - sown_names

        def capture(module: nn.Module, method: str) -> bool:
            return method == CALL and "/".join(module.path) in missing

    def fn(images: jax.Array) -> dict[str, jax.Array]:
        _, state = _apply(model, variables, images, capture or False)
        found = _named_outputs(state.get(INTERMEDIATES, {}))
        out = {}
        for name in layers:
            a = found[name]
            out[name] = a[:, None, None, :] if a.ndim == 2 else a
        return out

    return fn
