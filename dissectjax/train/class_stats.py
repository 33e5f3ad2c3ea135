"""Per-class unit statistics, gathered inside the train step (neuron specialization).

For every unit u of the chosen layers and every class k, each step adds

* ``grad[k, u]``: sum over the class's examples of d loss_i / d a_iu, where a_iu is the
  unit's activation (for a conv unit: the gradient of a uniform shift of its whole map,
  i.e. the sum over positions). It comes from the same backward pass as the parameter
  gradients, through zero ``perturbations`` added at each sown layer
  (:func:`dissectjax.models.common.sow_layer`);
* ``act[k, u]`` and ``relu[k, u]``: sums of the unit's mean activation and mean rectified
  activation (over positions);
* ``count[k]``: examples.

"Push" is ``-grad``: the direction in which gradient descent moves the activation for the
class (positive: training wants the unit higher for it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.models.common import INTERMEDIATES

HIGHEST = jax.lax.Precision.HIGHEST


class ClassUnitStats(NamedTuple):
    """Per-class sums; every dict maps a layer to float32 [K, U]; count int32 [K]."""

    count: jax.Array
    grad: dict
    act: dict
    relu: dict

    def means(self, layer: str) -> dict[str, np.ndarray]:
        """Per-class means [K, U] of the gradient, push (-gradient), activation, rectified activation."""
        n = np.maximum(np.asarray(self.count, np.float64), 1)[:, None]
        g = np.asarray(self.grad[layer], np.float64) / n
        return {"grad": g, "push": -g, "act": np.asarray(self.act[layer]) / n, "relu": np.asarray(self.relu[layer]) / n}

    def save(self, path: str) -> None:
        arrays = {"count": np.asarray(self.count)}
        for field in ("grad", "act", "relu"):
            arrays |= {f"{field}/{k}": np.asarray(v) for k, v in getattr(self, field).items()}
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str) -> ClassUnitStats:
        """Statistics written by :meth:`save`, checked: ``count`` int [K] and, for the same layers,
        ``grad/L``, ``act/L``, ``relu/L`` float [K, U_L]. Anything else is a DissectError naming the file."""
        from dissectjax.results import check_arrays, read_npz

        expected = ("the stats.npz `dissectjax specialize` writes (count [K]; grad/LAYER, act/LAYER, relu/LAYER "
                    "[K, U] for each layer)")  # fmt: skip
        arrays = read_npz(path, expected)
        fields = ("grad", "act", "relu")
        layers = sorted({k.split("/", 1)[1] for k in arrays if k.split("/", 1)[0] in fields and "/" in k})
        spec = {"count": (("K",), "integers")}
        spec |= {f"{field}/{layer}": (("K", f"U of {layer}"), "numbers") for layer in layers for field in fields}
        check_arrays(path, arrays, spec, {}, expected)
        if not layers:
            raise DissectError(f"{path} holds statistics of no layer; expected {expected}")
        parts = {field: {layer: arrays[f"{field}/{layer}"] for layer in layers} for field in fields}
        return cls(arrays["count"], **parts)

    @classmethod
    def zeros(cls, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> ClassUnitStats:
        """Empty sums for layers of the given activation shapes (units last)."""
        z = {name: jnp.zeros((num_classes, s[-1]), jnp.float32) for name, s in shapes.items()}
        return cls(jnp.zeros(num_classes, jnp.int32), z, dict(z), dict(z))


def sown_layer_shapes(model: nn.Module, variables, layers: Sequence[str], input_shape) -> dict[str, tuple[int, ...]]:
    """Per sown layer, the activation shape of one example (without the batch axis)."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    _, state = jax.eval_shape(lambda v: model.apply(v, x, mutable=[INTERMEDIATES]), variables)
    missing = [name for name in layers if name not in state[INTERMEDIATES]]
    if missing:
        raise DissectError(f"unknown layers {missing}; {type(model).__name__} sows {sorted(state[INTERMEDIATES])}")
    return {name: state[INTERMEDIATES][name].shape[1:] for name in layers}


def _per_unit(x: jax.Array, reduce) -> jax.Array:
    """[B, ..., U] -> [B, U] over the spatial axes."""
    return reduce(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


def _class_sums(onehot: jax.Array, values: jax.Array) -> jax.Array:
    return jnp.einsum("bk,bu->ku", onehot, values, precision=HIGHEST)


def batch_stats(labels: jax.Array, acts: Mapping[str, jax.Array], act_grads: Mapping[str, jax.Array],
                num_classes: int) -> ClassUnitStats:  # fmt: skip
    """One batch's sums from its labels [B], the layers' activations and the gradients of the
    batch's mean loss with respect to them."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    batch = len(labels)  # d mean-loss / d a_i = (d loss_i / d a_i) / B
    return ClassUnitStats(
        jnp.sum(onehot, 0).astype(jnp.int32),
        {k: _class_sums(onehot, _per_unit(g, jnp.sum) * batch) for k, g in act_grads.items()},
        {k: _class_sums(onehot, _per_unit(acts[k], jnp.mean)) for k in act_grads},
        {k: _class_sums(onehot, _per_unit(jax.nn.relu(acts[k]), jnp.mean)) for k in act_grads},
    )
