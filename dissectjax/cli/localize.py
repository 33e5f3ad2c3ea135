"""``dissectjax modularity``: localized variants against a baseline (:mod:`dissectjax.analysis.localize.modularity`).

dissectjax modularity --baseline ckpt/baseline --variant ckpt/concept --variant ckpt/whiten --out cmp
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from dissectjax.analysis.localize.modularity import ROTATION_SEEDS
from dissectjax.cli.common import (
    comma_list,
    finite_float,
    log_lines,
    positive_int,
    progress_bars,
    seed,
    table,
    write_table,
)
from dissectjax.data.splits import SCENE_SPLITS
from dissectjax.dissect.config import DissectConfig
from dissectjax.errors import DissectError


# ---- modularity -------------------------------------------------------------------------
def _network(spec: str, role: str):
    from dissectjax.analysis.localize.modularity import Network
    from dissectjax.analysis.localize.recipe import Recipe
    from dissectjax.checkpoint import load_checkpoint

    name, sep, path = spec.partition("=")
    if not sep or os.path.isdir(spec):  # a directory whose name holds "=" is a path, not NAME=DIR
        name, path = os.path.basename(os.path.normpath(spec)), spec
    if not os.path.isdir(path):
        raise DissectError(f"{role} {path!r} is not a checkpoint directory (write one with 'dissectjax train')")
    model, variables, config = load_checkpoint(path)
    if config.get("model") != "scenenet" or config.get("dataset") != "synthetic-scenes":
        raise DissectError(
            f"{path} holds {config.get('model')} trained on {config.get('dataset')}; modularity measures scene "
            "classifiers trained on the synthetic scenes ('dissectjax train')"
        )
    recipe = Recipe.from_json(config["localize"]) if "localize" in config else Recipe()
    return Network(name, model, variables, recipe)


def _targets(networks, override: str | None) -> tuple[str, ...]:
    if override:
        return tuple(comma_list(override, "--concepts"))
    asked = {n.recipe.concepts for n in networks if n.recipe.concepts}
    if not asked:
        raise DissectError("no network was trained for target concepts: name them with --concepts a,b,...")
    if len(asked) > 1:
        raise DissectError(f"the variants were trained for different targets ({' vs '.join(map(str, asked))}); "
                           "name the ones to compare with --concepts")  # fmt: skip
    return asked.pop()


def cmd_modularity(args) -> int:
    from dissectjax.analysis.localize.modularity import HeldOut, compare, probe_concepts
    from dissectjax.analysis.localize.recipe import concept_numbers
    from dissectjax.data import synthetic
    from dissectjax.data.open import open_probe
    from dissectjax.dissect import DissectConfig
    from dissectjax.results import write_atomic

    say, progress = log_lines(args.quiet), progress_bars(not args.quiet)
    if args.held < 10:
        raise DissectError(f"--held must be at least 10 scenes, got {args.held}")
    networks = [_network(args.baseline, "--baseline")] + [_network(v, "--variant") for v in args.variant or []]
    if not args.variant:
        raise DissectError("give at least one --variant checkpoint to compare with the baseline")
    targets = _targets(networks[1:], args.concepts)
    numbers = concept_numbers(targets)
    for net in networks:
        untrained = [t for t in targets if t not in net.recipe.concepts]
        if net.recipe.concepts and untrained:
            say(f"note: {net.name} was not trained for {', '.join(untrained)}: its best units for them are measured")
    probe, _ = open_probe(args.probe, progress, say)
    index = probe_concepts(probe, targets)
    say(f"held-out scenes: {args.held} (seed {args.held_seed}) with masks of {', '.join(targets)}")
    held = HeldOut(*synthetic.generate_with_masks(synthetic.SyntheticConfig(size=args.held, seed=args.held_seed),
                                                  numbers))  # fmt: skip
    config = DissectConfig(batch_size=args.batch_size, quantile=args.quantile, iou_threshold=args.iou_threshold)
    out = compare(networks, networks[0].name, probe, held, index, config, seed=args.seed,
                  move=not args.no_transplant, log=say)  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    written = []
    for key in ("networks", "targets", "transplants"):
        path = os.path.join(args.out, f"{key}.csv")
        if out[key]:
            write_table(path, out[key])
            written.append(f"{key}.csv")
        elif os.path.exists(path):
            os.remove(path)  # an earlier run's rows must not pass for this run's
    meta = {"baseline": networks[0].name, "concepts": list(targets), "probe": args.probe, "held": args.held,
            "held_seed": args.held_seed, "rotation_seed": ROTATION_SEEDS + args.seed,
            "recipes": {n.name: n.recipe.to_json() for n in networks}}  # fmt: skip
    write_atomic(os.path.join(args.out, "modularity.json"), json.dumps({**meta, **out}, indent=2).encode())
    print(format_modularity(out))
    print(f"wrote {args.out}/{', '.join(written)} and modularity.json", file=sys.stderr)
    return 0


def format_modularity(out: dict) -> str:
    """The comparison as text tables: per network, per target, per transplant."""

    per = {}
    for r in out["targets"]:
        per.setdefault(r["network"], []).append(r)
    head = ["network", "accuracy", "detectors", "unique", "target IoU", "best IoU", "rotated best", "specificity"]
    rows = []
    for s in out["networks"]:
        mean = {key: np.mean([r[key] for r in per[s["network"]]]) for key in ("iou", "best_iou", "rotated_best_iou")}
        spec = np.mean([r["specificity"] for r in per[s["network"]]])
        rows.append([s["network"], f"{s['accuracy']:.3f}", str(s["detectors"]), str(s["unique"]),
                     *(f"{v:.3f}" for v in mean.values()), f"{spec:+.3f}"])  # fmt: skip
    text = [table(head, rows), "", "per target (* marks a best unit: the network was not trained for the concept)"]
    text.append(table(["network", "concept", "unit", "IoU", "best unit", "best IoU", "rotated same", "rotated best",
                        "specificity"], [
        [r["network"], r["concept"], str(r["unit"]) + ("" if r["trained_unit"] else "*"), f"{r['iou']:.3f}",
         str(r["best_unit"]), f"{r['best_iou']:.3f}", f"{r['rotated_iou']:.3f}", f"{r['rotated_best_iou']:.3f}",
         f"{r['specificity']:+.3f}"]
        for r in out["targets"]]))  # fmt: skip
    if out["transplants"]:
        text += ["", "transplant: target units moved into the baseline's matched slots"]
        text.append(table(["donor", "concept", "unit", "slot", "IoU in receiver", "accuracy", "specificity there"], [
            [m["donor"], m["concept"], str(m["unit"]), str(m["slot"]), f"{m['iou_after']:.3f}",
             f"{m['accuracy_before']:.3f} -> {m['accuracy_after']:.3f}", f"{m['specificity_after']:+.3f}"]
            for m in out["transplants"]]))  # fmt: skip
    return "\n".join(text)


def add_parsers(sub) -> None:
    m = sub.add_parser(
        "modularity",
        help="compare localizing variants with a baseline (accuracy, detectors, target IoU, rotation control, "
        "ablation specificity, transplant)",
    )
    m.add_argument("--baseline", required=True, help="baseline checkpoint directory ([NAME=]DIR)")
    m.add_argument("--variant", action="append", help="a variant's checkpoint directory ([NAME=]DIR); repeat")
    m.add_argument("--out", required=True, help="output directory for the CSV and JSON files")
    m.add_argument("--concepts", help="target concepts (default: those the variants were trained for)")
    m.add_argument("--probe", default="synthetic", help="dissection probe set (default: %(default)s)")
    m.add_argument(
        "--held",
        type=positive_int,
        default=1000,
        help="held-out scenes for accuracy and ablation (default: %(default)s)",
    )
    m.add_argument("--held-seed", type=seed, default=SCENE_SPLITS["eval"],
                   help="their seed (default: the eval split's, %(default)s)")  # fmt: skip
    m.add_argument("--seed", type=seed, default=0, help="seed of the random rotation control (default: %(default)s)")
    m.add_argument("--quantile", type=finite_float, default=DissectConfig.quantile,
                   help="top quantile per unit (default: %(default)s)")  # fmt: skip
    m.add_argument("--iou-threshold", type=finite_float, default=DissectConfig.iou_threshold,
                   help="detector IoU threshold (default: %(default)s)")  # fmt: skip
    m.add_argument("--batch-size", type=positive_int, default=100)
    m.add_argument("--no-transplant", action="store_true", help="skip moving the target units into the baseline")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_modularity)
