"""Transplant a dissected detector from instance A into instance B: matched vs unmatched slot.

    python experiments/transplant_detector.py [--a checkpoints/scenenet] [--b checkpoints/scenenet-seed1]

Dissects A's layer on the synthetic probe set and takes its best detectors; matches A's and
B's units (this layer, for the slot, and the layer below, so the copied filter reads the
right inputs); copies each detector's filter and normalization into (1) its matched slot
in B and (2) an unmatched slot (B's unit least correlated with it), and, separately,
(3) into the matched slot together with its outgoing classifier weights. For each, prints
B's accuracy on held-out scenes and the IoU of the transplanted slot with the detector's
concept when B is dissected, against A's own IoU and B's IoU before the transplant; and
(4) into the matched slot without reordering its inputs by the layer below's matching.
Then moves k units at once (k = 8, 32, all) into matched or random slots and prints B's
accuracy.
"""

import argparse

import numpy as np

from dissectjax.checkpoint import load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.data.splits import SCENE_SPLITS, scene_images
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.edit import layer_correlation, layer_matching, match, transplant
from dissectjax.evaluate import accuracy
from dissectjax.models.unit_wiring import unit_wiring


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default="checkpoints/scenenet")
    p.add_argument("--b", default="checkpoints/scenenet-seed1")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--detectors", type=int, default=3, help="how many of A's best detectors to move")
    p.add_argument("--probe", type=int, default=500, help="probe images for dissection")
    p.add_argument("--images", type=int, default=1000, help="held-out scenes for matching and accuracy")
    a = p.parse_args()
    model, va, meta = load_checkpoint(a.a)
    _, vb, _ = load_checkpoint(a.b)
    shape = tuple(meta["input_shape"])
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.probe, seed=SCENE_SPLITS["probe"])))
    config = DissectConfig(batch_size=100)

    def dissected(variables):
        return dissect(ModelSource(model, variables, [a.layer], shape), probe, config)[a.layer]

    da, db = dissected(va), dissected(vb)
    w = unit_wiring(model, a.layer)
    x, y = scene_images(a.images, "eval")
    corr = layer_correlation(model, va, model, vb, a.layer, x)
    here = match(corr)
    below = layer_matching(model, va, model, vb, w.previous, x).slot if w.previous else None

    best = np.argsort(-da.labels.score)[: a.detectors]
    print(
        f"A {a.a}: accuracy {accuracy(model, va, x, y):.3f}; B {a.b}: accuracy {accuracy(model, vb, x, y):.3f}; "
        f"{a.layer} matching: mean matched correlation {here.mean:.3f} (random {here.random_mean:.3f})"
    )
    print(
        f"{'unit':>4} {'concept':>12} {'IoU in A':>8} {'variant':>26} {'slot':>4} {'corr':>5} "
        f"{'B IoU before':>12} {'after':>6} {'B accuracy':>10}"
    )
    for u in best:
        concept = int(da.labels.label[u])
        name = probe.concepts.names[concept]
        unmatched = int(np.argmin(corr[u]))
        variants = [("matched slot", int(here.slot[u]), False, below),
                    ("unmatched slot", unmatched, False, below),
                    ("matched, inputs unmatched", int(here.slot[u]), False, None),
                    ("matched + outgoing", int(here.slot[u]), True, below)]  # fmt: skip
        for label, slot, outgoing, inputs in variants:
            vt = transplant(model, va, vb, a.layer, [u], [slot], inputs, outgoing)
            dt = dissected(vt)
            print(
                f"{u:>4} {name:>12} {da.iou[u, concept]:8.3f} {label:>26} {slot:>4} {corr[u, slot]:5.2f} "
                f"{db.iou[slot, concept]:12.3f} {dt.iou[slot, concept]:6.3f} {accuracy(model, vt, x, y):10.3f}"
            )
    whole_layer(model, va, vb, a.layer, here, below, x, y)


def whole_layer(model, va, vb, layer, here, below, x, y, seed=0):
    """B's accuracy after receiving k of A's units (its most correlated first), by slot choice."""
    units = len(here.slot)
    order = np.argsort(-here.correlation)
    rng = np.random.default_rng(seed)
    print(
        f"\nB's accuracy after receiving k of A's {layer} units (best matched first); B alone "
        f"{accuracy(model, vb, x, y):.3f}, A {accuracy(model, va, x, y):.3f}"
    )
    print(f"{'k':>4} {'matched slots':>14} {'random slots':>13} {'matched, inputs unmatched':>26}")
    for k in (8, 32, units):
        chosen = order[:k]
        matched = transplant(model, va, vb, layer, chosen, here.slot[chosen], below)
        shuffled = transplant(model, va, vb, layer, chosen, rng.permutation(units)[:k], below)
        blind = transplant(model, va, vb, layer, chosen, here.slot[chosen], None)
        print(
            f"{k:>4} {accuracy(model, matched, x, y):14.3f} {accuracy(model, shuffled, x, y):13.3f} "
            f"{accuracy(model, blind, x, y):26.3f}"
        )


if __name__ == "__main__":
    main()
