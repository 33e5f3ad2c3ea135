"""Per-unit thresholds: order keys, and radix selection against NumPy on random inputs."""

import zlib
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from reference_impl import lite_threshold, rank_error

from dissectjax.dissect.kernels import kernels
from dissectjax.parallel import DataParallel
from dissectjax.stats.quantile import (
    LiteSelect,
    RadixSelect,
    capacity_for,
    key_to_value,
    lite_position,
    order_key,
    prefix_histogram,
    raise_floor,
    round_down_float32,
)


def test_order_key_is_monotone_and_invertible():
    # (subnormals are left out: XLA flushes them to zero, so they compare equal to 0)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1e3, 2000), rng.normal(0, 1e-30, 200), [0.0, -0.0, 1e38, -1e38, 1e-37, -1e-37]])
    x = np.sort(x.astype(np.float32))
    keys = np.asarray(order_key(jnp.asarray(x)))
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert np.all((np.diff(keys.astype(np.int64)) > 0) == (np.diff(x) > 0))  # equal floats, equal keys (-0 == +0)
    np.testing.assert_array_equal(key_to_value(keys), np.where(x == 0, 0.0, x).astype(np.float32))


def select(acts, quantile, batch=None, valid=None, search=RadixSelect, subsets=False):
    """Runs the radix search on acts [N, h, w, U], in batches of ``batch`` rows; with ``subsets``,
    late passes histogram only the units still open (as the driver does)."""
    n, units = acts.shape[0], acts.shape[-1]
    batch = batch or n
    s = search(units, quantile)
    while not s.done:
        total = None
        subset = s.open_units() if subsets else None
        columns = np.arange(units) if subset is None else subset
        for start in range(0, n, batch):
            a = acts[start : start + batch][..., columns]
            v = np.ones(len(a), bool) if valid is None else valid[start : start + batch]
            c, lo, hi, bad = (
                np.asarray(x)
                for x in prefix_histogram(
                    jnp.asarray(a), jnp.asarray(v), jnp.asarray(s.prefix[columns]), s.depth, s.bits, s.extremes
                )
            )
            assert not bad.any()
            if total is None:
                total = [c.astype(np.int64), lo, hi]
            else:
                total = [total[0] + c, np.minimum(total[1], lo), np.maximum(total[2], hi)]
        s.step(*total, subset)
    return s.thresholds


DISTRIBUTIONS = {
    "normal": lambda rng, shape: rng.normal(size=shape),
    "relu-sparse": lambda rng, shape: np.maximum(rng.normal(-2.5, 1, shape), 0),  # threshold in the ties at 0
    "heavy-tail": lambda rng, shape: rng.standard_cauchy(shape),
    "discrete": lambda rng, shape: rng.integers(-3, 4, shape).astype(float),
    "negative-tiny": lambda rng, shape: -np.abs(rng.normal(0, 1e-20, shape)),
    "constant": lambda rng, shape: np.full(shape, 2.5),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("quantile", [0.005, 0.05, 0.5])
def test_thresholds_within_rank_tolerance(dist, quantile):
    rng = np.random.default_rng([zlib.crc32(dist.encode()), int(quantile * 1000)])
    acts = DISTRIBUTIONS[dist](rng, (37, 5, 6, 4)).astype(np.float32)
    acts[..., 3] *= 1000.0  # units on different scales
    t = select(acts, quantile)
    for u in range(acts.shape[-1]):
        assert rank_error(acts[..., u], t[u], quantile) <= 1e-4, (dist, u)


def test_thresholds_are_exact_order_statistics_when_few_values():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(9, 3, 3, 2)).astype(np.float32)
    t = select(acts, 0.1)
    for u in range(2):
        v = np.sort(acts[..., u].ravel())[::-1]
        k = int(np.floor(0.1 * v.size))
        assert t[u] == v[k]  # exactly k values lie above it


def test_batching_and_padding_do_not_change_thresholds():
    rng = np.random.default_rng(2)
    acts = rng.gamma(1.0, size=(40, 4, 4, 3)).astype(np.float32)
    whole = select(acts, 0.01)
    np.testing.assert_array_equal(whole, select(acts, 0.01, batch=7))
    padded = np.concatenate([acts, 1e6 * np.ones((5, 4, 4, 3), np.float32)])
    valid = np.arange(45) < 40
    np.testing.assert_array_equal(whole, select(padded, 0.01, batch=9, valid=valid))


@pytest.mark.parametrize("search", [RadixSelect, LiteSelect])
def test_late_passes_over_the_open_units_give_the_same_thresholds(search):
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(60, 3, 3, 40)).astype(np.float32)
    # three units of adjacent floats: their values share a bin until the last pass, so that
    # pass histograms only them
    adjacent = 1 + np.arange(60 * 9, dtype=np.float32) * np.float32(2**-23)
    acts[..., :3] = rng.permutation(adjacent).reshape(60, 3, 3, 1)
    whole = select(acts, 0.02, batch=16, search=search)
    np.testing.assert_array_equal(whole, select(acts, 0.02, batch=16, search=search, subsets=True))


