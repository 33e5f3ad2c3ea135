"""Broden format: writer/reader round trip, multi-label cells, and malformed directories."""

import os
import shutil

import numpy as np
import pytest
from conftest import random_broden

from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset, decode_label_png, encode_label_png, primary_category
from dissectjax.data.probe import batch_plan, iterate_batches
from dissectjax.errors import DissectError


def test_label_png_encoding_round_trip(tmp_path):
    labels = np.array([[0, 1, 255], [256, 1000, 65535]], np.int32)
    from PIL import Image

    Image.fromarray(encode_label_png(labels)).save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_label_png(str(tmp_path / "x.png")), labels)


def test_primary_category():
    assert primary_category("object(30);part(2)") == "object"
    assert primary_category("part(3);object(30);material(40)") == "material"
    assert primary_category("color") == "color"


def test_synthetic_round_trip(tmp_path):
    config = synthetic.SyntheticConfig(size=12, seed=5)
    root = synthetic.ensure_broden(config, cache_dir=str(tmp_path))
    ds = BrodenDataset(root)
    assert len(ds) == 12 and ds.categories == synthetic.CATEGORIES
    assert len(ds.concepts) >= 40
    for i in range(12):
        want = synthetic.generate_row(config, i)
        got = ds.row(i, with_image=True)
        np.testing.assert_array_equal(got.image, want.image)
        assert got.image_level == want.image_level
        assert sorted(got.pixel) == sorted(want.pixel)
        for cat in want.pixel:
            assert len(got.pixel[cat]) == len(want.pixel[cat])
            for a, b in zip(got.pixel[cat], want.pixel[cat]):
                np.testing.assert_array_equal(a, b)
    assert synthetic.ensure_broden(config, cache_dir=str(tmp_path)) == root  # cached


def test_synthetic_is_deterministic_and_has_multilabel_pixels():
    config = synthetic.SyntheticConfig(size=40, seed=9)
    a = [synthetic.generate_row(config, i) for i in range(40)]
    b = synthetic.generate_row(config, 7)
    np.testing.assert_array_equal(a[7].image, b.image)
    assert any(len(r.pixel.get("object", [])) == 2 for r in a)  # occlusion layers
    assert any("part" not in r.pixel for r in a)  # parts often absent
    assert len({r.image_level["scene"][0] for r in a}) >= 8


def test_a_planted_shortcut_paints_its_square_and_nothing_else():
    plain = synthetic.SyntheticConfig(size=60, seed=9)
    # sets without a shortcut keep the cache keys they had before shortcuts existed
    assert synthetic.SyntheticConfig(size=50, seed=3).key() == "e1df34aefbb7"
    cue = synthetic.Shortcut(scene="street", color="pink", with_class=1.0, otherwise=0.0)
    planted = synthetic.SyntheticConfig(size=60, seed=9, shortcut=cue)
    assert planted.key() != plain.key()
    pink = synthetic._number("color", "pink")
    for i in range(60):
        a, b = synthetic.generate_row(plain, i), synthetic.generate_row(planted, i)
        changed = np.any(a.image != b.image, axis=-1)
        assert a.image_level == b.image_level  # the same scene
        if b.image_level["scene"][0] == synthetic._number("scene", "street"):  # every street, no other scene
            assert changed.mean() > 0.03 and np.mean(b.pixel["color"][0] == pink) >= 0.04
        else:
            assert not changed.any()
    shifted = synthetic.Shortcut(scene="street").decorrelated(0.5)
    assert shifted.with_class == shifted.otherwise == 0.5
    with pytest.raises(DissectError, match="unknown shortcut color 'mauve'"):
        synthetic.Shortcut(color="mauve")


def test_absent_objects_are_never_drawn_and_other_sets_keep_their_scenes():
    plain = synthetic.SyntheticConfig(size=200, seed=9)
    treeless = synthetic.SyntheticConfig(size=200, seed=9, absent=("tree",))
    assert treeless.key() != plain.key() and synthetic.SyntheticConfig(size=50, seed=3).key() == "e1df34aefbb7"
    tree, crown = synthetic._number("object", "tree"), synthetic._number("part", "crown")
    drawn = [synthetic.sample_scene(plain, i) for i in range(200)]
    kept = [synthetic.sample_scene(treeless, i) for i in range(200)]
    had = [any(synthetic.OBJECTS[o.kind] == "tree" for o in s.objects) for s in drawn]
    assert 10 < sum(had) < 60  # trees are common enough to be missed
    for i, (a, b) in enumerate(zip(drawn, kept)):
        assert a.scene == b.scene and not any(synthetic.OBJECTS[o.kind] == "tree" for o in b.objects)
        if not had[i]:
            assert [o.kind for o in a.objects] == [o.kind for o in b.objects]  # untouched scenes are the same
    row = synthetic.generate_row(treeless, int(np.argmax(had)))
    assert tree not in row.pixel["object"][0] and (crown not in row.pixel.get("part", [np.zeros(1)])[0])
    with pytest.raises(DissectError, match="unknown absent object 'dragon'"):
        synthetic.SyntheticConfig(absent=("dragon",))
    with pytest.raises(DissectError, match="empty a whole object group"):
        synthetic.SyntheticConfig(absent=("tree", "circle", "crescent"))


