"""Stored activations (``ArraySource``): the layouts, and every file or shape that cannot be right.

Library cases build hostile arrays and files in tmp_path and expect a DissectError saying
what was found and what is expected; CLI cases run ``dissectjax dissect --activations`` in a
subprocess: status 2, one line on stderr, no traceback, no output directory.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ArraySource
from dissectjax.errors import DissectError

SQUARE = np.array([[12, 12]])  # label maps of a probe set with square images


def gamma(shape, seed=0):
    return np.random.default_rng(seed).gamma(2.0, size=shape).astype(np.float32)


# ---- layouts ------------------------------------------------------------------------------------
def test_nhwc_layout_gives_the_same_dissection_as_nchw(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    nchw = gamma((len(ds), 5, 4, 6))
    config = DissectConfig(0.05, batch_size=7)
    a = dissect(ArraySource(nchw, "layer", len(ds)), ds, config)["layer"]
    source = ArraySource(np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)), "layer", len(ds), layout="nhwc")
    assert source.units == {"layer": 5}
    b = dissect(source, ds, config)["layer"]
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    np.testing.assert_array_equal(a.intersection, b.intersection)
    np.testing.assert_array_equal(a.unit_area, b.unit_area)


def test_unknown_layout():
    with pytest.raises(DissectError, match="layout 'nwhc' is not one of nchw, nhwc"):
        ArraySource(gamma((2, 3, 4, 4)), "layer", 2, layout="nwhc")


# ---- shapes that cannot be right (certain) -------------------------------------------------------
@pytest.mark.parametrize(
    "shape, layout, expect",
    [
        ((4, 0, 3, 3), "nchw", "0 units of 3 x 3 maps"),
        ((4, 3, 0, 3), "nchw", "3 units of 0 x 3 maps"),
        ((4, 3, 3, 0), "nchw", "3 units of 3 x 0 maps"),
        ((4, 3, 3, 0), "nhwc", "0 units of 3 x 3 maps"),
        ((4, 0, 3, 3), "nhwc", "3 units of 0 x 3 maps"),
        ((4, 3, 3), "nchw", r"expected 4 axes \[N, U, h, w\]"),
        ((4, 3, 3, 3, 1), "nhwc", r"expected 4 axes \[N, h, w, U\]"),
        ((5, 3, 3, 3), "nchw", "5 rows but the dataset has 4 images"),
    ],
)
def test_impossible_shapes(shape, layout, expect):
    with pytest.raises(DissectError, match=expect):
        ArraySource(np.zeros(shape, np.float32), "layer", 4, layout=layout)


@pytest.mark.parametrize("dtype", [bool, np.complex64, "U3", object])
def test_non_numeric_dtypes(dtype):
    with pytest.raises(DissectError, match="expected numbers"):
        ArraySource(np.zeros((4, 2, 3, 3), dtype), "layer", 4)


def test_integer_and_half_precision_activations_are_numbers():
    for dtype in (np.uint8, np.int32, np.float16, np.float64):
        assert ArraySource(np.zeros((4, 2, 3, 3), dtype), "layer", 4).units == {"layer": 2}


# ---- the channels-last heuristic -----------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, label_sizes, layout, looks",
    [
        ((4, 7, 7, 512), SQUARE, "nchw", "channels-last [N, h, w, U], 512 units of 7 x 7 maps: pass --layout nhwc"),
        ((4, 14, 14, 64), SQUARE, "nchw", "channels-last"),
        ((4, 1, 1, 10), SQUARE, "nchw", "channels-last [N, h, w, U], 10 units of 1 x 1 maps"),  # a dense layer
        ((4, 5, 7, 256), np.array([[10, 14], [20, 28]]), "nchw", "256 units of 5 x 7 maps"),
        ((4, 512, 7, 7), SQUARE, "nhwc", "channels-first [N, U, h, w], 512 units of 7 x 7 maps: pass --layout nchw"),
    ],
)
def test_the_other_layout_is_refused_when_only_it_can_fit_the_labels(shape, label_sizes, layout, looks):
    with pytest.raises(DissectError) as e:
        ArraySource(np.zeros(shape, np.float32), "layer", 4, layout=layout, label_sizes=label_sizes)
    assert "cannot have the label maps' aspect" in str(e.value) and looks in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "shape, label_sizes, layout",
    [
        ((4, 512, 7, 7), SQUARE, "nchw"),  # as documented
        ((4, 7, 7, 512), SQUARE, "nhwc"),
        ((4, 8, 8, 8), SQUARE, "nchw"),  # both readings fit: not guessed
        ((4, 28, 28, 32), SQUARE, "nchw"),  # units close to the width: not guessed (documented)
        ((4, 3, 7, 7), SQUARE, "nchw"),
        ((4, 6, 5, 7), np.array([[10, 14], [12, 12]]), "nchw"),  # 5 x 7 fits the 10 x 14 labels
        ((4, 7, 7, 512), None, "nchw"),  # no label sizes, no heuristic
        ((4, 64, 2, 2), np.array([[12, 12], [10, 14]]), "nchw"),
    ],
)
def test_no_guessing_beyond_what_is_certain(shape, label_sizes, layout):
    ArraySource(np.zeros(shape, np.float32), "layer", 4, layout=layout, label_sizes=label_sizes)


# ---- files ----------------------------------------------------------------------------------------
def npy_with_header(path, header: str, data: bytes = b""):
    text = header.encode("latin-1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data)


def hostile_file(tmp_path, case):
    path = tmp_path / "acts.npy"
    good = gamma((4, 3, 2, 2))
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "npz":
        np.savez(tmp_path / "acts.npz", conv5=good)
        os.rename(tmp_path / "acts.npz", path)
    elif case == "text":
        path.write_text("0.1, 0.2, 0.3\n")
    elif case == "negative-dimension":
        npy_with_header(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, -3, 2, 2), }", good.tobytes())
    elif case == "corrupt-header":
        npy_with_header(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3,", good.tobytes())
    elif case == "truncated-header":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:30])
    elif case == "truncated-data":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:-10])
    elif case == "strings":
        np.save(path, np.full((4, 3, 2, 2), "x"))
    elif case == "objects":
        np.save(path, np.empty((4, 3, 2, 2), object), allow_pickle=True)
    return path


FILE_CASES = {
    "missing": "does not exist",
    "directory": "is a directory; expected a .npy file",
    "empty": "is empty; expected a .npy array",
    "npz": "is an .npz (zip) archive, not a .npy array",
    "text": "is not a .npy file",
    "negative-dimension": "with a negative dimension (a corrupt header)",
    "corrupt-header": "has a corrupt .npy header",
    "truncated-header": "has a corrupt .npy header",
    "truncated-data": "is truncated: its header gives [4, 3, 2, 2] float32",
    "strings": "holds dtype <U1; expected numbers",
    "objects": "holds dtype object; expected numbers",
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_hostile_files(tmp_path, case):
    path = hostile_file(tmp_path, case)
    with pytest.raises(DissectError) as e:
        ArraySource.from_npy(str(path), 4)
    assert f"activations file {path}" in str(e.value) and FILE_CASES[case] in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_from_npy_reads_both_layouts(tmp_path):
    np.save(tmp_path / "conv5.npy", gamma((4, 7, 7, 32)))
    source = ArraySource.from_npy(str(tmp_path / "conv5.npy"), 4, "nhwc", SQUARE)
    assert source.layers == ["conv5"] and source.units == {"conv5": 32}
    with pytest.raises(DissectError, match="pass --layout nhwc"):
        ArraySource.from_npy(str(tmp_path / "conv5.npy"), 4, "nchw", SQUARE)


# ---- through the command line --------------------------------------------------------------------
def run_dissect(tmp_path, root, acts, *extra):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "dissectjax", "dissect", "--dataset", root, "--activations", str(acts),
                        "--out", str(out), "--quantile", "0.05", "--quiet", "--no-report", *extra],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    return p, out


@pytest.mark.parametrize("case", ["channels-last", "npz", "negative-dimension", "empty", "directory", "zero-units"])
def test_cli_refuses_activations_that_cannot_be_right(tmp_path, broden_dir, case):
    root, _, _ = broden_dir
    n = len(BrodenDataset(root))
    if case == "channels-last":
        path, expect = (
            tmp_path / "acts.npy",
            "looks channels-last [N, h, w, U], 64 units of 7 x 7 maps: pass --layout nhwc",
        )
        np.save(path, gamma((n, 7, 7, 64)))
    elif case == "zero-units":
        path, expect = tmp_path / "acts.npy", "0 units of 3 x 3 maps"
        np.save(path, np.zeros((n, 0, 3, 3), np.float32))
    else:
        path, expect = hostile_file(tmp_path, case), FILE_CASES[case]
    p, out = run_dissect(tmp_path, root, path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines[0].startswith("dissectjax dissect: error: ") and expect in lines[0], lines[0]
    assert not out.exists() and not [x for x in os.listdir(tmp_path) if x.startswith(".out")]


def test_cli_layout_nhwc(tmp_path, broden_dir):
    root, _, _ = broden_dir
    n = len(BrodenDataset(root))
    np.save(tmp_path / "acts.npy", gamma((n, 7, 7, 64)))
    p, out = run_dissect(tmp_path, root, tmp_path / "acts.npy", "--layout", "nhwc")
    assert p.returncode == 0, p.stderr[-3000:]
    counts = np.load(out / "acts" / "counts.npz", allow_pickle=False)
    assert counts["thresholds"].shape == (64,)