def test_open_units_pad_to_a_power_of_two():
    s = RadixSelect(10, 0.1)
    assert s.open_units() is None  # the first pass sees every unit
    s.level, s.resolved[:] = 1, True
    s.resolved[[2, 5, 7]] = False
    np.testing.assert_array_equal(s.open_units(), [2, 5, 7, 7])
    s.resolved[:6] = False
    assert s.open_units() is None  # more than half open: a pass over every unit


# ---- the first pass's floor ------------------------------------------------------------------------
def select_with_floor(acts, quantile, batch, search=RadixSelect):
    """The search as the driver runs it (the compiled kernels: a census, a capacity, the
    histogram), the first pass raising a floor batch by batch; the thresholds and the floors."""
    n, units = acts.shape[0], acts.shape[-1]
    histogram = kernels(DataParallel.create()).histogram
    s = search(units, quantile)
    deciding = np.int32(s.deciding(acts[..., 0].size))
    floor = None
    while not s.done:
        total, floor = None, jnp.zeros(units, jnp.uint32) if s.level == 0 else floor
        for start in range(0, n, batch):
            a = jnp.asarray(acts[start : start + batch])
            first = s.level == 0
            total, raised = histogram(a, jnp.ones(len(a), bool), jnp.asarray(s.prefix), s.depth, s.bits,
                                      s.extremes, total, floor=floor if first else None, deciding=deciding,
                                      compact_from=0)  # fmt: skip
            floor = raised if first else floor
        assert not np.asarray(total[3]).any()
        s.step(*(np.asarray(x) for x in total[:3]))
    return s.thresholds, np.asarray(floor)


@pytest.mark.parametrize("search", [RadixSelect, LiteSelect])
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_a_raised_floor_leaves_the_thresholds_exactly_as_they_were(dist, search):
    rng = np.random.default_rng([zlib.crc32(b"floor" + dist.encode())])
    acts = DISTRIBUTIONS[dist](rng, (64, 5, 6, 16)).astype(np.float32)
    acts[..., 3] *= 1000.0
    acts[:16, ..., 2] += 5.0  # a unit whose early batches hold its largest values
    acts[..., 8:] *= np.linspace(1, 2, 8, dtype=np.float32)  # thresholds at various places in their bins
    thresholds, floor = select_with_floor(acts, 0.005, batch=4, search=search)
    np.testing.assert_array_equal(thresholds, select(acts, 0.005, search=search))
    if dist not in ("constant", "discrete"):
        assert (floor > order_key(jnp.float32(-np.inf))).all()  # the floors rose: values were left out


@pytest.mark.parametrize("search", [RadixSelect, LiteSelect])
def test_the_deciding_values_are_never_left_below_the_floor(search):
    """All but one of the values that decide a threshold come first and far above the rest:
    the floor must not rise to them, or the last deciding value would fall below it."""
    rng = np.random.default_rng(13)
    acts = rng.random((40, 4, 4, 2)).astype(np.float32)
    n = acts[..., 0].size
    high = int(np.floor(0.05 * n)) if search is RadixSelect else n - 1 - lite_position(0.05, n)[0]  # above it
    # the others rise through the set over many bins: each batch's far above the batch before
    acts[..., 0] = np.exp2(np.linspace(-20, 0, n, dtype=np.float32)).reshape(acts.shape[:-1])
    acts[..., 0].reshape(-1)[:high] = 100 + np.arange(high, dtype=np.float32)
    thresholds, _ = select_with_floor(acts, 0.05, batch=4, search=search)
    np.testing.assert_array_equal(thresholds, select(acts, 0.05, search=search))
    assert thresholds[0] < 100  # decided (or, for Lite, interpolated) from a low value


def test_raise_floor_finds_the_highest_bin_holding_the_deciding_values():
    rng = np.random.default_rng(11)
    counts = np.where(rng.random((6, 4096)) < 0.02, rng.integers(0, 50, (6, 4096)), 0).astype(np.int32)
    counts[5] = 0  # a unit that has seen nothing yet
    old = rng.integers(0, 2**32, 6, dtype=np.uint32) >> np.uint32(2)
    for deciding in (1, 37, 400, 10**6):
        above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        expected = []
        for u in range(6):
            bins = np.flatnonzero(above[u] >= deciding)
            edge = np.uint32(bins.max()) << np.uint32(20) if len(bins) else np.uint32(0)
            expected.append(max(old[u], edge))
        got = raise_floor(jnp.asarray(counts), jnp.asarray(old), jnp.int32(deciding))
        np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_compacted_histogram_is_the_full_one_with_the_values_below_the_floor_in_bin_0():
    rng = np.random.default_rng(12)
    acts = rng.normal(size=(8, 6, 6, 5)).astype(np.float32)
    acts[1, 2, 3, 4], acts[2, 0, 0, 1], acts[3, 1, 1, 1] = np.nan, np.inf, -np.inf  # counted, not binned
    valid = jnp.asarray(np.arange(8) < 7)  # a padding row
    floor = order_key(jnp.float32(1.5)) & jnp.uint32(0xFFF00000)  # a bin's lower edge
    floor = jnp.full(5, floor)
    args = (jnp.asarray(acts), valid, jnp.zeros(5, jnp.uint32), 0, 12, True)
    full = [np.asarray(x) for x in prefix_histogram(*args)]
    capacity = capacity_for(int((np.asarray(order_key(jnp.asarray(acts[:7]))) >= floor[0]).sum()) + 3, acts.size)
    compact = [np.asarray(x) for x in prefix_histogram(*args, floor=floor, capacity=capacity)]
    edge = int(floor[0]) >> 20
    for got, want in zip(compact[:3], full[:3]):
        np.testing.assert_array_equal(got[:, edge:], want[:, edge:])
    np.testing.assert_array_equal(compact[0][:, 0], full[0][:, :edge].sum(1))  # the values below the floor
    assert not compact[0][:, 1:edge].any()
    np.testing.assert_array_equal(compact[3], full[3])
    np.testing.assert_array_equal(compact[3], [0, 2, 0, 0, 1])


