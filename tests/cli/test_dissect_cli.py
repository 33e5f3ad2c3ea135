"""The command line: outputs per docs/ARCHITECTURE.md, Outputs, and one-line errors on bad input."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dissectjax.cli import main


def run_cli(*argv, cwd=None):
    """The real console entry point in a subprocess: (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "dissectjax", *argv], capture_output=True, text=True, timeout=300,
                       cwd=cwd)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def test_outputs_follow_the_contract(tmp_path, broden_dir):
    root, _, _ = broden_dir
    n = sum(1 for _ in open(os.path.join(root, "index.csv"))) - 1
    acts = np.random.default_rng(0).normal(size=(n, 6, 3, 3)).astype(np.float32)
    np.save(tmp_path / "mylayer.npy", acts)
    out = tmp_path / "out"
    assert main(["dissect", "--activations", str(tmp_path / "mylayer.npy"), "--dataset", root, "--out", str(out),
                 "--quantile", "0.05", "--quiet"]) == 0  # fmt: skip
    with open(out / "concepts.csv") as f:
        concepts = list(csv.DictReader(f))
    assert [c["index"] for c in concepts] == [str(i) for i in range(len(concepts))]
    counts = np.load(out / "mylayer" / "counts.npz", allow_pickle=False)
    assert counts["intersection"].shape == (6, len(concepts))
    assert counts["unit_area"].shape == (6, 5) and list(counts["categories"]) == ["color", "object", "part", "scene",
                                                                                   "texture"]  # fmt: skip
    with open(out / "mylayer" / "units.csv") as f:
        units = list(csv.DictReader(f))
    assert [u["unit"] for u in units] == [str(i) for i in range(6)]
    assert "object-iou" in units[0] and "texture-intersect" in units[0]
    summary = json.loads((out / "summary.json").read_text())
    layer = summary["layers"]["mylayer"]
    assert layer["units"] == 6 and layer["images"] == n and "total" in layer["unique_detectors"]
    assert layer["unique_detectors_tables"].keys() == layer["unique_detectors"].keys()
    assert layer["detector_rule"] == ">="
    assert summary["versions"]["jax"]


