"""TFDS builders for probe sets (array_record; prepared and read without TensorFlow).

    synthetic scenes / a Broden directory (manual_dir) --builder--> DATA_DIR/NAME/CONFIG/VERSION/
        features: image (PNG), pixel int32 [L, sh, sw] and image_labels int32 [M] (concept
        indices, -1 = none, as stored in the Broden files), plus concepts.csv beside the records

Importing this module registers ``dissectjax_scenes`` and ``dissectjax_broden``. Prepare with
:func:`prepare`; read with :class:`dissectjax.data.tfds_probe.TFDSProbe` (``--dataset
tfds:NAME[:split]``). Records keep the source's row order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from dissectjax.data.broden import BrodenDataset
from dissectjax.errors import DissectError

CONCEPTS_FILE = "concepts.csv"


class _ProbeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A probe set's rows as examples; subclasses say where the Broden-format rows come from."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "First release."}

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir  # before the base class asks for the info
        self._source: BrodenDataset | None = None
        super().__init__(**kwargs)

    def _probe(self, source_dir: str | None) -> BrodenDataset:
        raise NotImplementedError

    def _dataset(self) -> BrodenDataset:
        if self._source is None:
            self._source = self._probe(self._source_dir)
        return self._source

    def _info(self) -> tfds.core.DatasetInfo:
        ds = self._dataset()
        shapes = np.unique(ds.shapes, axis=0)
        if len(shapes) != 1:
            sizes = ", ".join(f"{ih}x{iw} images with {sh}x{sw} labels" for ih, iw, sh, sw in shapes[:3].tolist())
            raise DissectError(f"{ds.root}: a TFDS probe set needs one image and label size; this one has "
                               f"{len(shapes)} ({sizes}{', ...' if len(shapes) > 3 else ''}); expected rows of one "
                               "size: prepare each size as its own Broden directory")  # fmt: skip
        ih, iw, sh, sw = (int(x) for x in shapes[0])
        layers, most = max(ds.label_layers, 1), max(ds.max_image_labels, 1)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{type(self).__doc__} Concept vocabulary: {CONCEPTS_FILE} beside the records.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(ih, iw, 3), dtype=np.uint8, encoding_format="png"),
                    "pixel": tfds.features.Tensor(shape=(layers, sh, sw), dtype=np.int32, encoding="zlib"),
                    "image_labels": tfds.features.Tensor(shape=(most,), dtype=np.int32),
                }
            ),
            disable_shuffling=True,  # row i of the split is the source's i-th row of it
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        ds = self._dataset()
        splits = {}
        for i in range(len(ds)):
            splits.setdefault(ds.split_of(i) or "train", []).append(i)
        return {name: self._generate_examples(ds, rows) for name, rows in splits.items()}

    def _generate_examples(self, ds: BrodenDataset, rows: list[int]):
        for i in rows:
            pixel, image = ds.labels(i)
            if not pixel.shape[0]:
                pixel = np.full((1, *ds.label_size(i)), -1, np.int32)
            image = np.concatenate([image, np.full(max(1 - image.size, 0), -1, np.int32)])
            yield f"{i:08d}", {"image": Image.fromarray(ds.load_image(i)), "pixel": pixel, "image_labels": image}

    def _download_and_prepare(self, dl_manager, download_config):
        from dissectjax.results import write_concepts

        super()._download_and_prepare(dl_manager, download_config)
        write_concepts(os.path.join(self.data_dir, CONCEPTS_FILE), self._dataset().concepts)


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
    size: int = 1000
    seed: int = 1


class DissectjaxScenes(_ProbeBuilder):
    """dissectjax's synthetic scenes (colors, objects, parts, textures, scenes)."""

    BUILDER_CONFIGS: ClassVar[list] = [ScenesConfig(name="1000", size=1000), ScenesConfig(name="64", size=64)]

    def _probe(self, manual_dir):
        from dissectjax.data import synthetic

        c = self.builder_config
        return BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=c.size, seed=c.seed)))


class DissectjaxBroden(_ProbeBuilder):
    """A Broden-format directory (e.g. broden1_224), read from the builder's manual_dir."""

    def _probe(self, source_dir):
        expected = "a Broden-format directory (index.csv, label.csv, images/)"
        if not source_dir:
            raise DissectError(f"dissectjax_broden reads a Broden directory: give --source DIR, {expected}")
        if not os.path.isdir(source_dir):
            raise DissectError(f"source {source_dir} is not a directory; expected {expected}")
        if not os.path.isfile(os.path.join(source_dir, "index.csv")):
            raise DissectError(f"source {source_dir} holds no Broden index.csv; expected {expected}")
        return BrodenDataset(source_dir)


BUILDERS = {"dissectjax_scenes": DissectjaxScenes, "dissectjax_broden": DissectjaxBroden}


def prepare(name: str, data_dir: str, config: str | None = None, source_dir: str | None = None,
            progress: bool | None = None) -> str:  # fmt: skip
    """Prepares builder ``name`` (array_record) under ``data_dir``; returns the dataset's directory.

    ``source_dir``: the Broden directory for ``dissectjax_broden`` (the builder's manual data).
    ``progress``: TFDS's progress bars on stderr (a global TFDS setting; default: only when
    stderr is a terminal, so that a log holds nothing but messages).
    Bad input (an unknown builder or config, a source that is not a readable Broden directory,
    a ``data_dir`` that is not a directory or cannot be written) is a DissectError, and what the
    failed preparation created under ``data_dir`` is removed.
    """
    if name not in BUILDERS:
        raise DissectError(f"unknown builder {name!r}; builders: {', '.join(BUILDERS)}")
    builder_class = BUILDERS[name]
    configs = [c.name for c in builder_class.BUILDER_CONFIGS]
    if config is not None and config not in configs:
        takes = f"its configs are {', '.join(configs)}" if configs else "it takes no --config"
        raise DissectError(f"{name} has no config {config!r}; {takes}")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DissectError(f"--data-dir {data_dir} is a file; expected a directory to write the dataset into")
    kwargs = {"config": config} if config else {}
    tfds.display_progress_bar(sys.stderr.isatty() if progress is None else progress)
    with _removed_on_failure([data_dir, os.path.join(data_dir, "downloads"), os.path.join(data_dir, name)]):
        try:
            builder = builder_class(data_dir=data_dir, file_format="array_record", source_dir=source_dir, **kwargs)
            builder.download_and_prepare()
        except OSError as e:
            raise DissectError(f"cannot write the dataset under {data_dir}: {' '.join(str(e).split())}") from None
    return str(builder.data_dir)


@contextlib.contextmanager
def _removed_on_failure(paths: list[str]) -> Iterator[None]:
    """Removes those of ``paths`` (outermost first) that did not exist before, if the block fails."""
    existed = {p: os.path.exists(p) for p in paths}
    try:
        yield
    except BaseException:
        for path in paths:
            if not existed[path]:
                shutil.rmtree(path, ignore_errors=True)
        raise
