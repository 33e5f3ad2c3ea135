"""The dissection driver end to end on random Broden data, against the brute-force reference."""

import sys

import numpy as np
import pytest
from conftest import random_broden, reference_labels
from reference_impl import assert_counts_match, lite_counts, lite_threshold, rank_error
from reference_impl import counts as reference_counts
from reference_impl import iou as reference_iou

from dissectjax.data.broden import BrodenDataset
from dissectjax.data.probe import batch_plan
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ArraySource
from dissectjax.errors import DissectError
from dissectjax.parallel import DataParallel


def random_acts(n, seed=0, units=7, hw=(5, 6)):
    rng = np.random.default_rng(seed)
    acts = rng.gamma(2.0, size=(n, units, *hw)).astype(np.float32)
    acts[:, 3] = np.maximum(acts[:, 3] - 4.5, 0)  # mostly zero: thresholds in ties
    acts[:, 5] = -acts[:, 5]  # all negative
    return acts


@pytest.mark.parametrize("quantile", [0.005, 0.1])
@pytest.mark.parametrize("condition", [True, False])
def test_dissect_matches_reference(broden_dir, quantile, condition):
    root, labels, rows = broden_dir
    ds = BrodenDataset(root)
    acts = random_acts(len(ds))
    result = dissect(ArraySource(acts, "layer", len(ds)), ds, DissectConfig(quantile, 0.04, condition, batch_size=5))
    r = result["layer"]
    for u in range(acts.shape[1]):
        assert rank_error(acts[:, u], r.thresholds[u], quantile) <= 1e-4
    pixel, image, category = reference_labels(labels, rows, list(ds.categories))
    inter, uarea, carea, ambiguous = reference_counts(acts, r.thresholds, pixel, image, category, 5, condition)
    assert_counts_match(r.intersection, inter, ambiguous)
    assert_counts_match(r.unit_area, uarea, ambiguous)
    np.testing.assert_array_equal(r.concept_area, carea)
    ref_iou = reference_iou(r.intersection, r.unit_area, carea, category)  # labels from the same counts
    np.testing.assert_allclose(r.iou, ref_iou, atol=1e-12)
    np.testing.assert_array_equal(r.labels.label, np.argmax(ref_iou, axis=1))
    np.testing.assert_array_equal(r.labels.detector, ref_iou.max(1) >= 0.04)
    for k in range(5):  # best concept per category
        cols = np.flatnonzero(category == k)
        np.testing.assert_array_equal(r.labels.best_per_category[:, k], cols[np.argmax(ref_iou[:, cols], axis=1)])


@pytest.fixture(scope="module")
def lite_broden(tmp_path_factory):
    """Random Broden data with every case Lite counts differently: repeats across layers, labels
    both image- and pixel-level, rows with image-level labels only, and an absent category."""
    root = tmp_path_factory.mktemp("lite") / "ds"
    labels, rows = random_broden(root, seed=7, n=31, image_only=0.25, absent=("part",))
    return str(root), labels, rows


@pytest.mark.parametrize("quantile", [0.005, 0.05])
def test_lite_semantics_match_lites_loop(lite_broden, quantile):
    root, labels, rows = lite_broden
    ds = BrodenDataset(root)
    acts = random_acts(len(ds), seed=3)
    config = DissectConfig(quantile, 0.04, batch_size=4, semantics="lite")
    r = dissect(ArraySource(acts, "layer", len(ds)), ds, config)["layer"]
    assert r.semantics == "lite"
    for u in range(acts.shape[1]):
        lite, ours = lite_threshold(acts[:, u], quantile), r.thresholds[u]
        above = float(np.nextafter(ours, np.float32(np.inf)))  # (compared as float64, not rounded to float32)
        assert float(ours) <= lite < above, u  # Lite's threshold, rounded down to float32
    pixel, image, category = reference_labels(labels, rows, list(ds.categories))
    assert any(p.shape[0] == 0 for p in pixel) and not np.isin(np.flatnonzero(category == 2), np.concatenate(
        [np.unique(p) for p in pixel])).any()  # image-level-only rows; "part" labels nothing  # fmt: skip
    inter, uarea, carea, ambiguous = lite_counts(acts, r.thresholds, pixel, image, category, 5)
    assert_counts_match(r.intersection, inter, ambiguous)
    assert_counts_match(r.unit_area, uarea, ambiguous)
    np.testing.assert_array_equal(r.concept_area, carea)
    if quantile == 0.05:  # the fixture tells the rules apart
        netdissect = dissect(ArraySource(acts, "layer", len(ds)), ds, DissectConfig(quantile, batch_size=4))["layer"]
        assert not np.array_equal(netdissect.unit_area, r.unit_area)


