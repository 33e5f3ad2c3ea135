"""The word-packed compaction against jnp.nonzero and jnp.cumsum on random masks."""

import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.stats.compact import count_through, nonzero, nonzero_nd


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1000, 4133])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_nonzero_equals_jnp_nonzero(n, density):
    rng = np.random.default_rng(n)
    mask = rng.random(n) < density
    for size in (1, 7, n, n + 40):  # fewer slots than entries keeps the first ones
        got, count = nonzero(jnp.asarray(mask), size)
        want = jnp.nonzero(jnp.asarray(mask), size=size, fill_value=0)[0]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert int(count) == mask.sum()


def test_nonzero_nd_equals_jnp_nonzero():
    rng = np.random.default_rng(0)
    mask = rng.random((5, 7, 3, 11)) < 0.05
    got, count = nonzero_nd(jnp.asarray(mask), 64)
    want = jnp.nonzero(jnp.asarray(mask), size=64, fill_value=0)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert int(count) == mask.sum()


@pytest.mark.parametrize("n", [1, 32, 65, 5000])
def test_count_through_is_the_prefix_sum(n):
    mask = np.random.default_rng(n).random(n) < 0.2
    np.testing.assert_array_equal(np.asarray(count_through(jnp.asarray(mask))), np.cumsum(mask))
