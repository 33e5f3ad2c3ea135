"""Matching: streaming correlation equals NumPy's, the assignment recovers a permutation, one program."""

import jax.numpy as jnp
import numpy as np

from dissectjax.checkpoint import init_variables
from dissectjax.edit.matching import Correlation, layer_correlation, match
from dissectjax.models import build_model
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
    model = build_model("scenenet", num_classes=5)  # an architecture no other test compiles
    a, b = (init_variables(model, (64, 64, 3), seed=s) for s in (1, 2))
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3)).astype(np.uint8)
    corr = layer_correlation(model, a, model, b, "conv3", images, batch=6)
    assert corr.shape == (96, 96)
    fn = activation_fn(model, a, ["conv3"], jnp.asarray(images[:1]), jit=True)
    assert fn is activation_fn(model, b, ["conv3"], jnp.asarray(images[:1]), jit=True) is compiled(fn.__wrapped__)
    assert fn._cache_size() == 1  # both checkpoints went through it, at one batch shape
