"""Damaged and hostile files through the command line, in this process (one subprocess proves the
real entry point): Broden tables and pictures, dissection outputs given to report and serve,
statistics files, checkpoints too small for their model, bench and prepare-tfds input, the app's
hosts, and a batch that cannot fit. Each case ends in one line ``dissectjax CMD: error: ...``
naming the problem, status 2, and leaves the directory exactly as it was."""

import io
import json
import pathlib
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import random_broden
from test_hostile_cli import assert_one_line_error

import dissectjax.app
from dissectjax.cli import main
from dissectjax.dissect import driver
from dissectjax.errors import DissectError

N_IMAGES, UNITS = 8, 6
SEGMENTATION = "images/im001_color_0.png"  # row 1, in the first batch: 10 x 14 labels


# ---- helpers -------------------------------------------------------------------------------------
def listing(root: pathlib.Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def refused(capsys, where: pathlib.Path, argv: list, *fragments: str) -> str:
    """Runs ``dissectjax ARGV`` here: one line naming ``fragments``, status 2, ``where`` unchanged."""
    before = listing(where)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess(argv, code, captured.out, captured.err), *fragments)
    assert listing(where) == before
    return captured.err


def run_cli(*argv) -> subprocess.CompletedProcess:
    """The installed entry point, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dissectjax", *map(str, argv)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def png_header(width: int, height: int) -> bytes:
    """A PNG (1-bit grey) that declares ``width`` x ``height`` and holds no pixel data: a few dozen bytes."""
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(autouse=True)
def no_serving(monkeypatch):
    """A case that got past the checks must fail, not serve forever."""

    def serve(*_, **__):
        raise AssertionError("serve() was reached")

    monkeypatch.setattr(dissectjax.app, "serve", serve)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A Broden directory of 8 x 8 images (two label sizes) and activations for it."""
    root = tmp_path_factory.mktemp("inputs")
    random_broden(root / "data", seed=7, n=N_IMAGES, image_size=(8, 8))
    acts = np.random.default_rng(3).gamma(2.0, size=(N_IMAGES, UNITS, 4, 4)).astype(np.float32)
    np.save(root / "acts.npy", acts)
    return root / "data", root / "acts.npy"


@pytest.fixture(scope="module")
def dissection(tmp_path_factory, inputs) -> pathlib.Path:
    """A finished dissection output (with top images and report) of the activations."""
    data, acts = inputs
    out = tmp_path_factory.mktemp("dissection") / "out"
    argv = ["dissect", "--dataset", data, "--activations", acts, "--out", out, "--quantile", "0.05", "--quiet",
            "--no-resume"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


@pytest.fixture
def broden(tmp_path, inputs) -> pathlib.Path:
    """A copy of the Broden directory, to damage."""
    return pathlib.Path(shutil.copytree(inputs[0], tmp_path / "data"))


@pytest.fixture
def result(tmp_path, dissection) -> pathlib.Path:
    """A copy of the dissection output, to damage."""
    return pathlib.Path(shutil.copytree(dissection, tmp_path / "res"))


def dissect_argv(data, acts, out, *extra) -> list:
    """With resuming on: bad input found in the middle of the passes leaves no resume state either."""
    return ["dissect", "--dataset", data, "--activations", acts, "--out", out, "--quantile", "0.05", "--quiet",
            "--no-report", *extra]  # fmt: skip


# ---- 1. Broden tables and pictures ---------------------------------------------------------------
def prepend(data: bytes):
    return lambda path: path.write_bytes(data + path.read_bytes())


def latin1(path: pathlib.Path) -> None:
    path.write_bytes(path.read_text().replace("color0", "colör0").encode("latin-1"))


def huge_cell(path: pathlib.Path) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1] + "x" * 200_000, *lines[2:]]) + "\n")


