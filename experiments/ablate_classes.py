"""Targeted vs random ablation per scene class (Bau et al. 2020's protocol, on SceneNet conv5).

    python experiments/ablate_classes.py [--checkpoint checkpoints/scenenet] [--k 10] [--images 1000]

Units are ranked per class by the damage their single ablation does to the class's
balanced accuracy on the *rank* split (synthetic seed 200); removing a class's top-k units
is then measured on the held-out *eval* split (seed 201), against k random units (mean of
several draws), with the other classes' mean change beside it. Also prints, for one class,
the cumulative curve: top-k removed, k random removed, and everything *but* the top-k
removed. Writes the curve plot to --plot.
"""

import argparse

import numpy as np

from dissectjax.analysis.ablation import class_counts, layer_data, ranked_units, single_unit_damage
from dissectjax.checkpoint import load_checkpoint
from dissectjax.data.splits import SCENE_CLASSES, scene_images


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/scenenet")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--draws", type=int, default=8, help="random unit sets per class")
    p.add_argument("--curve-class", default="playroom")
    p.add_argument("--plot", default="ablation_curves.png")
    a = p.parse_args()
    names = list(SCENE_CLASSES)
    model, variables, _ = load_checkpoint(a.checkpoint)
    rank = layer_data(model, variables, a.layer, *scene_images(a.images, "rank"))
    held = layer_data(model, variables, a.layer, *scene_images(a.images, "eval"))
    _, damage = single_unit_damage(model, variables, rank)
    units = damage.shape[0]
    rng = np.random.default_rng(0)

    def mask(chosen):
        m = np.zeros(units, np.float32)
        m[np.asarray(chosen, int)] = 1
        return m

    masks = [mask([])]
    for c in range(len(names)):
        masks.append(mask(ranked_units(damage, c)[: a.k]))
        masks += [mask(rng.choice(units, a.k, replace=False)) for _ in range(a.draws)]
    ba = class_counts(model, variables, held, np.stack(masks)).balanced_accuracy()
    base = ba[0]
    print(f"{a.layer}: remove the {a.k} units (of {units}) ranked most damaging to a class, vs {a.k} random units")
    print(f"{'class':12} {'before':>7} {'targeted':>9} {'random':>13} {'others, targeted':>17} {'others, random':>15}")
    drops = []
    for c, name in enumerate(names):
        row = 1 + c * (1 + a.draws)
        targeted, random = ba[row], ba[row + 1 : row + 1 + a.draws]
        others = np.arange(len(names)) != c
        drops.append((base[c] - targeted[c], base[c] - random[:, c].mean()))
        print(
            f"{name:12} {base[c]:7.3f} {targeted[c]:9.3f} {random[:, c].mean():7.3f} +-{random[:, c].std():.3f} "
            f"{(targeted[others] - base[others]).mean():+17.3f} {(random[:, others] - base[others]).mean():+15.3f}"
        )
    drops = np.array(drops)
    print(f"mean drop of the class: targeted {drops[:, 0].mean():.3f}, random {drops[:, 1].mean():.3f}")

    c = names.index(a.curve_class)
    order = ranked_units(damage, c)
    ks = [k for k in (0, 1, 2, 4, 8, 16, 32, 64, 96, 120, units) if k <= units]
    curve_masks = [mask(order[:k]) for k in ks] + [mask(rng.permutation(units)[:k]) for k in ks]
    curve_masks += [mask(order[k:]) for k in ks]
    curves = class_counts(model, variables, held, np.stack(curve_masks)).balanced_accuracy()[:, c].reshape(3, len(ks))
    print(f"\ncumulative ablation, class {a.curve_class} (balanced accuracy; 0.5 = chance)")
    print(f"{'units removed':>14} {'top-ranked':>11} {'random':>8} {'all but top-k':>14}")
    for i, k in enumerate(ks):
        print(
            f"{k:>14} {curves[0, i]:11.3f} {curves[1, i]:8.3f} {curves[2, i]:14.3f}  (all but top-{k}: "
            f"{units - k} removed)"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, curves[0], "o-", label="top-ranked units removed")
    ax.plot(ks, curves[1], "s-", label="random units removed")
    ax.plot([units - k for k in ks], curves[2], "^-", label="all but the top-k removed")
    ax.set(xlabel="units removed", ylabel=f"balanced accuracy ({a.curve_class})", ylim=(0.45, 1.0))
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)
    print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
