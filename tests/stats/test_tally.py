"""Tally kernels against the brute-force reference: exactly equal integer counts."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_impl import assert_counts_match, lite_counts
from reference_impl import counts as reference_counts
from reference_impl import upsample as reference_upsample

from dissectjax.parallel import DataParallel
from dissectjax.stats.semantics import Rules, rules
from dissectjax.stats.sparse import SparseTally, quad_runs
from dissectjax.stats.tally import LabelBatch, tally
from dissectjax.stats.upsample import upsample

NUM_CATEGORIES = 4  # 0, 1 pixel-level; 2, 3 image-level


def random_case(rng, n, units, act_hw, label_hw, layers, concepts=11):
    category = np.array([k % NUM_CATEGORIES for k in range(concepts)])
    pixel_concepts = np.flatnonzero(category < 2)
    image_concepts = np.flatnonzero(category >= 2)
    acts = rng.normal(size=(n, units, *act_hw)).astype(np.float32)
    pixel = rng.choice(pixel_concepts, size=(n, layers, *label_hw))
    pixel[rng.random(pixel.shape) < 0.3] = -1
    pixel[0] = -1  # an image with no pixel labels at all
    pixel[1, :, : label_hw[0] // 2] = pixel[1, :1, : label_hw[0] // 2]  # the same concept in two layers
    image = np.full((n, 3), -1)
    for i in range(n):
        k = int(rng.integers(0, 3))
        image[i, :k] = rng.choice(image_concepts, k, replace=False)
    image[2, 0] = pixel[2, 0, 0, 0] if pixel[2, 0, 0, 0] >= 0 else image[2, 0]  # image- and pixel-level at once
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1).astype(np.float32)
    return acts, thresholds, pixel, image, category


def run_tally(acts, thresholds, pixel, image, category, rule, strategy, valid=None, num_categories=NUM_CATEGORIES):
    """The tally of one batch of raw labels (repeats kept: the rules decide what they count)."""
    if not isinstance(rule, Rules):
        rule = rules("netdissect", condition=rule)
    valid = np.ones(len(acts), bool) if valid is None else valid
    labels = LabelBatch(jnp.asarray(pixel, jnp.int32), jnp.asarray(image, jnp.int32), jnp.asarray(valid))
    args = (jnp.asarray(acts.transpose(0, 2, 3, 1)), jnp.asarray(thresholds))
    category = jnp.asarray(category, jnp.int32)
    if strategy == "sparse":
        out = SparseTally(DataParallel.create())(args[0], labels, args[1], category, num_categories, rule)
    else:
        fn = jax.jit(tally, static_argnames=("num_categories", "rule", "strategy"))
        out = fn(*args, labels, category, num_categories=num_categories, rule=rule, strategy=strategy)
    return [np.asarray(x) for x in out]


CASES = {
    "integer-ratio": dict(act_hw=(4, 4), label_hw=(16, 16)),
    "non-integer-ratio": dict(act_hw=(5, 7), label_hw=(13, 11)),
    "same-size": dict(act_hw=(6, 6), label_hw=(6, 6)),
    "downsample": dict(act_hw=(9, 8), label_hw=(6, 5)),
}


@pytest.mark.parametrize("strategy", ["segment", "dense", "sparse"])
@pytest.mark.parametrize("condition", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_counts_equal_reference(case, condition, strategy):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    acts, t, pixel, image, category = random_case(rng, n=6, units=5, layers=2, **CASES[case])
    inter, uarea, carea = run_tally(acts, t, pixel, image, category, condition, strategy)
    ref = reference_counts(
        acts, t, list(pixel), [set(r[r >= 0].tolist()) for r in image], category, NUM_CATEGORIES, condition
    )
    assert_counts_match(inter, ref[0], ref[3])  # exact, except pixels within float32 rounding of t
    assert_counts_match(uarea, ref[1], ref[3])
    np.testing.assert_array_equal(carea, ref[2])


@pytest.mark.parametrize("strategy", ["segment", "sparse"])
def test_padding_rows_count_nothing(strategy):
    rng = np.random.default_rng(3)
    acts, t, pixel, image, category = random_case(rng, n=5, units=3, act_hw=(3, 3), label_hw=(7, 7), layers=2)
    full = run_tally(acts[:3], t, pixel[:3], image[:3], category, True, strategy)
    padded = run_tally(acts, t, pixel, image, category, True, strategy, valid=np.arange(5) < 3)
    for a, b in zip(full, padded):
        np.testing.assert_array_equal(a, b)


def test_upsample_matches_reference_and_jax_image_resize():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    for size in [(13, 11), (5, 7), (16, 28), (3, 4)]:
        ours = np.asarray(upsample(jnp.asarray(a), size))
        ref = reference_upsample(a.transpose(0, 3, 1, 2), *size).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
        if size[0] >= 5 and size[1] >= 7:  # upsampling: identical to jax.image.resize
            resized = np.asarray(jax.image.resize(jnp.asarray(a), (2, *size, 3), "bilinear"))
            np.testing.assert_allclose(ours, resized, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_out, n_in", [(112, 7), (13, 5), (6, 9), (16, 16), (1, 4), (9, 1)])
def test_quad_runs_partition_the_output(n_out, n_in):
    starts, lo, hi, frac, inside, _ = quad_runs(n_out, n_in)
    lengths = inside.sum(1)
    assert lengths.sum() == n_out and np.all(np.diff(starts) == lengths[:-1])
    ref = reference_upsample(np.eye(n_in)[:, :, None], n_out, 1)[..., 0]  # [n_in, n_out]: weight of input i at sample y
    for g in range(len(starts)):
        for r in range(lengths[g]):
            y = starts[g] + r
            weights = {int(lo[g]): 1 - frac[g, r]}
            weights[int(hi[g])] = weights.get(int(hi[g]), 0) + frac[g, r]
            np.testing.assert_allclose([weights.get(i, 0) for i in range(n_in)], ref[:, y], atol=1e-6)


@pytest.mark.parametrize("act_hw, label_hw", [((7, 7), (113, 113)), ((7, 5), (13, 38)), ((5, 3), (38, 37))])
def test_plateaus_at_the_threshold_count_the_same_in_every_strategy(act_hw, label_hw):
    """Saturated and quantized activations put whole regions exactly at the threshold."""
    rng = np.random.default_rng(sum(act_hw) + sum(label_hw))
    acts, t, pixel, image, category = random_case(rng, n=4, units=4, act_hw=act_hw, label_hw=label_hw, layers=2)
    acts = np.round(acts * 2) / 2  # quantized: many values equal the threshold
    acts[:, 0] = np.minimum(acts[:, 0], 0.5)  # saturated at the threshold
    acts[0, 1] = 0.5  # a constant map equal to the threshold
    t = np.full(4, 0.5, np.float32)
    results = [run_tally(acts, t, pixel, image, category, True, s) for s in ("segment", "dense", "sparse")]
    for other in results[1:]:
        for x, y in zip(results[0], other):
            np.testing.assert_array_equal(x, y)
    ref = reference_counts(acts, t, list(pixel), [set(r[r >= 0].tolist()) for r in image], category, NUM_CATEGORIES)
    # the float64 reference's weighted sums can round a plateau just above t: those pixels are "ambiguous"
    assert_counts_match(results[0][0], ref[0], ref[3])
    assert_counts_match(results[0][1], ref[1], ref[3])


@pytest.mark.parametrize("strategy", ["segment", "dense", "sparse"])
def test_image_level_labels_only(strategy):
    rng = np.random.default_rng(11)
    acts, t, pixel, image, category = random_case(rng, n=5, units=3, act_hw=(3, 3), label_hw=(6, 6), layers=1)
    pixel = pixel[:, :0]  # no pixel-level label layers at all
    counts = run_tally(acts, t, pixel, image, category, True, strategy)
    ref = reference_counts(acts, t, list(pixel), [set(r[r >= 0].tolist()) for r in image], category, NUM_CATEGORIES)
    assert_counts_match(counts[0], ref[0], ref[3])
    np.testing.assert_array_equal(counts[2], ref[2])


# ---- NetDissect-Lite's rules --------------------------------------------------------------------------
def lite_case(case: str, units: int = 5):
    """A random batch with every kind of label Lite counts differently: a concept in two layers of
    a pixel, an image-level label given twice, a concept both image- and pixel-level, an image with
    only image-level labels, and a category (4) that no image labels."""
    rng = np.random.default_rng(zlib.crc32(b"lite" + case.encode()))
    acts, t, pixel, image, _ = random_case(rng, n=7, units=units, layers=3, **CASES[case])
    category = np.array([k % (NUM_CATEGORIES + 1) for k in range(11)])  # concepts 4, 9: category 4, never used
    pixel = np.where(np.isin(pixel, np.flatnonzero(category < 2)), pixel, -1)
    image = np.where(np.isin(image, np.flatnonzero((category == 2) | (category == 3))), image, -1)
    image[3, :2] = np.flatnonzero(category == 2)[0]  # given twice
    pixel[4, 2] = pixel[4, 0]  # the first layer repeated in the third
    return acts, t, pixel, image, category


@pytest.mark.parametrize("strategy", ["segment", "dense", "sparse"])
@pytest.mark.parametrize("case", ["non-integer-ratio", "integer-ratio", "downsample"])
def test_lite_counts_equal_lites_loop(case, strategy):
    acts, t, pixel, image, category = lite_case(case)
    ours = run_tally(acts, t, pixel, image, category, rules("lite"), strategy, num_categories=NUM_CATEGORIES + 1)
    inter, uarea, carea, ambiguous = lite_counts(
        acts, t, list(pixel), [r[r >= 0].tolist() for r in image], category, NUM_CATEGORIES + 1
    )
    assert_counts_match(ours[0], inter, ambiguous)
    assert_counts_match(ours[1], uarea, ambiguous)
    np.testing.assert_array_equal(ours[2], carea)
    assert not ours[1][:, 4].any()  # the absent category


def test_lite_and_netdissect_differ_where_the_rules_do():
    """The repeats count twice in Lite's intersections and concept areas, and Lite's area counts
    only where the mask covers the category: never more than NetDissect's."""
    acts, t, pixel, image, category = lite_case("integer-ratio")
    lite = run_tally(acts, t, pixel, image, category, rules("lite"), "segment", num_categories=NUM_CATEGORIES + 1)
    nd = run_tally(acts, t, pixel, image, category, rules(), "segment", num_categories=NUM_CATEGORIES + 1)
    assert np.all(lite[0] >= nd[0]) and np.any(lite[0] > nd[0])
    assert np.all(lite[2] >= nd[2]) and np.any(lite[2] > nd[2])
    assert np.all(lite[1] <= nd[1]) and np.any(lite[1] < nd[1])


