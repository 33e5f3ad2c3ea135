"""Neuron specialization: which units serve which class, gathered during training.

Data flow: ``params, batch -> (loss, activations, activation gradients) -> per-class sums``.
Inside the jitted train step, the gradient of the loss with respect to every unit's
activation comes from the same backward pass as the parameter gradients, through zero
``perturbations`` added at each sown layer (``models/common.py``). Per batch, for every
unit u of the chosen layers and every class k, the step adds

* ``grad[k, u]``: sum over the class's examples of d loss_i / d a_iu, where a_iu is the
  unit's activation (for a conv unit: the gradient of a uniform shift of its whole map,
  i.e. the sum over positions);
* ``act[k, u]`` and ``relu[k, u]``: sums of the unit's mean activation and mean rectified
  activation (over positions);
* ``count[k]``: examples.

"Push" is ``-grad``: the direction in which gradient descent moves the activation for the
class (positive: training wants the unit higher for it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.models.common import INTERMEDIATES, PERTURBATIONS, UNIT_EDITS

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
        with np.load(path) as f:
            parts = {field: {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(field + "/")}
                     for field in ("grad", "act", "relu")}  # fmt: skip
            return cls(f["count"], **parts)


def layer_units(model: nn.Module, params, layers: Sequence[str], input_shape) -> dict[str, tuple[int, ...]]:
    """Per layer, the activation shape of one example (without the batch axis)."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    _, state = jax.eval_shape(lambda p: model.apply({"params": p}, x, mutable=[INTERMEDIATES]), params)
    missing = [name for name in layers if name not in state[INTERMEDIATES]]
    if missing:
        raise ValueError(f"unknown layers {missing}; {type(model).__name__} sows {sorted(state[INTERMEDIATES])}")
    return {name: state[INTERMEDIATES][name].shape[1:] for name in layers}


def zero_stats(shapes: dict[str, tuple[int, ...]], num_classes: int) -> ClassUnitStats:
    z = {name: jnp.zeros((num_classes, s[-1]), jnp.float32) for name, s in shapes.items()}
    return ClassUnitStats(jnp.zeros(num_classes, jnp.int32), z, dict(z), dict(z))


def _per_unit(x: jax.Array, reduce) -> jax.Array:
    """[B, ..., U] -> [B, U] over the spatial axes."""
    return reduce(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


def _class_sums(onehot: jax.Array, values: jax.Array) -> jax.Array:
    return jnp.einsum("bk,bu->ku", onehot, values, precision=HIGHEST)


def loss_grads_and_stats(model: nn.Module, params, images, labels, layers: Sequence[str], num_classes: int):
    """(mean loss, parameter gradients, per-class statistics of this batch)."""
    shapes = layer_units(model, params, layers, images.shape[1:])
    perts = {name: jnp.zeros((len(images), *s), jnp.float32) for name, s in shapes.items()}

    def loss_fn(p, d):
        logits, state = model.apply({"params": p, PERTURBATIONS: d}, images, mutable=[INTERMEDIATES])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state[INTERMEDIATES]

    (loss, acts), (grads, act_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, perts)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    batch = len(labels)  # d mean-loss / d a_i = (d loss_i / d a_i) / B
    stats = ClassUnitStats(
        jnp.sum(onehot, 0).astype(jnp.int32),
        {k: _class_sums(onehot, _per_unit(act_grads[k], jnp.sum) * batch) for k in layers},
        {k: _class_sums(onehot, _per_unit(acts[k], jnp.mean)) for k in layers},
        {k: _class_sums(onehot, _per_unit(jax.nn.relu(acts[k]), jnp.mean)) for k in layers},
    )
    return loss, grads, stats


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, layers: Sequence[str],
                    num_classes: int) -> Callable:  # fmt: skip
    """(params, opt_state, stats, images, labels) -> (params, opt_state, stats, loss).

    With no ``layers`` the step is plain training (``stats`` passes through untouched).
    """
    layers = tuple(layers)

    @jax.jit
    def step(params, opt_state, stats, images, labels):
        if layers:
            loss, grads, batch_stats = loss_grads_and_stats(model, params, images, labels, layers, num_classes)
            stats = jax.tree.map(jnp.add, stats, batch_stats)
        else:

            def loss_fn(p):
                logits = model.apply({"params": p}, images)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, stats, loss

    return step


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3


