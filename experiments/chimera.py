"""Chimera controls on SceneNet conv5, trained and untrained: the rotation test and random directions.

    python experiments/chimera.py [--checkpoint checkpoints/scenenet] [--images 1000]

For each seed, a random rotation Q of conv5's 128-dimensional channel space and its
fractional powers Q^a; each rotated layer is dissected afresh (thresholds, IoU, labels),
all points in one run. Prints detectors and unique detectors (mean +- std over seeds) per
a, for the trained network and for the same architecture at random initialization, and
writes a plot. Also dissects random unit-norm directions (not orthogonal) beside the units.
"""

import argparse

import numpy as np

from dissectjax.analysis.chimera import (
    ProjectedSource,
    plot_rotation_curves,
    point_name,
    random_directions,
    rotation_summary,
    rotations,
)
from dissectjax.checkpoint import init_variables, load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/scenenet")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--directions", type=int, default=128, help="random unit-norm directions to dissect beside")
    p.add_argument("--plot", default="docs/rotation_test.png")
    p.add_argument("--strip", default="docs/top_images.png", help="top images of the best units and random directions")
    a = p.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    model, trained, meta = load_checkpoint(a.checkpoint)
    shape = tuple(meta["input_shape"])
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.images, seed=1)))
    cats = list(probe.concepts.categories)
    curves = {}
    for tag, variables in (("trained", trained), ("random init", init_variables(model, shape, seed=0))):
        base = ModelSource(model, variables, [a.layer], shape)
        units = base.units[a.layer]
        views = rotations(a.layer, units, alphas, seeds)
        views["random directions"] = random_directions(units, a.directions, seed=100)
        source = ProjectedSource(base, a.layer, views)
        results = dissect(source, probe, DissectConfig(batch_size=100))
        print(f"\n{tag} SceneNet {a.layer}: rotation Q^a, {len(seeds)} seeds, {a.images} probe images")
        print(f"{'a':>5} {'detectors':>14} {'unique':>12} {'mean IoU':>9} " + " ".join(f"{c:>9}" for c in cats))
        rows = rotation_summary(results, a.layer, alphas, seeds, cats)
        for r in rows:
            print(
                f"{r['a']:5.2f} {r['detectors']:8.1f} +-{r['detectors_std']:4.1f} {r['unique']:6.1f} "
                f"+-{r['unique_std']:3.1f} {r['mean_iou']:9.3f} " + " ".join(f"{r['unique_' + c]:9.1f}" for c in cats)
            )
        curves[tag] = rows
        if tag == "trained":
            write_strips(a.strip, probe, results[point_name(a.layer, 0.0, seeds[0])], results["random directions"])
        own, rand = results[point_name(a.layer, 0.0, seeds[0])], results["random directions"]
        print(
            f"{a.directions} random unit-norm directions: {rand.detectors} detectors "
            f"({rand.detectors / rand.units:.0%}), {rand.unique['total']} unique, mean IoU "
            f"{rand.labels.score.mean():.3f}; the {own.units} units: {own.detectors} "
            f"({own.detectors / own.units:.0%}), {own.unique['total']} unique, mean IoU {own.labels.score.mean():.3f}"
        )
    plot_rotation_curves(curves, f"{a.layer} (of {units} units)", a.plot)
    print(f"wrote {a.plot}")


def write_strips(path, probe, units, directions, rows=4):
    """A grid of top-activating probe images: the best detectors' rows, then random directions'."""
    from PIL import Image, ImageDraw

    picks = [("unit", units, u) for u in np.argsort(-units.labels.score)[:rows]]
    picks += [("direction", directions, d) for d in np.argsort(-directions.labels.score)[:rows]]
    k = units.top_images.shape[1]
    size = probe.image_size(0)[0]
    label_width = 170
    grid = Image.new("RGB", (label_width + k * (size + 2), len(picks) * (size + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (kind, result, i) in enumerate(picks):
        name = probe.concepts.names[result.labels.label[i]]
        draw.text((4, r * (size + 2) + size // 3), f"{kind} {i}: {name} {result.labels.score[i]:.2f}", fill="black")
        for j, row in enumerate(result.top_images[i]):
            if row >= 0:
                grid.paste(Image.fromarray(probe.load_image(int(row))), (label_width + j * (size + 2), r * (size + 2)))
    grid.save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