def test_capacity_for_is_a_power_of_four_below_an_eighth():
    assert capacity_for(10**6, 6 * 10**6) is None
    for kept in (0, 1, 700, 5000, 49336):
        capacity = capacity_for(kept, 6422528)
        assert kept <= capacity <= 6422528 // 8 and capacity >= 6422528 // 2048
        assert capacity == 6422528 // 8 or capacity // 4 < max(kept, 6422528 // 2048)


def test_nonfinite_values_are_counted():
    acts = np.zeros((2, 2, 2, 3), np.float32)
    acts[0, 0, 0, 1] = np.nan
    acts[1, 1, 1, 2] = np.inf
    *_, bad = prefix_histogram(jnp.asarray(acts), jnp.ones(2, bool), jnp.zeros(3, jnp.uint32), 0, 12)
    np.testing.assert_array_equal(np.asarray(bad), [0, 1, 1])


# ---- NetDissect-Lite's threshold ----------------------------------------------------------------------
def round_down(x: float) -> np.float32:
    """The largest float32 at or below the float64 ``x``."""
    f = np.float32(x)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > x else f


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("quantile", [0.005, 0.05])
def test_lite_thresholds_equal_lites_interpolated_readout(dist, quantile):
    rng = np.random.default_rng([zlib.crc32(b"lite" + dist.encode()), int(quantile * 1000)])
    acts = DISTRIBUTIONS[dist](rng, (37, 5, 6, 4)).astype(np.float32)
    acts[..., 3] *= 1000.0
    t = select(acts, quantile, batch=11, search=LiteSelect)
    for u in range(acts.shape[-1]):
        values = acts[..., u].ravel()
        assert t[u] == round_down(lite_threshold(values, quantile)), (dist, u)
        # and exactly the rational interpolation between the two order statistics
        j, w = lite_position(quantile, values.size)
        v = np.sort(values)
        exact = Fraction(float(v[j])) + w * (Fraction(float(v[min(j + 1, v.size - 1)])) - Fraction(float(v[j])))
        assert t[u] == round_down_float32(exact)


def test_lite_position_clamps_at_the_ends_and_keeps_1_001_q():
    assert lite_position(0.005, 50) == (49, 0)  # x = 994 * 50 / 999 - 1/2 > n - 1: the maximum
    assert lite_position(0.9999, 50) == (0, 0)  # p = 0: the minimum
    j, w = lite_position(0.005, 10**6)
    above = 10**6 - 1 - (j + float(w))  # values above the interpolated position
    assert abs(above / 10**6 - 1.001 * 0.005) < 1e-5  # Lite keeps the top 1.001 q, not q


def test_lite_thresholds_separate_ties_and_neighbours():
    """Adjacent order statistics in one 32-bit key (ties), or parted at the first pass."""
    acts = np.zeros((10, 10, 10, 2), np.float32)
    acts[..., 1] = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) * 1e6  # far apart: parted at once
    acts[:5, ..., 0] = 1.0  # half the values tie at 1.0 around the readout position
    t = select(acts, 0.5, search=LiteSelect)
    assert t[0] == round_down(lite_threshold(acts[..., 0], 0.5))
    assert t[1] == round_down(lite_threshold(acts[..., 1], 0.5))


def test_lite_select_state_round_trips_mid_search():
    """The arrays STATE names are the whole search: restored into a fresh search, it finishes the same."""
    rng = np.random.default_rng(9)
    acts = rng.normal(size=(30, 4, 4, 3)).astype(np.float32)
    s = LiteSelect(3, 0.005)

    def hist(s):
        out = prefix_histogram(
            jnp.asarray(acts), jnp.ones(30, bool), jnp.asarray(s.prefix), s.depth, s.bits, s.extremes
        )
        return [np.asarray(x) for x in out[:3]]

    s.step(*hist(s))
    copy = LiteSelect(3, 0.005)
    for field in LiteSelect.STATE:
        setattr(copy, field, np.array(getattr(s, field)))
    copy.level, copy.total = s.level, s.total
    while not s.done:
        s.step(*hist(s))
        copy.step(*hist(copy))
    assert copy.done
    np.testing.assert_array_equal(s.thresholds, copy.thresholds)