@pytest.mark.parametrize(
    "file, damage, fragments",
    [
        ("index.csv", prepend(b"\xff\xfe"), ("index.csv", "not UTF-8", "expected a CSV table in UTF-8")),
        ("label.csv", latin1, ("label.csv", "not UTF-8")),
        ("index.csv", huge_cell, ("index.csv", "malformed CSV", "field larger than field limit")),
        (SEGMENTATION, lambda p: p.write_bytes(png_header(30000, 30000)), ("im001_color_0.png", "too many pixels")),
        (SEGMENTATION, lambda p: p.write_bytes(png_header(12000, 12000)), ("im001_color_0.png", "too many pixels")),
        (SEGMENTATION, lambda p: p.write_bytes(png_header(13, 12)), ("is 12x13 pixels, index.csv says 10x14",)),
        (SEGMENTATION, lambda p: p.write_bytes(png_header(14, 10)), ("im001_color_0.png", "cannot decode it")),
        (SEGMENTATION, lambda p: p.write_bytes(b"garbage"), ("im001_color_0.png", "cannot read it")),
    ],
)  # fmt: skip
def test_damaged_broden_files(tmp_path, monkeypatch, capsys, inputs, broden, file, damage, fragments):
    damage(broden / file)
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, dissect_argv(broden, inputs[1], "out"), *fragments)


# ---- 2. dissection outputs given to report and serve ---------------------------------------------
def write(data: bytes | str):
    return lambda path: path.write_bytes(data if isinstance(data, bytes) else data.encode())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def edit_json(change):
    def apply(path: pathlib.Path) -> None:
        summary = json.loads(path.read_text())
        change(summary)
        path.write_text(json.dumps(summary))

    return apply


def edit_npz(**arrays):
    """Replaces (an array given) or removes (None) arrays of an .npz."""

    def apply(path: pathlib.Path) -> None:
        with np.load(path) as f:
            kept = {k: f[k] for k in f.files}
        kept.update(arrays)
        np.savez(path, **{k: v for k, v in kept.items() if v is not None})

    return apply


def rename_layer(name: str):
    return edit_json(lambda s: s.__setitem__("layers", {name: s["layers"]["acts"]}))


def layer_field(key: str, value):
    return edit_json(lambda s: s["layers"]["acts"].__setitem__(key, value))


RESULT_DAMAGE = [
    ("summary.json", write("{not json"), ("summary.json", "is not valid JSON", "expected a JSON object")),
    ("summary.json", write(b"\xff\xfe{}"), ("summary.json", "not UTF-8")),
    ("summary.json", write("[" * 100_000 + "]" * 100_000), ("summary.json", "is not valid JSON")),
    ("summary.json", write("[1, 2]"), ("summary.json", "holds a JSON list")),
    ("summary.json", edit_json(lambda s: s.pop("layers")), ("summary.json", "'layers' is null")),
    ("summary.json", edit_json(lambda s: s["layers"]["acts"].pop("quantile")), ("lacks 'quantile'",)),
    ("summary.json", layer_field("iou_threshold", "high"), ("iou_threshold \"high\"", "expected a number")),
    ("summary.json", layer_field("condition", 1), ("condition 1", "expected true or false")),
    ("summary.json", layer_field("detector_rule", "<"), ("detector_rule \"<\"",)),
    ("summary.json", layer_field("semantics", "caffe"), ("semantics \"caffe\"", "one of 'netdissect', 'lite'")),
    ("summary.json", edit_json(lambda s: s.__setitem__("checkpoint", [1])), ("'checkpoint' is [1]",)),
    ("summary.json", rename_layer("../../etc"), ("summary.json names layer '../../etc', which is not a plain name",)),
    ("summary.json", rename_layer("/etc"), ("names layer '/etc', which is not a plain name",)),
    ("summary.json", rename_layer("a\\b"), ("which is not a plain name",)),
    ("concepts.csv", write(b"index,number,name,category\n0,1,col\xf6r,color\n"), ("concepts.csv", "not UTF-8")),
    ("concepts.csv", write("hello world\n"), ("concepts.csv", "no column 'index'")),
    ("concepts.csv", write("index,number,name,category\n0,x,a,color\n"), ("concepts.csv line 2", "integers")),
    ("concepts.csv", write("index,number,name,category\n0,1,a," + "x" * 200_000 + "\n"), ("malformed CSV",)),
    ("acts/counts.npz", write("garbage"), ("counts.npz is not a readable .npz archive",)),
    ("acts/counts.npz", lambda p: p.write_bytes(p.read_bytes()[:3000]), ("counts.npz is not a readable .npz",)),
    ("acts/counts.npz", lambda p: p.unlink(), ("counts.npz is missing",)),
    ("acts/counts.npz", write(npy(np.zeros(3))), ("it holds a single .npy array",)),
    ("acts/counts.npz", edit_npz(iou=None), ("counts.npz lacks the array 'iou'",)),
    ("acts/counts.npz", edit_npz(iou=np.zeros((UNITS, 3))), ("'iou' has shape [6, 3]; expected [U, C] = [6, ",)),
    ("acts/counts.npz", edit_npz(intersection=np.zeros((UNITS, 1), np.float32)), ("'intersection' holds float32",)),
    ("acts/counts.npz", edit_npz(categories=np.array(list("abcde"))), ("do not name each category",)),
    ("top_images.npz", write(b"PK\x03\x04garbage"), ("top_images.npz is not a readable .npz archive",)),
    ("top_images.npz", edit_npz(images=np.zeros((2, 3), np.uint8)), ("'images' has shape [2, 3]",)),
    ("top_images.npz", edit_npz(label_size=np.array([0, 12])), ("label_size [0, 12] must be positive",)),
]  # fmt: skip


