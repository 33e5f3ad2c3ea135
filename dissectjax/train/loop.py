"""The one training loop: a pure, jitted step factory and an epoch driver.

    TrainState(params, batch_stats, opt_state, class_stats)
        --step(state, batch, key)--> (state, loss, term values)

The step's loss is :func:`~dissectjax.train.losses.total_loss` (cross-entropy plus optional
localizing terms, :mod:`dissectjax.analysis.localize`); an optional ``augment(batch, key)``
transforms the batch first (scenes are mirrored; digits are not); with ``stats``, per-class
unit statistics (:mod:`dissectjax.train.class_stats`) come out of the same backward pass as
an auxiliary output. Scene classifiers (:mod:`dissectjax.train.scenes`) and the
specialization study (:mod:`dissectjax.analysis.specialize`) both train through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.errors import DissectError
from dissectjax.models.common import INTERMEDIATES, PERTURBATIONS
from dissectjax.models.whitening import WHITENED
from dissectjax.train.class_stats import ClassUnitStats, batch_stats, sown_layer_shapes
from dissectjax.train.losses import LossTerm, cross_entropy, total_loss

SCHEDULES = ("constant", "warmup-cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings: Adam (AdamW with ``weight_decay``), at a constant rate or
    warmed up linearly for half an epoch, then cosine-decayed to zero."""

    seed: int = 0  # initialization, batch order and augmentation
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = "constant"

    def __post_init__(self):
        if self.epochs < 1:
            raise DissectError(f"epochs must be a positive integer, got {self.epochs}")
        if self.batch_size < 1:
            raise DissectError(f"batch_size must be a positive integer, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DissectError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise DissectError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise DissectError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.seed < 2**32:
            raise DissectError(f"seed must be in 0 .. 2**32 - 1, got {self.seed}")

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        rate = self.learning_rate
        if self.schedule == "warmup-cosine":
            rate = optax.warmup_cosine_decay_schedule(0.0, rate, steps_per_epoch // 2, steps_per_epoch * self.epochs)
        return optax.adamw(rate, weight_decay=self.weight_decay) if self.weight_decay else optax.adam(rate)


class TrainState(NamedTuple):
    """Everything a step updates. ``class_stats`` is None unless the step gathers them."""

    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    class_stats: ClassUnitStats | None = None


@dataclasses.dataclass(frozen=True)
class StatsSpec:
    """Which layers' per-class unit statistics a step gathers, over how many classes."""

    layers: tuple[str, ...]
    num_classes: int


def init_state(model: nn.Module, variables: Mapping, optimizer: optax.GradientTransformation,
               stats: StatsSpec | None = None, input_shape: Sequence[int] | None = None) -> TrainState:  # fmt: skip
    """The state before the first step (``input_shape`` [H, W, C] is needed with ``stats``)."""
    class_stats = None
    if stats is not None:
        if input_shape is None:
            raise DissectError("gathering per-class unit statistics needs the input_shape [H, W, C] of one example")
        shapes = sown_layer_shapes(model, variables, stats.layers, input_shape)
        class_stats = ClassUnitStats.zeros(shapes, stats.num_classes)
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), optimizer.init(params), class_stats)


def mirror(batch: Mapping[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    """Each image mirrored left-right (with its concept masks) with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (batch["labels"].shape[0], 1, 1, 1))
    mirrored = ("images", "masks")
    return {k: jnp.where(flip, v[:, :, ::-1], v) if k in mirrored else v for k, v in batch.items()}


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    terms: Sequence[LossTerm] = (),
    stats: StatsSpec | None = None,
    augment: Callable[[Mapping, jax.Array], Mapping] | None = None,
) -> Callable:
    """A jitted ``(state, batch, key) -> (state, loss, values)``.

    ``batch``: ``images`` [B, H, W, C], ``labels`` int [B] and whatever the terms read
    (``masks`` [B, S, S, K] for concept terms). Each term's ``fn(inter, batch)`` gets
    ``inter = {"layers": sown layers, "whitened": {module: z}, "params": params}``;
    ``values`` holds each computed term. A term of strength 0 is not computed.
    """
    terms = tuple(terms)

    @jax.jit
    def step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array):
        if augment is not None:
            batch = augment(batch, key)
        images = batch["images"]

        def loss_fn(params, perturbations):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if perturbations:
                variables[PERTURBATIONS] = perturbations
            logits, out = model.apply(variables, images, train=True,
                                      mutable=["batch_stats", INTERMEDIATES, WHITENED])  # fmt: skip
            layers = out.get(INTERMEDIATES, {})
            inter = {"layers": layers, "whitened": out.get(WHITENED, {}), "params": params}
            loss, values = total_loss(cross_entropy(logits, batch["labels"]), terms, inter, batch)
            return loss, (out.get("batch_stats", {}), values, layers)

        class_stats = state.class_stats
        if stats is None:
            (loss, (new_stats, values, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, {})
        else:
            shapes = sown_layer_shapes(model, {"params": state.params, "batch_stats": state.batch_stats}, stats.layers,
                                  images.shape[1:])  # fmt: skip
            zeros = {name: jnp.zeros((images.shape[0], *s), jnp.float32) for name, s in shapes.items()}
            grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
            (loss, (new_stats, values, layers)), (grads, act_grads) = grad_fn(state.params, zeros)
            found = batch_stats(batch["labels"], layers, act_grads, stats.num_classes)
            class_stats = jax.tree.map(jnp.add, class_stats, found)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, new_stats, opt_state, class_stats), loss, values

    return step


def steps_per_epoch(examples: int, config: TrainConfig) -> int:
    """Full batches per epoch (the remainder of a shuffled epoch is left out)."""
    steps = examples // config.batch_size
    if steps < 1:
        raise DissectError(f"{examples} training examples are fewer than one batch of {config.batch_size}")
    return steps


def fit(step: Callable, state: TrainState, data: Mapping[str, np.ndarray], config: TrainConfig,
        on_epoch: Callable[[int, TrainState, list, list], None] = lambda *_: None,
        progress: Callable = lambda it, **_: it) -> TrainState:  # fmt: skip
    """Runs ``config.epochs`` epochs of ``step`` over ``data`` (arrays with one row per example),
    shuffled each epoch; calls ``on_epoch(epoch, state, losses, values)`` after each."""
    n = len(next(iter(data.values())))
    per_epoch = steps_per_epoch(n, config)
    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    for epoch in progress(range(config.epochs), desc="epochs"):
        order = rng.permutation(n)
        losses, values = [], []
        for i in range(per_epoch):
            rows = order[i * config.batch_size : (i + 1) * config.batch_size]
            key, sub = jax.random.split(key)
            state, loss, term_values = step(state, {k: jnp.asarray(v[rows]) for k, v in data.items()}, sub)
            losses.append(loss)
            values.append(term_values)
        on_epoch(epoch, state, losses, values)
    return state
