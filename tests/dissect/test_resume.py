"""A dissection interrupted midway (Ctrl-C or SIGKILL) and restarted ends bit-identical."""

import os

import numpy as np
import pytest
from conftest import random_broden, run_cli_killed_after

from dissectjax.cli import main
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, ResumeFile, dissect
from dissectjax.dissect.sources import ArraySource

FIELDS = ("thresholds", "intersection", "unit_area", "concept_area", "top_images", "top_activations", "top_maps")


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "ds"
    random_broden(root, seed=8, n=30)
    acts = np.random.default_rng(9).gamma(2.0, size=(30, 6, 4, 4)).astype(np.float32)
    np.save(root.parent / "acts.npy", acts)
    return str(root), str(root.parent / "acts.npy")


def interrupt_at(k):
    """A progress hook that lets k batches through, then interrupts like Ctrl-C."""
    seen = [0]

    def progress(iterable, **_):
        for item in iterable:
            if seen[0] == k:
                raise KeyboardInterrupt
            seen[0] += 1
            yield item

    return progress


@pytest.mark.parametrize("semantics", ["netdissect", "lite"])
def test_interrupted_runs_resume_to_identical_counts(tmp_path, workload, semantics):
    root, acts_path = workload
    ds = BrodenDataset(root)
    source = ArraySource(np.load(acts_path), "acts", len(ds))
    config = DissectConfig(0.05, batch_size=4, semantics=semantics)
    reference = dissect(source, ds, config)["acts"]
    batches = -(-len(ds) // 4)
    rng = np.random.default_rng(0)
    # a random batch of the first pass, of the tally pass, and the very first batch (lite: the first pass's,
    # where its own search state is saved; the tally pass is the same code)
    points = {0, int(rng.integers(1, batches)), int(rng.integers(2 * batches, 3 * batches))}
    for k in sorted(points) if semantics == "netdissect" else [int(rng.integers(1, batches))]:
        state = ResumeFile(str(tmp_path / f"state{k}.npz"), {"k": "same run"}, every_seconds=0)
        with pytest.raises(KeyboardInterrupt):
            dissect(source, ds, config, progress=interrupt_at(k), resume=state)
        assert k == 0 or os.path.exists(state.path)
        resumed = dissect(source, ds, config, resume=state)["acts"]
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(resumed, field), getattr(reference, field), err_msg=f"{k} {field}")


def test_state_of_another_run_is_ignored(tmp_path, workload):
    root, acts_path = workload
    ds = BrodenDataset(root)
    source = ArraySource(np.load(acts_path), "acts", len(ds))
    config = DissectConfig(0.05, batch_size=4)
    other = ResumeFile(str(tmp_path / "s.npz"), {"run": 1}, every_seconds=0)
    with pytest.raises(KeyboardInterrupt):
        dissect(source, ds, config, progress=interrupt_at(5), resume=other)
    assert ResumeFile(other.path, {"run": 2}).load() is None


def test_sigkill_then_same_command_gives_identical_outputs(tmp_path, workload, capsys):
    root, acts_path = workload
    out = tmp_path / "out"
    argv = ["dissect", "--activations", acts_path, "--dataset", root, "--out", str(out), "--quantile", "0.05",
            "--batch-size", "4", "--save-every", "0"]  # fmt: skip
    p = run_cli_killed_after(argv, int(np.random.default_rng(1).integers(3, 20)))
    assert p.returncode == -9, p.stderr[-2000:]
    assert not out.exists() and (tmp_path / ".out.resume.npz").exists()
    # only the killed run needs a process of its own; the rerun and the fresh run are the same command in-process
    assert main(argv) == 0
    assert "resuming from" in capsys.readouterr().err
    assert not (tmp_path / ".out.resume.npz").exists()  # cleaned up after success
    fresh = tmp_path / "fresh"
    assert main([a if a != str(out) else str(fresh) for a in argv]) == 0
    a, b = np.load(out / "acts" / "counts.npz"), np.load(fresh / "acts" / "counts.npz")
    for field in (*FIELDS, "iou"):
        np.testing.assert_array_equal(a[field], b[field])
    assert (out / "acts" / "units.csv").read_text() == (fresh / "acts" / "units.csv").read_text()


def test_changed_inputs_start_afresh(tmp_path, workload):
    root, acts_path = workload
    acts = np.load(acts_path)
    path = tmp_path / "acts.npy"
    bad = acts.copy()
    bad[3, 1, 0, 0] = np.nan
    np.save(path, bad)
    argv = ["dissect", "--activations", str(path), "--dataset", root, "--out", str(tmp_path / "out"),
            "--batch-size", "4", "--save-every", "0", "--quiet"]  # fmt: skip
    assert main(argv) == 2  # NaN: refused, but its partial state may be saved
    np.save(path, acts)  # the user fixes the file in place and runs the same command
    assert main(argv) == 0
