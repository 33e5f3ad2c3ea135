"""Two SceneNet instances with non-trivial normalization, shared by the edit and ablation tests."""

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.checkpoint import init_variables
from dissectjax.models import build_model

MODEL = build_model("scenenet", num_classes=12)
SHAPE = (64, 64, 3)


def scenenet_pair():
    """(variables A, variables B, uint8 images [6, 64, 64, 3])."""
    a = jax.device_get(init_variables(MODEL, SHAPE, seed=1))
    b = jax.device_get(init_variables(MODEL, SHAPE, seed=2))
    rng = np.random.default_rng(0)
    # non-trivial normalization parameters and statistics, so copying them is visible
    for v in (a, b):
        for k in v["batch_stats"]:
            v["params"][k]["scale"] = rng.uniform(0.5, 2, v["params"][k]["scale"].shape).astype(np.float32)
            v["params"][k]["bias"] = rng.normal(size=v["params"][k]["bias"].shape).astype(np.float32)
            v["batch_stats"][k]["mean"] = rng.normal(size=v["batch_stats"][k]["mean"].shape).astype(np.float32)
            v["batch_stats"][k]["var"] = rng.uniform(0.5, 2, v["batch_stats"][k]["var"].shape).astype(np.float32)
    images = jnp.asarray(rng.integers(0, 256, (6, *SHAPE)), jnp.uint8)
    return a, b, images


def leaves(tree):
    return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def changed(before, after) -> set[str]:
    """The paths of the leaves whose values differ."""
    a, b = leaves(before), leaves(after)
    assert a.keys() == b.keys()
    return {jax.tree_util.keystr(k) for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))}
