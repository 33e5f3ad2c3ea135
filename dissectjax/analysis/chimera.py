"""Controls against chimeras: is a unit's meaning special to the unit's own direction?

The rotation test of Network Dissection (Bau et al. 2017): draw a random orthogonal Q
(QR of a Gaussian matrix, signs fixed so diag(R) > 0, det +1), form its fractional powers
Q^a (the angles of the 2 x 2 blocks of its real Schur form scaled by a), apply Q^a to the
channel vector at every position of a layer, and dissect the rotated layer afresh (new
thresholds, IoU, labels). If units were no more interpretable than random directions,
the detector count would not fall as a grows.

All rotations of one layer are dissected in one run: every (a, seed) point is one
"layer" of a :class:`rotated_source`, so the model runs once per batch and every point
shares the same compiled kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dissectjax.data.probe import ProbeBatch
from dissectjax.errors import DissectError
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


def random_directions(units: int, count: int, seed: int) -> np.ndarray:
    """float64 [U, count]: independent random unit-norm directions of the channel space."""
    d = np.random.default_rng(seed).normal(size=(units, count))
    return d / np.linalg.norm(d, axis=0, keepdims=True)


class ProjectedSource:
    """Linear views of one layer of a base source, each dissected as a layer of its own.

    ``views`` maps a name to a matrix [U, V]: the view's V "units" are the projections
    ``x @ matrix`` of the channel vector x at every position. The base model runs once per
    batch for all views.
    """

    def __init__(self, base, layer: str, views: dict[str, np.ndarray]):
        if layer not in base.layers:
            raise DissectError(f"layer {layer!r} is not computed by the base source ({base.layers})")
        units = base.units[layer]
        for name, m in views.items():
            if m.ndim != 2 or m.shape[0] != units:
                raise DissectError(f"view {name!r} has shape {m.shape}; expected [{units}, V]")
        self.base, self.layer = base, layer
        self.needs_images = base.needs_images
        self.description = f"{getattr(base, 'description', 'source')}: views of {layer}"
        self.layers = list(views)
        self.units = {name: m.shape[1] for name, m in views.items()}
        self._matrices = {name: jnp.asarray(m, jnp.float32) for name, m in views.items()}
        self._project = jax.jit(lambda x, m: jnp.einsum("bhwu,uv->bhwv", x, m, precision=jax.lax.Precision.HIGHEST))

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        acts = self.base.activations(batch, parallel)[self.layer]
        return {name: self._project(acts, m) for name, m in self._matrices.items()}


def rotations(layer: str, units: int, alphas, seeds) -> dict[str, np.ndarray]:
    """Views x -> Q_seed^a x for every (a, seed), named by :func:`point_name`."""
    out = {}
    for s in seeds:
        q = random_rotation(units, s)
        for a in alphas:
            out[point_name(layer, float(a), int(s))] = rotation_power(q, float(a)).T
    return out


def rotated_source(base, layer: str, alphas, seeds) -> ProjectedSource:
    """Rotations Q_seed^a of one layer of ``base``, as many layers of one dissection."""
    if layer not in base.layers:
        raise DissectError(f"layer {layer!r} is not computed by the base source ({base.layers})")
    return ProjectedSource(base, layer, rotations(layer, base.units[layer], alphas, seeds))


def summarize(results, categories) -> dict:
    """Mean and std over dissected views (e.g. the seeds of one rotation power) of: detectors,
    unique detectors under both rules (``unique``: distinct best labels; ``unique_tables``:
    NetDissect's tables, DESIGN.md section 5), the mean IoU of the labels, and unique
    detectors per category (mean)."""
    stats = {
        "detectors": [r.detectors for r in results],
        "unique": [r.unique["total"] for r in results],
        "unique_tables": [r.unique_tables["total"] for r in results],
        "mean_iou": [float(r.labels.score.mean()) for r in results],
    }
    out = {"views": len(results)}
    for name, values in stats.items():
        out[name], out[name + "_std"] = float(np.mean(values)), float(np.std(values))
    out.update({f"unique_{c}": float(np.mean([r.unique[c] for r in results])) for c in categories})
    return out


def rotation_summary(results: dict, layer: str, alphas, seeds, categories) -> list[dict]:
    """Per rotation power a: :func:`summarize` over the seeds."""
    return [
        {"a": float(a), **summarize([results[point_name(layer, float(a), int(s))] for s in seeds], categories)}
        for a in alphas
    ]


def direction_name(seed: int) -> str:
    return f"random directions,seed={seed}"


def plot_rotation_curves(curves: dict[str, list[dict]], ylabel: str, path: str,
                         directions: dict[str, dict] | None = None) -> None:  # fmt: skip
    """Against a, one colour per network, std over seeds as error bars: detectors; unique
    detectors under both rules; the mean IoU of the labels. ``directions``: per network, the
    random directions' :func:`summarize`, drawn as a star at a = 1.1 (tables rule)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (det, uniq, iou) = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (tag, rows) in enumerate(curves.items()):
        color, a = f"C{i}", [r["a"] for r in rows]
        lines = ((det, "detectors", "-o", tag), (uniq, "unique_tables", "-s", f"{tag}: tables"),
                 (uniq, "unique", ":^", f"{tag}: best label"), (iou, "mean_iou", "-o", tag))  # fmt: skip
        for ax, key, style, label in lines:
            ax.errorbar(a, [r[key] for r in rows], yerr=[r[key + "_std"] for r in rows], fmt=style, capsize=3,
                        color=color, label=label)  # fmt: skip
            if directions and tag in directions and key != "unique":
                d = directions[tag]
                ax.errorbar([1.1], [d[key]], yerr=[d[key + "_std"]], marker="*", ms=11, color=color, capsize=3)
    for ax, name in ((det, f"detectors, {ylabel}"), (uniq, "unique detectors"), (iou, "mean IoU of the labels")):
        ax.set(xlabel="rotation power a (star at 1.1: random directions)", ylabel=name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
