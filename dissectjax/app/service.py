"""What the app computes: the report's views, plus live ablation on a loaded JAX model.

    Dissection (DIR) + checkpoint + labelled evaluation images
        -> views (concept query, unit, layer comparison)      from the saved counts
        -> ablate(layer, units) -> per-class accuracy table   computed now, by the model

Ablation reuses :mod:`dissectjax.analysis.ablation` (the layer's activations are computed once per
layer; each request reruns only the layers above it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from dissectjax.analysis.ablation import LayerData, class_counts, layer_data
from dissectjax.errors import DissectError
from dissectjax.report import AblationView, ConceptQuery, Dissection, LayerComparison, UnitView


@dataclasses.dataclass
class Classifier:
    """A loaded classifier and the labelled images its ablations are measured on."""

    model: object
    variables: dict
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int [N]
    classes: tuple[str, ...]
    source: str  # where the model came from, for the page


def load_classifier(checkpoint: str, data: str = "synthetic", images: int | None = 1000,
                    data_dir: str | None = None) -> Classifier:  # fmt: skip
    """A classifier checkpoint and the ``eval`` split of a labelled image set
    (:func:`dissectjax.data.labelled.open_labelled`: ``synthetic``, ``digits``, a class-folder
    directory or ``tfds:NAME[:SPLIT]``), at most ``images`` of them, at the checkpoint's input size."""
    from dissectjax.checkpoint import load_checkpoint
    from dissectjax.data.labelled import open_labelled

    model, variables, config = load_checkpoint(checkpoint, fold=True)  # whitened axes edit as plain units
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise DissectError(f"{checkpoint}: its model has no num_classes, so it is not a classifier to ablate live")
    labelled = open_labelled(data, "eval", images, tuple(config["input_shape"]), num_classes, data_dir=data_dir)
    return Classifier(model, variables, labelled.images, labelled.labels, labelled.class_names, checkpoint)


