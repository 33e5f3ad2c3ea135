"""dissectjax ablate / match / transplant on the committed checkpoint: outputs and errors."""

import csv
import json

import numpy as np
import pytest

from dissectjax.checkpoint import demo_checkpoint, init_variables, save_checkpoint
from dissectjax.cli import main
from dissectjax.models import build_model

CHECKPOINT = demo_checkpoint()


def test_ablate_units_writes_per_class_results(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--units", "3,17", "--images", "48",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert len(rows) == 12 and {"class", "before", "after", "change"} <= set(rows[0])
    assert json.loads((out / "ablation.json").read_text())["units"] == [3, 17]
    assert "mean balanced accuracy" in capsys.readouterr().out


def test_match_an_instance_with_itself_is_the_identity(tmp_path, capsys):
    assert main(["match", "--a", CHECKPOINT, "--b", CHECKPOINT, "--layer", "conv4", "--images", "24",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "matching.csv")))
    assert all(r["unit_a"] == r["slot_b"] for r in rows)
    summary = json.loads((tmp_path / "matching.json").read_text())
    assert summary["mean"] == pytest.approx(1.0, abs=1e-4) and summary["random_mean"] < 0.5


def test_transplant_saves_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "moved"
    assert main(["transplant", "--source", CHECKPOINT, "--target", CHECKPOINT, "--layer", "conv5", "--units", "4",
                 "--matched", "--images", "24", "--out", str(out)]) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["transplant"]["slots"] == [4] and config["model"] == "scenenet"
    assert "target" in capsys.readouterr().out


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("narrow") / "ckpt")
    model = build_model("scenenet", num_classes=12, widths=(32, 64, 96, 96, 64))
    save_checkpoint(path, "scenenet", {"num_classes": 12, "widths": [32, 64, 96, 96, 64]}, (64, 64, 3),
                    init_variables(model, (64, 64, 3)))  # fmt: skip
    return path


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["ablate", "--layer", "conv9", "--units", "1"], "unknown layer 'conv9' for SceneNet; its layers: conv1"),
        (["ablate", "--layer", "conv5", "--units", "128"], "unit 128 is out of range for layer conv5"),
        (["ablate", "--layer", "conv5", "--top-for-class", "beach"], "unknown class 'beach'"),
        (["ablate", "--layer", "conv5"], "name the units"),
        (["ablate", "--layer", "conv5", "--top-for-class", "playroom", "--count", "-3"], "argument --count"),
        (["transplant", "--target", CHECKPOINT, "--layer", "conv3", "--units", "999", "--matched"], "unit 999 is out"),
        (["transplant", "--target", CHECKPOINT, "--layer", "conv9", "--units", "1", "--slots", "1"],
         "unknown layer 'conv9' for SceneNet"),
        (["transplant", "--target", "NARROW", "--layer", "conv5", "--units", "1", "--slots", "1"],
         "are different architectures"),
    ],
)  # fmt: skip
def test_surgery_errors(tmp_path, capsys, narrow, argv, expect):
    argv = [narrow if a == "NARROW" else a for a in argv]
    base = ["--checkpoint", CHECKPOINT] if argv[0] == "ablate" else ["--source", CHECKPOINT]
    if argv[0] == "transplant":
        argv += ["--out", str(tmp_path / "x")]
    assert main([argv[0], *base, *argv[1:], "--images", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "x").exists()


def test_images_must_be_positive(capsys):
    assert main(["match", "--a", CHECKPOINT, "--b", CHECKPOINT, "--layer", "conv4", "--images", "0"]) == 2
    assert "argument --images: expected a positive integer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def nnx_checkpoints(tmp_path_factory):
    """Two NNX ConvNet instances (random init, seeds 0 and 1) saved as checkpoints of the
    registered ``nnx_convnet`` (an NNX class run as a linen module: models.nnx_bridge.NNXModel)."""
    root = tmp_path_factory.mktemp("nnx")
    kwargs = {"widths": [8, 12, 16], "num_classes": 12}
    paths = []
    for seed in (0, 1):
        path = str(root / f"nnx{seed}")
        save_checkpoint(path, "nnx_convnet", kwargs, (64, 64, 3),
                        init_variables(build_model("nnx_convnet", **kwargs), (64, 64, 3), seed=seed))  # fmt: skip
        paths.append(path)
    return paths


def test_an_nnx_model_through_every_surgery_command(nnx_checkpoints, tmp_path, capsys):
    a, b = nnx_checkpoints
    assert main(["ablate", "--checkpoint", a, "--layer", "conv2", "--units", "1,2", "--images", "24", "--quiet",
                 "--out", str(tmp_path / "abl")]) == 0  # fmt: skip
    assert len(list(csv.DictReader(open(tmp_path / "abl" / "ablation.csv")))) == 12
    assert main(["match", "--a", a, "--b", a, "--layer", "conv3", "--images", "24", "--quiet",
                 "--out", str(tmp_path / "self")]) == 0  # fmt: skip
    assert all(r["unit_a"] == r["slot_b"] for r in csv.DictReader(open(tmp_path / "self" / "matching.csv")))
    out = tmp_path / "moved"
    assert main(["transplant", "--source", a, "--target", b, "--layer", "conv2", "--units", "3", "--slots", "5",
                 "--images", "24", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    from dissectjax.checkpoint import load_checkpoint

    _, source, _ = load_checkpoint(a)
    _, moved, config = load_checkpoint(str(out))
    assert config["model"] == "nnx_convnet"
    np.testing.assert_array_equal(moved["params"]["block2"]["bias"][5], source["params"]["block2"]["bias"][3])
    from conftest import random_broden

    random_broden(tmp_path / "probe", seed=1, n=10, image_size=(64, 64))
    assert main(["dissect", "--dataset", str(tmp_path / "probe"), "--checkpoint", a, "--layers", "conv2,conv3",
                 "--out", str(tmp_path / "dis"), "--quantile", "0.05", "--quiet", "--no-report"]) == 0  # fmt: skip
    assert (tmp_path / "dis" / "conv3" / "units.csv").is_file()
    from dissectjax.app import AppService, load_classifier
    from dissectjax.report import Dissection

    service = AppService(Dissection.load(str(tmp_path / "dis")), load_classifier(a, "synthetic", 24))
    view = service.ablate("conv3", [1, 2])  # the app's live ablation, on the NNX model
    assert view.units == [1, 2] and len(view.classes) == 12
    capsys.readouterr()