@pytest.mark.parametrize("command", ["report", "serve"])
@pytest.mark.parametrize("file, damage, fragments", RESULT_DAMAGE)
def test_damaged_dissection_outputs(tmp_path, monkeypatch, capsys, result, command, file, damage, fragments):
    damage(result / file)
    monkeypatch.chdir(tmp_path)
    argv = (["report", result, "--out", "report.html"] if command == "report"
            else ["serve", result, "--no-model", "--host", "0.0.0.0"])  # fmt: skip
    refused(capsys, tmp_path, argv, f"dissectjax {command}: error: ", *fragments)


def test_a_top_image_missing_from_top_images_npz(tmp_path, monkeypatch, capsys, result):
    with np.load(result / "top_images.npz") as f:
        rows, images = f["rows"], f["images"]
    edit_npz(rows=rows[1:], images=images[1:])(result / "top_images.npz")
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, ["report", result], f"top_images.npz lacks dataset row {rows[0]}")


def test_an_archive_that_would_decompress_past_the_bound(tmp_path, monkeypatch, capsys, result):
    """A zip bomb is refused from the archive's directory, before anything is inflated (the bound
    is lowered here, so that a real result file stands for one)."""
    monkeypatch.setattr("dissectjax.results.MAX_NPZ_BYTES", 1000)
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, ["report", result], "counts.npz would decompress to", "more than any dissectjax file")


@pytest.mark.parametrize(
    "text, fragment",
    [
        (b"unit,category,label,score,color-label,color-iou\n0,color,r\xe9d,0.1,red,0.1\n", "not UTF-8"),
        (b"unit,category,label,score,color-label,color-iou\n0,color,red,high,red,0.1\n", "column 'score' holds"),
        (b"unit,category,label,score,color-label,color-iou\n0,color,red,0.1,red,\n", "column 'color-iou' holds"),
    ],
)
def test_a_damaged_tally_csv(tmp_path, dissection, text, fragment):
    """units.csv (or NetDissect's tally.csv), read by :func:`dissectjax.results.unique_from_tally_csv`."""
    from dissectjax.results import unique_from_tally_csv

    (tmp_path / "units.csv").write_bytes(text)
    with pytest.raises(DissectError, match=fragment):
        unique_from_tally_csv(str(tmp_path / "units.csv"), 0.04, ">=")
    assert unique_from_tally_csv(str(dissection / "acts" / "units.csv"), 0.04, ">=")["best_label"]["total"] >= 0


# ---- statistics files given to specialize and serve ----------------------------------------------
def stats_file(path: pathlib.Path, **arrays) -> pathlib.Path:
    good = {"count": np.ones(10, np.int32), **{f"{f}/conv2": np.zeros((10, 16), np.float32)
                                               for f in ("grad", "act", "relu")}}  # fmt: skip
    good.update(arrays)
    np.savez(path, **{k: v for k, v in good.items() if v is not None})
    return path


