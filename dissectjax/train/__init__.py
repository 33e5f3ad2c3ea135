"""Training: one step factory and epoch driver (:mod:`~dissectjax.train.loop`), its
objective (:mod:`~dissectjax.train.losses`), per-class unit statistics as an optional
auxiliary output (:mod:`~dissectjax.train.class_stats`), and the scene classifiers'
recipe (:mod:`~dissectjax.train.scenes`)."""

from dissectjax.train.class_stats import ClassUnitStats
from dissectjax.train.loop import StatsSpec, TrainConfig, TrainState, fit, init_state, make_train_step, mirror
from dissectjax.train.losses import LossTerm, cross_entropy, total_loss
from dissectjax.train.scenes import SCENE_TRAINING, SceneData, train_scene_classifier

__all__ = [
    "SCENE_TRAINING",
    "ClassUnitStats",
    "LossTerm",
    "SceneData",
    "StatsSpec",
    "TrainConfig",
    "TrainState",
    "cross_entropy",
    "fit",
    "init_state",
    "make_train_step",
    "mirror",
    "total_loss",
    "train_scene_classifier",
]