class AppService:
    """Answers the app's questions; every method validates its input (DissectError on bad input)."""

    MAX_LIMIT = 1000

    def __init__(self, dissection: Dissection, classifier: Classifier | None = None, stats=None):
        self.dissection = dissection
        self.classifier = classifier
        self.stats = stats  # ClassUnitStats or None
        self._layer_data: dict[str, LayerData] = {}
        self._sown: tuple[str, ...] | None = None
        self._lock = threading.Lock()  # one model computation at a time

    # ---- views from the saved results
    def layers(self) -> dict:
        d = self.dissection
        return {
            "model": d.summary.get("model"),
            "dataset": d.summary.get("dataset"),
            "layers": [
                {
                    "layer": n,
                    "units": r.units,
                    "detectors": r.detectors,
                    "unique": r.unique["total"],
                    "ablation": self.ablation_error(n) is None,
                }
                for n, r in d.layers.items()
            ],
            "classes": list(self.classifier.classes) if self.classifier else [],
            "live_model": self.classifier.source if self.classifier else None,
            "concepts": list(d.concepts.names),
        }

    def concept(self, name: str, layer: str | None, limit: int) -> ConceptQuery:
        if layer:
            self.dissection.layer(layer)
        if not 1 <= limit <= self.MAX_LIMIT:
            raise DissectError(f"limit must be between 1 and {self.MAX_LIMIT}, got {limit}")
        self.dissection.concept_index(name)
        return ConceptQuery(self.dissection, name, layer, limit)

    def unit(self, layer: str, unit: int) -> UnitView:
        self.dissection.check_unit(layer, unit)
        per_class = {}
        if self.ablation_error(layer) is None:
            data = self._data(layer)
            acts = data.acts[..., unit].mean(axis=(1, 2))  # [N]
            k = len(self.classifier.classes)
            counts = np.bincount(data.labels, minlength=k)
            sums = np.bincount(data.labels, weights=acts, minlength=k)
            per_class["mean activation"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        if self.stats is not None and layer in self.stats.grad and unit < self.stats.grad[layer].shape[1]:
            means = self.stats.means(layer)
            per_class["mean gradient (training)"] = means["grad"][:, unit]
        classes = self.classifier.classes if self.classifier else ()
        if per_class and len(next(iter(per_class.values()))) != len(classes):
            per_class = {}  # statistics of another class set: not comparable
        return UnitView(self.dissection, layer, unit, classes=classes, per_class=per_class)

    def compare(self, a: str, b: str) -> LayerComparison:
        self.dissection.layer(a), self.dissection.layer(b)
        return LayerComparison(self.dissection, a, b)

    # ---- live ablation
    def ablation_error(self, layer: str) -> str | None:
        """Why ``layer`` cannot be ablated live, or None if it can."""
        if self.classifier is None:
            return "no model is loaded: start the app with --checkpoint to ablate"
        from dissectjax.models.layers import sown_layer_names

        c = self.classifier
        if self._sown is None:  # traced once per service, not per request
            self._sown = sown_layer_names(c.model, c.variables, c.images[:1])
        sown = self._sown
        if layer not in sown:
            return (f"layer {layer!r} cannot be ablated live in {type(c.model).__name__}: units are edited where a "
                    f"layer is sown, and it sows {', '.join(sown)}")  # fmt: skip
        return None

    def _data(self, layer: str) -> LayerData:
        with self._lock:
            if layer not in self._layer_data:
                c = self.classifier
                self._layer_data[layer] = layer_data(c.model, c.variables, layer, c.images, c.labels)
            return self._layer_data[layer]

    def ablate(self, layer: str, units: Sequence[int], mode: str = "zero") -> AblationView:
        r = self.dissection.layer(layer)
        error = self.ablation_error(layer)
        if error:
            raise DissectError(error)
        if mode not in ("zero", "mean"):
            raise DissectError(f"mode must be 'zero' or 'mean', got {mode!r}")
        units = sorted(set(units))
        for u in units:
            self.dissection.check_unit(layer, u)
        if not units:
            raise DissectError("select at least one unit to ablate")
        data = self._data(layer)
        if data.acts.shape[-1] != r.units:
            raise DissectError(f"the model's {layer} has {data.acts.shape[-1]} units, the dissection {r.units}")
        masks = np.zeros((2, r.units), np.float32)
        masks[1, units] = 1.0
        with self._lock:
            counts = class_counts(self.classifier.model, self.classifier.variables, data, masks, mode)
        return AblationView(layer, units, self.classifier.classes, counts.recall(), counts.balanced_accuracy(),
                            len(data.labels))  # fmt: skip


def open_service(directory: str, checkpoint: str | None = None, stats: str | None = None, images: int = 1000,
                 with_model: bool = True, data: str = "synthetic",
                 data_dir: str | None = None) -> AppService:  # fmt: skip
    """The app's service for a dissection ``directory``: its checkpoint (default: the one the
    dissection recorded) loaded for live ablation on ``images`` held-out images of ``data``
    (:func:`load_classifier`), and per-class unit statistics from ``dissectjax specialize`` if given."""
    import os

    from dissectjax.report import Dissection
    from dissectjax.train.class_stats import ClassUnitStats

    dissection = Dissection.load(directory)  # every file checked (dissectjax.results)
    loaded = None
    if stats:  # before the model: it is cheap to read
        if not os.path.isfile(stats):
            raise DissectError(f"statistics file {stats} does not exist (write it with `dissectjax specialize`)")
        loaded = ClassUnitStats.load(stats)
    checkpoint = checkpoint or dissection.summary.get("checkpoint")
    classifier = None
    if checkpoint and with_model:
        if not os.path.isdir(checkpoint):
            raise DissectError(
                f"checkpoint {checkpoint} does not exist; give another checkpoint, or serve without a model"
            )
        classifier = load_classifier(checkpoint, data, images, data_dir)
    return AppService(dissection, classifier, loaded)