def test_lite_padding_rows_count_nothing():
    acts, t, pixel, image, category = lite_case("same-size", units=3)
    for strategy in ("segment", "sparse"):
        full = run_tally(acts[:4], t, pixel[:4], image[:4], category, rules("lite"), strategy, num_categories=5)
        padded = run_tally(acts, t, pixel, image, category, rules("lite"), strategy, valid=np.arange(7) < 4,
                           num_categories=5)  # fmt: skip
        for a, b in zip(full, padded):
            np.testing.assert_array_equal(a, b)


def test_masked_pixels_from_row_intervals_are_the_masked_pixels():
    """The sparse tally spells out each tile row's interval (``_row_intervals``) instead of
    compacting every tile pixel (``_pixel_intervals``); on masks whose rows are intervals both
    give the same set of (tile, row, column), each once, and the rows of bilinear tiles are intervals."""
    from dissectjax.stats.sparse import _pixel_intervals, _row_intervals, _spell_out, _Tiles

    rng = np.random.default_rng(0)
    tiles, rows, cols = 40, 6, 9
    start = rng.integers(0, cols, (tiles, rows))
    length = np.where(rng.random((tiles, rows)) < 0.4, 0, rng.integers(1, cols + 1, (tiles, rows)))
    length = np.minimum(length, cols - start)
    x = np.arange(cols)
    mask = (x >= start[..., None]) & (x < (start + length)[..., None])
    bound = 1024

    def pixels(intervals):
        which, position, ok = _spell_out(intervals.length, bound)
        column = intervals.first[which] + position.entry - position.start[which]
        tile, row = np.divmod(np.asarray(intervals.row[which]), rows)
        ok = np.asarray(ok)
        return sorted(zip(tile[ok].tolist(), row[ok].tolist(), np.asarray(column)[ok].tolist()))

    unused = jnp.zeros(tiles, jnp.int32)
    first = jnp.asarray(np.where(length > 0, start, 0), jnp.int32)
    table = _Tiles(jnp.zeros((tiles, rows), jnp.int32), unused, unused, jnp.asarray(mask), jnp.asarray(length), first)
    got = pixels(_row_intervals(table, 256))
    want = pixels(_pixel_intervals(table, bound))
    assert got == want == sorted(zip(*np.nonzero(mask)))  # every masked pixel, none twice


