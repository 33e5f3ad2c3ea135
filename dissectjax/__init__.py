"""dissectjax: Network Dissection in JAX/Flax.

    params, batch -> activations -> statistics (thresholds, counts) -> IoU, labels

The main entry points; everything else lives in its module (see README.md, Layout).
"""

from dissectjax.checkpoint import load_checkpoint, save_checkpoint
from dissectjax.data.broden import BrodenDataset
from dissectjax.data.memory import InMemoryProbe
from dissectjax.dissect import DissectConfig, LayerResult, ResumeFile, dissect
from dissectjax.errors import DissectError
from dissectjax.models import MODELS, build_model
from dissectjax.parallel import DataParallel
from dissectjax.sources import ArraySource, ModelSource
from dissectjax.surgery import replace_activations, transplant, unit_mask, zero_out

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "ArraySource",
    "BrodenDataset",
    "DataParallel",
    "DissectConfig",
    "DissectError",
    "InMemoryProbe",
    "LayerResult",
    "ModelSource",
    "ResumeFile",
    "build_model",
    "dissect",
    "load_checkpoint",
    "replace_activations",
    "save_checkpoint",
    "transplant",
    "unit_mask",
    "zero_out",
]
