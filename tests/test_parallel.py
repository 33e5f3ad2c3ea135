"""Bit-identical results on 1 device, 8 simulated devices, and 2 processes x 4 devices, for
stored activations (counted by the lite rules) and the committed trained checkpoint (by the
default rules); and a layer's
results do not depend on which other layers are dissected with it."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import CHECKPOINT, random_broden


def dissect_argv(out, dataset, source_args, extra_args=()):
    return ["dissect", "--dataset", dataset, "--out", str(out), *source_args, "--batch-size", "8", "--quantile", "0.02",
            "--quiet", "--no-resume", *extra_args]  # fmt: skip


def dissect_cli(out, dataset, source_args, devices, extra_env=None, extra_args=()):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "dissectjax", *dissect_argv(out, dataset, source_args, extra_args)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


TOP_FIELDS = ("top_images", "top_activations", "top_maps")


def assert_identical(a, b, layers):
    for layer in layers:
        x, y = np.load(a / layer / "counts.npz"), np.load(b / layer / "counts.npz")
        for key in (
            "thresholds",
            "intersection",
            "unit_area",
            "concept_area",
            "iou",
            "top_images",
            "top_activations",
            "top_maps",
        ):
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{layer}/{key}")
        assert (a / layer / "units.csv").read_text() == (b / layer / "units.csv").read_text()


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("par") / "ds"
    random_broden(root, seed=4, n=37)  # 37 rows: padding in the last batch on any mesh
    acts = np.random.default_rng(5).gamma(2.0, size=(37, 9, 5, 5)).astype(np.float32)
    np.save(root.parent / "acts.npy", acts)
    return str(root), str(root.parent / "acts.npy")


# the threshold passes compacted in every batch (the census, the floor), as in large batches
COMPACTED = {"DISSECTJAX_COMPACT_FROM": "0"}
SOURCES = {  # stored activations counted by the lite rules, the trained checkpoint by the default rules
    "activations": lambda acts: ["--activations", acts, "--semantics", "lite"],
    "trained": lambda acts: ["--checkpoint", CHECKPOINT, "--layers", "conv3,conv5"],
}
LAYERS = {"activations": ["acts"], "trained": ["conv3", "conv5"]}  # trained: a model source
EIGHT_DEVICES = ["activations"]  # the mesh of 8 is the sharding the 2 x 4 run also exercises


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=sorted(SOURCES))
def runs(request, workload, tmp_path_factory):
    """One source dissected on 1 device, on 8 devices (stored activations), and by 2 processes
    of 4 devices, all launched at once: {name: output directory}. The trained checkpoint's
    single-device run is this test process (one CPU device), while the others run."""
    from dissectjax.cli import main

    root, acts = workload
    kind = request.param
    tmp = tmp_path_factory.mktemp(kind)
    port = free_port()
    in_process = kind not in EIGHT_DEVICES
    env = None if in_process else COMPACTED  # stored activations: compacted on every mesh
    procs = [
        *([] if in_process else [dissect_cli(tmp / "single", root, SOURCES[kind](acts), 1, env)]),
        *([dissect_cli(tmp / "d8", root, SOURCES[kind](acts), 8, env)] if kind in EIGHT_DEVICES else []),
        *(dissect_cli(tmp / "multi", root, SOURCES[kind](acts), 4, env,
                      extra_args=["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)])
          for i in range(2)),
    ]  # fmt: skip
    if in_process:
        import jax

        assert jax.device_count() == 1, "the test process must see one device"
        assert main(dissect_argv(tmp / "single", root, SOURCES[kind](acts))) == 0
    for p in procs:
        finish(p)
    return kind, tmp


@pytest.mark.parametrize("runs", EIGHT_DEVICES, indirect=True)
def test_one_device_equals_eight(runs):
    kind, tmp = runs
    assert_identical(tmp / "single", tmp / "d8", LAYERS[kind])


def test_two_processes_of_four_devices_equal_one_device(runs):
    kind, tmp = runs
    assert_identical(tmp / "single", tmp / "multi", LAYERS[kind])


@pytest.mark.parametrize("runs", ["trained"], indirect=True)
def test_a_layer_does_not_depend_on_the_layers_dissected_with_it(runs, workload, tmp_path):
    """Every sown layer comes out of one compiled program, whichever are asked for: conv5
    dissected alone equals conv5 dissected with conv3 (in this process, on one device)."""
    from dissectjax.cli import main

    _, tmp = runs
    alone = ["--checkpoint", CHECKPOINT, "--layers", "conv5"]
    assert main(dissect_argv(tmp_path / "alone", workload[0], alone)) == 0
    assert_identical(tmp / "single", tmp_path / "alone", ["conv5"])