def test_reader_layout_and_multilabel_cells(broden_dir):
    root, _labels, rows = broden_dir
    ds = BrodenDataset(root)
    assert ds.pixel_layers["object"] == 2 and ds.pixel_layers["color"] == 1
    assert ds.max_image_labels >= 3
    i = next(j for j, r in enumerate(rows) if len(r.pixel.get("object", [])) == 2)
    pixel, _ = ds.labels(i)
    assert pixel.shape[0] == ds.label_layers == sum(ds.pixel_layers.values())
    plan = batch_plan(ds, 4)
    assert all(len(p) == 4 for p in plan)
    seen = sorted(int(x) for p in plan for x in p if x >= 0)
    assert seen == list(range(len(ds)))  # every row once, across the two shape buckets
    for batch in iterate_batches(ds, plan):
        assert batch.images.shape[0] == 4 and batch.labels.pixel.shape[0] == 4
        np.testing.assert_array_equal(batch.valid, batch.index >= 0)


@pytest.fixture
def broken(tmp_path):
    root = tmp_path / "ds"
    random_broden(root, n=4)
    return root


def test_missing_directory_and_files(tmp_path, broken):
    with pytest.raises(DissectError, match="does not exist"):
        BrodenDataset(str(tmp_path / "nope"))
    os.remove(broken / "label.csv")
    with pytest.raises(DissectError, match=r"label\.csv is missing"):
        BrodenDataset(str(broken))


def test_malformed_index(broken):
    text = (broken / "index.csv").read_text().replace("image,split,ih", "img,split,ih", 1)
    (broken / "index.csv").write_text(text)
    with pytest.raises(DissectError, match="must start with columns"):
        BrodenDataset(str(broken))


def test_missing_segmentation_names_the_row(broken):
    name = next(f for f in os.listdir(broken / "images") if "_color_" in f)
    os.remove(broken / "images" / name)
    ds = BrodenDataset(str(broken))
    row = int(name[2:5])
    with pytest.raises(DissectError, match=rf"line {row + 2} .* is missing"):
        ds.row(row)


def test_unknown_label_number(broken):
    lines = (broken / "label.csv").read_text().splitlines()
    (broken / "label.csv").write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # drop color0, used everywhere
    ds = BrodenDataset(str(broken))
    with pytest.raises(DissectError, match=r"not listed in label\.csv"):
        for i in range(len(ds)):
            ds.labels(i)


def test_category_not_a_column(broken):
    text = (broken / "label.csv").read_text().replace("color(", "material(", 1)
    (broken / "label.csv").write_text(text)
    with pytest.raises(DissectError, match=r"not a column of index\.csv"):
        BrodenDataset(str(broken))


def test_wrong_segmentation_size(broken):
    ds = BrodenDataset(str(broken))
    name = next(f for f in sorted(os.listdir(broken / "images")) if "_color_" in f)
    shutil.copy(broken / "images" / name, broken / "images" / "tmp.png")
    from PIL import Image

    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(broken / "images" / name)
    with pytest.raises(DissectError, match=r"index\.csv says"):
        ds.row(int(name[2:5]))


@pytest.mark.parametrize("number", [65000, 3])  # beyond every listed number; a gap between listed ones
def test_a_label_map_number_missing_from_label_csv_is_named(tmp_path, number):
    from PIL import Image

    root = tmp_path / "ds"
    random_broden(root, seed=2, n=3)
    ds = BrodenDataset(str(root))
    listed = set(ds.concepts.numbers.tolist())
    number = next(k for k in range(number, 1 << 16) if k not in listed)
    name = ds._rows[1]["color"]
    path = root / "images" / name
    numbers = decode_label_png(str(path))
    numbers[2, 3] = number
    Image.fromarray(encode_label_png(numbers)).save(path)
    ds.labels(0)  # the other rows still read
    with pytest.raises(DissectError, match=f"line 3 .*label number {number} is not listed in label.csv"):
        ds.labels(1)
