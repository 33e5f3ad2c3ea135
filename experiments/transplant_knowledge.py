"""Giving a network a concept it never saw: trees moved from normally trained instances into
instances trained without trees, against random units and fine-tuning.

    python experiments/transplant_knowledge.py [--pairs A:B,...] [--k 4] [--out runs/transplant_knowledge]

Each B (checkpoints/scenenet-notree[-seedS]) was trained by ``experiments/train_scenenet.py
--absent tree --seed S``: the demo recipe on scenes where no tree is ever drawn. Each A is a
demo-recipe network of another seed (checkpoints/scenenet, scenenet-seed1). For each pair
this runs ``dissectjax transplant-concept --concept tree`` on conv5: A's k units for trees
(by dissection IoU, then by ablation damage specific to scenes with trees) go into B's
matched slots with matched inputs and copied outgoing weights, and B is measured on
held-out scenes with and without trees beside A, A's random k units moved the same way,
and fine-tuning B on the same scenes changing only the same slots' parameters, or all of
them; then larger k (``--sweep``) against random units only. Prints one table (mean ± std
over pairs); writes docs/transplant_knowledge.csv.
"""

import argparse
import csv
import json
import os

from dissectjax.analysis.spread import markdown, over_seeds, without_draw
from dissectjax.cli import main as cli
from dissectjax.results import write_csv

PAIRS = ",".join(("checkpoints/scenenet-seed1:checkpoints/scenenet-notree",
                  "checkpoints/scenenet:checkpoints/scenenet-notree-seed1",
                  "checkpoints/scenenet-seed1:checkpoints/scenenet-notree-seed2"))  # fmt: skip
FIELDS = ("with_concept", "without", "overall", "parameters_changed", "seconds")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", default=PAIRS, help="A:B checkpoint pairs (default: %(default)s)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--sweep", default="8,16", help="more k, against random units only (no fine-tunes)")
    p.add_argument("--images", type=int, default=2000, help="scenes per split (rank, eval)")
    p.add_argument("--out", default="runs/transplant_knowledge")
    p.add_argument("--csv", default="docs/transplant_knowledge.csv")
    p.add_argument("--only", type=int, help="run only this pair (its index; its seed is the index)")
    a = p.parse_args()
    rows = []
    for i, pair in enumerate(a.pairs.split(",")):
        if a.only is not None and i != a.only:
            continue
        source, target = pair.split(":")
        out = os.path.join(a.out, f"pair{i}")
        if not os.path.exists(os.path.join(out, "knowledge.json")):
            assert cli(["transplant-concept", "--source", source, "--target", target, "--layer", "conv5", "--concept",
                        "tree", "--k", str(a.k), "--images", str(a.images), "--seed", str(i), "--out", out,
                        "--quiet"]) == 0  # fmt: skip
        summary = json.load(open(os.path.join(out, "knowledge.json")))
        chosen = [c for c in summary["candidates"] if c["chosen"]]
        print(f"{source} -> {target}: A's units {summary['units']} -> B's slots {summary['slots']}; their tree IoU "
              + ", ".join(f"{c['iou']:.2f}" for c in chosen) + "; specific damage "
              + ", ".join(f"{c['specific']:.3f}" for c in chosen))  # fmt: skip
        rows += [{"pair": f"{source}->{target}", **r} for r in csv.DictReader(open(os.path.join(out, "knowledge.csv")))]
        for k in (int(k) for k in a.sweep.split(",") if k):
            more = f"{out}-k{k}"
            if not os.path.exists(os.path.join(more, "knowledge.json")):
                assert cli(["transplant-concept", "--source", source, "--target", target, "--layer", "conv5",
                            "--concept", "tree", "--k", str(k), "--images", str(a.images), "--seed", str(i),
                            "--no-finetune", "--out", more, "--quiet"]) == 0  # fmt: skip
            swept = csv.DictReader(open(os.path.join(more, "knowledge.csv")))
            rows += [{"pair": f"{source}->{target}", **r} for r in swept if r["name"].startswith("transplant")]
    write_csv(a.csv, rows)
    table = over_seeds(rows, "name", FIELDS, group=without_draw)  # random draws pool with the seeds
    print(
        f"\nconv5, k = {a.k}, concept tree; mean ± std over pairs (random units: over pairs and draws); wrote {a.csv}"
    )
    print(markdown(table, "name", FIELDS, {"parameters_changed": 0, "seconds": 1}))
    for r in rows:
        if r["setting"]:
            print(f"{r['pair']}, {r['name']}: {r['setting']}")


if __name__ == "__main__":
    main()
