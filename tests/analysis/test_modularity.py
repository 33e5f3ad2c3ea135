"""``dissectjax train`` with localizing flags and ``dissectjax modularity``, end to end."""

import csv
import json

import numpy as np
import pytest

from dissectjax.analysis.localize.recipe import concept_numbers
from dissectjax.checkpoint import load_checkpoint, read_config
from dissectjax.cli import main
from dissectjax.data import synthetic
from dissectjax.data.open import open_probe
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.evaluate import predict
from dissectjax.models.scenenet import fold_whitening

TARGETS = ["star", "crown"]
PROBE, HELD, HELD_SEED = "synthetic:200", 60, 201


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("modularity")
    tiny = ["--train-size", "128", "--val-size", "64", "--epochs", "1", "--quiet"]
    assert main(["train", "--out", str(root / "base"), *tiny]) == 0
    assert main(["train", "--out", str(root / "sup"), "--concepts", ",".join(TARGETS), "--concept-weight", "0.5",
                 *tiny]) == 0  # fmt: skip
    assert main(["train", "--out", str(root / "cw"), "--concepts", ",".join(TARGETS), "--whiten", "--align", "1",
                 *tiny]) == 0  # fmt: skip
    out = root / "cmp"
    assert main(["modularity", "--baseline", str(root / "base"), "--variant", str(root / "sup"),
                 "--variant", f"whitened={root / 'cw'}", "--out", str(out), "--probe", PROBE, "--held", str(HELD),
                 "--quiet"]) == 0  # fmt: skip
    read = lambda name: list(csv.DictReader(open(out / name)))
    return (
        root,
        read("networks.csv"),
        read("targets.csv"),
        read("transplants.csv"),
        json.load(open(out / "modularity.json")),
    )


def test_train_records_the_recipe(compared):
    root = compared[0]
    assert "localize" not in read_config(str(root / "base"))
    sup, cw = read_config(str(root / "sup")), read_config(str(root / "cw"))
    assert sup["localize"]["concepts"] == TARGETS and sup["localize"]["concept"] == 0.5
    assert cw["localize"]["whiten"] and cw["model_kwargs"]["whiten"] == ["conv5"]
    model, variables, _ = load_checkpoint(str(root / "cw"))
    assert model.whiten == ("conv5",) and "block5_cw" in variables["params"]


def test_modularity_numbers_are_the_librarys(compared):
    root, networks, targets, transplants, meta = compared
    assert [n["network"] for n in networks] == ["base", "sup", "whitened"]
    assert len(targets) == 3 * len(TARGETS) and len(transplants) == 2 * len(TARGETS)
    assert (
        meta["concepts"] == TARGETS
        and len(meta["targets"]) == len(targets)
        and meta["recipes"]["whitened"]["align"] == 1.0
    )
    probe, _ = open_probe(PROBE)
    numbers = concept_numbers(TARGETS)
    index = [int(np.flatnonzero(probe.concepts.numbers == n)[0]) for n in numbers]
    images, labels, masks = synthetic.generate_with_masks(synthetic.SyntheticConfig(size=HELD, seed=HELD_SEED), numbers)
    for name, path in (("base", "base"), ("sup", "sup"), ("whitened", "cw")):
        model, variables = fold_whitening(*load_checkpoint(str(root / path))[:2])
        row = next(n for n in networks if n["network"] == name)
        correct = predict(model, variables, images) == labels
        assert float(row["accuracy"]) == pytest.approx(correct.mean())
        r = dissect(ModelSource(model, variables, ["conv5"], images.shape[1:]), probe, DissectConfig(batch_size=100))
        r = r["conv5"]
        assert int(row["detectors"]) == r.detectors
        for k, c in enumerate(index):
            t = next(t for t in targets if t["network"] == name and t["concept"] == TARGETS[k])
            unit = int(t["unit"])
            assert unit == (k if name != "base" else int(np.argmax(r.iou[:, c])))
            assert float(t["iou"]) == pytest.approx(r.iou[unit, c], abs=1e-6)
            # specificity by hand: zero the classifier's row for the unit
            kernel = np.array(variables["params"]["classifier"]["kernel"])
            kernel[unit] = 0.0
            ablated = {**variables, "params": {**variables["params"], "classifier": {
                **variables["params"]["classifier"], "kernel": kernel}}}  # fmt: skip
            kept = predict(model, ablated, images) == labels
            has = masks[..., k].any(axis=(1, 2))
            expected = (correct[has].mean() - kept[has].mean()) - (correct[~has].mean() - kept[~has].mean())
            assert float(t["specificity"]) == pytest.approx(expected, abs=1e-9)
    assert {m["donor"] for m in transplants} == {"sup", "whitened"}
    assert all(m["receiver"] == "base" for m in transplants)
    base_accuracy = next(float(n["accuracy"]) for n in networks if n["network"] == "base")
    assert all(float(m["accuracy_before"]) == pytest.approx(base_accuracy) for m in transplants)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x", "--concepts", "star", "--align", "1"], "set whiten"),
        (["train", "--out", "x", "--concepts", "star,nosuch", "--concept-weight", "1"], "unknown target concept"),
        (["train", "--out", "x", "--concepts", "star"], "no localizing term"),
        (["train", "--out", "x", "--model", "lenet5", "--l1", "0.1"], "SceneNet"),
        (["modularity", "--baseline", "nowhere", "--variant", "x", "--out", "o"], "not a checkpoint directory"),
    ],
)
def test_bad_localizing_input_is_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing trained


