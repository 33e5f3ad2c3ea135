"""Probe sets as TFDS datasets: prepared and read without TensorFlow, dissected like the originals."""

import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed (pip install -e .[tfds])"
)

from conftest import CHECKPOINT  # noqa: E402

from dissectjax.cli import main  # noqa: E402
from dissectjax.data import synthetic  # noqa: E402
from dissectjax.data.broden import BrodenDataset  # noqa: E402
from dissectjax.data.tfds_builders import prepare  # noqa: E402
from dissectjax.data.tfds_probe import TFDSProbe, parse_mapping  # noqa: E402
from dissectjax.errors import DissectError  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    path = prepare("dissectjax_scenes", data_dir, config="64")
    broden = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=64, seed=1)))
    return data_dir, path, broden


def test_prepared_without_tensorflow_and_rows_round_trip(scenes):
    data_dir, path, broden = scenes
    assert "tensorflow" not in sys.modules  # tfds never imported TensorFlow
    assert os.path.isfile(os.path.join(path, "concepts.csv"))
    probe = TFDSProbe("dissectjax_scenes/64", None, data_dir)
    assert len(probe) == len(broden) and probe.concepts.names == broden.concepts.names
    assert probe.concepts.categories == broden.concepts.categories
    for i in (0, 17, 63):
        np.testing.assert_array_equal(probe.load_image(i), broden.load_image(i))
        (p, m), (bp, bm) = probe.labels(i), broden.labels(i)
        np.testing.assert_array_equal(p, bp)
        np.testing.assert_array_equal(m[: bm.size], bm)


def test_dissection_from_tfds_equals_the_broden_directory(scenes, tmp_path):
    data_dir, _, _ = scenes
    common = ["--checkpoint", CHECKPOINT,
              "--layers", "conv5", "--no-resume", "--no-report", "--quiet"]  # fmt: skip
    assert main(["dissect", "--dataset", "tfds:dissectjax_scenes/64", "--tfds-data-dir", data_dir,
                 "--out", str(tmp_path / "a"), *common]) == 0  # fmt: skip
    assert main(["dissect", "--dataset", "synthetic:64", "--out", str(tmp_path / "b"), *common]) == 0
    with np.load(tmp_path / "a" / "conv5" / "counts.npz") as a, np.load(tmp_path / "b" / "conv5" / "counts.npz") as b:
        for key in ("thresholds", "intersection", "unit_area", "concept_area"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class GenericSeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Someone else's dataset: an image, a segmentation mask (0 = unlabelled) and a scene class."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(16, 16, 3), dtype=np.uint8),
                    "segmentation_mask": tfds.features.Tensor(shape=(8, 8), dtype=np.int32),
                    "label": tfds.features.ClassLabel(names=["beach", "forest", "city"]),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        from PIL import Image

        for i in range(6):
            rng = np.random.default_rng(i)
            mask = rng.integers(0, 4, (8, 8)).astype(np.int32)
            yield i, {"image": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
                      "segmentation_mask": mask, "label": i % 3}  # fmt: skip


def test_any_prepared_dataset_through_a_feature_mapping(tmp_path):
    GenericSeg(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    with pytest.raises(DissectError, match="map its features to categories"):
        TFDSProbe("generic_seg", None, str(tmp_path))
    probe = TFDSProbe("generic_seg", "train", str(tmp_path), parse_mapping("object=segmentation_mask:3,scene=label"))
    assert probe.concepts.names == ("object 1", "object 2", "object 3", "beach", "forest", "city")
    assert probe.concepts.categories == ("object", "scene")
    pixel, image = probe.labels(4)
    mask = np.random.default_rng(4).integers(0, 4, (8, 8))
    np.testing.assert_array_equal(pixel[0], np.where(mask > 0, mask - 1, -1))
    assert image.tolist() == [3 + 4 % 3]
    batch = probe.load_batch(np.array([4, 5, -1]), images=True, labels=True)
    np.testing.assert_array_equal(batch.labels.pixel[0], pixel)
    assert batch.images.shape == (3, 16, 16, 3) and not batch.labels.valid[2]
    with pytest.raises(DissectError, match="give the number of classes"):
        TFDSProbe("generic_seg", None, str(tmp_path), parse_mapping("object=segmentation_mask"))
    with pytest.raises(DissectError, match="no feature 'mask'"):
        TFDSProbe("generic_seg", None, str(tmp_path), parse_mapping("object=mask:3"))
    with pytest.raises(DissectError, match="CATEGORY=FEATURE"):
        parse_mapping("object")


def test_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(DissectError, match=r"is not prepared under .*nothing is downloaded"):
        TFDSProbe("dissectjax_scenes/64", None, str(tmp_path))


def padded_layers(*maps):
    """The label layer stacks [L_i, sh, sw], padded with empty (-1) layers to the longest."""
    layers = max(len(m) for m in maps)
    return [np.concatenate([m, np.full((layers - len(m), *m.shape[1:]), -1, m.dtype)]) for m in maps]


def test_broden_directory_builder(tmp_path):
    from conftest import random_broden

    random_broden(tmp_path / "mixed")  # two label sizes: one TFDS feature shape cannot hold both
    with pytest.raises(DissectError, match="one image and label size"):
        prepare("dissectjax_broden", str(tmp_path / "tfds_mixed"), source_dir=str(tmp_path / "mixed"))
    random_broden(tmp_path / "uniform", sizes=((12, 12),))
    prepare("dissectjax_broden", str(tmp_path / "tfds"), source_dir=str(tmp_path / "uniform"))
    broden = BrodenDataset(str(tmp_path / "uniform"), split="val")
    probe = TFDSProbe("dissectjax_broden", "val", str(tmp_path / "tfds"))
    assert len(probe) == len(broden) > 0
    for i in range(len(probe)):
        np.testing.assert_array_equal(probe.load_image(i), broden.load_image(i))
        ours, theirs = probe.labels(i)[0], broden.labels(i)[0]  # a split may need fewer layers than the whole set
        np.testing.assert_array_equal(*padded_layers(ours, theirs))
    with pytest.raises(DissectError, match=r"holds no Broden index\.csv"):
        prepare("dissectjax_broden", str(tmp_path / "tfds2"), source_dir=str(tmp_path))
