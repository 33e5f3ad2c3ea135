"""Training a scene classifier on the synthetic scenes (the demo's network and its variants).

SceneData (named splits) -> images, labels [, concept masks] -> fit(make_train_step(...))
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from dissectjax.checkpoint import init_variables
from dissectjax.data import synthetic
from dissectjax.data.splits import scene_split_seed
from dissectjax.errors import DissectError
from dissectjax.evaluate import accuracy
from dissectjax.train.loop import TrainConfig, fit, init_state, make_train_step, mirror, steps_per_epoch
from dissectjax.train.losses import LossTerm

# the committed scene classifiers' recipe (experiments/train_scenenet.py)
SCENE_TRAINING = TrainConfig(epochs=6, batch_size=64, learning_rate=2e-3, weight_decay=1e-4, schedule="warmup-cosine")


@dataclasses.dataclass(frozen=True)
class SceneData:
    """Training and validation scenes: sizes, resolution, and the named splits they come from."""

    train_size: int = 12000
    val_size: int = 1000
    image_size: int = 64
    train_split: str = "train"
    val_split: str = "val"
    shortcut: synthetic.Shortcut | None = None  # a planted cue in the training scenes only
    absent: tuple[str, ...] = ()  # objects the training scenes never show (a missing concept)

    def __post_init__(self):
        for field in ("train_size", "val_size", "image_size"):
            if getattr(self, field) < 1:
                raise DissectError(f"{field} must be a positive integer, got {getattr(self, field)}")
        scene_split_seed(self.train_split), scene_split_seed(self.val_split)
        self.config(self.train_split)  # an unknown absent object fails here, before any scene is drawn

    def config(self, split: str) -> synthetic.SyntheticConfig:
        train = split == self.train_split
        planted = {"shortcut": self.shortcut, "absent": self.absent} if train else {}
        size = self.train_size if train else self.val_size
        return synthetic.SyntheticConfig(size=size, seed=scene_split_seed(split), image_size=self.image_size, **planted)


# the strong recipe (checkpoints scenenet-strong*): the same network, twice the scenes, 10 epochs
STRONG_SCENE_TRAINING = dataclasses.replace(SCENE_TRAINING, epochs=10)
STRONG_SCENE_DATA = SceneData(train_size=24000)
RECIPES = {"demo": (SCENE_TRAINING, SceneData()), "strong": (STRONG_SCENE_TRAINING, STRONG_SCENE_DATA)}


def train_scene_classifier(
    model: nn.Module,
    config: TrainConfig = SCENE_TRAINING,
    data: SceneData = SceneData(),
    log: Callable[[str], None] = print,
    terms: Sequence[LossTerm] = (),
    concepts: Sequence[int] = (),
):
    """Trains ``model`` on synthetic scenes (mirrored at random); returns (variables, metrics).

    ``terms``: localizing loss terms (:mod:`dissectjax.analysis.localize`); ``concepts``: the
    Broden numbers of the target concepts whose masks [B, S, S, K] the terms read as ``batch["masks"]``.
    """
    log(f"generating {data.train_size} training and {data.val_size} validation scenes")
    train = {}
    if concepts:
        train["images"], train["labels"], train["masks"] = synthetic.generate_with_masks(
            data.config(data.train_split), concepts
        )
    else:
        train["images"], train["labels"] = synthetic.generate_classification(data.config(data.train_split))
    val_x, val_y = synthetic.generate_classification(data.config(data.val_split))
    variables = init_variables(model, (data.image_size, data.image_size, 3), config.seed)
    optimizer = config.optimizer(steps_per_epoch(data.train_size, config))
    step = make_train_step(model, optimizer, terms, augment=mirror)
    history = []
    start = time.perf_counter()

    def on_epoch(epoch, state, losses, term_values):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        val_acc = accuracy(model, variables, val_x, val_y)
        mean_loss = float(np.mean(jax.device_get(losses)))
        means = {k: round(float(np.mean([v[k] for v in jax.device_get(term_values)])), 4)
                 for k in (term_values[0] if term_values else {})}  # fmt: skip
        history.append({"epoch": epoch + 1, "loss": round(mean_loss, 4), "val_accuracy": round(val_acc, 4), **means})
        extra = "".join(f", {k} {v:.3f}" for k, v in means.items())
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {mean_loss:.3f}{extra}, validation accuracy {val_acc:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )

    state = fit(step, init_state(model, variables, optimizer), train, config, on_epoch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    metrics = {
        "val_accuracy": history[-1]["val_accuracy"],
        "train_accuracy": round(accuracy(model, variables, train["images"][:2000], train["labels"][:2000]), 4),
        "history": history,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return variables, metrics


def training_record(config: TrainConfig, data: SceneData) -> dict:
    """What a scene classifier's checkpoint records of how it was trained (``train_config``;
    ``shortcut`` and ``absent`` only where planted)."""
    return synthetic.planted_fields({**dataclasses.asdict(config), **dataclasses.asdict(data)})


def train_checkpoint(out: str, model_name: str = "scenenet", model_kwargs: dict | None = None,
                     config: TrainConfig = SCENE_TRAINING, data: SceneData = SceneData(),
                     terms: Sequence[LossTerm] = (), concepts: Sequence[int] = (), info: dict | None = None,
                     log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Trains a registered scene classifier and saves it as the checkpoint ``out``; returns its metrics.

    ``info`` is recorded in the checkpoint's config beside the training settings (e.g. a
    localizing recipe). Refuses an existing ``out`` before any training.
    """
    from dissectjax.checkpoint import save_checkpoint
    from dissectjax.models import build_model

    if os.path.exists(out):
        raise DissectError(f"checkpoint {out} already exists; remove it or choose another path")
    kwargs = {"num_classes": len(synthetic.SCENES), **(model_kwargs or {})}
    model = build_model(model_name, **kwargs)
    variables, metrics = train_scene_classifier(model, config, data, log=log, terms=terms, concepts=concepts)
    save_checkpoint(out, model_name, kwargs, (data.image_size, data.image_size, 3), variables,
                    dataset="synthetic-scenes", train_config=training_record(config, data), **(info or {}),
                    **metrics)  # fmt: skip
    return metrics