def test_lite_semantics_refuse_no_condition():
    with pytest.raises(DissectError, match="lite semantics always condition"):
        DissectConfig(condition=False, semantics="lite")
    with pytest.raises(DissectError, match="semantics must be one of netdissect, lite"):
        DissectConfig(semantics="caffe")


def test_results_do_not_depend_on_batch_size(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    source = ArraySource(random_acts(len(ds), seed=1), "layer", len(ds))
    runs = [dissect(source, ds, DissectConfig(0.02, batch_size=b))["layer"] for b in (1, 4, 64)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].thresholds, other.thresholds)
        np.testing.assert_array_equal(runs[0].intersection, other.intersection)
        np.testing.assert_array_equal(runs[0].unit_area, other.unit_area)
        np.testing.assert_array_equal(runs[0].concept_area, other.concept_area)


@pytest.mark.parametrize("quantile", [0.005, 0.1])
def test_compacted_threshold_passes_give_the_same_results(broden_dir, monkeypatch, quantile):
    """Every batch's threshold passes compacted (a census, a floor in the first pass) or not:
    the same thresholds and counts, for the rank rule and Lite's."""
    kernels = sys.modules["dissectjax.dissect.kernels"]  # the package's ``kernels`` is the function
    ds = BrodenDataset(broden_dir[0])
    acts = random_acts(len(ds), seed=3)
    for semantics in ("netdissect", "lite"):
        config = DissectConfig(quantile, batch_size=3, semantics=semantics)
        monkeypatch.setattr(kernels, "COMPACT_FROM", 1 << 30)
        whole = dissect(ArraySource(acts, "layer", len(ds)), ds, config)["layer"]
        monkeypatch.setattr(kernels, "COMPACT_FROM", 0)
        compacted = dissect(ArraySource(acts, "layer", len(ds)), ds, config)["layer"]
        np.testing.assert_array_equal(compacted.thresholds, whole.thresholds)
        np.testing.assert_array_equal(compacted.intersection, whole.intersection)


class BucketMaps:
    """Stored activations whose maps differ in size by the rows' label size: 1 x 1 maps of
    large values for one size, 8 x 8 maps of small values for the other."""

    layers, units, needs_images, description = ["layer"], {"layer": 2}, False, "bucket maps"

    def __init__(self, ds):
        self.shapes = ds.shapes

    def activations(self, batch, parallel):
        rows = batch.index
        side = 1 if self.shapes[int(rows[rows >= 0][0]), 2] == 10 else 8
        maps = np.zeros((len(rows), side, side, 2), np.float32)
        for j, r in enumerate(np.maximum(rows, 0)):
            maps[j] = 2.0 ** (r % 16 + 4) if side == 1 else np.random.default_rng(int(r)).random((side, side, 2))
        return {"layer": parallel.shard(maps)}


def test_maps_of_several_sizes_are_thresholded_without_a_floor(broden_dir, monkeypatch):
    """The first pass's floor needs every unit's number of values in advance. Here the first
    batches have the small maps: a floor raised for their count would rise above the values
    that decide the thresholds (they lie among the large maps' small values)."""
    kernels = sys.modules["dissectjax.dissect.kernels"]
    ds = BrodenDataset(broden_dir[0])
    assert sorted(np.unique(ds.shapes[:, 2])) == [10, 12]  # two buckets, the 1 x 1 maps first
    monkeypatch.setattr(kernels, "COMPACT_FROM", 0)
    result = dissect(BucketMaps(ds), ds, DissectConfig(0.3, batch_size=3))["layer"]
    values = [[], []]
    for batch in batch_plan(ds, 3):
        maps = BucketMaps(ds).activations(ds.load_batch(batch, False, False), DataParallel.create())["layer"]
        for u in range(2):
            values[u].extend(np.asarray(maps)[batch >= 0][..., u].ravel())
    for u in range(2):
        assert rank_error(np.array(values[u]), result.thresholds[u], 0.3) == 0