def train_with_stats(model: nn.Module, images: np.ndarray, labels: np.ndarray, layers: Sequence[str],
                     config: TrainConfig, num_classes: int = 10, log: Callable = lambda _: None,
                     progress: Callable = lambda it, **_: it):  # fmt: skip
    """Trains with Adam, gathering per-class unit statistics over all steps.

    Returns (params, stats, info); info holds the final training loss and the measured
    step time with and without the statistics (ms, same batch, both compiled).
    """
    key = jax.random.PRNGKey(config.seed)
    params = model.init(key, jnp.zeros((1, *images.shape[1:]), jnp.float32))["params"]
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)
    stats = zero_stats(layer_units(model, params, layers, images.shape[1:]), num_classes)
    step = make_train_step(model, optimizer, layers, num_classes)
    rng = np.random.default_rng(config.seed)
    per_epoch = len(images) // config.batch_size
    if per_epoch < 1:
        raise ValueError(f"{len(images)} training images are fewer than one batch of {config.batch_size}")
    loss = jnp.nan
    for epoch in progress(range(config.epochs), desc="epochs"):
        order = rng.permutation(len(images))
        for b in range(per_epoch):
            rows = order[b * config.batch_size : (b + 1) * config.batch_size]
            params, opt_state, stats, loss = step(params, opt_state, stats, images[rows], labels[rows])
        log(f"epoch {epoch + 1}/{config.epochs}: loss {float(loss):.4f}")
    info = {"loss": float(loss), **step_times(model, optimizer, params, images[: config.batch_size],
                                               labels[: config.batch_size], layers, num_classes)}  # fmt: skip
    return params, jax.tree.map(np.asarray, stats), info


def step_times(model, optimizer, params, images, labels, layers, num_classes, repeats: int = 50) -> dict:
    """Milliseconds per train step with and without the statistics (compiled, same batch)."""
    out = {}
    for tag, names in (("step_ms_with_stats", layers), ("step_ms_without", ())):
        step = make_train_step(model, optimizer, names, num_classes)
        state = (params, optimizer.init(params), zero_stats(layer_units(model, params, layers, images.shape[1:]),
                                                                 num_classes))  # fmt: skip
        jax.block_until_ready(step(*state, images, labels))
        start = time.perf_counter()
        for _ in range(repeats):
            result = step(*state, images, labels)
        jax.block_until_ready(result)
        out[tag] = (time.perf_counter() - start) / repeats * 1000
    return out


