"""dissectjax: Network Dissection in JAX/Flax, and surgery on the units it labels.

    variables, probe batch -> activations -> thresholds, counts -> IoU, labels -> results
    variables -> UnitEdit / transplant -> variables -> evaluate, ablation measures

The curated public API (``import dissectjax as dj``); docs/ARCHITECTURE.md maps the rest.

>>> import dissectjax as dj
>>> config = dj.DissectConfig(quantile=0.01)
>>> config.quantile, config.iou_threshold
(0.01, 0.04)
>>> edit = dj.UnitEdit.zero("conv5", [3, 17], num_units=128)
>>> edit.units.tolist()
[3, 17]
>>> sorted(dj.MODELS)[:3]
['alexnet', 'lenet5', 'nnx_convnet']
"""

from dissectjax import evaluate
from dissectjax.checkpoint import load_checkpoint, save_checkpoint
from dissectjax.data.broden import BrodenDataset
from dissectjax.data.memory import InMemoryProbe
from dissectjax.data.open import open_probe
from dissectjax.dissect import (
    ArraySource,
    DissectConfig,
    LayerResult,
    ModelSource,
    ProbeDataset,
    Source,
    dissect,
    run_dissection,
)
from dissectjax.edit import UnitEdit, fold, layer_matching, transplant, with_edits
from dissectjax.errors import DissectError
from dissectjax.models import MODELS, build_model
from dissectjax.parallel import DataParallel
from dissectjax.results import read_results, write_results
from dissectjax.version import __version__

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
    "ProbeDataset",
    "Source",
    "UnitEdit",
    "__version__",
    "build_model",
    "dissect",
    "evaluate",
    "fold",
    "layer_matching",
    "load_checkpoint",
    "open_probe",
    "read_results",
    "run_dissection",
    "save_checkpoint",
    "transplant",
    "with_edits",
    "write_results",
]
