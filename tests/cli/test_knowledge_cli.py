"""dissectjax transplant-concept on two committed instances: outputs, agreement with the library, errors."""

import csv
import json

import pytest

from dissectjax.analysis.debug import changed_parameters
from dissectjax.checkpoint import load_checkpoint
from dissectjax.cli import main
from dissectjax.data.splits import scene_images, scenes_showing
from dissectjax.evaluate import predict

SOURCE, TARGET = "checkpoints/scenenet", "checkpoints/scenenet-seed1"
SMALL = ["--images", "200", "--probe", "synthetic:60", "--steps", "2", "--learning-rate", "1e-3",
         "--random-draws", "1", "--quiet"]  # fmt: skip


def test_transplant_concept_moves_the_chosen_units_and_measures_every_network(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["transplant-concept", "--source", SOURCE, "--target", TARGET, "--layer", "conv5", "--concept", "tree",
                 "--k", "2", "--candidates", "4", "--out", str(out), *SMALL]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "knowledge.csv")))
    assert [r["name"] for r in rows] == ["B (target)", "A (source)", "transplant: A's 2 concept units",
                                         "transplant: A's random 2 units (draw 1)", "fine-tune B's 2 slots",
                                         "fine-tune all of B"]  # fmt: skip
    summary = json.loads((out / "knowledge.json").read_text())
    candidates = list(csv.DictReader(open(out / "units.csv")))
    assert len(candidates) == 4 and [int(c["unit"]) for c in candidates if c["chosen"] == "True"] == sorted(
        summary["units"], key=lambda u: [int(c["unit"]) for c in candidates].index(u))  # fmt: skip
    ious = [float(c["iou"]) for c in candidates]
    assert ious == sorted(ious, reverse=True)  # the candidates are the best by IoU
    chosen = [c for c in candidates if c["chosen"] == "True"]
    assert min(float(c["specific"]) for c in chosen) >= max(float(c["specific"]) for c in candidates
                                                            if c["chosen"] != "True")  # fmt: skip
    # every accuracy is recomputed from the networks and the held-out scenes
    model, vb, _ = load_checkpoint(TARGET)
    _, va, _ = load_checkpoint(SOURCE)
    images, labels = scene_images(200, "eval")
    has = scenes_showing(200, "eval", ("tree",))
    assert summary["held_out_with_concept"] == int(has.sum()) > 0
    _, moved, config = load_checkpoint(str(out / "checkpoint"))
    for row, variables in ((rows[0], vb), (rows[1], va), (rows[2], moved)):
        right = predict(model, variables, images) == labels
        assert float(row["with_concept"]) == pytest.approx(right[has].mean())
        assert float(row["without"]) == pytest.approx(right[~has].mean())
    assert int(rows[2]["parameters_changed"]) == changed_parameters(vb, moved) > 0
    assert [int(s) for s in rows[2]["slots"].split()] == summary["slots"] == config["transplant_concept"]["slots"]
    # the slots' own parameters and their readers: the fine-tune of the slots changes no more than the transplant
    assert int(rows[4]["parameters_changed"]) <= int(rows[2]["parameters_changed"]) < int(rows[5]["parameters_changed"])
    assert rows[4]["setting"] == "rate 0.001"
    assert "Transplanting tree" in (out / "report.html").read_text()
    assert "transplant: A's 2 concept units" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--concept", "dragon"], "--concept must be an object of the synthetic scenes"),
        (["--concept", "tree", "--k", "129"], "--k 129 is more than the 128 units of conv5"),
        (["--concept", "tree", "--layer", "conv9"], "unknown layer 'conv9' for SceneNet"),
        (["--concept", "tree", "--target", "checkpoints/missing"], "checkpoints/missing"),
        (["--concept", "tree", "--random-draws", "-2"], "--random-draws must be >= 0"),
    ],
)  # fmt: skip
def test_transplant_concept_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, expect):
    base = {"--source": SOURCE, "--target": TARGET, "--layer": "conv5"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["transplant-concept", *[x for kv in base.items() for x in kv], *argv, "--images", "50", "--quiet",
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".x") for p in tmp_path.iterdir())
