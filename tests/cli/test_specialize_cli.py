"""``dissectjax specialize``: train with statistics, reload them, and refuse bad input clearly."""

import csv

import numpy as np
import pytest

from dissectjax.cli import main
from dissectjax.data.digits import sklearn_digits, tfds_mnist
from dissectjax.errors import DissectError
from dissectjax.train import ClassUnitStats


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("spec") / "run"
    argv = ["specialize", "--out", str(out), "--train-size", "640", "--epochs", "1", "--layers", "conv2,fc1",
            "--class", "7", "--top", "3", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_training_writes_statistics_views_and_a_checkpoint(trained):
    for name in ("stats.npz", "units-fc1.csv", "units-conv2.csv", "push_vs_act-fc1.png", "checkpoint/config.json"):
        assert (trained / name).exists(), name
    stats = ClassUnitStats.load(str(trained / "stats.npz"))
    assert int(stats.count.sum()) == 640  # one epoch of 10 batches of 64
    with open(trained / "units-fc1.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 * 10
    r = rows[0]
    assert float(r["push"]) == pytest.approx(-float(r["grad"]))
    if (trained / "anomalies.csv").exists():  # views of the anomalous units
        with open(trained / "anomalies.csv") as f:
            assert all(row["class"] == "7" for row in csv.DictReader(f))
        assert (trained / "weighted-fc1.png").exists() or (trained / "weighted-conv2.png").exists()
        assert (trained / "top-fc1.png").exists() or (trained / "top-conv2.png").exists()


def test_reloading_checkpoint_and_stats(trained, tmp_path):
    out = tmp_path / "again"
    argv = ["specialize", "--out", str(out), "--checkpoint", str(trained / "checkpoint"), "--stats",
            str(trained / "stats.npz"), "--layers", "fc1", "--images", "200", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    a, b = ClassUnitStats.load(str(out / "stats.npz")), ClassUnitStats.load(str(trained / "stats.npz"))
    np.testing.assert_array_equal(a.grad["fc1"], b.grad["fc1"])


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--checkpoint", "x"], "--checkpoint and --stats go together"),
        (["--data", "mnist"], "MNIST needs the TFDS data_dir"),
        (["--data", "cifar"], "unknown digit source 'cifar'"),
        (["--layers", "fc9", "--train-size", "64", "--epochs", "1"], "unknown layers ['fc9']"),
        (["--train-size", "10"], "fewer than one batch"),
        (["--epochs", "0", "--train-size", "64"], "argument --epochs: expected a positive integer"),
        (["--crossed", "0.9"], "--crossed must be in [0, 0.8]"),
    ],
)
def test_bad_input(tmp_path, capsys, extra, expect):
    assert main(["specialize", "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    assert expect in capsys.readouterr().err


def test_sklearn_digits_are_resized_offline():
    images, labels, _ = sklearn_digits(32)
    assert images.shape == (1797, 32, 32, 1) and images.dtype == np.uint8
    assert set(labels) == set(range(10)) and images.max() > 200


def test_mnist_without_a_prepared_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DissectError, match=r"tensorflow-datasets is not installed|MNIST is not prepared"):
        tfds_mnist(str(tmp_path))
