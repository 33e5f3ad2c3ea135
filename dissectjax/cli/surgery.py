"""``dissectjax ablate``, ``match`` and ``transplant``: surgery on any classifier checkpoint from the CLI.

Images come from a labelled image set (``--data``: :func:`dissectjax.data.labelled.open_labelled`:
the generated scenes, styled digits, class folders or a prepared TFDS dataset), at the
checkpoint's input size, in two disjoint splits: ``rank`` chooses units, ``eval`` measures.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from dissectjax.cli.common import comma_ints, positive_int, table, write_table
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


def _same_architecture(model_a, config_a: dict, model_b, config_b: dict) -> bool:
    """Whether two checkpoints (as :func:`_load` gives them: folded, so a concept-whitened network
    equals its plain twin) are instances of one architecture on images of one shape."""
    return model_a == model_b and list(config_a["input_shape"]) == list(config_b["input_shape"])


def _labelled(args, split: str, config: dict, model):
    """``--data``'s ``split`` images (at most ``--images``) at the checkpoint's input size."""
    from dissectjax.cli.common import progress_bars
    from dissectjax.data.labelled import open_labelled

    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise DissectError(f"the checkpoint's model ({type(model).__name__}) has no num_classes: it is not a "
                           "classifier, so there are no classes to measure")  # fmt: skip
    return open_labelled(args.data, split, args.images, tuple(config["input_shape"]), num_classes,
                         data_dir=args.data_dir, progress=progress_bars(not args.quiet))  # fmt: skip


def _check_layer(model, variables, config: dict, layer: str) -> None:
    """An unknown layer is an error listing the sown ones, before any image is read."""
    import jax.numpy as jnp

    from dissectjax.models.layers import sown_layer_names

    sown = sown_layer_names(model, variables, jnp.zeros((1, *config["input_shape"]), jnp.uint8))
    if layer not in sown:
        raise DissectError(f"unknown layer {layer!r} for {type(model).__name__}; its layers: {', '.join(sown)}")


MAX_ROWS = 30  # classes shown in a table; the CSV has them all


# ---- ablate ---------------------------------------------------------------------------------
def cmd_ablate(args) -> int:
    from dissectjax.analysis.ablation import class_counts, layer_data, ranked_units, single_unit_damage
    from dissectjax.edit import check_units

    if args.units and (args.top_for_class or args.single_unit):
        raise DissectError("--units names the units itself: do not combine it with --top-for-class or --single-unit")
    if not (args.units or args.top_for_class or args.single_unit):
        raise DissectError("name the units: --units 3,17, --top-for-class CLASS --count K, or --single-unit")
    model, variables, config = _load(args.checkpoint)
    _check_layer(model, variables, config, args.layer)
    units = comma_ints(args.units, "--units") if args.units else []
    evaluation = _labelled(args, "eval", config, model)
    names = evaluation.class_names
    if args.top_for_class and args.top_for_class not in names:
        raise DissectError(f"unknown class {args.top_for_class!r}; classes: {_some(names)}")
    data = layer_data(model, variables, args.layer, evaluation.images, evaluation.labels)
    check_units(units, data.units, args.layer)
    summary = {"layer": args.layer, "mode": args.mode, "data": evaluation.source, "images": len(evaluation)}
    if args.single_unit:
        base, damage = single_unit_damage(model, variables, data, args.mode)
        measured = [c for c in range(len(names)) if not np.isnan(base[c])][:MAX_ROWS]
        print(table(["class", "balanced acc.", "most damaging units (drop)"],
                    [[names[c], _show(base[c]), ", ".join(f"{u} ({damage[u, c]:.3f})"
                                                          for u in ranked_units(damage, c)[:5])]
                     for c in measured]))  # fmt: skip
        rows = [{"unit": u, "class": names[c], "damage": _number(damage[u, c])}
                for u in range(data.units) for c in range(len(names))]  # fmt: skip
        _write(args.out, "single_unit", rows, {**summary, "baseline": dict(zip(names, map(_number, base)))})
        return 0
    if args.top_for_class:
        if not 1 <= args.count <= data.units:
            raise DissectError(f"--count must be between 1 and {data.units} (the units of {args.layer})")
        ranking = _labelled(args, "rank", config, model)
        ranked = layer_data(model, variables, args.layer, ranking.images, ranking.labels)
        _, damage = single_unit_damage(model, variables, ranked, args.mode)
        units = ranked_units(damage, names.index(args.top_for_class))[: args.count].tolist()
        print(f"units most damaging to {args.top_for_class} on the rank split ({len(ranking)} images): {units}",
              file=sys.stderr)  # fmt: skip
    mask = np.zeros(data.units, np.float32)
    mask[check_units(units, data.units, args.layer)] = 1.0
    counts = class_counts(model, variables, data, np.stack([np.zeros_like(mask), mask]), args.mode)
    before, after = counts.balanced_accuracy()
    rows = [{"class": n, "images": int(k), "before": _number(b), "after": _number(a), "change": _number(a - b)}
            for n, k, b, a in zip(names, counts.actual[0], before, after)]  # fmt: skip
    shown = sorted((r for r in rows if r["change"] is not None), key=lambda r: r["change"])[:MAX_ROWS]
    if len(names) <= MAX_ROWS:
        shown = rows
    print(table(["class", "images", "before", "after", "change"],
                [[r["class"], str(r["images"]), _show(r["before"]), _show(r["after"]), _show(r["change"], "+.3f")]
                 for r in shown]))  # fmt: skip
    if len(shown) < len(rows):
        print(f"(the {len(shown)} classes that lost most of {len(names)}; every class is in ablation.csv)")
    print(
        f"mean balanced accuracy {np.nanmean(before):.3f} -> {np.nanmean(after):.3f} ({len(units)} of "
        f"{data.units} units of {args.layer}, {args.mode}, {len(evaluation)} images of {evaluation.source}; classes "
        "without images: n/a, left out)"
    )
    _write(args.out, "ablation", rows, {**summary, "units": units})
    return 0


def _some(names, limit: int = 20) -> str:
    """A list of names, cut after ``limit``."""
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---- match ----------------------------------------------------------------------------------
def cmd_match(args) -> int:
    from dissectjax.edit.matching import layer_matching

    model_a, vars_a, config_a = _load(args.a)
    model_b, vars_b, config_b = _load(args.b)
    layer_b = args.layer_b or args.layer
    if list(config_a["input_shape"]) != list(config_b["input_shape"]):
        raise DissectError(f"{args.a} takes images of shape {tuple(config_a['input_shape'])} and {args.b} "
                           f"{tuple(config_b['input_shape'])}: matching compares them on the same images")  # fmt: skip
    _check_layer(model_a, vars_a, config_a, args.layer)
    _check_layer(model_b, vars_b, config_b, layer_b)
    images = _labelled(args, "eval", config_a, model_a)
    m = layer_matching(model_a, vars_a, model_b, vars_b, args.layer, images.images, layer_b=layer_b)
    order = np.argsort(-np.nan_to_num(m.correlation, nan=-2.0))
    print(table(["unit (A)", "slot (B)", "correlation"],
                [[str(u), str(m.slot[u]), _show(m.correlation[u])] for u in order[:10]]))  # fmt: skip
    print(
        f"{args.layer} (A) vs {layer_b} (B): mean correlation of matched pairs {m.mean:.3f}; random pairings "
        f"{m.random_mean:.3f} +- {m.random_std:.3f}; pairs above 0.5: {int(np.nansum(m.correlation > 0.5))} "
        f"({len(images)} images of {images.source})"
    )
    rows = [{"unit_a": u, "slot_b": int(m.slot[u]), "correlation": _number(m.correlation[u])}
            for u in range(len(m.slot))]  # fmt: skip
    _write(args.out, "matching", rows, {"layer": args.layer, "layer_b": layer_b, "a": args.a, "b": args.b,
                                        "data": images.source, "images": len(images), "mean": m.mean,
                                        "random_mean": m.random_mean, "random_std": m.random_std})  # fmt: skip
    return 0


# ---- transplant -------------------------------------------------------------------------------
def cmd_transplant(args) -> int:
    import jax.numpy as jnp

    from dissectjax.checkpoint import save_checkpoint
    from dissectjax.edit import check_units, layer_matching, transplant
    from dissectjax.evaluate import accuracy
    from dissectjax.models.unit_wiring import unit_wiring

    model_a, vars_a, config_a = _load(args.source)
    model_b, vars_b, config_b = _load(args.target)
    if not _same_architecture(model_a, config_a, model_b, config_b):
        raise DissectError(
            f"{args.source} ({config_a['model']}) and {args.target} ({config_b['model']}) are different architectures"
        )
    if os.path.exists(args.out):
        raise DissectError(f"--out {args.out} already exists; remove it or choose another path")
    _check_layer(model_b, vars_b, config_b, args.layer)
    example = jnp.zeros((1, *config_b["input_shape"]), jnp.uint8)
    w = unit_wiring(model_b, args.layer, vars_b, example)
    if w.transplant_refused:
        raise DissectError(f"cannot transplant units of {args.layer}: {w.transplant_refused}")
    units = comma_ints(args.units, "--units")
    if not units:
        raise DissectError("--units is required (comma-separated unit numbers of the source)")
    check_units(units, w.units, args.layer)
    if args.matched and args.slots:
        raise DissectError("give either --slots or --matched, not both")
    labelled = _labelled(args, "eval", config_b, model_b)
    images, labels = labelled.images, labelled.labels
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
    result = transplant(model_b, vars_a, vars_b, args.layer, units, slots, inputs, args.outgoing, outputs, example)
    before, after = accuracy(model_b, vars_b, images, labels), accuracy(model_b, result, images, labels)
    source = accuracy(model_a, vars_a, images, labels)
    print(table(["source unit", "target slot"], [[str(u), str(s)] for u, s in zip(units, slots)]))
    print(
        f"accuracy on {len(labelled)} held-out images of {labelled.source}: source {source:.3f}; target "
        f"{before:.3f} -> {after:.3f} after the transplant"
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
            "data": labelled.source,
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
    _data_arguments(a, 1000)
    a.add_argument("--out", help="directory for CSV/JSON results")
    a.set_defaults(func=cmd_ablate)

    m = sub.add_parser("match", help="match the units of a layer across two instances (correlation + Hungarian)")
    m.add_argument("--a", required=True, help="checkpoint of instance A")
    m.add_argument("--b", required=True, help="checkpoint of instance B")
    m.add_argument("--layer", required=True, help="A's layer (and B's, unless --layer-b)")
    m.add_argument("--layer-b", help="B's layer, when it is another (its maps must have A's spatial size)")
    _data_arguments(m, 500)
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
    _data_arguments(t, 500)
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.set_defaults(func=cmd_transplant)


def _data_arguments(p, images: int) -> None:
    p.add_argument("--data", default="synthetic",
                   help="labelled images: synthetic (default), digits, a class-folder directory DIR/<class>/*.jpg "
                        "(class order from DIR/classes.txt, else sorted), or tfds:NAME[:SPLIT]")  # fmt: skip
    p.add_argument("--data-dir", help="where prepared TFDS datasets are (for --data tfds:...)")
    p.add_argument("--images", type=positive_int, default=images,
                   help="at most this many images per split, balanced over classes (default: %(default)s)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
