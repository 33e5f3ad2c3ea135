"""Neuron specialization: which units serve which class, gathered during training.

Data flow: ``params, batch -> (loss, activations, activation gradients) -> per-class sums``
(:mod:`dissectjax.train.class_stats`, an auxiliary output of the one train step), then
views of those sums: anomalies (units training pushes up for a class where they are
low), units' preferred inputs, and ablation by unit edits to prove a role.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.checkpoint import init_variables
from dissectjax.edit import UnitEdit, with_edits
from dissectjax.evaluate import logits as model_logits
from dissectjax.evaluate import unit_means_and_logits
from dissectjax.train.class_stats import ClassUnitStats
from dissectjax.train.loop import StatsSpec, TrainConfig, fit, init_state, make_train_step

HIGHEST = jax.lax.Precision.HIGHEST


def train_with_stats(model: nn.Module, images: np.ndarray, labels: np.ndarray, layers: Sequence[str],
                     config: TrainConfig, num_classes: int = 10, log: Callable = lambda _: None,
                     progress: Callable = lambda it, **_: it):  # fmt: skip
    """Trains with ``config`` (Adam), gathering per-class unit statistics over all steps.

    Returns (params, stats, info); info holds the final training loss and the measured
    step time with and without the statistics (ms, same batch, both compiled).
    """
    variables = init_variables(model, images.shape[1:], config.seed)
    optimizer = config.optimizer(len(images) // config.batch_size)
    spec = StatsSpec(tuple(layers), num_classes)
    state = init_state(model, variables, optimizer, spec, images.shape[1:])
    last = {}

    def on_epoch(epoch, state, losses, values):
        last["loss"] = float(losses[-1])
        log(f"epoch {epoch + 1}/{config.epochs}: loss {last['loss']:.4f}")

    state = fit(make_train_step(model, optimizer, stats=spec), state, {"images": images, "labels": labels}, config,
                on_epoch, progress)  # fmt: skip
    batch = {"images": jnp.asarray(images[: config.batch_size]), "labels": jnp.asarray(labels[: config.batch_size])}
    info = {"loss": last["loss"], **step_times(model, optimizer, {"params": state.params}, batch, spec)}
    return state.params, jax.tree.map(np.asarray, state.class_stats), info


def step_times(model, optimizer, variables, batch, spec: StatsSpec, repeats: int = 50) -> dict:
    """Milliseconds per train step with and without the statistics (compiled, same batch)."""
    out = {}
    key = jax.random.PRNGKey(0)
    for tag, stats in (("step_ms_with_stats", spec), ("step_ms_without", None)):
        step = make_train_step(model, optimizer, stats=stats)
        state = init_state(model, variables, optimizer, stats, batch["images"].shape[1:])
        jax.block_until_ready(step(state, batch, key))
        start = time.perf_counter()
        for _ in range(repeats):
            result = step(state, batch, key)
        jax.block_until_ready(result)
        out[tag] = (time.perf_counter() - start) / repeats * 1000
    return out


# ---- views -----------------------------------------------------------------------------------
def _variables(params, edit: UnitEdit | None) -> dict:
    return with_edits({"params": params}, edit) if edit is not None else {"params": params}


def unit_activations(model: nn.Module, params, images: np.ndarray, layer: str, edit: UnitEdit | None = None,
                     batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mean activation per unit float32 [N, U], logits float32 [N, K]) over ``images``."""
    return unit_means_and_logits(model, _variables(params, edit), images, layer, batch_size)


@jax.jit
def _weighted_sums(onehot, weights, images):
    num = jnp.einsum("bk,bu,bhw->kuhw", onehot, weights, images, precision=HIGHEST)
    return num, jnp.einsum("bk,bu->ku", onehot, weights, precision=HIGHEST)


def weighted_mean_inputs(model: nn.Module, params, images: np.ndarray, labels: np.ndarray, layer: str,
                         num_classes: int = 10, batch_size: int = 500) -> np.ndarray:  # fmt: skip
    """float32 [K, U, H, W]: per class, the input images averaged with weights relu(a_iu).

    Inputs on which a unit does not fire (a <= 0) contribute nothing; where a unit never
    fires for a class the mean is zero. Images are gray [N, H, W, 1] (uint8 scaled to [0, 1]).
    """
    num = den = 0.0
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        a, _ = unit_means_and_logits(model, {"params": params}, x, layer, batch_size)
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


def accuracy_by_group(model: nn.Module, params, images, labels, groups: np.ndarray,
                      edit: UnitEdit | None = None) -> dict[str, float]:  # fmt: skip
    """Accuracy per distinct value of ``groups`` (e.g. style tags), optionally with unit edits."""
    return {g: float(np.mean(m > 0)) for g, m in margins_by_group(model, params, images, labels, groups, edit).items()}


def margins_by_group(model: nn.Module, params, images, labels, groups: np.ndarray,
                     edit: UnitEdit | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per group, the margins float32 [n]: true-class logit minus the best other logit (> 0: correct)."""
    logits = model_logits(model, _variables(params, edit), images, batch_size=1000)
    true = np.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    other = np.where(np.arange(logits.shape[1])[None] == labels[:, None], -np.inf, logits).max(axis=1)
    return {str(g): (true - other)[groups == g] for g in np.unique(groups)}
