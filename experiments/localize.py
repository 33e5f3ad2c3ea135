"""Localizing concepts on purpose: baseline vs concept supervision, sparsity, concept whitening.

    python experiments/localize.py [--seeds 0,1] [--epochs 3] [--train 4000] [--out localize-out]

SceneNet is trained on synthetic scenes in each variant, from the same seeds and data:

* ``baseline``: the task loss only;
* ``concept``: + per-pixel logistic supervision of conv5 units 0..3 by four target concepts;
* ``sparse``: + L1 on conv5's activations;
* ``whiten``: conv5's BatchNorm replaced by concept whitening, axes 0..3 aligned to the targets;
* ``concept+sparse``: both terms.

Measured for each trained network: held-out accuracy (seed 201); conv5 detectors and
unique detectors (probe set synthetic:1000, seed 1); for each target, the IoU of its unit
(for the baseline: the best unit for that concept) with the concept; ablation specificity
(zeroing that unit: the accuracy drop on held-out scenes that contain the concept minus
the drop on scenes that do not); and the rotation control (the same IoU after a random
rotation of conv5: an aligned unit should lose it). Prints the table (mean and spread over
seeds), writes rows.csv and a plot into --out.

Transplant success (``--transplant``): for each seed, the target units 0..3 of the concept-
supervised network are moved into the baseline network of the same seed, each into its
matched conv5 slot (correlation on held-out scenes), with its filter's inputs reordered by
the conv4 matching and its outgoing classifier weights copied. Reported: the moved slot's
IoU with the target in the receiving network (does it keep its concept?), the receiving
network's accuracy, and the ablation specificity of the moved slot there (does it use it?).
"""

import argparse
import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dissectjax.chimera import ProjectedSource, random_rotation
from dissectjax.cli import open_dataset
from dissectjax.data import synthetic
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.localize import LossTerm, alignment_loss, concept_supervision_loss, l1_activity
from dissectjax.localize.training import make_step, scenes_with_masks, shuffled_batches, to_device
from dissectjax.matching import layer_matching
from dissectjax.models.scenenet import SceneNet
from dissectjax.sources import ModelSource
from dissectjax.surgery import transplant, unit_mask, zero_out
from dissectjax.train import predict

TARGETS = ("triangle", "star", "crown", "wheel")
VARIANTS = {
    "baseline": {},
    "concept": {"concept": 0.5},
    "sparse": {"l1": 0.05},
    "whiten": {"align": 1.0},
    "concept+sparse": {"concept": 0.5, "l1": 0.05},
}
LAYER = "conv5"


