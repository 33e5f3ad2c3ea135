"""Flax linen models that sow their dissectable layers, and a registry by name."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from dissectjax.errors import DissectError
from dissectjax.models.common import hashable_kwargs
from dissectjax.models.lenet import LeNet5
from dissectjax.models.nnx_bridge import nnx_model
from dissectjax.models.nnx_convnet import ConvNet
from dissectjax.models.plain import AlexNet, PlainNet, VGG16Net
from dissectjax.models.resnet import ResNet, ResNet18, ResNet50
from dissectjax.models.scenenet import SceneNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "scenenet": SceneNet,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "alexnet": AlexNet,
    "vgg16": VGG16Net,
    "lenet5": LeNet5,
    "nnx_convnet": lambda **kwargs: nnx_model(ConvNet, **kwargs),  # an NNX model, as a linen module
}


def build_model(name: str, **kwargs) -> nn.Module:
    """The registered model ``name`` built with ``kwargs`` (e.g. ``num_classes``)."""
    if name not in MODELS:
        raise DissectError(f"unknown model {name!r}; available models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**hashable_kwargs(kwargs))


__all__ = [
    "MODELS",
    "AlexNet",
    "LeNet5",
    "PlainNet",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "SceneNet",
    "VGG16Net",
    "build_model",
]
