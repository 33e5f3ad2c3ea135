"""``dissectjax ablate``, ``match`` and ``transplant``: surgery on scene classifiers from the CLI.

Images come from the synthetic scene generator's named splits
(:data:`dissectjax.data.splits.SCENE_SPLITS`): ``rank`` chooses units, ``eval`` measures.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from dissectjax.cli.common import comma_ints, positive, positive_int, table, write_table
from dissectjax.errors import DissectError


def _number(x: float):
    """A float for CSV/JSON: rounded, or None where it was not measured (NaN)."""
    return None if np.isnan(x) else round(float(x), 6)


def _show(x, spec: str = ".3f") -> str:
    return "n/a" if x is None or np.isnan(x) else format(x, spec)


def _write(out: str | None, name: str, rows: list[dict], summary: dict) -> None:
    """``out/name.csv`` (the rows) and ``out/name.json`` (the summary), each written atomically."""
    from dissectjax.results import write_atomic

    if not out:
        return
    if rows:
        write_table(os.path.join(out, f"{name}.csv"), rows)
    write_atomic(os.path.join(out, f"{name}.json"), json.dumps(summary, indent=2).encode())
    print(f"wrote {os.path.join(out, name)}.json", file=sys.stderr)


def _load(path: str):
    from dissectjax.checkpoint import load_checkpoint

    return load_checkpoint(path, fold=True)  # whitened axes become plain units (same function)


# ---- ablate ---------------------------------------------------------------------------------
def cmd_ablate(args) -> int:
    from dissectjax.analysis.ablation import balanced_accuracy, confusions, layer_data, ranked_units, single_unit_damage
    from dissectjax.data.splits import SCENE_CLASSES, scene_images
    from dissectjax.edit import check_units

    positive(args.images, "--images")
    if args.units and (args.top_for_class or args.single_unit):
        raise DissectError("--units names the units itself: do not combine it with --top-for-class or --single-unit")
    model, variables, _ = _load(args.checkpoint)
    names = SCENE_CLASSES
    eval_x, eval_y = scene_images(args.images, "eval")
    data = layer_data(model, variables, args.layer, eval_x, eval_y)
    units_total = data.units
    if args.single_unit:
        base, damage = single_unit_damage(model, variables, data, args.mode)
        rows = [
            {"unit": u, "class": names[c], "damage": _number(damage[u, c])}
            for u in range(units_total)
            for c in range(len(names))
        ]
        print(
            table(
                ["class", "balanced acc.", "most damaging units (drop)"],
                [
                    [
                        names[c],
                        _show(base[c]),
                        "n/a"
                        if np.isnan(base[c])
                        else ", ".join(f"{u} ({damage[u, c]:.3f})" for u in ranked_units(damage, c)[:5]),
                    ]
                    for c in range(len(names))
                ],
            )
        )
        _write(
            args.out,
            "single_unit",
            rows,
            {
                "layer": args.layer,
                "mode": args.mode,
                "images": args.images,
                "baseline": dict(zip(names, base.round(6).tolist())),
            },
        )
        return 0
    if args.top_for_class:
        if args.top_for_class not in names:
            raise DissectError(f"unknown class {args.top_for_class!r}; classes: {', '.join(names)}")
        rank_x, rank_y = scene_images(args.images, "rank")
        _, damage = single_unit_damage(
            model, variables, layer_data(model, variables, args.layer, rank_x, rank_y), args.mode
        )
        if not 1 <= args.count <= units_total:
            raise DissectError(f"--count must be between 1 and {units_total} (the units of {args.layer})")
        units = ranked_units(damage, names.index(args.top_for_class))[: args.count].tolist()
        print(f"units most damaging to {args.top_for_class} on the rank split: {units}", file=sys.stderr)
    else:
        units = comma_ints(args.units, "--units")
        if not units:
            raise DissectError("name the units: --units 3,17, --top-for-class CLASS --count K, or --single-unit")
    mask = np.zeros(units_total, np.float32)
    mask[check_units(units, units_total, args.layer)] = 1.0
    before, after = balanced_accuracy(
        confusions(model, variables, data, np.stack([np.zeros_like(mask), mask]), args.mode)
    )
    rows = [
        {"class": n, "before": _number(b), "after": _number(a), "change": _number(a - b)}
        for n, b, a in zip(names, before, after)
    ]
    print(
        table(
            ["class", "before", "after", "change"],
            [[r["class"], _show(r["before"]), _show(r["after"]), _show(r["change"], "+.3f")] for r in rows],
        )
    )
    print(
        f"mean balanced accuracy {np.nanmean(before):.3f} -> {np.nanmean(after):.3f} ({len(units)} of "
        f"{units_total} units of {args.layer}, {args.mode}; classes without images: n/a, left out)"
    )
    _write(args.out, "ablation", rows, {"layer": args.layer, "units": units, "mode": args.mode, "images": args.images})
    return 0


# ---- match ----------------------------------------------------------------------------------
def cmd_match(args) -> int:
    from dissectjax.data.splits import scene_images
    from dissectjax.edit.matching import layer_matching

    positive(args.images, "--images")
    model_a, vars_a, _ = _load(args.a)
    model_b, vars_b, _ = _load(args.b)
    images, _ = scene_images(args.images, "eval")
    m = layer_matching(model_a, vars_a, model_b, vars_b, args.layer, images)
    order = np.argsort(-m.correlation)
    print(
        table(
            ["unit (A)", "slot (B)", "correlation"],
            [[str(u), str(m.slot[u]), f"{m.correlation[u]:.3f}"] for u in order[:10]],
        )
    )
    print(
        f"{args.layer}: mean correlation of matched pairs {m.mean:.3f}; random permutations "
        f"{m.random_mean:.3f} +- {m.random_std:.3f}; pairs above 0.5: {int((m.correlation > 0.5).sum())}"
    )
    rows = [
        {"unit_a": u, "slot_b": int(m.slot[u]), "correlation": round(float(m.correlation[u]), 6)}
        for u in range(len(m.slot))
    ]
    _write(
        args.out,
        "matching",
        rows,
        {
            "layer": args.layer,
            "a": args.a,
            "b": args.b,
            "images": args.images,
            "mean": m.mean,
            "random_mean": m.random_mean,
            "random_std": m.random_std,
        },
    )
    return 0


# ---- transplant -------------------------------------------------------------------------------
def cmd_transplant(args) -> int:
    from dissectjax.checkpoint import save_checkpoint
    from dissectjax.data.splits import scene_images
    from dissectjax.edit import check_units, layer_matching, transplant
    from dissectjax.evaluate import accuracy
    from dissectjax.models.wiring import unit_wiring

    positive(args.images, "--images")
    model_a, vars_a, config_a = _load(args.source)
    model_b, vars_b, config_b = _load(args.target)
    if model_a != model_b or config_a["input_shape"] != config_b["input_shape"]:  # compared after folding
        raise DissectError(
            f"{args.source} ({config_a['model']}) and {args.target} ({config_b['model']}) are different architectures"
        )
    if os.path.exists(args.out):
        raise DissectError(f"--out {args.out} already exists; remove it or choose another path")
    w = unit_wiring(model_b, args.layer)
    units = comma_ints(args.units, "--units")
    if not units:
        raise DissectError("--units is required (comma-separated unit numbers of the source)")
    check_units(units, w.units, args.layer)
    if args.matched and args.slots:
        raise DissectError("give either --slots or --matched, not both")
    images, labels = scene_images(args.images, "eval")
    matching = layer_matching(model_a, vars_a, model_b, vars_b, args.layer, images) if args.matched else None
    if args.matched:
        slots = [int(matching.slot[u]) for u in units]
    else:
        slots = comma_ints(args.slots, "--slots")
        if not slots:
            raise DissectError("give --slots (one per unit) or --matched")
    inputs = None
    if w.previous is not None:
        inputs = layer_matching(model_a, vars_a, model_b, vars_b, w.previous, images).slot
    outputs = None
    if args.outgoing and w.next is not None:
        outputs = layer_matching(model_a, vars_a, model_b, vars_b, w.next, images).slot
    result = transplant(model_b, vars_a, vars_b, args.layer, units, slots, inputs, args.outgoing, outputs)
    before, after = accuracy(model_b, vars_b, images, labels), accuracy(model_b, result, images, labels)
    source = accuracy(model_a, vars_a, images, labels)
    print(table(["source unit", "target slot"], [[str(u), str(s)] for u, s in zip(units, slots)]))
    print(
        f"accuracy on {args.images} held-out scenes: source {source:.3f}; target {before:.3f} -> {after:.3f} "
        f"after the transplant"
    )
    save_checkpoint(
        args.out,
        config_b["model"],
        config_b["model_kwargs"],
        config_b["input_shape"],
        result,
        transplant={
            "source": os.path.abspath(args.source),
            "target": os.path.abspath(args.target),
            "layer": args.layer,
            "units": units,
            "slots": slots,
            "outgoing": args.outgoing,
            "matched": args.matched,
        },
        eval_accuracy=round(after, 4),
    )
    print(f"saved {args.out}")
    return 0


def add_parsers(sub) -> None:
    a = sub.add_parser("ablate", help="remove units of a layer and measure per-class balanced accuracy")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--layer", required=True, help="e.g. conv5")
    a.add_argument("--units", help="comma-separated unit numbers")
    a.add_argument(
        "--top-for-class",
        metavar="CLASS",
        help="ablate the units most damaging to CLASS (ranked on the rank split, measured on the eval split)",
    )
    a.add_argument(
        "--count", type=positive_int, default=10, help="how many units with --top-for-class (default: %(default)s)"
    )
    a.add_argument("--single-unit", action="store_true", help="ablate every unit alone; write the damage per class")
    a.add_argument("--mode", choices=["zero", "mean"], default="zero", help="zero the units or set them to their mean")
    a.add_argument(
        "--images", type=positive_int, default=1000, help="synthetic scenes to measure on (default: %(default)s)"
    )
    a.add_argument("--out", help="directory for CSV/JSON results")
    a.set_defaults(func=cmd_ablate)

    m = sub.add_parser("match", help="match the units of a layer across two instances (correlation + Hungarian)")
    m.add_argument("--a", required=True, help="checkpoint of instance A")
    m.add_argument("--b", required=True, help="checkpoint of instance B")
    m.add_argument("--layer", required=True)
    m.add_argument("--images", type=positive_int, default=500)
    m.add_argument("--out", help="directory for CSV/JSON results")
    m.set_defaults(func=cmd_match)

    t = sub.add_parser("transplant", help="copy units from one instance into another; save the result")
    t.add_argument("--source", required=True, help="checkpoint to take units from (A)")
    t.add_argument("--target", required=True, help="checkpoint to put them into (B)")
    t.add_argument("--layer", required=True)
    t.add_argument("--units", required=True, help="comma-separated unit numbers of the source")
    t.add_argument("--slots", help="comma-separated target slots, one per unit")
    t.add_argument("--matched", action="store_true", help="put each unit into its matched slot in the target")
    t.add_argument("--outgoing", action="store_true", help="also copy the weights that read the units")
    t.add_argument(
        "--images", type=positive_int, default=500, help="scenes for matching and accuracy (default: %(default)s)"
    )
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.set_defaults(func=cmd_transplant)
