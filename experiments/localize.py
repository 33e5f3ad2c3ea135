"""Localizing concepts on purpose: baseline vs concept supervision, sparsity, concept whitening.

    python experiments/localize.py [--seeds 0,1,2] [--epochs 4] [--train 6000] [--out localize-out]

For each seed, SceneNet is trained on the synthetic scenes in every variant (the same data
and initialization seed; ``dissectjax train`` with the variant's flags does the same):

* ``baseline``: the task loss only;
* ``concept``: + per-pixel logistic supervision of conv5 units 0..3 by the four targets
  (``--concept-weight 0.5``);
* ``sparse``: + L1 on conv5's activations (``--l1 0.05``);
* ``whiten``: conv5's BatchNorm replaced by concept whitening, axes 0..3 aligned to the
  targets (``--whiten --align 1``);
* ``concept+sparse``: both terms;
* ``whiten-only`` (run with ``--variants``): concept whitening without alignment, the
  control that separates what whitening does from what the alignment does.

Each trained network is saved under ``--out/checkpoints/VARIANT-sSEED``, and the seed's
networks are measured together by :func:`dissectjax.analysis.localize.modularity.compare` (what
``dissectjax modularity`` runs): accuracy, conv5 detectors and unique detectors, each
target unit's IoU with its concept against the best unit's, the rotation control,
ablation specificity, and the transplant of the target units into the baseline. Prints
means and spread (max - min) over seeds, writes the rows and ``localize.png`` into --out.
"""

import argparse
import dataclasses
import os
import time

import numpy as np

from dissectjax.analysis.localize.modularity import HeldOut, Network, compare, probe_concepts
from dissectjax.analysis.localize.recipe import Recipe, concept_numbers
from dissectjax.checkpoint import load_checkpoint, save_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.open import open_probe
from dissectjax.data.splits import scene_split_seed
from dissectjax.dissect import DissectConfig
from dissectjax.results import write_csv
from dissectjax.train import SCENE_TRAINING, SceneData, TrainConfig, train_scene_classifier
from dissectjax.train.scenes import training_record

TARGETS = ("triangle", "star", "crown", "wheel")
VARIANTS = {
    "baseline": Recipe(),
    "concept": Recipe(concepts=TARGETS, concept=0.5),
    "sparse": Recipe(l1=0.05),
    "whiten": Recipe(concepts=TARGETS, whiten=True, align=1.0),
    "whiten-only": Recipe(whiten=True),  # the control: whitening without alignment (measured at its best units)
    "concept+sparse": Recipe(concepts=TARGETS, concept=0.5, l1=0.05),
}


def train(name: str, recipe: Recipe, config: TrainConfig, data: SceneData, out: str) -> Network:
    path = os.path.join(out, "checkpoints", f"{name}-s{config.seed}")
    model = recipe.model()
    if os.path.isdir(path):  # a rerun measures the networks it already trained, if trained as asked now
        model, variables, stored = load_checkpoint(path)
        asked = {
            "train_config": training_record(config, data),
            "localize": recipe.to_json(),
        }
        if {k: stored.get(k) for k in asked} != asked:
            raise SystemExit(f"{path} was trained with other settings: remove it or use another --out")
        return Network(name, model, variables, recipe)
    concepts = recipe.numbers() if recipe.concepts else ()
    variables, metrics = train_scene_classifier(model, config, data, log=lambda _: None, terms=recipe.terms(),
                                                concepts=concepts)  # fmt: skip
    kwargs = {"num_classes": 12, **({"whiten": list(model.whiten)} if model.whiten else {})}
    save_checkpoint(path, "scenenet", kwargs, (data.image_size,) * 2 + (3,), variables, dataset="synthetic-scenes",
                    train_config=training_record(config, data), localize=recipe.to_json(), **metrics)  # fmt: skip
    return Network(name, model, variables, recipe)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--held", type=int, default=1000)
    p.add_argument("--variants", default="baseline,concept,sparse,whiten,concept+sparse")
    p.add_argument("--out", default="localize-out")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    probe, _ = open_probe("synthetic")
    numbers = concept_numbers(TARGETS)
    index = probe_concepts(probe, TARGETS)
    held = HeldOut(
        *synthetic.generate_with_masks(synthetic.SyntheticConfig(size=a.held, seed=scene_split_seed("eval")), numbers)
    )
    os.makedirs(a.out, exist_ok=True)
    rows = {"networks": [], "targets": [], "transplants": []}
    for seed in seeds:
        networks = []
        for name in a.variants.split(","):
            t = time.perf_counter()
            networks.append(
                train(
                    name,
                    VARIANTS[name],
                    dataclasses.replace(SCENE_TRAINING, seed=seed, epochs=a.epochs),
                    SceneData(train_size=a.train),
                    a.out,
                )
            )
            print(f"seed {seed}: trained {name} ({time.perf_counter() - t:.0f} s)", flush=True)
        out = compare(networks, "baseline", probe, held, index, DissectConfig(batch_size=100), seed=seed,
                      log=lambda m, s=seed: print(f"seed {s}: {m}", flush=True))  # fmt: skip
        for key, values in out.items():
            rows[key] += [{"seed": seed, **r} for r in values]
            if rows[key]:  # no transplants without a trained variant
                write_csv(os.path.join(a.out, f"{key}.csv"), rows[key])
    summarize(rows, a.out)


