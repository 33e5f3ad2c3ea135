"""Debugging a network's mistakes at one layer: which units cause them, and local fixes.

    failing examples (images, right labels) + passing examples -> LayerData each
        -> blame(...)              per unit: failures fixed and passes broken by ablating it alone
        -> Blame.ranked()[:k]      the units to edit
        -> zero / mean / rescale / fine-tune only their parameters   (new variables)
        -> FixMeasure(...)(fix)    failing accuracy, clean accuracy, agreement, parameters changed

Blame is measured, not estimated: every unit is ablated on its own and the network above
the layer rerun on the stored activations (:func:`dissectjax.analysis.ablation.edit_sweep`,
vmapped on the device). Each fix is a pure edit of the parameter pytree, so it can be
saved as a checkpoint and its cost counted (:func:`changed_parameters`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.analysis.ablation import LAYER_BATCH, LayerData, ablation_values, edit_sweep
from dissectjax.edit import UnitEdit, with_edits
from dissectjax.edit.unit_edit import check_units, fold
from dissectjax.errors import DissectError
from dissectjax.evaluate import predict
from dissectjax.models.unit_wiring import unit_wiring
from dissectjax.models.wiring import Slice, from_unit_axis, read_slice, replace_slice, unit_axis

FIXES = ("zero", "mean", "rescale", "finetune")


@dataclasses.dataclass(frozen=True)
class TrueLabel:
    """A sweep's tally: (correct predictions, summed log-probability of the true label)."""

    def __call__(self, logits: jax.Array, labels: jax.Array, valid: jax.Array):
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
        truth = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logits, axis=-1) == labels) & valid
        return jnp.sum(correct.astype(jnp.int32)), jnp.sum(jnp.where(valid, truth, 0.0))


@dataclasses.dataclass(frozen=True)
class Blame:
    """What ablating each unit alone does, on F failing and P passing examples.

    fixed [U]: failing examples it turns right (net of any it turns wrong); broken [U]:
    passing examples it turns wrong (net); gain [U]: mean change of the right label's
    log-probability on the failing examples; loss [U]: its mean decrease on the passing ones.
    """

    fixed: np.ndarray
    broken: np.ndarray
    gain: np.ndarray
    loss: np.ndarray
    failing: int
    passing: int

    @property
    def score(self) -> np.ndarray:
        """float [U]: the share of failures fixed minus the share of passes broken."""
        return self.fixed / max(self.failing, 1) - self.broken / max(self.passing, 1)

    def ranked(self) -> np.ndarray:
        """Units by score, most to blame first; ties broken by ``gain - loss``."""
        return np.lexsort((-(self.gain - self.loss), -self.score))


def blame(model, variables, failing: LayerData, passing: LayerData, mode: str = "zero", chunk: int = 16,
          batch: int = LAYER_BATCH) -> Blame:  # fmt: skip
    """Ablates each unit of the layer alone (to zero, or to its mean over ``passing``) on the
    failing and the passing examples; see :class:`Blame`."""
    if failing.layer != passing.layer or failing.units != passing.units:
        raise DissectError(f"failing ({failing.layer}) and passing ({passing.layer}) examples of different layers")
    masks = np.concatenate([np.zeros((1, failing.units), np.float32), np.eye(failing.units, dtype=np.float32)])
    values = ablation_values(passing, mode)
    f_right, f_truth = edit_sweep(model, variables, failing, masks, values, TrueLabel(), chunk, batch)
    p_right, p_truth = edit_sweep(model, variables, passing, masks, values, TrueLabel(), chunk, batch)
    n_f, n_p = len(failing.labels), len(passing.labels)
    return Blame(
        fixed=f_right[1:] - f_right[0],
        broken=p_right[0] - p_right[1:],
        gain=(f_truth[1:] - f_truth[0]) / max(n_f, 1),
        loss=(p_truth[0] - p_truth[1:]) / max(n_p, 1),
        failing=n_f,
        passing=n_p,
    )


# ---- fixes: new variables --------------------------------------------------------------------
def zero_units(model, variables: Mapping, layer: str, units: Sequence[int], example=None) -> dict:
    """The units removed from the weights that read them (:func:`dissectjax.edit.fold`): a weight edit."""
    w = unit_wiring(model, layer, variables, example)
    return fold(model, variables, UnitEdit.zero(layer, check_units(units, w.units, layer), w.units), example)


