"""dissectjax debug on the committed checkpoint: the outputs, their agreement with the library, and errors."""

import csv
import json

import numpy as np
import pytest

from dissectjax.checkpoint import demo_checkpoint, load_checkpoint
from dissectjax.cli import main
from dissectjax.data.labelled import open_labelled
from dissectjax.evaluate import predict

CHECKPOINT = demo_checkpoint()
SMALL = ["--images", "32", "--probe", "synthetic:40", "--steps", "1", "--examples", "4", "--random-draws", "1",
         "--quiet"]  # fmt: skip


def test_debug_writes_blame_fixes_and_a_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["debug", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--data", "shifted:playroom:pink",
                 "--k", "3", "--out", str(out), *SMALL]) == 0  # fmt: skip
    fixes = list(csv.DictReader(open(out / "fixes.csv")))
    names = [f["name"] for f in fixes]
    assert names == ["original", "zero top-3", "mean top-3", "rescale top-3", "finetune top-3",
                     "zero random-3 (draw 1)", "finetune whole network"]  # fmt: skip
    model, variables, _ = load_checkpoint(CHECKPOINT)
    shifted = open_labelled("shifted:playroom:pink", "eval", 32, (64, 64, 3), 12)
    clean = open_labelled("synthetic", "eval", 32, (64, 64, 3), 12)
    original = fixes[0]
    assert float(original["failing_accuracy"]) == 0.0 and float(original["agreement"]) == 1.0
    assert float(original["shifted_accuracy"]) == pytest.approx(np.mean(predict(model, variables, shifted.images)
                                                                         == shifted.labels))  # fmt: skip
    assert float(original["clean_accuracy"]) == pytest.approx(np.mean(predict(model, variables, clean.images)
                                                                       == clean.labels))  # fmt: skip
    zero = fixes[1]
    assert int(zero["parameters_changed"]) == 3 * 12  # three rows of the classifier's kernel
    assert int(fixes[4]["parameters_changed"]) <= int(fixes[6]["parameters_changed"])
    blamed = list(csv.DictReader(open(out / "blame.csv")))
    assert len(blamed) == 128 and blamed[0]["label"] and [int(b["unit"]) for b in blamed[:3]] == [
        int(u) for u in zero["units"].split()]  # fmt: skip
    summary = json.loads((out / "debug.json").read_text())
    assert summary["top_units"] == [int(u) for u in zero["units"].split()] and summary["layer"] == "conv5"
    assert "Units most to blame" in (out / "report.html").read_text()
    assert "zero top-3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--layer", "conv9"], "unknown layer 'conv9' for SceneNet"),
        (["--layer", "conv5", "--k", "129"], "--k 129 is more than the 128 units of conv5"),
        (["--layer", "conv5", "--fixes", "zero,prune"], "--fixes takes some of zero, mean, rescale, finetune"),
        (["--layer", "conv5", "--confusion", "street:beach"], "unknown class 'beach' in --confusion"),
        (["--layer", "conv5", "--confusion", "street:street"], "no failing examples (street predicted as street)"),
        (["--layer", "conv5", "--data", "shifted:playroom"], "expected shifted:SCENE:COLOR[:P]"),
        (["--layer", "conv5", "--data", "shifted:playroom:mauve"], "unknown shortcut color 'mauve'"),
        (["--layer", "conv5", "--random-draws", "-1"], "--random-draws must be >= 0"),
    ],
)  # fmt: skip
def test_debug_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, expect):
    argv = ["debug", "--checkpoint", CHECKPOINT, "--data", "shifted:playroom:pink", *argv, "--images", "24",
            "--probe", "none", "--quiet", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".x") for p in tmp_path.iterdir())