def test_modularity_needs_a_variant(compared, capsys):
    root = compared[0]
    assert main(["modularity", "--baseline", str(root / "base"), "--out", str(root / "o"), "--quiet"]) == 2
    assert "--variant" in capsys.readouterr().err


def test_rotation_control_and_transplant_rows_are_the_librarys(compared):
    from dissectjax.analysis.chimera import ProjectedSource, random_rotation
    from dissectjax.edit import layer_matching, transplant

    root, _, targets, transplants, meta = compared
    probe, _ = open_probe(PROBE)
    index = [int(np.flatnonzero(np.asarray(probe.concepts.names) == t)[0]) for t in TARGETS]
    images, _, _ = synthetic.generate_with_masks(synthetic.SyntheticConfig(size=HELD, seed=HELD_SEED),
                                                 concept_numbers(TARGETS))  # fmt: skip
    model, variables = fold_whitening(*load_checkpoint(str(root / "cw"))[:2])
    source = ModelSource(model, variables, ["conv5"], images.shape[1:])
    view = {"r": random_rotation(128, meta["rotation_seed"]).T}
    rotated = dissect(ProjectedSource(source, "conv5", view), probe, DissectConfig(batch_size=100))["r"]
    for k, c in enumerate(index):
        t = next(t for t in targets if t["network"] == "whitened" and t["concept"] == TARGETS[k])
        assert float(t["rotated_iou"]) == pytest.approx(rotated.iou[k, c], abs=1e-6)
        assert float(t["rotated_best_iou"]) == pytest.approx(rotated.iou[:, c].max(), abs=1e-6)
    # the supervised network's units 0, 1 moved into the baseline: the same slots and IoU by hand
    donor, a = load_checkpoint(str(root / "sup"))[:2]
    _, b = load_checkpoint(str(root / "base"))[:2]
    slots = layer_matching(donor, a, donor, b, "conv5", images).slot[[0, 1]]
    below = layer_matching(donor, a, donor, b, "conv4", images).slot
    moved = transplant(donor, a, b, "conv5", [0, 1], slots, below, outgoing=True)
    r = dissect(ModelSource(donor, moved, ["conv5"], images.shape[1:]), probe, DissectConfig(batch_size=100))["conv5"]
    rows = [m for m in transplants if m["donor"] == "sup"]
    assert [int(m["slot"]) for m in rows] == slots.tolist()
    for m, slot, c in zip(rows, slots, index):
        assert float(m["iou_after"]) == pytest.approx(r.iou[slot, c], abs=1e-6)


def test_surgery_commands_take_localized_checkpoints(compared, tmp_path):
    root = compared[0]
    assert read_config(str(root / "sup"))["model_kwargs"] == read_config(str(root / "base"))["model_kwargs"]
    common = ["--layer", "conv5", "--units", "0,1", "--matched", "--outgoing", "--images", "60"]
    assert main(["transplant", "--source", str(root / "sup"), "--target", str(root / "base"), *common,
                 "--out", str(tmp_path / "into-base")]) == 0  # fmt: skip
    # into a whitened network: folded on load, written (and read back) as the plain SceneNet it equals
    assert main(["transplant", "--source", str(root / "base"), "--target", str(root / "cw"), *common,
                 "--out", str(tmp_path / "into-cw")]) == 0  # fmt: skip
    model, variables, _ = load_checkpoint(str(tmp_path / "into-cw"))
    assert model.whiten == () and "block5_bn" in variables["params"]