def test_detector_rule_changes_only_the_summary_and_reads_back(tmp_path, broden_dir, capsys):
    """--detector-rule '>' (NetDissect's comparison): units.csv and counts.npz are byte-identical to
    the default's; summary.json records the rule and both unique counts; directories written before
    the rule was recorded read back with '>='."""
    from dissectjax.results import read_results
    from dissectjax.stats.labels import unique_detectors_tables

    root, _, _ = broden_dir
    n = sum(1 for _ in open(os.path.join(root, "index.csv"))) - 1
    acts = np.random.default_rng(1).gamma(2.0, size=(n, 6, 3, 3)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    outs = {}
    for rule in (">=", ">"):
        outs[rule] = tmp_path / f"out{len(rule)}"
        assert main(["dissect", "--activations", str(tmp_path / "acts.npy"), "--dataset", root, "--out",
                     str(outs[rule]), "--quantile", "0.05", "--iou-threshold", "0.02", "--detector-rule", rule,
                     "--quiet", "--no-report"]) == 0  # fmt: skip
        printed = capsys.readouterr().out
        assert f"detectors (IoU {rule} 0.02)" in printed and "uniq:best-label" in printed and "uniq:tables" in printed
    for name in ("units.csv", "counts.npz"):
        assert (outs[">="] / "acts" / name).read_bytes() == (outs[">"] / "acts" / name).read_bytes()
    for rule, out in outs.items():
        layer = json.loads((out / "summary.json").read_text())["layers"]["acts"]
        r = read_results(str(out))[0]["acts"]
        assert layer["detector_rule"] == r.detector_rule == rule
        assert layer["unique_detectors"] == r.unique and layer["unique_detectors_tables"] == r.unique_tables
    old = json.loads((outs[">="] / "summary.json").read_text())
    for key in ("unique_detectors_tables", "detector_rule"):
        del old["layers"]["acts"][key]
    (outs[">="] / "summary.json").write_text(json.dumps(old))
    r = read_results(str(outs[">="]))[0]["acts"]
    assert r.detector_rule == ">="
    assert r.unique_tables == unique_detectors_tables(r.iou, r.labels, list(r.concepts.categories), 0.02, ">=")


def test_semantics_are_recorded_shown_and_read_back(tmp_path, broden_dir, capsys):
    """--semantics lite: summary.json, the printed table, the report and read_results say so;
    a directory written before semantics were recorded reads back as netdissect."""
    from dissectjax.results import read_results

    root, _, _ = broden_dir
    n = sum(1 for _ in open(os.path.join(root, "index.csv"))) - 1
    np.save(tmp_path / "acts.npy", np.random.default_rng(2).gamma(2.0, size=(n, 5, 3, 3)).astype(np.float32))
    out = tmp_path / "lite"
    assert main(["dissect", "--activations", str(tmp_path / "acts.npy"), "--dataset", root, "--out", str(out),
                 "--quantile", "0.05", "--semantics", "lite", "--quiet"]) == 0  # fmt: skip
    assert "counted with lite semantics" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["layers"]["acts"]["semantics"] == "lite"
    assert "counted with lite semantics" in (out / "report.html").read_text()
    assert read_results(str(out))[0]["acts"].semantics == "lite"
    old = json.loads((out / "summary.json").read_text())
    del old["layers"]["acts"]["semantics"]
    (out / "summary.json").write_text(json.dumps(old))
    assert read_results(str(out))[0]["acts"].semantics == "netdissect"


def test_bad_detector_rule_is_a_usage_error(tmp_path):
    out = str(tmp_path / "x")
    code, _, stderr = run_cli("dissect", "--dataset", "synthetic", "--out", out, "--detector-rule", "=>")
    assert code == 2 and "--detector-rule: invalid choice: '=>'" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing-dataset", "is neither 'synthetic'"),
        ("malformed-dataset", "must start with columns"),
        ("wrong-rows", "rows but the dataset has"),
        ("wrong-rank", "expected 4 axes"),
        ("nan", "NaN/Inf"),
        ("unknown-model", "unknown model 'nosuchnet'; available models:"),
        ("unknown-layer", "unknown layer 'conv9'"),
        ("bad-quantile", "quantile must be between 0 and 1"),
        ("bad-synthetic", "expected 'synthetic', 'synthetic:N' or 'synthetic:N:SEED'"),
        ("no-layers", "names no layer"),
        ("lite-no-condition", "lite semantics always condition a unit's area on its own mask"),
    ],
)
def test_bad_input_gets_one_line_error_and_no_output(tmp_path, broden_dir, case, expect):
    root, _, _ = broden_dir
    n = sum(1 for _ in open(os.path.join(root, "index.csv"))) - 1
    acts = np.random.default_rng(0).normal(size=(n, 4, 3, 3)).astype(np.float32)
    dataset, layer_args = root, None
    if case == "missing-dataset":
        dataset = str(tmp_path / "nowhere")
    elif case == "malformed-dataset":
        dataset = str(tmp_path / "bad")
        os.makedirs(dataset)
        (tmp_path / "bad" / "index.csv").write_text("a,b,c\n1,2,3\n")
        (tmp_path / "bad" / "label.csv").write_text("number,name,category\n1,x,color\n")
    elif case == "wrong-rows":
        acts = acts[:-2]
    elif case == "wrong-rank":
        acts = acts[:, :, 0]
    elif case == "nan":
        acts[3, 1, 0, 0] = np.inf
    elif case == "unknown-model":
        layer_args = ["--model", "nosuchnet", "--layers", "conv1"]
    elif case == "unknown-layer":
        layer_args = ["--model", "scenenet", "--layers", "conv5,conv9"]
    elif case == "bad-synthetic":
        dataset = "synthetic:abc"
    elif case == "no-layers":
        layer_args = ["--model", "scenenet", "--layers", ","]
    np.save(tmp_path / "acts.npy", acts)
    source = layer_args or ["--activations", str(tmp_path / "acts.npy")]
    extra = {"bad-quantile": ["--quantile", "1.5"], "lite-no-condition": ["--semantics", "lite", "--no-condition"]}
    extra = extra.get(case, [])
    out = tmp_path / "out"
    code, _stdout, stderr = run_cli("dissect", "--dataset", dataset, "--out", str(out), *source, *extra, "--quiet")
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()  # nothing that looks like a result
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temporary leftovers


def test_refuses_to_overwrite_unrelated_directory(tmp_path, broden_dir):
    root, _, _ = broden_dir
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("my work")
    n = sum(1 for _ in open(os.path.join(root, "index.csv"))) - 1
    np.save(tmp_path / "a.npy", np.ones((n, 2, 2, 2), np.float32))
    code = main(["dissect", "--activations", str(tmp_path / "a.npy"), "--dataset", root,
                 "--out", str(tmp_path / "precious"), "--quiet"])  # fmt: skip
    assert code == 2 and (tmp_path / "precious" / "notes.txt").read_text() == "my work"


def test_where_activations_are_kept_and_who_decodes_do_not_change_the_counts(tmp_path, broden_dir):
    root, _, _ = broden_dir
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    common = ["dissect", "--dataset", root, "--model", "scenenet", "--layers", "conv4", "--quantile", "0.05",
              "--batch-size", "8", "--quiet", "--no-report"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "kept"), "--cache-activations", "file", "--cache-dir",
                 str(scratch), "--decode-workers", "1"]) == 0  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "recomputed"), "--cache-activations", "none",
                 "--decode-workers", "0"]) == 0  # fmt: skip
    kept, recomputed = (np.load(tmp_path / d / "conv4" / "counts.npz") for d in ("kept", "recomputed"))
    for name in ("thresholds", "intersection", "unit_area", "concept_area"):
        np.testing.assert_array_equal(kept[name], recomputed[name])
    assert os.listdir(scratch) == []  # the scratch file is gone
