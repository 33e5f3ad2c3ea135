"""Repairing a planted shortcut without retraining: `dissectjax debug` on three trained networks.

    python experiments/debug_shortcut.py [--seeds 0,1,2] [--k 4] [--images 1000] [--out runs/debug_shortcut]

Each network (checkpoints/scenenet-shortcut[-seedS]) was trained by
``experiments/train_scenenet.py --shortcut playroom:pink --seed S``: a pink square on 90% of
playroom scenes and 2% of the others. On shifted scenes (the square on half of every
class) it calls scenes with the square "playroom": those mistakes are the bug. For each
seed this runs ``dissectjax debug --confusion '*:playroom'`` on conv5, which blames units on
the rank split, labels the top k by dissection, and measures every fix and baseline on
held-out scenes in the same run: zero / mean / rescale / constrained fine-tune of the top k,
k random units, a whole-network fine-tune on the same examples, and (where a clean
checkpoint of the seed exists: scenenet, scenenet-seed1) the network retrained without the
cue, its cost the recorded training time. Then larger k (``--sweep``) with the cheap fixes
(zero, mean) against random units. Prints per-seed top units and one table (mean ±
std over seeds); writes docs/debug_shortcut.csv (every seed's rows).
"""

import argparse
import csv
import json
import os

from dissectjax.analysis.spread import markdown, over_seeds, without_draw
from dissectjax.cli import main as cli
from dissectjax.results import write_csv

SHORTCUT = "checkpoints/scenenet-shortcut{}"
CLEAN = {0: "checkpoints/scenenet", 1: "checkpoints/scenenet-seed1"}  # demo recipe, no cue
FIELDS = ("failing_accuracy", "shifted_accuracy", "clean_accuracy", "agreement", "parameters_changed", "seconds")


def checkpoint(seed: int) -> str:
    return SHORTCUT.format("" if seed == 0 else f"-seed{seed}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--sweep", default="8,16,32", help="more k, with the cheap fixes only (zero, mean; 3 random draws)")
    p.add_argument("--images", type=int, default=1000, help="scenes per split (rank, eval)")
    p.add_argument("--out", default="runs/debug_shortcut", help="where each seed's debug output goes")
    p.add_argument("--csv", default="docs/debug_shortcut.csv")
    p.add_argument("--check-finetune", type=int, metavar="SEED",
                   help="only replay SEED's constrained fine-tune; compare it with zeroing the same units")  # fmt: skip
    a = p.parse_args()
    if a.check_finetune is not None:
        return finetune_vs_zero(a.check_finetune, a.out, a.images)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        out = os.path.join(a.out, f"seed{seed}")
        if not os.path.exists(os.path.join(out, "debug.json")):
            args = ["debug", "--checkpoint", checkpoint(seed), "--layer", "conv5", "--data", "shifted:playroom:pink",
                    "--confusion", "*:playroom", "--k", str(a.k), "--images", str(a.images), "--seed", str(seed),
                    "--out", out, "--quiet"]  # fmt: skip
            if seed in CLEAN:
                args += ["--retrained", CLEAN[seed]]
            assert cli(args) == 0
        summary = json.load(open(os.path.join(out, "debug.json")))
        print(f"seed {seed}: {summary['failing_rank']} failing rank scenes, {summary['failing_eval']} held out; "
              "top units: " + "; ".join(f"{t['unit']} {t.get('label', '?')} ({t.get('category', '?')}, IoU "
                                        f"{t.get('iou', float('nan')):.2f}, fixes {t['fixed']}, breaks {t['broken']})"
                                        for t in summary["top"]))  # fmt: skip
        rows += [{"seed": seed, **r} for r in csv.DictReader(open(os.path.join(out, "fixes.csv")))]
        for k in (int(k) for k in a.sweep.split(",") if k):
            more = f"{out}-k{k}"
            if not os.path.exists(os.path.join(more, "debug.json")):
                assert cli(["debug", "--checkpoint", checkpoint(seed), "--layer", "conv5", "--data",
                            "shifted:playroom:pink", "--confusion", "*:playroom", "--k", str(k), "--fixes", "zero,mean",
                            "--random-draws", "3", "--probe", "none", "--images", str(a.images), "--seed", str(seed),
                            "--out", more, "--quiet"]) == 0  # fmt: skip
            rows += [{"seed": seed, **r} for r in csv.DictReader(open(os.path.join(more, "fixes.csv")))
                     if r["name"] != "original"]  # fmt: skip
    write_csv(a.csv, rows)
    table = over_seeds(rows, "name", FIELDS, group=without_draw)  # random draws pool with the seeds
    print(f"\nconv5, k = {a.k}; mean ± std over seeds (random units: over seeds and draws); wrote {a.csv}")
    print(markdown(table, "name", FIELDS, {"parameters_changed": 0, "seconds": 1}))
    for r in rows:
        if r["setting"]:
            print(f"seed {r['seed']}, {r['name']}: {r['setting']}")


def finetune_vs_zero(seed: int, out: str, images: int) -> None:
    """Replays the command's constrained fine-tune of SEED's top units (same examples, rates
    and steps) and prints what it did to the units, and how often it predicts as zeroing them."""
    import numpy as np

    from dissectjax.analysis import debug
    from dissectjax.checkpoint import load_checkpoint
    from dissectjax.cli.debug import _tuning_examples
    from dissectjax.data.labelled import open_labelled
    from dissectjax.evaluate import layer_maps, predict

    units = json.load(open(os.path.join(out, f"seed{seed}", "debug.json")))["top_units"]
    model, v, _ = load_checkpoint(checkpoint(seed), fold=True)
    sets = (("shifted:playroom:pink", "rank"), ("synthetic", "rank"), ("synthetic", "eval"))
    shifted, clean, held = (open_labelled(spec, split, images, (64, 64, 3), 12) for spec, split in sets)
    said = predict(model, v, shifted.images)
    failing = (said != shifted.labels) & (said == 6)  # any class predicted as playroom
    right = predict(model, v, clean.images) == clean.labels
    examples = _tuning_examples((shifted.images[failing], shifted.labels[failing]),
                                (clean.images[right], clean.labels[right]), 64, seed)  # fmt: skip
    example = np.zeros((1, 64, 64, 3), np.uint8)
    mask = debug.unit_parameter_mask(model, v, "conv5", units, example)
    tuned = debug.finetune_selected(model, v, *examples, mask, (1e-3, 3e-4, 1e-4), 100, seed)
    before = layer_maps(model, v, ["conv5"], held.images)["conv5"][..., units]
    after = layer_maps(model, tuned.variables, ["conv5"], held.images)["conv5"][..., units]
    zeroed = debug.zero_units(model, v, "conv5", units, example)
    same = np.mean(predict(model, zeroed, held.images) == predict(model, tuned.variables, held.images))
    print(f"seed {seed}, units {units}, rate {tuned.learning_rate:g}: mean activation on clean scenes "
          f"{np.round(before.mean(axis=(0, 1, 2)), 3)} -> {np.round(after.mean(axis=(0, 1, 2)), 4)}; active at "
          f"{np.round((after > 0).mean(axis=(0, 1, 2)), 4)} of positions; predictions equal to zeroing them on "
          f"{same:.3f} of clean scenes")  # fmt: skip


if __name__ == "__main__":
    main()
