"""``dissectjax chimera``, ``explain`` and ``multiunit``: outputs checked against the library's own dissection."""

import csv
import os

import pytest
from conftest import CHECKPOINT

from dissectjax.cli import main
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource

IMAGES = 40


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Command-line arguments shared by the three commands, and the plain dissection of conv5."""
    from dissectjax.checkpoint import load_checkpoint

    cache = str(tmp_path_factory.mktemp("cache"))
    os.environ["DISSECTJAX_CACHE"] = cache
    model, variables, meta = load_checkpoint(CHECKPOINT)
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=IMAGES, seed=1), cache_dir=cache))
    source = ModelSource(model, variables, ["conv5"], tuple(meta["input_shape"]))
    plain = dissect(source, probe, DissectConfig(batch_size=20))["conv5"]
    args = ["--dataset", f"synthetic:{IMAGES}", "--checkpoint", CHECKPOINT, "--layer", "conv5", "--batch-size", "20",
            "--quiet"]  # fmt: skip
    yield args, plain, probe
    del os.environ["DISSECTJAX_CACHE"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_chimera_at_a_zero_is_the_plain_dissection(tmp_path, setting):
    args, plain, _ = setting
    out = tmp_path / "out"
    argv = ["chimera", *args, "--out", str(out), "--alphas", "0,1", "--seeds", "0,1", "--directions", "8"]
    assert main(argv) == 0
    rows = _rows(out / "chimera-conv5.csv")
    assert len(rows) == 2 * 2 + 1 and (out / "chimera-conv5.png").stat().st_size > 1000
    for r in rows:
        if r["view"] == "rotation" and float(r["a"]) == 0:
            assert int(r["detectors"]) == plain.detectors and int(r["unique"]) == plain.unique["total"]
            assert int(r["unique_tables"]) == plain.unique_tables["total"]
    assert [r["view"] for r in rows].count("random directions") == 1


def test_explain_formulas_never_lose_to_single_concepts(tmp_path, setting):
    args, plain, probe = setting
    out = tmp_path / "out"
    assert main(["explain", *args, "--out", str(out), "--length", "2", "--beam", "3"]) == 0
    rows = _rows(out / "explain-conv5.csv")
    assert len(rows) == plain.units
    for r in rows:
        assert float(r["formula_iou"]) >= float(r["best_single_iou"]) - 1e-9
        assert r["best_single"] in probe.concepts.names and 1 <= int(r["length"]) <= 2


def test_multiunit_top1_is_the_best_unit(tmp_path, setting, capsys):
    """Fit in-sample, the top-1 view of a concept is its best unit rescaled: the same mask, the same IoU."""
    args, plain, probe = setting
    out = tmp_path / "out"
    assert main(["probe", *args, "--out", str(out), "--k", "1,2", "--steps", "20"]) == 0  # the old name still works
    assert "'dissectjax probe' is now 'dissectjax multiunit'" in capsys.readouterr().err
    rows = {r["concept"]: r for r in _rows(out / "multiunit-conv5.csv")}
    assert set(rows) == set(probe.concepts.names)
    for c, name in enumerate(probe.concepts.names):
        assert float(rows[name]["top-1"]) == pytest.approx(plain.iou[:, c].max(), abs=2e-6)
        assert 0 <= float(rows[name]["learned"]) <= 1


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["chimera", "--alphas", "0,2"], "--alphas must be numbers in [0, 1]"),
        (["chimera", "--seeds", "x"], "--seeds must be comma-separated integers"),
        (["explain", "--length", "0"], "argument --length: expected a positive integer"),
        (["probe", "--k", "0"], "--k must be positive integers"),
        (["probe", "--k", "999"], "exceeds the 128 units of conv5"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, capsys, setting, argv, expect):
    args, _, _ = setting
    assert main([argv[0], *args, "--out", str(tmp_path / "o"), *argv[1:]]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_multi_layer_argument_is_refused(tmp_path, capsys, setting):
    args, _, _ = setting
    bad = [a if a != "conv5" else "conv4,conv5" for a in args]
    assert main(["explain", *bad, "--out", str(tmp_path / "o")]) == 2
    assert "one layer" in capsys.readouterr().err
