"""Matching: streaming correlation equals NumPy's, the assignment recovers a permutation, one program."""

import jax.numpy as jnp
import numpy as np
from scenenet_pair import MODEL, scenenet_pair

from dissectjax.edit.matching import Correlation, layer_correlation, match
from dissectjax.models.layers import activation_fn, compiled


def test_matching_recovers_a_permutation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5, 5, 16)).astype(np.float32)
    perm = rng.permutation(16)
    b = np.empty_like(a)
    b[..., perm] = a + 0.3 * rng.normal(size=a.shape).astype(np.float32)  # A's unit u is B's unit perm[u]
    corr = Correlation()
    for i in range(0, 40, 16):
        corr.add(jnp.asarray(a[i : i + 16]), jnp.asarray(b[i : i + 16]))
    c = corr.result()
    ref = np.corrcoef(a.reshape(-1, 16).T, b.reshape(-1, 16).T)[:16, 16:]
    np.testing.assert_allclose(c, ref, atol=1e-5)
    m = match(c)
    np.testing.assert_array_equal(m.slot, perm)
    assert m.mean > 0.9 and abs(m.random_mean) < 0.1


def test_two_checkpoints_share_one_compiled_activation_function():
    """Variables are arguments: matching two instances of one architecture compiles one program."""
    a, b, images = scenenet_pair()
    images = np.asarray(images)
    corr = layer_correlation(MODEL, a, MODEL, b, "conv3", images, batch=6)
    assert corr.shape == (96, 96)
    fn = activation_fn(MODEL, a, ["conv3"], jnp.asarray(images[:1]), jit=True)
    assert fn is activation_fn(MODEL, b, ["conv3"], jnp.asarray(images[:1]), jit=True) is compiled(fn.__wrapped__)
    assert fn._cache_size() == 1  # both checkpoints went through it, at one batch shape