def garbage_file(path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(b"garbage")
    return path


def truncated_stats(path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(stats_file(path).read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    "make, fragments",
    [
        (garbage_file, ("stats.npz is not a readable .npz archive",)),
        (truncated_stats, ("stats.npz is not a readable .npz archive",)),
        (lambda p: stats_file(p, count=None), ("lacks the array 'count'",)),
        (lambda p: stats_file(p, **{"act/conv2": np.zeros((10, 3))}), ("'act/conv2' has shape [10, 3]",)),
        (lambda p: stats_file(p, count=np.array(["x"] * 10)), ("'count' holds <U1; expected integers",)),
        (lambda p: stats_file(p, **{f"{f}/conv2": None for f in ("grad", "act", "relu")}), ("of no layer",)),
    ],
)
@pytest.mark.parametrize("command", ["specialize", "serve"])
def test_damaged_statistics(tmp_path, monkeypatch, capsys, dissection, command, make, fragments):
    stats = make(tmp_path / "stats.npz")
    monkeypatch.chdir(tmp_path)
    argv = (["specialize", "--out", "o", "--checkpoint", "ck", "--stats", stats, "--layers", "conv2"]
            if command == "specialize" else ["serve", dissection, "--no-model", "--stats", stats])  # fmt: skip
    refused(capsys, tmp_path, argv, *fragments)


# ---- 3. bench -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--images", "0"], "argument --images: expected a positive integer"),
        (["--quantile", "2"], "argument --quantile: expected a number between 0 and 1"),
        (["--peak-tflops", "nan"], "expected a positive finite number"),
        (["--baseline-images", "-1"], "expected an integer >= 0"),
        (["--workload", "huge"], "invalid choice"),
    ],
)
def test_bench_flags(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, ["bench", *argv], "dissectjax bench: error: ", fragment)


def test_bench_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "device_memory", lambda: 1 << 20)  # a 1 MiB device
    argv = ["bench", "--images", "8", "--pool", "8", "--baseline-images", "0", "--batch-size", "8"]
    refused(capsys, tmp_path, argv, "dissectjax bench: error: --batch-size 8 needs about", "1.0 MiB available")


# ---- 4. prepare-tfds ------------------------------------------------------------------------------
@pytest.fixture
def uniform_broden(tmp_path) -> pathlib.Path:
    """A Broden directory of one size (what a TFDS probe set needs) whose row 3's image declares
    30000 x 30000 pixels: found while the records are written, refused before it is decoded."""
    random_broden(tmp_path / "uniform", seed=1, n=6, sizes=((12, 12),), image_size=(8, 8))
    (tmp_path / "uniform" / "images" / "im003.png").write_bytes(png_header(30000, 30000))
    return tmp_path / "uniform"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["dissectjax_broden"], "give --source DIR"),
        (["dissectjax_broden", "--source", "nowhere"], "source nowhere is not a directory"),
        (["dissectjax_broden", "--source", "data"], "needs one image and label size; this one has 2"),
        (["dissectjax_broden", "--source", "uniform"], "image file uniform/images/im003.png declares too many pixels"),
        (["dissectjax_broden", "--source", "uniform", "--config", "x"], "dissectjax_broden has no config 'x'"),
        (["dissectjax_scenes", "--config", "5"], "has no config '5'; its configs are 1000, 64"),
        (["dissectjax_nope"], "invalid choice: 'dissectjax_nope'"),
        (["dissectjax_broden", "--source", "data", "--data-dir", "file"], "--data-dir file is a file"),
    ],
)
def test_prepare_tfds_bad_input(tmp_path, monkeypatch, capsys, broden, uniform_broden, argv, fragment):
    pytest.importorskip("tensorflow_datasets")
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    extra = [] if "--data-dir" in argv else ["--data-dir", "tfds"]
    refused(capsys, tmp_path, ["prepare-tfds", *argv, *extra], "dissectjax prepare-tfds: error: ", fragment)


