"""ablate / match / transplant on converted ResNet-18 checkpoints and a class-folder image set
(real JPEG files, 20 classes), through the real command line; and bad input to them."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import class_folders, convert_resnet18

from dissectjax.checkpoint import load_checkpoint
from dissectjax.cli import main

CLASSES, PER_CLASS, SIZE = 20, 6, 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folders")
    names = class_folders(tmp / "images", classes=CLASSES, per_class=PER_CLASS)
    return str(tmp / "images"), names, convert_resnet18(tmp, 0, CLASSES, SIZE), convert_resnet18(tmp, 1, CLASSES, SIZE)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ablate_top_units_for_a_class_on_class_folders(setup, tmp_path, capsys):
    data, names, a, _ = setup
    code, out, err = run(["ablate", "--checkpoint", a, "--layer", "layer4", "--data", data, "--top-for-class",
                          names[3], "--count", "5", "--quiet", "--out", tmp_path / "abl"], capsys)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "abl" / "ablation.csv")))
    assert [r["class"] for r in rows] == names
    assert all(int(r["images"]) == PER_CLASS // 2 for r in rows)  # the eval split: every other image of a class
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert len(summary["units"]) == 5 and summary["data"] == data and summary["images"] == CLASSES * PER_CLASS // 2
    assert f"units most damaging to {names[3]} on the rank split ({CLASSES * PER_CLASS // 2} images)" in err
    assert "mean balanced accuracy" in out


def test_match_and_transplant_inner_units(setup, tmp_path, capsys):
    data, _, a, b = setup
    code, _, err = run(["match", "--a", a, "--b", a, "--layer", "layer4_1/relu1", "--data", data, "--quiet",
                        "--out", tmp_path / "self"], capsys)  # fmt: skip
    assert code == 0, err
    assert all(r["unit_a"] == r["slot_b"] for r in csv.DictReader(open(tmp_path / "self" / "matching.csv")))
    out = tmp_path / "moved"
    code, stdout, err = run(["transplant", "--source", a, "--target", b, "--layer", "layer4_1/relu1", "--units",
                             "3,7", "--slots", "10,11", "--data", data, "--quiet", "--out", out], capsys)  # fmt: skip
    assert code == 0, err
    assert "held-out images of" in stdout
    _, source, _ = load_checkpoint(a)
    _, target, _ = load_checkpoint(b)
    _, moved, config = load_checkpoint(str(out))
    assert config["transplant"]["layer"] == "layer4_1/relu1" and config["transplant"]["slots"] == [10, 11]
    scale = ("params", "layer4_1", "bn1", "scale")
    get = lambda tree: np.asarray(tree[scale[0]][scale[1]][scale[2]][scale[3]])
    np.testing.assert_array_equal(get(moved)[[10, 11]], get(source)[[3, 7]])
    untouched = np.setdiff1d(np.arange(512), [10, 11])
    np.testing.assert_array_equal(get(moved)[untouched], get(target)[untouched])


def test_a_residual_stream_is_not_transplanted(setup, tmp_path, capsys):
    data, _, a, b = setup
    code, _, err = run(["transplant", "--source", a, "--target", b, "--layer", "layer4", "--units", "1",
                        "--slots", "1", "--data", data, "--quiet", "--out", tmp_path / "x"], capsys)  # fmt: skip
    assert code == 2 and "layer4 is a residual stream" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("empty-class", "holds no images"),
        ("corrupt", "img00.jpg: not a readable image"),
        ("classes", "class folders but the checkpoint has 20 outputs"),
        ("layer", "unknown layer 'layer9'"),
        ("unit", "unit 512 is out of range for layer layer4"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(setup, tmp_path, capsys, case, fragment):
    data, names, a, _ = setup
    if case in ("empty-class", "corrupt", "classes"):
        data = tmp_path / "images"
        class_folders(data, classes=CLASSES if case != "classes" else 7, per_class=2)
        if case == "empty-class":
            for f in os.listdir(data / names[4]):
                os.remove(data / names[4] / f)
        if case == "corrupt":
            (data / names[2] / "img00.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    layer = "layer9" if case == "layer" else "layer4"
    units = "512" if case == "unit" else "1"
    code, _, err = run(["ablate", "--checkpoint", a, "--layer", layer, "--units", units, "--data", data, "--quiet",
                        "--out", tmp_path / "out"], capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()