def terms_for(variant: dict, k: int) -> list[LossTerm]:
    terms = []
    if "concept" in variant:
        fn = lambda inter, b: concept_supervision_loss(inter["layers"][LAYER][..., :k], b["masks"], 4.0, offset=2.0)
        terms.append(LossTerm("concept", variant["concept"], fn))
    if "l1" in variant:
        terms.append(LossTerm("l1", variant["l1"], lambda inter, b: l1_activity(inter["layers"][LAYER])))
    if "align" in variant:

        def align(inter, b):
            z = inter["whitened"]["block5_cw"]["z"]  # [B, 16, 16, C] at conv5's resolution
            m = b["masks"]  # [B, 32, 32, K] -> any-pooled to 16 x 16
            m = m.reshape(m.shape[0], z.shape[1], m.shape[1] // z.shape[1], z.shape[2], -1, m.shape[-1]).max((2, 4))
            return alignment_loss(z, inter["params"]["block5_cw"]["rotation"], m)

        terms.append(LossTerm("align", variant["align"], align))
    return terms


def train(variant: dict, seed: int, data, epochs: int, k: int):
    model = SceneNet(whiten=("conv5",) if "align" in variant else ())
    images, labels, masks = data
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.uint8))
    params, stats = variables["params"], variables["batch_stats"]
    steps = epochs * (len(images) // 64)
    optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, steps // 10, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)
    step = make_step(model, optimizer, terms_for(variant, k))
    for idx in shuffled_batches(len(images), 64, epochs, seed):
        batch = to_device({"images": images[idx], "labels": labels[idx], "masks": masks[idx]})
        params, stats, opt_state, _, _ = step(params, stats, opt_state, batch)
    return model, {"params": params, "batch_stats": stats}


def measure(model, variables, probe, held, targets, seed):
    images, labels, _ = held
    correct = predict(model, variables, images) == labels
    source = ModelSource(model, variables, [LAYER], images.shape[1:])
    r = dissect(source, probe, DissectConfig(batch_size=100))[LAYER]
    units = r.units
    rotated = ProjectedSource(source, LAYER, {"rotated": random_rotation(units, 1000 + seed).T})
    rr = dissect(rotated, probe, DissectConfig(batch_size=100))["rotated"]
    out = {"accuracy": float(correct.mean()), "detectors": r.detectors, "unique": r.unique["total"]}
    for k, c in enumerate(targets):
        out[f"iou_{k}"] = float(r.iou[k, c])
        out[f"best_{k}"] = float(r.iou[:, c].max())
        out[f"rotated_{k}"] = float(rr.iou[k, c])
        out[f"best_unit_{k}"] = int(np.argmax(r.iou[:, c]))
    for k in range(len(targets)):
        for tag, u in (("own", k), ("best", out[f"best_unit_{k}"])):
            out[f"specificity_{tag}_{k}"] = specificity(model, variables, u, held, k, correct)
    return out


def specificity(model, variables, unit, held, k, correct):
    """Accuracy drop on held-out scenes with target k minus the drop on the others, when ``unit`` is zeroed."""
    images, labels, masks = held
    ablated = zero_out(model, variables, LAYER, unit_mask(model, LAYER, [unit]))
    kept = predict(model, ablated, images) == labels
    has = masks[..., k].any(axis=(1, 2))
    return float((correct[has].mean() - kept[has].mean()) - (correct[~has].mean() - kept[~has].mean()))


def transplant_success(trained, probe, held, targets, seed):
    """Moves the concept network's target units into the baseline of the same seed (matched slots)."""
    (model, donor), (_, receiver) = trained["concept"], trained["baseline"]
    images, labels, _ = held
    here = layer_matching(model, donor, model, receiver, LAYER, images).slot
    below = layer_matching(model, donor, model, receiver, "conv4", images).slot
    units = list(range(len(targets)))
    slots = [int(here[u]) for u in units]
    moved = transplant(model, donor, receiver, LAYER, units, slots, below, outgoing=True, output_matching=None)
    r = dissect(ModelSource(model, moved, [LAYER], images.shape[1:]), probe, DissectConfig(batch_size=100))[LAYER]
    correct = predict(model, moved, images) == labels
    base = predict(model, receiver, images) == labels
    return [{"seed": seed, "target": k, "slot": slot, "iou_after": float(r.iou[slot, c]),
             "accuracy_before": float(base.mean()), "accuracy_after": float(correct.mean()),
             "specificity_after": specificity(model, moved, slot, held, k, correct)}
            for k, (slot, c) in enumerate(zip(slots, targets))]  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--held", type=int, default=1000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="localize-out")
    p.add_argument("--transplant", action="store_true", help="also move the concept units into the baseline")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    probe, _ = open_dataset("synthetic", lambda x, **_: x, lambda *_: None)
    names = probe.concepts.names
    targets = [names.index(t) for t in TARGETS]
    numbers = [int(probe.concepts.numbers[c]) for c in targets]
    start = time.perf_counter()
    data = scenes_with_masks(synthetic.SyntheticConfig(size=a.train, seed=100), numbers)
    held = scenes_with_masks(synthetic.SyntheticConfig(size=a.held, seed=201), numbers)
    print(f"data: {a.train} training and {a.held} held-out scenes with masks ({time.perf_counter() - start:.0f} s); "
          f"targets {', '.join(TARGETS)} -> conv5 units 0..{len(TARGETS) - 1}", flush=True)  # fmt: skip
    os.makedirs(a.out, exist_ok=True)
    rows, moves = [], []
    for seed in seeds:
        trained = {}
        for name in a.variants.split(","):
            t = time.perf_counter()
            model, variables = train(VARIANTS[name], seed, data, a.epochs, len(TARGETS))
            trained[name] = (model, variables)
            m = measure(model, variables, probe, held, targets, seed)
            rows.append({"variant": name, "seed": seed, **m})
            own = np.mean([m[f"iou_{k}"] for k in range(len(TARGETS))])
            best = np.mean([m[f"best_{k}"] for k in range(len(TARGETS))])
            print(f"{name} seed {seed}: accuracy {m['accuracy']:.3f}, detectors {m['detectors']}, "
                  f"unique {m['unique']}, own IoU {own:.3f}, best IoU {best:.3f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)  # fmt: skip
            with open(os.path.join(a.out, "rows.csv"), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        if a.transplant and {"baseline", "concept"} <= set(trained):
            moves += transplant_success(trained, probe, held, targets, seed)
            for m in moves[-len(TARGETS) :]:
                print(f"transplant seed {seed} {TARGETS[m['target']]}: slot {m['slot']}, IoU in the baseline "
                      f"{m['iou_after']:.3f}, accuracy {m['accuracy_before']:.3f} -> {m['accuracy_after']:.3f}, "
                      f"specificity {m['specificity_after']:+.3f}", flush=True)  # fmt: skip
    summarize(sorted(rows, key=lambda r: list(VARIANTS).index(r["variant"])), a.out)


def summarize(rows, out):
    k = len(TARGETS)
    print(f"\nmean (spread over seeds: max - min); targets {', '.join(TARGETS)} = units 0..{k - 1}")
    head = ["variant", "accuracy", "detectors", "unique", "own-unit IoU", "best-unit IoU", "own IoU rotated",
            "specificity own", "specificity best"]  # fmt: skip
    print("  ".join(f"{h:>16s}" for h in head))
    plot = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]
        cols = {key: np.array([r[key] for r in sel]) for key in ("accuracy", "detectors", "unique")}
        for col, key in (("own", "iou"), ("best", "best"), ("rotated", "rotated"), ("spec_own", "specificity_own"),
                         ("spec_best", "specificity_best")):  # fmt: skip
            cols[col] = np.array([np.mean([r[f"{key}_{j}"] for j in range(k)]) for r in sel])
        plot[name] = cols
        cell = lambda v: f"{v.mean():.3f} ({v.max() - v.min():.3f})"
        print("  ".join(f"{x:>16s}" for x in [name, *(cell(v) for v in cols.values())]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    names = list(plot)
    panels = (("own", "target unit's IoU with its concept"), ("rotated", "same, after a random rotation"),
              ("spec_own", "ablation specificity (drop with - without)"))  # fmt: skip
    for ax, (key, title) in zip(axes, panels):
        values = [plot[n][key] for n in names]
        spread = [[v.mean() - v.min() for v in values], [v.max() - v.mean() for v in values]]
        ax.bar(names, [v.mean() for v in values], yerr=spread)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    fig.savefig(os.path.join(out, "localize.png"), dpi=110)
    print(f"wrote {out}/rows.csv and {out}/localize.png")


if __name__ == "__main__":
    main()