# ---- 5. a model that cannot run on the images -----------------------------------------------------
@pytest.fixture(scope="module")
def too_small(tmp_path_factory) -> pathlib.Path:
    """A LeNet-5 checkpoint whose config.json says 8 x 8 x 3 images: refused before its arrays are read."""
    root = tmp_path_factory.mktemp("checkpoint") / "lenet"
    root.mkdir()
    config = {"model": "lenet5", "model_kwargs": {"num_classes": 10}, "input_shape": [8, 8, 3]}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    "model, fragments",
    [
        ("random", ("model lenet5 cannot run on images of shape (8, 8, 3): division by zero", "give larger images")),
        ("checkpoint", ("model lenet5 cannot run on images of shape (8, 8, 3)",
                        "its config.json gives this input_shape")),
    ],
)  # fmt: skip
def test_a_model_that_cannot_run_on_the_images(tmp_path, monkeypatch, capsys, inputs, too_small, model, fragments):
    flags = ["--model", "lenet5"] if model == "random" else ["--checkpoint", too_small]
    monkeypatch.chdir(tmp_path)
    argv = ["dissect", "--dataset", inputs[0], *flags, "--layers", "conv1", "--out", "out", "--quiet"]
    refused(capsys, tmp_path, argv, *fragments)


def test_a_checkpoint_on_images_smaller_than_it_was_trained_on():
    """What every command that runs a checkpoint on a dataset calls (a LeNet-5 trained on 32 x 32 x 1)."""
    import jax

    from dissectjax.checkpoint import check_image_shape, init_variables
    from dissectjax.models import build_model

    model = build_model("lenet5", num_classes=10)
    variables = jax.eval_shape(lambda: init_variables(model, (32, 32, 1)))
    config = {"model": "lenet5", "input_shape": [32, 32, 1]}
    with pytest.raises(DissectError, match=r"checkpoint ck: model lenet5 cannot run on images of shape \(8, 8, 3\): "
                                           "division by zero; .*its checkpoint says 32x32x1"):  # fmt: skip
        check_image_shape("ck", model, variables, config, (8, 8, 3))


# ---- 6, 7. flags that make no sense ---------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["dissect", "--dataset", "synthetic", "--out", "o", "--model", "scenenet", "--layers", "conv5", "--layout",
          "nhwc"], "--layout nhwc says how a stored --activations array is laid out"),
        (["serve", "nowhere", "--allow-host", "http://box.lan"], "--allow-host 'http://box.lan' is not a host"),
        (["serve", "nowhere", "--allow-host", "box.lan:99999"], "--allow-host 'box.lan:99999' is not a host"),
    ],
)  # fmt: skip
def test_meaningless_flags(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, argv, fragment)


# ---- 8. a batch that cannot fit -------------------------------------------------------------------
def test_a_batch_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch, capsys, inputs):
    monkeypatch.setattr(driver, "device_memory", lambda: 20_000)  # a device of 20,000 bytes
    monkeypatch.chdir(tmp_path)
    message = refused(capsys, tmp_path, dissect_argv(*inputs, "out", "--batch-size", "8"),
                      "--batch-size 8 needs about", "for layer acts (", "this device has 19.5 KiB")  # fmt: skip
    fits = int(message.split("use --batch-size ")[1].split()[0])
    assert 1 <= fits < 8


def test_the_estimate_counts_only_the_rows_of_a_small_probe_set(inputs):
    from dissectjax.data.broden import BrodenDataset
    from dissectjax.dissect import ArraySource, DissectConfig

    probe = BrodenDataset(str(inputs[0]))
    source = ArraySource.from_npy(str(inputs[1]), len(probe))
    rows = driver.check_batch_memory(source, probe, DissectConfig(batch_size=N_IMAGES), available=10**12)
    huge = driver.check_batch_memory(source, probe, DissectConfig(batch_size=10**9), available=rows.total)
    assert huge == rows and rows.batch == N_IMAGES
    with pytest.raises(DissectError, match="use --batch-size 7 or less"):
        driver.check_batch_memory(source, probe, DissectConfig(batch_size=N_IMAGES), available=rows.total - 1)


# ---- the installed entry point --------------------------------------------------------------------
def test_through_the_installed_command(tmp_path, result):
    rename_layer("../../etc")(result / "summary.json")
    before = listing(tmp_path)
    assert_one_line_error(run_cli("report", result), "summary.json names layer '../../etc'")
    assert listing(tmp_path) == before