# ---- views -----------------------------------------------------------------------------------
def unit_activations(model: nn.Module, params, images: np.ndarray, layer: str, edits: dict | None = None,
                     batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mean activation per unit float32 [N, U], logits float32 [N, K]) over ``images``."""
    variables = {"params": params, **({UNIT_EDITS: edits} if edits else {})}
    acts, logits = [], []
    for s in range(0, len(images), batch_size):
        a, z = _forward(model, variables, jnp.asarray(images[s : s + batch_size]), layer)
        acts.append(np.asarray(a))
        logits.append(np.asarray(z))
    return np.concatenate(acts), np.concatenate(logits)


@jax.jit
def _weighted_sums(onehot, weights, images):
    num = jnp.einsum("bk,bu,bhw->kuhw", onehot, weights, images, precision=HIGHEST)
    return num, jnp.einsum("bk,bu->ku", onehot, weights, precision=HIGHEST)


def _forward_impl(model, variables, images, layer):
    logits, state = model.apply(variables, images, mutable=[INTERMEDIATES])
    return _per_unit(state[INTERMEDIATES][layer], jnp.mean), logits


_forward = jax.jit(_forward_impl, static_argnums=(0, 3))


def weighted_mean_inputs(model: nn.Module, params, images: np.ndarray, labels: np.ndarray, layer: str,
                         num_classes: int = 10, batch_size: int = 500) -> np.ndarray:  # fmt: skip
    """float32 [K, U, H, W]: per class, the input images averaged with weights relu(a_iu).

    Inputs on which a unit does not fire (a <= 0) contribute nothing; where a unit never
    fires for a class the mean is zero. Images are gray [N, H, W, 1] (uint8 scaled to [0, 1]).
    """
    num = den = 0.0
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        a, _ = _forward(model, {"params": params}, jnp.asarray(x), layer)
        gray = jnp.asarray(x[..., 0], jnp.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
        onehot = jax.nn.one_hot(jnp.asarray(labels[s : s + batch_size]), num_classes)
        n, d = _weighted_sums(onehot, jax.nn.relu(a), gray)
        num, den = num + np.asarray(n, np.float64), den + np.asarray(d, np.float64)
    return np.where(den[..., None, None] > 0, num / np.maximum(den, 1e-30)[..., None, None], 0.0).astype(np.float32)


def top_inputs(acts: np.ndarray, k: int = 8) -> np.ndarray:
    """int [U, k]: per unit, the rows with the highest activation (ties: lower row first)."""
    return np.argsort(-acts, axis=0, kind="stable")[:k].T


def anomalies(stats: ClassUnitStats, layer: str) -> list[dict]:
    """(unit, class) pairs that training pushes up while the unit is low for the class, ranked.

    push z-score: the class's push over the layer's std of push; activation z-score: the
    class's mean activation against the unit's mean and std over classes. Kept where push > 0
    and the activation z-score < 0; score = push z - activation z.
    """
    m = stats.means(layer)
    push, act = m["push"], m["act"]  # [K, U]
    push_z = push / max(push.std(), 1e-12)
    act_z = (act - act.mean(0, keepdims=True)) / np.maximum(act.std(0, keepdims=True), 1e-12)
    score = push_z - act_z
    keep = (push > 0) & (act_z < 0)
    rows = [
        {
            "layer": layer,
            "unit": int(u),
            "class": int(k),
            "push": float(push[k, u]),
            "act": float(act[k, u]),
            "relu": float(m["relu"][k, u]),
            "push_z": float(push_z[k, u]),
            "act_z": float(act_z[k, u]),
            "score": float(score[k, u]),
        }
        for k, u in zip(*np.nonzero(keep))
    ]
    return sorted(rows, key=lambda r: -r["score"])


def ablation_edits(layer: str, units: Sequence[int], num_units: int) -> dict:
    """``unit_edits`` that set ``units`` of ``layer`` to zero."""
    keep = np.ones(num_units, np.float32)
    keep[list(units)] = 0.0
    return {layer: {"keep": jnp.asarray(keep), "fill": jnp.zeros(num_units, jnp.float32)}}


def accuracy_by_group(model: nn.Module, params, images, labels, groups: np.ndarray,
                      edits: dict | None = None) -> dict[str, float]:  # fmt: skip
    """Accuracy per distinct value of ``groups`` (e.g. style tags), optionally with unit edits."""
    return {g: float(np.mean(m > 0)) for g, m in margins_by_group(model, params, images, labels, groups, edits).items()}


def margins_by_group(model: nn.Module, params, images, labels, groups: np.ndarray,
                     edits: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per group, the margins float32 [n]: true-class logit minus the best other logit (> 0: correct)."""
    variables = {"params": params, **({UNIT_EDITS: edits} if edits else {})}
    logits = np.concatenate([np.asarray(_logits(model, variables, jnp.asarray(images[s : s + 1000])))
                             for s in range(0, len(images), 1000)])  # fmt: skip
    true = np.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    other = np.where(np.arange(logits.shape[1])[None] == labels[:, None], -np.inf, logits).max(axis=1)
    return {str(g): (true - other)[groups == g] for g in np.unique(groups)}


_logits = jax.jit(lambda model, variables, images: model.apply(variables, images), static_argnums=0)
