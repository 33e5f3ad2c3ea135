"""A prepared TFDS dataset as a probe set, read through ``tfds.data_source`` (no TensorFlow).

    DATA_DIR/NAME --data_source--> rows {image, labels...} --mapping--> ProbeDataset

Two kinds of dataset:

* dissectjax's own builders (:mod:`dissectjax.data.tfds_builders`): ``pixel``,
  ``image_labels`` and ``concepts.csv`` say everything;
* any other prepared dataset, with a mapping of its features to categories
  (``--tfds-map scene=label,object=segmentation_mask:150``): a ``ClassLabel`` feature is
  an image-level category whose concepts are its class names; an integer map feature
  ``[h, w]`` or ``[h, w, 1]`` is a pixel-level category with values 1..K (``:K``; 0 is
  unlabelled), or the class names of a labelled feature.
"""

from __future__ import annotations

import os

import numpy as np

from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import ProbeBatch
from dissectjax.errors import DissectError, first_line
from dissectjax.stats.tally import LabelBatch


def parse_mapping(text: str | None) -> dict[str, str]:
    """'scene=label,object=mask:150' -> {'scene': 'label', 'object': 'mask:150'}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        category, sep, feature = part.partition("=")
        if not sep or not category or not feature:
            raise DissectError(f"TFDS mapping entries are CATEGORY=FEATURE[:CLASSES], got {part!r}")
        mapping[category.strip()] = feature.strip()
    return mapping


def default_tfds_dir() -> str:
    """TFDS's default data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepared_builder(name: str, data_dir: str):
    """The TFDS builder of dataset ``name`` from its prepared files under ``data_dir`` alone: no
    builder code runs, nothing can be generated or downloaded. Not installed or not prepared
    there: a DissectError that says so."""
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        raise DissectError("tensorflow-datasets is not installed: pip install tensorflow-datasets") from None
    from tensorflow_datasets.core.read_only_builder import builder_from_files

    try:
        return builder_from_files(name, data_dir=data_dir)
    except Exception as e:  # tfds raises many types for "not prepared here"
        raise _not_prepared(repr(name), data_dir, e) from None


def _not_prepared(what: str, data_dir: str, error: Exception) -> DissectError:
    return DissectError(
        f"TFDS dataset {what} is not prepared under {data_dir!r} ({type(error).__name__}: {first_line(error)}); "
        "prepare it with array_record first (dissectjax prepare-tfds, or tfds build --file_format=array_record); "
        "nothing is downloaded"
    )