def mean_units(variables: Mapping, layer: str, units: Sequence[int], means: np.ndarray) -> dict:
    """The units held at their mean (float [U]) where the layer is sown (``unit_edits``)."""
    return with_edits(variables, UnitEdit.to_values(layer, units, means))


def rescale_units(model, variables: Mapping, layer: str, units: Sequence[int], factor: float, example=None) -> dict:
    """The units' outgoing weights multiplied by ``factor``: every reader sees ``factor`` times
    the unit (exact: the readers are linear in it). ``factor = 0`` is zero ablation."""
    w = unit_wiring(model, layer, variables, example)
    if w.fold_refused:
        raise DissectError(f"cannot rescale {layer} in its readers' weights: {w.fold_refused}")
    units = check_units(units, w.units, layer)
    scale = np.ones(w.units, np.float32)
    scale[units] = factor
    out = dict(variables)
    for s in w.outgoing:
        out = replace_slice(out, s, _scaled(read_slice(out, s), scale, s))
    return out


def _scaled(x: jax.Array, scale: np.ndarray, where: Slice) -> jax.Array:
    view, axis = unit_axis(jnp.asarray(x), where)
    shape = [1] * view.ndim
    shape[axis] = len(scale)
    return from_unit_axis(view * jnp.asarray(scale).reshape(shape), where, x.shape)


def unit_parameter_mask(model, variables: Mapping, layer: str, units: Sequence[int], example=None) -> dict:
    """A pytree like ``variables["params"]`` of float32 0/1: 1 on the units' own parameters
    (their filters, biases, normalization) and on the weights that read them."""
    w = unit_wiring(model, layer, variables, example)
    units = check_units(units, w.units, layer)
    picked = np.zeros(w.units, np.float32)
    picked[units] = 1.0
    mask = {"params": jax.tree.map(jnp.zeros_like, variables["params"])}
    for s in (*w.incoming, *w.outgoing):
        if s.collection == "params":
            mask = replace_slice(mask, s, _scaled(jnp.ones_like(read_slice(mask, s)), picked, s))
    return mask["params"]


