"""Chimera controls on SceneNet conv5, strong, weak and untrained: the rotation test and random directions.

    python experiments/chimera.py [--checkpoints checkpoints/scenenet-strong,checkpoints/scenenet] [--images 1000]

For each checkpoint (and the same architecture at random initialization): for each
rotation seed, a random rotation Q of conv5's 128-dimensional channel space and its
fractional powers Q^a, each rotated layer dissected afresh (thresholds, IoU, labels); and
random unit-norm directions (not orthogonal), one set per direction seed. All views of a
network are dissected in one run. Prints and writes one table (mean +- std over seeds of
detectors, unique detectors under both rules, and the mean IoU of the labels) and a plot.
"""

import argparse
import csv
import os

import numpy as np

from dissectjax.analysis.chimera import (
    ProjectedSource,
    direction_name,
    plot_rotation_curves,
    point_name,
    random_directions,
    rotation_summary,
    rotations,
    summarize,
)
from dissectjax.checkpoint import init_variables, load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource

COLUMNS = ("detectors", "unique_tables", "unique", "mean_iou")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoints",
        default="checkpoints/scenenet-strong,checkpoints/scenenet",
        help="trained networks, comma-separated; the first one's architecture is also run at random init",
    )
    p.add_argument("--layer", default="conv5")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--seeds", default="0,1,2", help="rotation seeds")
    p.add_argument("--direction-seeds", default="100,101,102", help="one set of random directions per seed")
    p.add_argument("--plot", default="docs/rotation_test.png")
    p.add_argument("--table", default="docs/rotation_test.csv")
    p.add_argument("--strip", default="docs/top_images.png", help="top images of the best units and random directions")
    a = p.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    direction_seeds = [int(x) for x in a.direction_seeds.split(",")]
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.images, seed=1)))
    cats = list(probe.concepts.categories)
    networks = {}
    for path in a.checkpoints.split(","):
        model, variables, meta = load_checkpoint(path)
        networks[f"{os.path.basename(path.rstrip('/'))} (val {meta['val_accuracy']:.2f})"] = (model, variables, meta)
    model, _, meta = next(iter(networks.values()))
    networks["random init"] = (model, init_variables(model, tuple(meta["input_shape"]), seed=0), meta)
    curves, directions, table = {}, {}, []
    for n, (tag, (model, variables, meta)) in enumerate(networks.items()):
        base = ModelSource(model, variables, [a.layer], tuple(meta["input_shape"]))
        units = base.units[a.layer]
        views = rotations(a.layer, units, alphas, seeds)
        views.update({direction_name(s): random_directions(units, units, seed=s) for s in direction_seeds})
        results = dissect(ProjectedSource(base, a.layer, views), probe, DissectConfig(batch_size=100))
        curves[tag] = rotation_summary(results, a.layer, alphas, seeds, cats)
        directions[tag] = summarize([results[direction_name(s)] for s in direction_seeds], cats)
        table += [{"network": tag, "view": f"rotation a={r['a']:g}", **r} for r in curves[tag]]
        table.append({"network": tag, "view": f"{units} random directions", **directions[tag]})
        if n == 0:
            write_strips(a.strip, probe, results[point_name(a.layer, 0.0, seeds[0])],
                         results[direction_name(direction_seeds[0])])  # fmt: skip
    print(f"\nSceneNet {a.layer}: {len(seeds)} rotation seeds, {len(direction_seeds)} direction seeds, "
          f"{a.images} probe images; mean +- std over seeds")  # fmt: skip
    print(f"{'network':<30} {'view':<22} " + " ".join(f"{c:>15}" for c in COLUMNS))
    for r in table:
        print(f"{r['network']:<30} {r['view']:<22} "
              + " ".join(f"{r[c]:8.3f} +-{r[c + '_std']:5.3f}" for c in COLUMNS))  # fmt: skip
    with open(a.table, "w", newline="") as f:
        w = csv.DictWriter(f, ["network", "view", "views", *[x for c in COLUMNS for x in (c, c + "_std")]],
                           extrasaction="ignore")  # fmt: skip
        w.writeheader()
        w.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in table)
    plot_rotation_curves(curves, f"{a.layer} (of {units} units)", a.plot, directions)
    print(f"wrote {a.table} and {a.plot}")


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