def test_bilinear_tile_rows_are_intervals():
    """What the row enumeration relies on, on the tiles the sparse tally builds: at every threshold,
    each row of every quad's upsampled values is above it on one interval of columns."""
    from dissectjax.stats.upsample import upsample

    rng = np.random.default_rng(1)
    acts = jnp.asarray(rng.gamma(1.0, size=(3, 7, 7, 16)).astype(np.float32))
    up = np.asarray(upsample(acts, (112, 112)))  # [3, 112, 112, 16]
    starts, *_ = quad_runs(112, 7)
    for t in np.quantile(up, [0.5, 0.9, 0.99]):
        for a, b in zip(starts, [*starts[1:], 112]):
            m = up[:, :, a:b] > t  # [3, 112 rows, run columns, 16]
            first = np.argmax(m, axis=2)
            last = m.shape[2] - 1 - np.argmax(m[:, :, ::-1], axis=2)
            n = m.sum(axis=2)
            assert np.all((n == 0) | (last - first + 1 == n))


@pytest.mark.parametrize("semantics", ["netdissect", "lite"])
def test_sparse_tally_enumerating_pixels_counts_the_same(monkeypatch, semantics):
    """Where a tile row's mask is not one interval (it never is, for bilinear tiles), the sparse
    tally enumerates every masked pixel instead: forced here, the counts stay those of the
    segment tally."""
    rng = np.random.default_rng(3)
    acts, t, pixel, image, category = random_case(rng, n=6, units=5, layers=2, **CASES["non-integer-ratio"])
    want = run_tally(acts, t, pixel, image, category, rules(semantics), "segment")
    original = SparseTally._tiles_fn

    def tiles_fn(self, *args):
        tiles = original(self, *args)

        def with_a_broken_row(*a):
            table, area, sizes = tiles(*a)
            return table, area, sizes.at[2].set(1)

        return with_a_broken_row

    monkeypatch.setattr(SparseTally, "_tiles_fn", tiles_fn)
    got = run_tally(acts, t, pixel, image, category, rules(semantics), "sparse")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