def test_strategies_agree(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    source = ArraySource(random_acts(len(ds), seed=2), "layer", len(ds))
    seg, dense, sparse = (
        dissect(source, ds, DissectConfig(0.05, strategy=s))["layer"] for s in ("segment", "dense", "sparse")
    )
    for other in (dense, sparse):
        np.testing.assert_array_equal(seg.intersection, other.intersection)
        np.testing.assert_array_equal(seg.unit_area, other.unit_area)
        np.testing.assert_array_equal(seg.concept_area, other.concept_area)


@pytest.mark.parametrize("rule", [">=", ">"])
def test_unique_detectors_under_both_rules(broden_dir, rule):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    config = DissectConfig(0.2, 0.01, detector_rule=rule)
    r = dissect(ArraySource(random_acts(len(ds), seed=3), "layer", len(ds)), ds, config)["layer"]
    assert r.detector_rule == rule
    passes = np.greater_equal if rule == ">=" else np.greater
    np.testing.assert_array_equal(r.labels.detector, passes(r.iou.max(1), 0.01))
    found = set(r.labels.label[r.labels.detector].tolist())  # best-label rule
    assert r.unique["total"] == len(found)
    assert sum(v for k, v in r.unique.items() if k != "total") == len(found)
    for k, category in enumerate(r.concepts.categories):  # NetDissect-tables rule
        best = r.labels.best_per_category[:, k]
        kept = {int(c) for u, c in enumerate(best) if c >= 0 and passes(r.iou[u, c], 0.01)}
        assert r.unique_tables[category] == len(kept)
    assert r.unique_tables["total"] == sum(v for k, v in r.unique_tables.items() if k != "total")


def test_nan_activations_are_an_error(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = random_acts(len(ds))
    acts[4, 2, 1, 1] = np.nan
    with pytest.raises(DissectError, match=r"NaN/Inf .* unit 2"):
        dissect(ArraySource(acts, "layer", len(ds)), ds)


def test_activation_rows_must_match_dataset(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    with pytest.raises(DissectError, match="rows but the dataset has"):
        ArraySource(random_acts(len(ds) - 1), "layer", len(ds))
    with pytest.raises(DissectError, match="expected 4 axes"):
        ArraySource(np.zeros((len(ds), 3, 4)), "layer", len(ds))


def test_sparse_falls_back_when_most_quads_are_active(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    source = ArraySource(random_acts(len(ds), seed=6), "layer", len(ds))
    seg, sparse = (dissect(source, ds, DissectConfig(0.6, strategy=s))["layer"] for s in ("segment", "sparse"))
    np.testing.assert_array_equal(seg.intersection, sparse.intersection)
    np.testing.assert_array_equal(seg.unit_area, sparse.unit_area)


def test_top_images_are_the_highest_maxima(broden_dir):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = random_acts(len(ds), seed=7)
    acts[5, 0] = acts[9, 0] = 100.0  # a tie: the lower row comes first
    results = [dissect(ArraySource(acts, "layer", len(ds)), ds, DissectConfig(0.05, batch_size=b, top_k=4))["layer"]
               for b in (3, 64)]  # fmt: skip
    maxima = acts.max(axis=(2, 3))  # [N, U]
    for u in range(acts.shape[1]):
        expected = sorted(range(len(ds)), key=lambda i: (-maxima[i, u], i))[:4]
        np.testing.assert_array_equal(results[0].top_images[u], expected)
        np.testing.assert_allclose(results[0].top_activations[u], maxima[expected, u])
    np.testing.assert_array_equal(results[0].top_images, results[1].top_images)  # batching does not matter
    assert list(results[0].top_images[0, :2]) == [5, 9]


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_top_maps_are_the_units_maps_on_the_top_rows(broden_dir, batch_size):
    root, _, _ = broden_dir
    ds = BrodenDataset(root)
    acts = random_acts(len(ds), seed=11)  # [N, U, h, w]
    acts[:, 2] = np.where(np.arange(len(ds))[:, None, None] % 4 == 0, 7.0, acts[:, 2])  # ties across batches
    r = dissect(ArraySource(acts, "layer", len(ds)), ds, DissectConfig(0.05, batch_size=batch_size, top_k=6))["layer"]
    assert r.top_maps.shape == (acts.shape[1], 6, *acts.shape[2:])
    for u in range(acts.shape[1]):
        np.testing.assert_array_equal(r.top_maps[u], acts[r.top_images[u], u])
