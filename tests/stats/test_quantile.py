"""Per-unit thresholds: order keys, and radix selection against NumPy on random inputs."""

import zlib
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from reference_impl import lite_threshold, rank_error

from dissectjax.stats.quantile import (
    LiteSelect,
    RadixSelect,
    key_to_value,
    lite_position,
    order_key,
    prefix_histogram,
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
