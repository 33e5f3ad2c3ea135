"""Labelled image sets for per-class measurements: class folders of real JPEGs, TFDS, generated sets."""

import os
import sys

import numpy as np
import pytest
from conftest import class_folders
from PIL import Image

from dissectjax.data.labelled import LABELLED_SPLITS, fit_image, open_labelled, split_order
from dissectjax.errors import DissectError

RGB32, GRAY28 = (32, 32, 3), (28, 28, 1)


def ids(images, classes, per_class):
    """(class, k) of each flat-colored class_folders image [N, H, W, 3], read from its mean color."""
    mean = images.reshape(len(images), -1, 3).mean(axis=1)
    return [(round(r * classes / 255 - 0.5), round(g * per_class / 255 - 0.5)) for r, g, _ in mean]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """20 classes, 4 or 5 JPEGs each (40 x 30 and 50 x 70): (root, class names, counts per class)."""
    root = tmp_path_factory.mktemp("labelled") / "val"
    counts = [4, 5] * 10
    return str(root), class_folders(root, classes=20, per_class=counts), counts


def test_class_folders_sorted_labels_and_shapes(folders):
    root, names, counts = folders
    data = open_labelled(root, "eval", None, RGB32, 20)
    assert data.class_names == tuple(names) == tuple(sorted(names))
    assert (
        data.source == os.path.abspath(root) and data.split == "eval" and len(data) == sum((n + 1) // 2 for n in counts)
    )
    assert data.images.shape == (len(data), 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int32 and not data.images.flags.writeable
    assert [c for c, _ in ids(data.images, 20, 5)] == data.labels.tolist()
    gray = open_labelled(root, "rank", 7, GRAY28, 20)
    assert gray.images.shape == (7, 28, 28, 1) and gray.labels.tolist() == list(range(7))
    assert "7 images of 20 classes" in gray.summary()


def test_classes_txt_sets_the_output_order(folders, tmp_path):
    _, names, _ = folders
    root = tmp_path / "val"
    class_folders(root, classes=20, per_class=2)
    order = names[::-1]
    (root / "classes.txt").write_text("\n".join(order) + "\n\n")
    data = open_labelled(str(root), "eval", None, RGB32, 20)
    assert data.class_names == tuple(order)
    assert [order[data.labels[i]] for i in range(len(data))] == [names[c] for c, _ in ids(data.images, 20, 2)]
    (root / "classes.txt").write_text("\n".join([*order, "extra0", "extra1"]))  # folders are a subset
    data = open_labelled(str(root), "eval", None, RGB32, 22)
    assert data.class_names[-2:] == ("extra0", "extra1") and data.class_counts()[-2:].tolist() == [0, 0]


def test_the_split_rule_disjoint_halves_deterministic(folders):
    root, _, counts = folders
    rank, evaluation = (open_labelled(root, s, None, RGB32, 20) for s in ("rank", "eval"))
    r, e = ids(rank.images, 20, 5), ids(evaluation.images, 20, 5)
    assert not set(r) & set(e) and len(set(r) | set(e)) == sum(counts)
    assert all(k % 2 == 1 for _, k in r) and all(k % 2 == 0 for _, k in e)  # by sorted file name
    assert rank.class_counts().tolist() == [n // 2 for n in counts]
    assert evaluation.class_counts().tolist() == [(n + 1) // 2 for n in counts]
    again = open_labelled(root, "rank", None, RGB32, 20)
    np.testing.assert_array_equal(again.images, rank.images)
    np.testing.assert_array_equal(again.labels, rank.labels)


def test_count_is_balanced_round_robin(folders):
    root, _, _ = folders
    bars = []
    one_each = open_labelled(root, "eval", 20, RGB32, 20, progress=lambda it, **kw: bars.append(kw) or it)
    assert bars == [{"total": 20, "desc": "decoding images", "unit": "image"}]
    assert one_each.labels.tolist() == list(range(20))
    assert [k for _, k in ids(one_each.images, 20, 5)] == [0] * 20
    assert open_labelled(root, "rank", 25, RGB32, 20).labels.tolist() == [*range(20), *range(5)]
    assert len(open_labelled(root, "rank", 10_000, RGB32, 20)) == 40  # at most count


def test_split_order_skips_unlabelled_and_orders_by_turn():
    labels = np.array([1, -1, 1, 0, 1, 0, 0, 1, 1])
    assert split_order(labels, "eval").tolist() == [3, 0, 6, 4, 8]
    assert split_order(labels, "rank").tolist() == [5, 2, 7]
    assert split_order(labels, "eval", 2).tolist() == [3, 0]


def test_fit_image_resizes_the_shorter_side_and_crops_the_center():
    stripes = np.zeros((30, 60, 3), np.uint8)  # 60 wide: red | green (the middle half) | blue
    stripes[:, :15, 0], stripes[:, 15:45, 1], stripes[:, 45:, 2] = 255, 255, 255
    out = fit_image(Image.fromarray(stripes), (16, 16, 3))  # 30 x 60 -> 16 x 32 -> the middle 16 x 16
    assert out.shape == (16, 16, 3)
    assert out[:, 1:-1, 1].min() > 200 and out[:, 1:-1, [0, 2]].max() < 60
    tall = fit_image(Image.fromarray(stripes.transpose(1, 0, 2)), (8, 12, 1))  # wider target than tall image
    assert tall.shape == (8, 12, 1)


def test_errors_name_the_problem(folders, tmp_path):
    root, _, _ = folders
    with pytest.raises(DissectError, match=r"neither 'synthetic', 'shifted:SCENE:COLOR\[:P\]', 'digits', 'tfds:NAME"):
        open_labelled(str(tmp_path / "missing"), "eval", None, RGB32, 20)
    with pytest.raises(DissectError, match="unknown labelled split 'test'; splits: rank, eval"):
        open_labelled(root, "test", None, RGB32, 20)
    with pytest.raises(DissectError, match="must be a positive integer, got 0"):
        open_labelled(root, "eval", 0, RGB32, 20)
    with pytest.raises(DissectError, match="takes 2-channel images"):
        open_labelled(root, "eval", None, (32, 32, 2), 20)
    with pytest.raises(
        DissectError, match=r"has 20 class folders but the checkpoint has 10 outputs; give a classes\.txt listing"
    ):
        open_labelled(root, "eval", None, RGB32, 10)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(DissectError, match="holds no class folders"):
        open_labelled(str(tmp_path / "flat"), "eval", None, RGB32, 20)


def test_folder_errors(tmp_path):
    root = tmp_path / "val"
    names = class_folders(root, classes=3, per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DissectError, match=r"class folder .*empty holds no images"):
        open_labelled(str(root), "eval", None, RGB32, 4)
    (root / "empty" / "notes.txt").unlink()
    (root / "empty").rmdir()
    (root / "classes.txt").write_text("\n".join(names[:2]))
    with pytest.raises(DissectError, match=r"does not list the class folder.* class02"):
        open_labelled(str(root), "eval", None, RGB32, 3)
    (root / "classes.txt").write_text("\n".join([*names, names[0]]))
    with pytest.raises(DissectError, match="lists class00 more than once"):
        open_labelled(str(root), "eval", None, RGB32, 4)
    (root / "classes.txt").write_text("\n".join(names))
    with pytest.raises(DissectError, match=r"classes\.txt lists 3 classes but the checkpoint has 5 outputs"):
        open_labelled(str(root), "eval", None, RGB32, 5)
    (root / names[1] / "img00.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DissectError, match=r"class01.img00\.jpg: not a readable image \(UnidentifiedImageError"):
        open_labelled(str(root), "eval", None, RGB32, 3)
    whole = (root / names[2] / "img00.jpg").read_bytes()
    (root / names[1] / "img00.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(DissectError, match=r"class01.img00\.jpg: not a readable image \(OSError"):
        open_labelled(str(root), "eval", None, RGB32, 3)
    single = tmp_path / "single"
    class_folders(single, classes=3, per_class=1)
    assert len(open_labelled(str(single), "eval", None, RGB32, 3)) == 3
    with pytest.raises(DissectError, match="the rank split holds no images"):
        open_labelled(str(single), "rank", None, RGB32, 3)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A prepared TFDS classification dataset (array_record, like tests/data/test_tfds.py's):
    train 7 and validation 11 records, classes a, b, c (record i has class (i * i) % 3),
    images of varying size whose red level is 20 i + 10."""
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets is not installed (pip install -e .[tfds])"
    )

    def image(i):
        return Image.new("RGB", (20 + i, 16), (20 * i + 10, 100, 50))

    class TinyClasses(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}  # fmt: skip
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                         disable_shuffling=True)  # fmt: skip

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(7), "validation": self._generate_examples(11)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": image(i), "label": (i * i) % 3}

    class ImagesOnly(TinyClasses, skip_registration=True):
        def _info(self):
            features = {"image": tfds.features.Image(shape=(8, 8, 3), dtype=np.uint8)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": image(0).resize((8, 8))}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for builder in (TinyClasses, ImagesOnly):
        builder(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_classification_set(tiny_tfds):
    labels = np.array([(i * i) % 3 for i in range(11)])  # validation: record order within each class
    data = open_labelled("tfds:tiny_classes", "eval", None, RGB32, 3, data_dir=tiny_tfds)
    assert data.source == "tfds:tiny_classes:validation" and data.class_names == ("a", "b", "c")
    order = split_order(labels, "eval")
    np.testing.assert_array_equal(data.labels, labels[order])
    records = np.round((data.images[..., 0].mean(axis=(1, 2)) - 10) / 20).astype(int)
    assert records.tolist() == order.tolist() and data.images.shape == (len(order), 32, 32, 3)
    rank = open_labelled("tfds:tiny_classes", "rank", 2, GRAY28, 3, data_dir=tiny_tfds)
    assert rank.labels.tolist() == [0, 1] and rank.images.shape == (2, 28, 28, 1)
    train = open_labelled("tfds:tiny_classes:train", "eval", None, RGB32, 3, data_dir=tiny_tfds)
    assert train.source == "tfds:tiny_classes:train" and len(train) == 4
    assert "tensorflow" not in sys.modules  # read without TensorFlow


def test_tfds_errors(tiny_tfds, tmp_path):
    with pytest.raises(DissectError, match=r"'nothing_here' is not prepared under .*nothing is downloaded"):
        open_labelled("tfds:nothing_here", "eval", None, RGB32, 3, data_dir=tiny_tfds)
    with pytest.raises(DissectError, match="has no split 'test'; splits: train, validation"):
        open_labelled("tfds:tiny_classes:test", "eval", None, RGB32, 3, data_dir=tiny_tfds)
    with pytest.raises(DissectError, match="tfds:tiny_classes:validation has 3 classes but the checkpoint has 10"):
        open_labelled("tfds:tiny_classes", "eval", None, RGB32, 10, data_dir=tiny_tfds)
    with pytest.raises(DissectError, match="needs an Image and a ClassLabel feature"):
        open_labelled("tfds:images_only", "eval", None, RGB32, 3, data_dir=tiny_tfds)


def test_synthetic_scenes_are_the_scene_splits():
    from dissectjax.data.splits import SCENE_CLASSES, scene_images

    for split in LABELLED_SPLITS:
        data = open_labelled("synthetic", split, 12, (64, 64, 3), len(SCENE_CLASSES))
        x, y = scene_images(12, split)
        np.testing.assert_array_equal(data.images, x)
        np.testing.assert_array_equal(data.labels, y)
    small = open_labelled("synthetic", "eval", 5, (24, 32, 3), 12)
    assert small.images.shape == (5, 24, 32, 3) and small.class_names == SCENE_CLASSES
    with pytest.raises(DissectError, match="synthetic has 12 classes but the checkpoint has 10 outputs"):
        open_labelled("synthetic", "eval", 5, RGB32, 10)
    with pytest.raises(DissectError, match="scenes are RGB"):
        open_labelled("synthetic", "eval", 5, GRAY28, 12)


def test_digits():
    rank, evaluation = (open_labelled("digits", s, 20, (32, 32, 1), 10) for s in LABELLED_SPLITS)
    assert rank.images.shape == (20, 32, 32, 1) and rank.class_names == tuple("0123456789")
    assert set(rank.labels.tolist()) <= set(range(10)) and not np.array_equal(rank.images, evaluation.images)
    rgb = open_labelled("digits", "eval", 20, (28, 28, 3), 10)
    assert rgb.images.shape == (20, 28, 28, 3)
    np.testing.assert_array_equal(rgb.labels, evaluation.labels)
    assert np.array_equal(rgb.images[..., 0], rgb.images[..., 2])
    with pytest.raises(DissectError, match="digits has 10 classes but the checkpoint has 12 outputs"):
        open_labelled("digits", "eval", 20, RGB32, 12)
