"""The real Broden's quirks: labels in several categories, ';' cells, splits, a missing file,
and a BGR (Caffe-style) converted network dissected on it from the command line."""

import json
import os

import numpy as np
import pytest

from dissectjax.cli import main
from dissectjax.data.broden import BrodenDataset, BrodenRow, LabelInfo, write_broden
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ArraySource
from dissectjax.errors import DissectError

CATEGORIES = ("color", "object", "part", "scene")
LABELS = [
    LabelInfo(1, "red", "color(5)"), LabelInfo(2, "green", "color(4)"),
    LabelInfo(3, "person", "object(6);part(1)"),  # a label that names two categories, as Broden's do
    LabelInfo(5, "car", "object(4)"), LabelInfo(7, "wheel", "part(3)"), LabelInfo(8, "head", "part(2);object(1)"),
    LabelInfo(9, "street", "scene(5)"), LabelInfo(11, "kitchen", "scene(4)"),
]  # fmt: skip
MISSING_ROW = 4


@pytest.fixture(scope="module")
def broden_quirks(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        label = lambda numbers, p: np.where(rng.random((32, 32)) < p, rng.choice(numbers, (32, 32)), 0).astype(np.int32)
        pixel = {"color": [label([1, 2], 0.8)], "object": [label([3, 5], 0.4), label([5], 0.2)]}  # two PNGs: ';'
        if i % 3:
            pixel["part"] = [label([7, 8], 0.3)]
        scenes = [9, 11] if i % 4 == 0 else [int(rng.choice([9, 11]))]  # two numbers: ';'
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        rows.append(BrodenRow(f"im{i:02d}.jpg", "train" if i % 2 else "val", (64, 64), (32, 32), pixel,
                              {"scene": scenes}, image))  # fmt: skip
    root = tmp_path_factory.mktemp("broden") / "broden1_64"
    write_broden(str(root), CATEGORIES, LABELS, rows, image_format="jpg")
    os.remove(root / "images" / f"im{MISSING_ROW:02d}.jpg")
    return root


def test_reader_handles_the_quirks(broden_quirks):
    ds = BrodenDataset(str(broden_quirks))
    assert len(ds) == 14 and ds.concepts.names[2] == "person"
    assert ds.concepts.categories[ds.concepts.category[2]] == "object"  # the first category named
    assert ds.concepts.categories[ds.concepts.category[5]] == "part"
    assert ds.pixel_layers["object"] == 2 and ds.max_image_labels == 2
    assert len(BrodenDataset(str(broden_quirks), split="train")) == 7
    with pytest.raises(DissectError, match=rf"line {MISSING_ROW + 2} \(im04.jpg\): image file .* is missing"):
        ds.load_image(MISSING_ROW)
    kept = BrodenDataset(str(broden_quirks), skip_missing=True)
    assert len(kept) == 13 and kept.skipped == [(MISSING_ROW + 2, str(broden_quirks / "images" / "im04.jpg"))]
    with pytest.raises(DissectError, match="no rows in split 'test'"):
        BrodenDataset(str(broden_quirks), split="test")


def test_bgr_network_dissected_on_the_quirky_set(broden_quirks, tmp_path, capsys):
    """A Caffe-style AlexNet (BGR, 0-255) converted, then dissected from the command line; its
    counts equal a dissection of the PyTorch network's own conv5 maps (preprocessed by hand)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the converter test needs it")
    from test_convert import state_dict, torch_forward, torch_model

    from dissectjax.convert import PRESETS

    reference = torch_model("alexnet", seed=2)
    np.savez(tmp_path / "alexnet.npz", **state_dict(reference))
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "--arch", "alexnet", "--weights", str(tmp_path / "alexnet.npz"), "--out", str(ckpt),
                 "--preset", "caffe", "--input-size", "64"]) == 0  # fmt: skip
    out = tmp_path / "out"
    argv = ["dissect", "--dataset", str(broden_quirks), "--checkpoint", str(ckpt), "--layers", "conv5",
            "--out", str(out), "--quantile", "0.02", "--no-resume", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "im04.jpg" in capsys.readouterr().err  # the missing file, by name
    assert main([*argv, "--skip-missing"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_rows"] == 1 and summary["layers"]["conv5"]["images"] == 13

    ds = BrodenDataset(str(broden_quirks), skip_missing=True)
    x = np.stack([ds.load_image(i) for i in range(len(ds))])
    _, acts = torch_forward(reference, x, PRESETS["caffe"])
    expected = dissect(ArraySource(acts["conv5"].transpose(0, 3, 1, 2), "conv5", len(ds)), ds,
                       DissectConfig(quantile=0.02))["conv5"]  # fmt: skip
    with np.load(out / "conv5" / "counts.npz") as got:
        np.testing.assert_allclose(got["thresholds"], expected.thresholds, rtol=1e-4)
        np.testing.assert_allclose(got["iou"], expected.iou, atol=0.02)
        agree = np.mean(np.argmax(got["iou"], 1) == np.argmax(expected.iou, 1))
    assert agree >= 0.9, agree
    del torch
