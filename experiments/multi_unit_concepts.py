"""One unit or many? Learned unit combinations vs the best single units, per concept.

    python experiments/multi_unit_concepts.py [--checkpoint checkpoints/scenenet] [--layer conv5]

On a *fit* probe set (synthetic, seed 2) the layer is dissected and, per concept, a
class-balanced per-pixel logistic regression over its units is trained (optax). On the
standard probe set (seed 1) the learned directions and the averages of each concept's
k best units (ranked on the fit set) are dissected like units, all in one run. Prints,
per concept, the IoU of each with the concept.
"""

import argparse

import numpy as np

from dissectjax.analysis.chimera import ProjectedSource
from dissectjax.analysis.multiunit import fit_concepts, pixel_samples, top_k_views
from dissectjax.checkpoint import load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/scenenet")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--fit-images", type=int, default=400)
    p.add_argument("--images", type=int, default=1000)
    a = p.parse_args()
    model, variables, meta = load_checkpoint(a.checkpoint)
    base = ModelSource(model, variables, [a.layer], tuple(meta["input_shape"]))
    fit = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.fit_images, seed=2)))
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.images, seed=1)))
    config = DissectConfig(batch_size=100)
    units_fit = dissect(base, fit, config)[a.layer]
    x, y = pixel_samples(base, fit, a.layer)
    views = {"learned": fit_concepts(x, y), **top_k_views(units_fit.iou, x.std(0) + 1e-6)}
    results = dissect(ProjectedSource(base, a.layer, views), probe, config)
    names, cats = probe.concepts.names, probe.concepts.categories
    cols = ["top-1", "top-2", "top-4", "top-8", "learned"]
    print(
        f"{a.layer}: IoU with each concept on {a.images} probe scenes (units ranked and regressions fit on "
        f"{a.fit_images} other scenes)"
    )
    print(f"{'concept':20} {'category':9} " + " ".join(f"{c:>8}" for c in cols))
    table = np.array([[results[c].iou[k, k] for c in cols] for k in range(len(names))])
    for k in np.argsort(-table.max(1)):
        if table[k].max() >= 0.02:
            print(f"{names[k]:20} {cats[probe.concepts.category[k]]:9} " + " ".join(f"{v:8.3f}" for v in table[k]))
    for cat_index, cat in enumerate(cats):
        rows = table[probe.concepts.category == cat_index]
        print(f"mean over {cat:8} concepts: " + " ".join(f"{v:8.3f}" for v in rows.mean(0)))


if __name__ == "__main__":
    main()
