"""Transplant a dissected detector from instance A into instance B: matched vs unmatched slot.

    python experiments/transplant_detector.py [--pairs A:B,A2:B2]

Default pairs: the strong checkpoints (scenenet-strong -> scenenet-strong-seed1) and the
weak, demo ones (scenenet -> scenenet-seed1). For each pair:

dissects A's layer on the synthetic probe set and takes its best detectors; matches A's and
B's units (this layer, for the slot, and the layer below, so the copied filter reads the
right inputs); copies each detector's filter and normalization into (1) its matched slot
in B and (2) an unmatched slot (B's unit least correlated with it), and, separately,
(3) into the matched slot together with its outgoing classifier weights. For each, prints
B's accuracy on held-out scenes and the IoU of the transplanted slot with the detector's
concept when B is dissected, against A's own IoU and B's IoU before the transplant; and
(4) into the matched slot without reordering its inputs by the layer below's matching.
Then moves k units at once (k = 8, 32, all) into matched or random slots and prints B's
accuracy. Ends with one table comparing the pairs.
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

PAIRS = "checkpoints/scenenet-strong:checkpoints/scenenet-strong-seed1,checkpoints/scenenet:checkpoints/scenenet-seed1"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", default=PAIRS, help="A:B checkpoint pairs, comma-separated (default: %(default)s)")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--detectors", type=int, default=3, help="how many of A's best detectors to move")
    p.add_argument("--probe", type=int, default=500, help="probe images for dissection")
    p.add_argument("--images", type=int, default=1000, help="held-out scenes for matching and accuracy")
    a = p.parse_args()
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.probe, seed=SCENE_SPLITS["probe"])))
    x, y = scene_images(a.images, "eval")
    summaries = [transplant_pair(*pair.split(":"), a.layer, a.detectors, probe, x, y) for pair in a.pairs.split(",")]
    print(f"\n{a.layer}, {a.images} held-out scenes, A's {a.detectors} best detectors; IoU: mean over them")
    print(" | ".join(SUMMARY))
    for s in summaries:
        print(" | ".join(str(s[k]) for k in SUMMARY))


SUMMARY = ("pair", "A acc", "B acc", "matched corr", "random corr", "IoU in A", "B IoU before", "after",
           "after, inputs unmatched", "B acc after one", "k=8", "k=32", "whole layer", "whole, random")  # fmt: skip


def transplant_pair(path_a, path_b, layer, detectors, probe, x, y) -> dict:
    """Prints the detector and whole-layer transplants of one pair; returns its summary row."""
    model, va, meta = load_checkpoint(path_a)
    _, vb, _ = load_checkpoint(path_b)
    shape = tuple(meta["input_shape"])
    config = DissectConfig(batch_size=100)

    def dissected(variables):
        return dissect(ModelSource(model, variables, [layer], shape), probe, config)[layer]

    da, db = dissected(va), dissected(vb)
    w = unit_wiring(model, layer)
    corr = layer_correlation(model, va, model, vb, layer, x)
    here = match(corr)
    below = layer_matching(model, va, model, vb, w.previous, x).slot if w.previous else None
    acc_a, acc_b = accuracy(model, va, x, y), accuracy(model, vb, x, y)
    best = np.argsort(-da.labels.score)[:detectors]
    print(
        f"\nA {path_a}: accuracy {acc_a:.3f}; B {path_b}: accuracy {acc_b:.3f}; "
        f"{layer} matching: mean matched correlation {here.mean:.3f} (random {here.random_mean:.3f})"
    )
    print(
        f"{'unit':>4} {'concept':>12} {'IoU in A':>8} {'variant':>26} {'slot':>4} {'corr':>5} "
        f"{'B IoU before':>12} {'after':>6} {'B accuracy':>10}"
    )
    found = {"IoU in A": [], "B IoU before": [], "after": [], "after, inputs unmatched": [], "B acc after one": []}
    for u in best:
        concept = int(da.labels.label[u])
        name = probe.concepts.names[concept]
        unmatched = int(np.argmin(corr[u]))
        variants = [("matched slot", int(here.slot[u]), False, below),
                    ("unmatched slot", unmatched, False, below),
                    ("matched, inputs unmatched", int(here.slot[u]), False, None),
                    ("matched + outgoing", int(here.slot[u]), True, below)]  # fmt: skip
        for label, slot, outgoing, inputs in variants:
            vt = transplant(model, va, vb, layer, [u], [slot], inputs, outgoing)
            dt = dissected(vt)
            acc = accuracy(model, vt, x, y)
            print(
                f"{u:>4} {name:>12} {da.iou[u, concept]:8.3f} {label:>26} {slot:>4} {corr[u, slot]:5.2f} "
                f"{db.iou[slot, concept]:12.3f} {dt.iou[slot, concept]:6.3f} {acc:10.3f}"
            )
            if label == "matched slot":
                found["IoU in A"].append(da.iou[u, concept])
                found["B IoU before"].append(db.iou[slot, concept])
                found["after"].append(dt.iou[slot, concept])
            found["B acc after one"].append(acc)
            if label == "matched, inputs unmatched":
                found["after, inputs unmatched"].append(dt.iou[slot, concept])
    whole = whole_layer(model, va, vb, layer, here, below, x, y)
    units = len(here.slot)
    return {
        "pair": f"{path_a.rstrip('/').split('/')[-1]} -> {path_b.rstrip('/').split('/')[-1]}",
        "A acc": f"{acc_a:.3f}",
        "B acc": f"{acc_b:.3f}",
        "matched corr": f"{here.mean:.3f}",
        "random corr": f"{here.random_mean:.3f}",
        **{k: f"{np.mean(v):.3f}" for k, v in found.items() if k != "B acc after one"},
        "B acc after one": f"{min(found['B acc after one']):.3f}-{max(found['B acc after one']):.3f}",
        "k=8": f"{whole[8][0]:.3f}",
        "k=32": f"{whole[32][0]:.3f}",
        "whole layer": f"{whole[units][0]:.3f}",
        "whole, random": f"{whole[units][1]:.3f}",
    }


def whole_layer(model, va, vb, layer, here, below, x, y, seed=0) -> dict[int, tuple[float, float, float]]:
    """B's accuracy after receiving k of A's units (its most correlated first), by slot choice:
    {k: (matched slots, random slots, matched slots with inputs unmatched)}."""
    units = len(here.slot)
    order = np.argsort(-here.correlation)
    rng = np.random.default_rng(seed)
    print(
        f"\nB's accuracy after receiving k of A's {layer} units (best matched first); B alone "
        f"{accuracy(model, vb, x, y):.3f}, A {accuracy(model, va, x, y):.3f}"
    )
    print(f"{'k':>4} {'matched slots':>14} {'random slots':>13} {'matched, inputs unmatched':>26}")
    out = {}
    for k in (8, 32, units):
        chosen = order[:k]
        matched = transplant(model, va, vb, layer, chosen, here.slot[chosen], below)
        shuffled = transplant(model, va, vb, layer, chosen, rng.permutation(units)[:k], below)
        blind = transplant(model, va, vb, layer, chosen, here.slot[chosen], None)
        out[k] = tuple(accuracy(model, v, x, y) for v in (matched, shuffled, blind))
        print(f"{k:>4} {out[k][0]:14.3f} {out[k][1]:13.3f} {out[k][2]:26.3f}")
    return out


if __name__ == "__main__":
    main()