def finetune(model, variables: Mapping, images: np.ndarray, labels: np.ndarray, mask: Mapping | None = None,
             steps: int = 50, learning_rate: float = 1e-3, seed: int = 0, batch: int = 64) -> dict:  # fmt: skip
    """``steps`` of Adam on the cross-entropy of (images, labels), in evaluation mode (batch
    statistics frozen), updating only the parameters where ``mask`` is 1 (all where None).
    One compiled step serves every mask of a model (the whole network is an all-ones mask)."""
    if len(images) == 0:
        raise DissectError("fine-tuning needs at least one example")
    params = variables["params"]
    if mask is None:
        mask = jax.tree.map(jnp.ones_like, params)
    rest = {k: v for k, v in variables.items() if k != "params"}
    state = optax.adam(learning_rate).init(params)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        params, state = _finetune_step(model, learning_rate, rest, params, state, mask, jnp.asarray(images[pick]),
                                       jnp.asarray(labels[pick]))  # fmt: skip
    return {**variables, "params": params}


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A fine-tune whose rate was chosen on held-out examples: the variables, the rate, and
    the accuracy on the held-out share at each rate tried ({rate: accuracy})."""

    variables: dict
    learning_rate: float
    held_out_accuracy: dict


def finetune_selected(model, variables: Mapping, images: np.ndarray, labels: np.ndarray, mask: Mapping | None,
                      rates: Sequence[float], steps: int = 50, seed: int = 0,
                      held_out: float = 0.25) -> Tuned:  # fmt: skip
    """:func:`finetune` at each of ``rates`` on a random ``1 - held_out`` share of the examples;
    keeps the one most accurate on the rest (ties: the smaller rate, the smaller change). A
    baseline fine-tune has to be given its best rate, or it loses by a bad setting."""
    if not rates or any(not r > 0 for r in rates):
        raise DissectError(f"fine-tune rates must be positive numbers, got {list(rates)}")
    if len(labels) < 2:
        raise DissectError("a fine-tune whose rate is chosen needs at least 2 examples (one to fit, one to check)")
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = len(order) - min(len(order) - 1, max(1, round(held_out * len(order))))
    fit, check = order[:cut], order[cut:]
    tried = {}
    for rate in sorted(set(float(r) for r in rates)):
        tuned = finetune(model, variables, images[fit], labels[fit], mask, steps, rate, seed)
        accuracy = float(np.mean(predict(model, tuned, images[check]) == labels[check]))
        tried[rate] = (accuracy, tuned)
    rate = max(tried, key=lambda r: (tried[r][0], -r))
    return Tuned(tried[rate][1], rate, {r: a for r, (a, _) in tried.items()})


@functools.partial(jax.jit, static_argnames=("model",))
def _finetune_step(model, learning_rate, rest, params, state, mask, images, labels):
    """One masked Adam step: frozen entries (mask 0) never move."""

    def loss(p):
        logits = model.apply({**rest, "params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    updates, state = optax.adam(learning_rate).update(jax.grad(loss)(params), state, params)
    updates = jax.tree.map(lambda u, m: u * m, updates, mask)
    return optax.apply_updates(params, updates), state


# ---- measuring a fix --------------------------------------------------------------------------
def changed_parameters(before: Mapping, after: Mapping) -> int:
    """How many entries of ``params`` and ``batch_stats`` differ (unit edits held in the
    variables count one per edited unit)."""
    changed = 0
    for collection in ("params", "batch_stats"):
        a, b = before.get(collection, {}), after.get(collection, {})
        if jax.tree.structure(a) != jax.tree.structure(b):
            raise DissectError(f"the fix changed the structure of {collection}")
        changed += sum(int(np.count_nonzero(np.asarray(x) != np.asarray(y)))
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # fmt: skip
    for edit in jax.tree.leaves(after.get("unit_edits", {}), is_leaf=lambda n: isinstance(n, dict) and "mask" in n):
        changed += int(np.count_nonzero(np.asarray(edit["mask"])))
    return changed


@dataclasses.dataclass(frozen=True)
class FixResult:
    """One fix, measured. failing_accuracy: on the failing examples; shifted_accuracy: on the
    whole set they come from (None where not given); clean_accuracy:
    on clean held-out data; agreement: the share of clean examples the original network got
    right whose prediction the fix keeps."""

    name: str
    units: tuple[int, ...]
    failing_accuracy: float
    shifted_accuracy: float | None
    clean_accuracy: float
    agreement: float
    parameters_changed: int
    seconds: float
    setting: str = ""  # e.g. the fine-tune rate chosen

    def row(self) -> dict:
        return {**dataclasses.asdict(self), "units": " ".join(map(str, self.units))}


@dataclasses.dataclass(frozen=True)
class FixMeasure:
    """What every fix of one network is measured on. ``failing``, ``clean``, ``shifted``:
    (images, right labels); the original network's clean predictions are computed once.

    ``FixMeasure(model, original, failing, clean)(name, fixed, units, seconds) -> FixResult``
    """

    model: object
    original: Mapping
    failing: tuple
    clean: tuple
    shifted: tuple | None = None

    @functools.cached_property
    def _before(self) -> np.ndarray:
        return predict(self.model, self.original, self.clean[0])

    def _accuracy(self, variables: Mapping, data: tuple) -> float:
        return float(np.mean(predict(self.model, variables, data[0]) == data[1]))

    def __call__(self, name: str, fixed: Mapping, units: Sequence[int] = (), seconds: float = 0.0,
                 setting: str = "") -> FixResult:  # fmt: skip
        before, after = self._before, predict(self.model, fixed, self.clean[0])
        right = before == self.clean[1]
        return FixResult(
            name=name,
            units=tuple(int(u) for u in units),
            failing_accuracy=self._accuracy(fixed, self.failing),
            shifted_accuracy=None if self.shifted is None else self._accuracy(fixed, self.shifted),
            clean_accuracy=float(np.mean(after == self.clean[1])),
            agreement=float(np.mean(after[right] == before[right])) if right.any() else float("nan"),
            parameters_changed=changed_parameters(self.original, fixed),
            seconds=round(seconds, 3),
            setting=setting,
        )


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs) with every array ready, seconds it took)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start