def summarize(rows: dict, out: str) -> None:
    """Means over seeds (spread: max - min) per variant; target columns average the four targets."""
    seeds = sorted({r["seed"] for r in rows["networks"]})
    per_seed = lambda table, name, key: np.array(
        [np.mean([r[key] for r in rows[table] if r.get("network", r.get("donor")) == name and r["seed"] == s])
         for s in seeds])  # fmt: skip
    cell = lambda v, signed=False: (
        f"{v.mean():+.3f} ({np.ptp(v):.3f})" if signed else f"{v.mean():.3f} ({np.ptp(v):.3f})"
    )
    names = list(dict.fromkeys(r["network"] for r in rows["networks"]))
    print(f"\nmean over seeds {seeds} (spread max - min); target columns: mean over {', '.join(TARGETS)}")
    head = ["variant", "accuracy", "detectors", "unique", "target IoU", "best IoU", "rotated same", "rotated best",
            "specificity"]  # fmt: skip
    print("  ".join(f"{h:>15s}" for h in head))
    plot = {}
    for name in names:
        cols = {k: per_seed("networks", name, k) for k in ("accuracy", "detectors", "unique")}
        keys = ("iou", "best_iou", "rotated_iou", "rotated_best_iou", "specificity")
        cols |= {k: per_seed("targets", name, k) for k in keys}
        plot[name] = cols
        print("  ".join(f"{x:>15s}" for x in [name, *(cell(v, k == "specificity") for k, v in cols.items())]))
    print("\nper target: IoU of the target unit (baseline: its best unit), mean (spread)")
    for name in names:
        print(f"{name:>15s}  " + "  ".join(
            f"{t} {cell(np.array([r['iou'] for r in rows['targets'] if r['network'] == name and r['concept'] == t]))}"
            for t in TARGETS))  # fmt: skip
    donors = list(dict.fromkeys(r["donor"] for r in rows["transplants"]))
    if donors:
        print("\ntransplant into the baseline: IoU kept in the receiver, receiver accuracy change, specificity there")
        for name in donors:
            kept, spec = per_seed("transplants", name, "iou_after"), per_seed("transplants", name, "specificity_after")
            change = per_seed("transplants", name, "accuracy_after") - per_seed("transplants", name, "accuracy_before")
            print(f"{name:>15s}  IoU {cell(kept)}  accuracy {cell(change, True)}  specificity {cell(spec, True)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    panels = (("iou", "target unit's IoU with its concept"), ("rotated_best_iou", "best random direction's IoU"),
              ("specificity", "ablation specificity"), ("accuracy", "held-out accuracy"))  # fmt: skip
    for ax, (key, title) in zip(axes, panels):
        values = [plot[n][key] for n in names]
        ax.bar(names, [v.mean() for v in values], color="#88a")
        for i, v in enumerate(values):
            ax.plot([i] * len(v), v, "k.", ms=5)  # each seed
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    fig.savefig(os.path.join(out, "localize.png"), dpi=110)
    print(f"wrote {', '.join(f'{out}/{k}.csv' for k in rows if rows[k])} and {out}/localize.png")


if __name__ == "__main__":
    main()
