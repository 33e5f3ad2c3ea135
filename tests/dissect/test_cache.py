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


def test_every_cache_place_gives_the_counts_of_recomputing(broden_dir, scenenet_source, tmp_path):
    ds = BrodenDataset(broden_dir[0])
    plan_batches = len(batch_plan(ds, 4))
    recomputed = Counting(scenenet_source)
    reference = run(recomputed, ds, Pipeline(cache="none"))
    passes = recomputed.calls // plan_batches
    assert recomputed.calls % plan_batches == 0 and passes >= 3  # two or more threshold passes, then the tally
    for place in ("device", "host", "file", "auto"):
        counted = Counting(scenenet_source)
        scratch = tmp_path / place
        scratch.mkdir()
        result = run(counted, ds, Pipeline(cache=place, cache_dir=str(scratch)))
        assert_same(reference, result)
        assert counted.calls == plan_batches, place  # the forward pass once per batch
        assert os.listdir(scratch) == []  # a file cache deletes its scratch directory


def test_with_a_cache_images_are_decoded_once_and_label_maps_only_for_the_tally(broden_dir, scenenet_source):
    ds = Recording(BrodenDataset(broden_dir[0]))
    run(scenenet_source, ds, Pipeline(cache="host"))
    batches = len(batch_plan(ds, 4))
    assert ds.loads[:batches] == [(True, False)] * batches  # pass 1: images, no label maps
    assert ds.loads[-batches:] == [(False, True)] * batches  # tally: label maps only
    assert all(load == (False, False) for load in ds.loads[batches:-batches])  # later threshold passes: nothing
    ds.loads.clear()
    run(scenenet_source, ds, Pipeline(cache="none"))
    assert ds.loads[-batches:] == [(True, True)] * batches  # without: images again, with the label maps


def test_decoding_processes_give_the_batches_of_threads(broden_dir, scenenet_source):
    ds = BrodenDataset(broden_dir[0])
    threads = run(scenenet_source, ds, Pipeline(cache="none"))
    processes = run(scenenet_source, ds, Pipeline(cache="none", decode_workers=2))
    assert_same(threads, processes)


def test_a_bad_row_decoded_in_another_process_is_the_same_one_line_error(tmp_path):
    from conftest import random_broden

    root = tmp_path / "ds"
    random_broden(root, n=6)
    os.remove(root / "images" / "im004.png")
    model = build_model("scenenet")
    source = ModelSource(model, init_variables(model, (20, 20, 3)), ["conv5"], (20, 20, 3))
    with pytest.raises(DissectError, match=r"index.csv line 6 \(im004.png\): image file .* is missing"):
        dissect(source, BrodenDataset(str(root)), DissectConfig(0.05, batch_size=2),
                pipeline=Pipeline(decode_workers=2))  # fmt: skip


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
