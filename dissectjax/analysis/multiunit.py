"""Is a concept carried by one unit or spread over many? Learned linear combinations.

For every concept, a per-pixel logistic regression on a layer's (upsampled) units, trained
with optax on sampled pixels, class-balanced per concept, gives a direction in the
layer's channel space. That direction, and the average of the concept's k best single
units (k = 1, 2, 4, ...), are then dissected exactly like units (same quantile, same
IoU), through :class:`dissectjax.analysis.chimera.ProjectedSource`, all in one run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.dissect.sources import labelled_pixels


def pixel_samples(source, probe, layer: str, per_image: int = 64, seed: int = 0, batch_size: int = 50):
    """Sampled pixels: upsampled activations X float32 [P, U] and concept presence Y bool [P, C]."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for up, present in labelled_pixels(source, probe, layer, batch_size):
        for j in range(len(present)):
            at = rng.choice(up.shape[1], min(per_image, up.shape[1]), replace=False)
            xs.append(up[j, at])
            ys.append(present[j, at])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def fit_concepts(x: np.ndarray, y: np.ndarray, steps: int = 300, learning_rate: float = 0.05, seed: int = 0):
    """Per-concept logistic regressions, class-balanced; returns directions W float32 [U, C].

    Trained on standardized units; the returned direction acts on raw activations (its
    bias is dropped: a constant shift does not change which pixels pass a quantile).
    """
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = jnp.asarray((x - mean) / std)
    target = jnp.asarray(y, jnp.float32)
    share = np.clip(y.mean(0), 1e-6, 1 - 1e-6)
    pos, neg = jnp.asarray(0.5 / share), jnp.asarray(0.5 / (1 - share))
    params = {"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros(y.shape[1])}
    opt = optax.adam(learning_rate)

    def loss(p):
        logits = z @ p["w"] + p["b"]
        per = optax.sigmoid_binary_cross_entropy(logits, target)
        return jnp.mean(per * (target * pos + (1 - target) * neg))

    @jax.jit
    def step(p, state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state = opt.init(params)
    for _ in range(steps):
        params, state, _ = step(params, state)
    return (np.asarray(params["w"]) / std[:, None]).astype(np.float32)


def top_k_views(unit_iou: np.ndarray, unit_std: np.ndarray, ks=(1, 2, 4, 8)) -> dict[str, np.ndarray]:
    """For each k, a view [U, C] whose column c averages concept c's k best units (standardized)."""
    order = np.argsort(-unit_iou, axis=0, kind="stable")  # [U, C]
    views = {}
    for k in ks:
        m = np.zeros_like(unit_iou, dtype=np.float32)
        for c in range(unit_iou.shape[1]):
            best = order[:k, c]
            m[best, c] = 1.0 / (k * unit_std[best])
        views[f"top-{k}"] = m
    return views
