"""TopImages against a brute-force top k over every row, whatever the batching."""

import numpy as np
import pytest

from dissectjax.dissect.top_images import TopImages


def brute_force(maxima, maps, k):
    """rows [U, k], values [U, k], maps [U, k, h, w]: by value descending, then row ascending."""
    units = maxima.shape[1]
    rows = np.full((units, k), -1)
    values = np.full((units, k), -np.inf, np.float32)
    out = np.zeros((units, k, *maps.shape[2:]), np.float32)
    for u in range(units):
        order = np.lexsort((np.arange(len(maxima)), -maxima[:, u]))[:k]
        rows[u, : len(order)] = order
        values[u, : len(order)] = maxima[order, u]
        out[u, : len(order)] = maps[order, u]
    return rows, values, out


@pytest.mark.parametrize("batch", [1, 3, 8, 50])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_top_images_equal_a_brute_force_top_k(batch, k):
    rng = np.random.default_rng(batch * 100 + k)
    n, units = 37, 6
    maxima = np.round(rng.normal(size=(n, units)), 1).astype(np.float32)  # rounding makes ties
    maps = rng.normal(size=(n, units, 2, 3)).astype(np.float32)
    top = TopImages(units, k)
    for start in range(0, n, batch):
        rows = np.arange(start, start + batch)
        rows = np.where(rows < n, rows, -1)  # the last batch is padded
        take = np.where(rows >= 0, rows, 0)

        def gather(positions, take=take):
            return maps[take[positions], np.arange(units)[:, None]]

        top.add(maxima[take], rows, gather)
    want = brute_force(maxima, maps, k)
    got = top.flush()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    filled = want[0] >= 0
    np.testing.assert_array_equal(got[2][filled], want[2][filled])


def test_a_loaded_state_continues_the_same():
    rng = np.random.default_rng(0)
    maxima = rng.normal(size=(20, 3)).astype(np.float32)
    maps = rng.normal(size=(20, 3, 2, 2)).astype(np.float32)

    def feed(top, rows):
        top.add(maxima[rows], rows, lambda positions: maps[rows[positions], np.arange(3)[:, None]])

    whole = TopImages(3, 5)
    for start in range(0, 20, 4):
        feed(whole, np.arange(start, start + 4))
    first = TopImages(3, 5)
    for start in range(0, 12, 4):
        feed(first, np.arange(start, start + 4))
    resumed = TopImages(3, 5)
    resumed.load(first.flush())
    for start in range(12, 20, 4):
        feed(resumed, np.arange(start, start + 4))
    for a, b in zip(whole.flush(), resumed.flush()):
        np.testing.assert_array_equal(a, b)