class TFDSProbe:
    """Rows of a prepared TFDS split (see the module docstring)."""

    def __init__(self, name: str, split: str | None, data_dir: str, mapping: dict[str, str] | None = None):
        builder = prepared_builder(name, data_dir)
        split = split or next(iter(builder.info.splits))
        try:
            self._source = builder.as_data_source(split=split)
        except Exception as e:  # tfds raises many types for "not prepared here"
            raise _not_prepared(f"{name!r} (split {split!r})", data_dir, e) from None
        self.name, self.split = name, split
        features = builder.info.features
        own = {"image", "pixel", "image_labels"} <= set(features.keys())
        concepts_file = os.path.join(str(builder.data_dir), "concepts.csv")
        if own and not mapping:
            from dissectjax.results import read_concepts

            self.concepts = read_concepts(concepts_file)
            self._pixel_features, self._image_features = [], []
            self.label_layers = features["pixel"].shape[0]
            self.max_image_labels = features["image_labels"].shape[0]
            label_shape = features["pixel"].shape[1:]
        else:
            if not mapping:
                raise DissectError(
                    f"{name} is not a dissectjax probe set; map its features to categories, e.g. "
                    f"--tfds-map scene=label,object=segmentation_mask:150 (features: {', '.join(features.keys())})"
                )
            self._build_vocabulary(features, mapping)
            label_shape = features[self._pixel_features[0][1]].shape[:2] if self._pixel_features else (1, 1)
        image_shape = features["image"].shape
        if None in image_shape or None in tuple(label_shape):
            raise DissectError(f"{name}: images or label maps vary in size; dissectjax needs one size per dataset")
        self._image_shape, self._label_shape = tuple(image_shape[:2]), tuple(int(x) for x in label_shape)
        self.shapes = np.tile(np.array([*self._image_shape, *self._label_shape], np.int64), (len(self), 1))

    def _build_vocabulary(self, features, mapping: dict[str, str]) -> None:
        names, category, categories = [], [], []
        self._pixel_features, self._image_features = [], []  # (category index, feature, first concept)
        for cat, spec in mapping.items():
            feature, _, count = spec.partition(":")
            if feature not in features:
                raise DissectError(
                    f"TFDS mapping {cat}={spec}: no feature {feature!r}; features: {', '.join(features)}"
                )
            f = features[feature]
            k = len(categories)
            categories.append(cat)
            class_names = list(getattr(f, "names", None) or [])
            first = len(names)
            if len(f.shape) == 0:  # image-level: a ClassLabel
                if not class_names:
                    raise DissectError(f"TFDS mapping {cat}={spec}: an image-level feature must be a ClassLabel")
                names += class_names
                self._image_features.append((k, feature, first))
            else:
                if count:
                    class_names = [f"{cat} {v}" for v in range(1, int(count) + 1)]
                elif class_names:
                    class_names = class_names[1:]  # class 0 is unlabelled
                else:
                    raise DissectError(f"TFDS mapping {cat}={spec}: give the number of classes, {cat}={feature}:K")
                names += class_names
                self._pixel_features.append((k, feature, first))
            category += [k] * (len(names) - first)
        self.concepts = Concepts(np.arange(1, len(names) + 1), tuple(names), np.array(category, np.int32),
                                 tuple(categories))  # fmt: skip
        self.label_layers = len(self._pixel_features)
        self.max_image_labels = len(self._image_features)

    def __len__(self) -> int:
        return len(self._source)

    def image_size(self, i: int) -> tuple[int, int]:
        return self._image_shape

    def label_size(self, i: int) -> tuple[int, int]:
        return self._label_shape

    @staticmethod
    def _rgb(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.uint8)
        return np.repeat(image, 3, axis=-1) if image.ndim == 3 and image.shape[-1] == 1 else image

    def _labels(self, record) -> tuple[np.ndarray, np.ndarray]:
        if not self._pixel_features and not self._image_features:
            return np.asarray(record["pixel"], np.int32), np.asarray(record["image_labels"], np.int32)
        pixel = np.full((max(self.label_layers, 1), *self._label_shape), -1, np.int32)
        for layer, (_, feature, first) in enumerate(self._pixel_features):
            values = np.asarray(record[feature]).reshape(self._label_shape).astype(np.int64)
            top = first + np.sum(self.concepts.category == self.concepts.category[first])
            concept = np.where(values > 0, first + values - 1, -1)
            pixel[layer] = np.where(concept < top, concept, -1)
        image = np.array([first + int(record[feature]) for _, feature, first in self._image_features] or [-1],
                         np.int32)  # fmt: skip
        return pixel, image

    def load_image(self, i: int) -> np.ndarray:
        return self._rgb(self._source[i]["image"])

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._labels(self._source[i])

    def load_batch(self, rows: np.ndarray, images: bool, labels: bool) -> ProbeBatch:
        """One read per row (image and labels decoded together); padding rows (-1) stay empty."""
        valid = rows >= 0
        records = dict(zip(np.flatnonzero(valid), self._source.__getitems__([int(r) for r in rows[valid]])))
        image_batch = np.zeros((len(rows), *self._image_shape, 3), np.uint8) if images else None
        label_batch = None
        if labels:
            pixel = np.full((len(rows), max(self.label_layers, 1), *self._label_shape), -1, np.int32)
            image = np.full((len(rows), max(self.max_image_labels, 1)), -1, np.int32)
        for j, record in records.items():
            if images:
                image_batch[j] = self._rgb(record["image"])
            if labels:
                p, m = self._labels(record)
                pixel[j, : p.shape[0]], image[j, : m.size] = p, m
        if labels:
            label_batch = LabelBatch(pixel, image, valid)
        return ProbeBatch(image_batch, label_batch, rows.astype(np.int64), valid)
