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
         "--learning-rate", "1e-3,1e-4", "--quiet"]  # fmt: skip
RETRAINED = "checkpoints/scenenet"  # the same architecture, trained apart: stands in for a retrained network


def test_debug_writes_blame_fixes_and_a_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["debug", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--data", "shifted:playroom:pink",
                 "--k", "3", "--retrained", RETRAINED, "--out", str(out), *SMALL]) == 0  # fmt: skip
    fixes = list(csv.DictReader(open(out / "fixes.csv")))
    names = [f["name"] for f in fixes]
    assert names == ["original", "zero top-3", "mean top-3", "rescale top-3", "finetune top-3",
                     "zero random-3 (draw 1)", "finetune whole network", "retrained without the bug"]  # fmt: skip
    assert fixes[4]["setting"] in ("rate 0.001", "rate 0.0001") and fixes[6]["setting"].startswith("rate ")
    _, retrained, retrained_config = load_checkpoint(RETRAINED)
    assert float(fixes[7]["seconds"]) == retrained_config["seconds"]
    assert int(fixes[7]["parameters_changed"]) > 100_000
    model, variables, _ = load_checkpoint(CHECKPOINT)
    shifted = open_labelled("shifted:playroom:pink", "eval", 32, (64, 64, 3), 12)
    clean = open_labelled("synthetic", "eval", 32, (64, 64, 3), 12)
    original = fixes[0]
    assert float(original["failing_accuracy"]) == 0.0 and float(original["agreement"]) == 1.0
    assert float(original["shifted_accuracy"]) == pytest.approx(np.mean(predict(model, variables, shifted.images)
                                                                         == shifted.labels))  # fmt: skip
    assert float(original["clean_accuracy"]) == pytest.approx(np.mean(predict(model, variables, clean.images)
                                                                       == clean.labels))  # fmt: skip
    assert float(fixes[7]["clean_accuracy"]) == pytest.approx(np.mean(predict(model, retrained, clean.images)
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
        (["--layer", "conv5", "--confusion", "*:*"], "one of them may be * (any class)"),
        (["--layer", "conv5", "--learning-rate", "1e-3,fast"], "--learning-rate must be comma-separated numbers"),
    ],
)  # fmt: skip
def test_debug_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, expect):
    argv = ["debug", "--checkpoint", CHECKPOINT, "--data", "shifted:playroom:pink", *argv, "--images", "24",
            "--probe", "none", "--quiet", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".x") for p in tmp_path.iterdir())


def test_confusion_with_any_class_picks_the_mistakes_into_one_class():
    from dissectjax.cli.debug import _confusion, _confusion_name

    names = ["street", "park", "playroom"]
    assert _confusion("*:playroom", names) == (None, 2) and _confusion("park:*", names) == (1, None)
    assert _confusion_name((None, 2), names) == "any class predicted as playroom"
    labels, predicted = np.array([0, 1, 2, 0, 2]), np.array([2, 2, 2, 1, 0])
    session = type("S", (), {})()
    from dissectjax.cli.debug import _Session

    picked = _Session._failing(session, type("L", (), {"images": np.arange(5), "labels": labels})(), predicted,
                               (None, 2))  # fmt: skip
    assert picked[0].tolist() == [0, 1]  # wrong and predicted playroom; the right playroom is not a failure


def test_a_retrained_baseline_without_a_training_time_is_refused(tmp_path, capsys):
    import shutil

    copy = tmp_path / "retrained"
    shutil.copytree(RETRAINED, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["seconds"]
    (copy / "config.json").write_text(json.dumps(config))
    argv = ["debug", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--retrained", str(copy), "--images", "24",
            "--probe", "none", "--quiet", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no training time" in err[0], err
    assert not (tmp_path / "x").exists()


def test_failing_images_from_a_file(tmp_path, capsys):
    from dissectjax.data.splits import scene_images

    images, labels = scene_images(12, "eval")
    np.savez(tmp_path / "failing.npz", images=images, labels=labels)
    out = tmp_path / "out"
    assert main(["debug", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--failing", str(tmp_path / "failing.npz"),
                 "--fixes", "zero", "--random-draws", "0", "--probe", "none", "--images", "24", "--k", "2", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "debug.json").read_text())
    assert summary["failing_rank"] == summary["failing_eval"] == 6 and summary["data"].endswith("failing.npz")
    fixes = list(csv.DictReader(open(out / "fixes.csv")))
    assert [f["name"] for f in fixes] == ["original", "zero top-2"] and fixes[0]["shifted_accuracy"] == ""
    model, variables, _ = load_checkpoint(CHECKPOINT)
    order = np.random.default_rng(0).permutation(12)[6:]  # the measured half
    right = predict(model, variables, images[order]) == labels[order]
    assert float(fixes[0]["failing_accuracy"]) == pytest.approx(right.mean())


@pytest.mark.parametrize(
    "arrays, expect",
    [
        ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(4, int)},
         "holds 32x32x3 images but the checkpoint takes 64x64x3: resize them"),
        ({"images": np.zeros((4, 64, 64, 3), np.float32), "labels": np.zeros(4, int)}, "images must be uint8"),
        ({"images": np.zeros((4, 64, 64, 3), np.uint8), "labels": np.full(4, 12)}, "labels in [0, 12)"),
        ({"pictures": np.zeros((4, 64, 64, 3), np.uint8)}, "expected a .npz with arrays 'images'"),
    ],
)  # fmt: skip
def test_bad_failing_files_are_one_line_errors(tmp_path, capsys, arrays, expect):
    np.savez(tmp_path / "f.npz", **arrays)
    argv = ["debug", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--failing", str(tmp_path / "f.npz"),
            "--images", "24", "--probe", "none", "--quiet", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_layer_whose_units_cannot_be_folded_is_refused_before_any_work(tmp_path, capsys):
    from dissectjax.checkpoint import init_variables, save_checkpoint
    from dissectjax.models import build_model

    kwargs = {"width": 8, "num_classes": 12}
    model = build_model("resnet18", **kwargs)
    save_checkpoint(str(tmp_path / "resnet"), "resnet18", kwargs, (32, 32, 3), init_variables(model, (32, 32, 3)))
    argv = ["debug", "--checkpoint", str(tmp_path / "resnet"), "--layer", "conv1", "--probe", "none", "--quiet",
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the identity shortcut of layer1_0 also carries conv1's channels" in err[0], err
    assert "use --fixes mean,finetune --random-draws 0" in err[0] and not (tmp_path / "x").exists()
