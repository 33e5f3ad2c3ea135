"""A train step with localizing terms, and the data those terms need (synthetic scenes with masks).

    (params, batch_stats, opt_state, batch) -> task loss + terms -> new state

``batch`` is a dict: ``images`` uint8 [B, H, W, 3], ``labels`` int [B] and, for concept
terms, ``masks`` [B, S, S, K] (1 where target concept k covers the pixel). Terms read
layers from the model's sown ``intermediates`` (and a concept-whitening layer's whitened
activations); a term of strength 0 is not computed (bit-identical to plain training).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.data import synthetic
from dissectjax.localize.losses import LossTerm, total_loss
from dissectjax.localize.whitening import WHITENED
from dissectjax.train import cross_entropy


def make_step(model: nn.Module, optimizer: optax.GradientTransformation, terms: Sequence[LossTerm]):
    """A jitted step; each term's ``fn(inter, batch)`` gets ``inter = {"layers": sown layers,
    "whitened": {module: z}, "params": params}``."""
    terms = tuple(terms)

    @jax.jit
    def step(params, batch_stats, opt_state, batch):
        def loss_fn(p):
            logits, out = model.apply({"params": p, "batch_stats": batch_stats}, batch["images"], train=True,
                                      mutable=["batch_stats", "intermediates", WHITENED])  # fmt: skip
            inter = {"layers": out.get("intermediates", {}), "whitened": out.get(WHITENED, {}), "params": p}
            loss, values = total_loss(cross_entropy(logits, batch["labels"]), terms, inter, batch)
            return loss, (out["batch_stats"], values)

        (loss, (stats, values)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, values

    return step


def scenes_with_masks(config: synthetic.SyntheticConfig, concepts: Sequence[int]):
    """(images uint8 [N, s, s, 3], scene labels int32 [N], masks bool [N, S, S, K]) for the target
    concept numbers ``concepts`` (Broden label numbers of the synthetic vocabulary)."""
    n, s = config.size, config.label_size
    images = np.zeros((n, config.image_size, config.image_size, 3), np.uint8)
    labels = np.zeros(n, np.int32)
    masks = np.zeros((n, s, s, len(concepts)), bool)
    for i in range(n):
        row = synthetic.generate_row(config, i)
        images[i] = row.image
        labels[i] = synthetic.sample_scene(config.seed, i, config.in_group).scene
        layers = [m for maps in row.pixel.values() for m in maps]
        for k, number in enumerate(concepts):
            masks[i, ..., k] = np.any([m == number for m in layers], axis=0) if layers else False
    return images, labels, masks


def shuffled_batches(n: int, batch: int, epochs: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(n // batch):
            yield order[i * batch : (i + 1) * batch]


def to_device(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}
