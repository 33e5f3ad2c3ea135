"""Controls against chimeras: is a unit's meaning special to the unit's own direction?

The rotation test of Network Dissection (Bau et al. 2017): draw a random orthogonal Q
(QR of a Gaussian matrix, signs fixed so diag(R) > 0, det +1), form its fractional powers
Q^a (the angles of the 2 x 2 blocks of its real Schur form scaled by a), apply Q^a to the
channel vector at every position of a layer, and dissect the rotated layer afresh (new
thresholds, IoU, labels). If units were no more interpretable than random directions,
the detector count would not fall as a grows.

All rotations of one layer are dissected in one run: every (a, seed) point is one
"layer" of a :class:`RotatedSource`, so the model runs once per batch and every point
shares the same compiled kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dissectjax.data.probe import ProbeBatch
from dissectjax.parallel import DataParallel


def random_rotation(units: int, seed: int) -> np.ndarray:
    """float64 [U, U]: a uniformly random rotation (orthogonal, det +1)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(units, units)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_power(q: np.ndarray, a: float) -> np.ndarray:
    """Q^a for a rotation Q: each plane's rotation angle scaled by ``a`` (Q^0 = I, Q^1 = Q)."""
    if a == 0:
        return np.eye(len(q))
    t, z = scipy.linalg.schur(q, output="real")
    ta = np.zeros_like(t)
    i = 0
    while i < len(t):
        if i + 1 < len(t) and abs(t[i + 1, i]) > 1e-12:  # a 2 x 2 rotation block
            angle = np.arctan2(t[i + 1, i], t[i, i]) * a
            ta[i : i + 2, i : i + 2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
            i += 2
        else:  # an eigenvalue +1 (a -1 pairs with another -1 into a 2 x 2 block of angle pi)
            if t[i, i] < 0:
                raise ValueError("isolated eigenvalue -1: not a rotation")
            ta[i, i] = 1.0
            i += 1
    return z @ ta @ z.T


def point_name(layer: str, a: float, seed: int) -> str:
    return f"{layer}@a={a:g},seed={seed}"


class RotatedSource:
    """Rotations Q_seed^a of one layer of a base source, as many layers of one dissection."""

    def __init__(self, base, layer: str, alphas, seeds):
        if layer not in base.layers:
            raise ValueError(f"layer {layer!r} is not computed by the base source ({base.layers})")
        self.base, self.layer = base, layer
        self.needs_images = base.needs_images
        units = base.units[layer]
        self.points = [(float(a), int(s)) for s in seeds for a in alphas]
        self.layers = [point_name(layer, a, s) for a, s in self.points]
        self.units = {name: units for name in self.layers}
        rotations = {s: random_rotation(units, s) for s in seeds}
        # x' = Q^a x at every position: a [P, U, U] stack applied as x @ (Q^a)^T
        self._matrices = jnp.asarray(np.stack([rotation_power(rotations[s], a).T for a, s in self.points]),
                                     jnp.float32)  # fmt: skip
        self._rotate = jax.jit(lambda x, m: jnp.einsum("bhwu,puv->pbhwv", x, m, precision=jax.lax.Precision.HIGHEST))

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        acts = self.base.activations(batch, parallel)[self.layer]
        rotated = self._rotate(acts, self._matrices)
        return {name: rotated[i] for i, name in enumerate(self.layers)}
