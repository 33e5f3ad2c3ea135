"""Training a scene classifier on synthetic scenes with optax (pure train step, jitted)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.checkpoint import init_variables
from dissectjax.data import synthetic
from dissectjax.localize.losses import LossTerm, total_loss
from dissectjax.localize.whitening import WHITENED


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # initialization and batch order
    data_seed: int = 100  # training images; validation uses data_seed + 1
    train_size: int = 12000
    val_size: int = 1000
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    image_size: int = 64


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, terms: Sequence[LossTerm] = ()):
    """A jitted ``(params, batch_stats, opt_state, batch, key) -> (params, batch_stats, opt_state, loss, values)``.

    ``batch``: ``images`` uint8 [B, H, W, 3], ``labels`` int [B] and, for concept terms,
    ``masks`` [B, S, S, K]; each image is mirrored (with its masks) with probability 1/2.
    The loss is the task's cross-entropy plus the weighted ``terms``
    (:mod:`dissectjax.localize`); each term's ``fn(inter, batch)`` gets ``inter =
    {"layers": sown layers, "whitened": {module: z}, "params": params}``, and ``values``
    holds each computed term. A term of strength 0 is not computed: training is then
    bit-identical to training without it.
    """
    terms = tuple(terms)

    @jax.jit
    def step(params, batch_stats, opt_state, batch, key):
        flip = jax.random.bernoulli(key, 0.5, (batch["labels"].shape[0], 1, 1, 1))
        mirrored = ("images", "masks")  # scenes are mirror-invariant
        batch = {k: jnp.where(flip, v[:, :, ::-1], v) if k in mirrored else v for k, v in batch.items()}

        def loss_fn(p):
            logits, out = model.apply({"params": p, "batch_stats": batch_stats}, batch["images"], train=True,
                                      mutable=["batch_stats", "intermediates", WHITENED])  # fmt: skip
            inter = {"layers": out.get("intermediates", {}), "whitened": out.get(WHITENED, {}), "params": p}
            loss, values = total_loss(cross_entropy(logits, batch["labels"]), terms, inter, batch)
            return loss, (out.get("batch_stats", {}), values)

        (loss, (new_stats, values)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss, values

    return step


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, variables, images):
    return jnp.argmax(model.apply(variables, images, train=False), axis=-1)


def predict(model: nn.Module, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """int [N]: the predicted class of each image (one compiled program per model and batch shape)."""
    parts = [
        _predict(model, variables, jnp.asarray(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate([np.asarray(p) for p in parts])


def accuracy(model: nn.Module, variables, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    return float(np.mean(predict(model, variables, images, batch_size) == labels))


def train_scene_classifier(
    model: nn.Module,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    terms: Sequence[LossTerm] = (),
    concepts: Sequence[int] = (),
):
    """Trains ``model`` on synthetic scenes; returns (variables, metrics).

    ``terms``: localizing loss terms (:mod:`dissectjax.localize`); ``concepts``: the Broden
    numbers of the target concepts whose masks [B, S, S, K] the terms read as ``batch["masks"]``.
    """
    size = config.image_size
    log(f"generating {config.train_size} training and {config.val_size} validation scenes")
    train_config = synthetic.SyntheticConfig(size=config.train_size, seed=config.data_seed, image_size=size)
    if concepts:
        train_x, train_y, train_masks = synthetic.generate_with_masks(train_config, concepts)
    else:
        train_x, train_y = synthetic.generate_classification(train_config)
    val_x, val_y = synthetic.generate_classification(
        synthetic.SyntheticConfig(size=config.val_size, seed=config.data_seed + 1, image_size=size)
    )
    variables = init_variables(model, (size, size, 3), config.seed)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    steps_per_epoch = config.train_size // config.batch_size
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, steps_per_epoch // 2, steps_per_epoch * config.epochs
    )
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    opt_state = optimizer.init(params)
    step = make_train_step(model, optimizer, terms)
    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = rng.permutation(config.train_size)
        losses, term_values = [], []
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            batch = {"images": jnp.asarray(train_x[idx]), "labels": jnp.asarray(train_y[idx])}
            if concepts:
                batch["masks"] = jnp.asarray(train_masks[idx])
            key, sub = jax.random.split(key)
            params, batch_stats, opt_state, loss, values = step(params, batch_stats, opt_state, batch, sub)
            losses.append(loss)
            term_values.append(values)
        variables = {"params": params, "batch_stats": batch_stats}
        val_acc = accuracy(model, variables, val_x, val_y)
        mean_loss = float(np.mean(jax.device_get(losses)))
        means = {k: round(float(np.mean(v)), 4) for k, v in jax.device_get(_stack(term_values)).items()}
        history.append({"epoch": epoch + 1, "loss": round(mean_loss, 4), "val_accuracy": round(val_acc, 4), **means})
        extra = "".join(f", {k} {v:.3f}" for k, v in means.items())
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {mean_loss:.3f}{extra}, validation accuracy {val_acc:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    metrics = {
        "val_accuracy": history[-1]["val_accuracy"],
        "train_accuracy": round(accuracy(model, variables, train_x[:2000], train_y[:2000]), 4),
        "history": history,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return variables, metrics


def _stack(values: list[dict]) -> dict:
    return {k: jnp.stack([v[k] for v in values]) for k in (values[0] if values else {})}
