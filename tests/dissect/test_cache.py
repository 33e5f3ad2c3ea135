"""The forward pass once: activations kept between passes, wherever they are kept, give the
counts of recomputing them, bit for bit; decoding in other processes gives the same batches."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.checkpoint import init_variables
from dissectjax.data.broden import BrodenDataset
from dissectjax.data.probe import batch_plan
from dissectjax.dissect import DissectConfig, ModelSource, dissect
from dissectjax.dissect.cache import ActivationCache, Pipeline, choose_place
from dissectjax.errors import DissectError
from dissectjax.models import build_model

LAYERS = ["conv3", "conv5"]


class Counting:
    """A source that counts its forward passes (batches computed)."""

    def __init__(self, source):
        self.source, self.calls = source, 0
        self.layers, self.units, self.needs_images = source.layers, source.units, source.needs_images
        self.map_shapes, self.description = source.map_shapes, source.description

    def activations(self, batch, parallel):
        self.calls += 1
        return self.source.activations(batch, parallel)


class Recording:
    """A probe set that records what each batch load decoded: (images, labels)."""

    def __init__(self, ds):
        self.ds, self.loads = ds, []
        self.concepts, self.shapes = ds.concepts, ds.shapes
        self.label_layers, self.max_image_labels = ds.label_layers, ds.max_image_labels

    def __len__(self):
        return len(self.ds)

    def __getattr__(self, name):  # image_size, label_size, labels, load_image ...
        return getattr(self.ds, name)

    def load_batch(self, rows, images, labels):
        self.loads.append((images, labels))
        return self.ds.load_batch(rows, images, labels)


@pytest.fixture(scope="module")
def scenenet_source():
    model = build_model("scenenet")
    return ModelSource(model, init_variables(model, (20, 20, 3), seed=3), LAYERS, (20, 20, 3))


def run(source, ds, pipeline):
    return dissect(source, ds, DissectConfig(0.05, batch_size=4, top_k=3), pipeline=pipeline)


def assert_same(a, b):
    for name in LAYERS:
        for field in ("thresholds", "intersection", "unit_area", "concept_area", "top_images", "top_maps"):
            np.testing.assert_array_equal(getattr(a[name], field), getattr(b[name], field), err_msg=f"{name} {field}")


@pytest.fixture(scope="module")
def recomputed(broden_dir, scenenet_source):
    """Every pass recomputing the activations: (results, forward passes, loads, batches)."""
    ds = Recording(BrodenDataset(broden_dir[0]))
    source = Counting(scenenet_source)
    results = run(source, ds, Pipeline(cache="none"))
    return results, source.calls, ds.loads, len(batch_plan(ds, 4))


def test_without_a_cache_every_pass_runs_the_forward_pass_and_decodes_images(recomputed):
    _, calls, loads, batches = recomputed
    assert calls % batches == 0 and calls // batches >= 3  # two or more threshold passes, then the tally
    assert loads[-batches:] == [(True, True)] * batches  # the tally decodes the images again, and the label maps


@pytest.mark.parametrize("place", ["device", "host", "file"])
def test_every_cache_place_gives_the_counts_of_recomputing(broden_dir, scenenet_source, recomputed, place, tmp_path):
    reference, _, _, batches = recomputed
    ds = Recording(BrodenDataset(broden_dir[0]))
    counted = Counting(scenenet_source)
    result = run(counted, ds, Pipeline(cache=place, cache_dir=str(tmp_path)))
    assert_same(reference, result)
    assert counted.calls == batches  # the forward pass once per batch
    assert ds.loads[:batches] == [(True, False)] * batches  # pass 1: images, no label maps
    assert all(load == (False, False) for load in ds.loads[batches:-batches])  # later threshold passes: nothing
    assert ds.loads[-batches:] == [(False, True)] * batches  # tally: label maps only
    assert os.listdir(tmp_path) == []  # a file cache deletes its scratch directory


def test_decoding_processes_give_the_batches_of_threads(broden_dir, scenenet_source, recomputed):
    processes = run(scenenet_source, BrodenDataset(broden_dir[0]), Pipeline(cache="none", decode_workers=2))
    assert_same(recomputed[0], processes)


def test_a_bad_row_decoded_in_another_process_is_the_same_one_line_error(tmp_path):
    from conftest import random_broden

    root = tmp_path / "ds"
    random_broden(root, n=6)
    os.remove(root / "images" / "im004.png")
    model = build_model("scenenet")
    source = ModelSource(model, init_variables(model, (20, 20, 3)), ["conv5"], (20, 20, 3))
    with pytest.raises(DissectError, match=r"index.csv line 6 \(im004.png\): image file .* is missing"):
        dissect(source, BrodenDataset(str(root)), DissectConfig(0.05, batch_size=2),
                pipeline=Pipeline(decode_workers=1))  # fmt: skip


def test_auto_keeps_nothing_for_stored_activations(broden_dir):
    from dissectjax.dissect import ArraySource, Passes

    ds = BrodenDataset(broden_dir[0])
    acts = np.random.default_rng(0).random((len(ds), 3, 4, 4), np.float32)
    assert Passes(ArraySource(acts, "layer", len(ds)), ds, DissectConfig(0.05)).cache is None


def test_choose_place_takes_the_first_place_with_room():
    assert choose_place(40, 100, 1000, 1000, on_cpu=False) == "device"
    assert choose_place(60, 100, 1000, 1000, on_cpu=False) == "host"
    assert choose_place(60, 100, 100, 1000, on_cpu=False) == "file"
    assert choose_place(60, 100, 1000, 1000, on_cpu=True) == "file"  # on a CPU the device is the host
    assert choose_place(60, None, None, None, on_cpu=False) == "none"


def test_bad_pipelines_and_unwritable_cache_dirs_are_errors(tmp_path):
    with pytest.raises(DissectError, match="activation cache must be one of auto, device, host, file, none"):
        Pipeline(cache="disk")
    with pytest.raises(DissectError, match="decode workers must be 0 or more"):
        Pipeline(decode_workers=-1)
    cache = ActivationCache("file", 2, str(tmp_path / "missing"))
    with pytest.raises(DissectError, match=r"cannot keep activations in a file under .*missing"):
        cache.put(0, {"layer": jnp.zeros((2, 1, 1, 3), jnp.float32)})
