"""Hostile and mistaken input through the real command line, in a subprocess: each case ends in
one line on stderr and status 2, with no traceback, no output directory, no leftover, and no
input or unrelated file modified; or, where the input is fine, in the right answer."""

import os
import pathlib
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_broden, run_cli_killed_after

N_IMAGES, UNITS = 24, 6


def run(*argv, cwd=None, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dissectjax", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, preexec_fn=preexec_fn, timeout=timeout)  # fmt: skip


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines[0].startswith("dissectjax ") and ": error: " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workload(tmp_path):
    data = tmp_path / "data"
    random_broden(data, seed=7, n=N_IMAGES)
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(3).gamma(2.0, size=(N_IMAGES, UNITS, 4, 4)).astype(np.float32))
    return data, acts


def dissect_argv(data, acts, out, *extra):
    return ["dissect", "--dataset", data, "--activations", acts, "--out", out, "--quantile", "0.05", "--quiet",
            "--no-report", *extra]  # fmt: skip


def test_out_with_foreign_files_is_refused_and_kept(tmp_path, workload):
    data, acts = workload
    out = tmp_path / "p"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("keep")
    before = snapshot(tmp_path)
    assert_one_line_error(run(*dissect_argv(data, acts, out)), "did not write", "notes.txt")
    assert snapshot(tmp_path) == before


def test_an_earlier_output_is_replaced_but_not_one_holding_the_runs_inputs(tmp_path, workload):
    data, acts = workload
    prev = tmp_path / "prev"
    assert run(*dissect_argv(data, acts, prev)).returncode == 0
    assert (prev / ".dissectjax-manifest.json").is_file()
    assert run(*dissect_argv(data, acts, prev)).returncode == 0  # its own output: replaced
    # an input inside the output directory (the user put it there): refused, kept
    inside = prev / "a.npy"
    inside.write_bytes(acts.read_bytes())
    before = snapshot(tmp_path)
    assert_one_line_error(run(*dissect_argv(data, inside, prev)), "holds an input of this run")
    assert snapshot(tmp_path) == before


def test_an_output_directory_that_cannot_be_written_is_found_before_any_work(tmp_path, workload):
    data, acts = workload
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run(*dissect_argv(data, acts, blocker / "out")), "is a file, not a directory")
    assert_one_line_error(run(*dissect_argv(data, acts, blocker)), "is not a directory")
    assert_one_line_error(run(*dissect_argv(data, acts, "/proc/dissectjax-out")), "/proc/dissectjax-out")
    assert sorted(os.listdir(tmp_path)) == ["acts.npy", "data", "file"]


def test_partial_folders_of_dead_runs_are_removed(tmp_path, workload):
    data, acts = workload
    stale = tmp_path / ".out.partial-999999999-abc"  # no process has this id
    stale.mkdir()
    (stale / "units.csv").write_text("half")
    assert run(*dissect_argv(data, acts, tmp_path / "out")).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["acts.npy", "data", "out"]


def limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing

    return apply


@pytest.mark.parametrize("resume", [False, True])
def test_a_full_disk_commits_nothing(tmp_path, workload, resume):
    """Files may grow to 3,000 bytes only: the results (or the resume state) cannot be written."""
    data, acts = workload
    out = tmp_path / "out" if resume else tmp_path / "new" / "deeper" / "out"  # folders made for it go too
    argv = [a for a in dissect_argv(data, acts, out) if a != "--no-report"]
    p = run(*argv, *([] if resume else ["--no-resume"]), preexec_fn=limit_file_size(3000))
    assert_one_line_error(p, "could not", "File too large")
    kept = [".out.resume.npz"] if ".out.resume.npz" in os.listdir(tmp_path) else []
    assert sorted(os.listdir(tmp_path)) == [*kept, "acts.npy", "data"]
    if kept:  # the state of the finished passes stays for the rerun, and the message says so
        assert resume and "run the same command again" in p.stderr


def test_a_changed_label_map_between_kill_and_rerun_starts_afresh(tmp_path, workload):
    data, acts = workload
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    argv = [str(a) for a in dissect_argv(data, acts, out, "--batch-size", "4", "--save-every", "0")]
    assert run_cli_killed_after(argv, 9).returncode == -9  # past the threshold passes, inside the tally
    assert (tmp_path / ".out.resume.npz").exists()
    label_map = sorted((data / "images").glob("*color*.png"))[0]
    from PIL import Image

    pixels = np.asarray(Image.open(label_map)).copy()
    pixels[..., 0] = np.where(pixels[..., 0] > 0, pixels[..., 0].max(), 0)  # every labelled pixel one color
    Image.fromarray(pixels).save(label_map)
    p = run(*argv)
    assert p.returncode == 0 and "resuming" not in p.stderr, p.stderr[-2000:]
    assert run(*[a if a != str(out) else str(fresh) for a in argv]).returncode == 0
    a, b = np.load(out / "acts" / "counts.npz"), np.load(fresh / "acts" / "counts.npz")
    for key in ("intersection", "unit_area", "concept_area", "thresholds"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["dissect", "--dataset", "synthetic", "--out", "o", "--model", "scenenet", "--layers", "conv5", "--seed",
          "1e20"], "argument --seed"),
        (["dissect", "--dataset", "synthetic", "--out", "o", "--model", "scenenet", "--layers", "conv5",
          "--batch-size", "0"], "expected a positive integer"),
        (["dissect", "--dataset", "synthetic", "--out", "o", "--model", "scenenet", "--layers", "conv5",
          "--quantile", "nan"], "expected a finite number"),
        (["train", "--out", "o", "--learning-rate", "nan"], "expected a finite number"),
        (["train", "--out", "o", "--learning-rate", "-1"], "learning_rate must be a positive finite number"),
        (["train", "--out", "o", "--epochs", "0"], "expected a positive integer"),
        (["specialize", "--out", "o", "--epochs", "0"], "expected a positive integer"),
        (["multiunit", "--dataset", "synthetic", "--out", "o", "--model", "scenenet", "--layer", "conv5", "--steps",
          "-1"], "expected a positive integer"),
        (["ablate", "--checkpoint", "c", "--layer", "conv5", "--units", "3", "--top-for-class", "street"],
         "do not combine it with --top-for-class"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, argv, fragment):
    """The real parser and entry point, in this process (the subprocess cases above cover the rest)."""
    from dissectjax.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(argv)
    assert_one_line_error(subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err), fragment)
    assert os.listdir(tmp_path) == []


def test_a_bad_flag_through_the_installed_command(tmp_path):
    assert_one_line_error(
        run("train", "--out", "o", "--learning-rate", "nan", cwd=tmp_path), "expected a finite number"
    )


def test_a_huge_batch_size_on_a_small_probe_set_allocates_only_the_rows(tmp_path, workload):
    data, acts = workload
    p = run(*dissect_argv(data, acts, tmp_path / "out", "--batch-size", "1000000000"))
    assert p.returncode == 0, p.stderr[-2000:]
