"""``dissectjax debug``: the units behind a network's mistakes, labelled, and local fixes, measured.

    dissectjax debug --checkpoint C --layer conv5 --data shifted:playroom:pink --out DIR
        [--confusion TRUE:PREDICTED] [--clean synthetic] [--k 4] [--fixes zero,mean,rescale,finetune]
        [--retrained CHECKPOINT]

Failing examples are the mistakes the checkpoint makes on ``--data`` (only true class A
predicted as B with ``--confusion A:B``); passing examples are the ``--clean`` images it gets
right. Units are blamed on the ``rank`` split, and every fix is measured on the ``eval``
split: the failing examples there, the whole shifted set, and clean data (accuracy and
agreement with the original predictions). Baselines run in the same command: k random
units zeroed, fine-tuning the whole network on the examples the constrained fine-tune
sees, and (``--retrained``) the same network retrained without the bug, at the cost of its
recorded training time. DIR gets blame.csv, fixes.csv, debug.json and report.html, all or nothing.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from dissectjax.cli.common import comma_floats, comma_list, finite_float, positive_int, table
from dissectjax.errors import DissectError

DEFAULT_FIXES = "zero,mean,rescale,finetune"


def cmd_debug(args) -> int:
    import jax.numpy as jnp

    from dissectjax.analysis.debug import FIXES
    from dissectjax.cli.surgery import _check_layer, _load
    from dissectjax.models.layers import layer_shapes
    from dissectjax.models.unit_wiring import unit_wiring
    from dissectjax.output_dir import check_output_path

    if args.random_draws < 0:
        raise DissectError(f"--random-draws must be >= 0, got {args.random_draws}")
    fixes = comma_list(args.fixes, "--fixes")
    unknown = [f for f in fixes if f not in FIXES]
    if unknown or not fixes:
        raise DissectError(f"--fixes takes some of {', '.join(FIXES)}, got {args.fixes!r}")
    model, variables, config = _load(args.checkpoint)
    _check_layer(model, variables, config, args.layer)
    example = jnp.zeros((1, *config["input_shape"]), jnp.uint8)
    units = layer_shapes(model, variables, example)[args.layer][-1]
    if args.k > units:
        raise DissectError(f"--k {args.k} is more than the {units} units of {args.layer}")
    if set(fixes) & {"zero", "rescale", "finetune"} or args.random_draws:
        w = unit_wiring(model, args.layer, variables, example)  # a layer without wiring fails here, one line
        folding = sorted({"zero", "rescale"} & set(fixes))
        folding += ["the random-unit baselines"] if args.random_draws else []
        if w.fold_refused and folding:
            raise DissectError(f"{', '.join(folding)} edit {args.layer}'s units in the weights that read them, which "
                               f"cannot stand for the units here: {w.fold_refused}; use --fixes mean,finetune "
                               "--random-draws 0")  # fmt: skip
    if args.failing and args.confusion:
        raise DissectError("--confusion picks failing examples out of --data; with --failing, the file's images fail")
    retrained = _retrained(args.retrained, model, config) if args.retrained else None
    out = check_output_path(args.out, [args.checkpoint])
    session = _Session(args, model, variables, config, retrained)
    result = session.run(fixes, units)
    _write(out, result, args)
    return 0


class _Session:
    """One debugging run's data, split by role (failing / passing, rank / eval)."""

    def __init__(self, args, model, variables, config, retrained=None):
        self.args, self.model, self.variables, self.config = args, model, variables, config
        self.retrained = retrained  # (variables, training seconds) of the same network retrained, or None

    def _set(self, spec: str, split: str):
        from dissectjax.cli.common import progress_bars
        from dissectjax.data.labelled import open_labelled

        return open_labelled(spec, split, self.args.images, tuple(self.config["input_shape"]), self.model.num_classes,
                             data_dir=self.args.data_dir, progress=progress_bars(not self.args.quiet))  # fmt: skip

    def _failing(self, labelled, predicted, confusion):
        wrong = predicted != labelled.labels
        if confusion is not None:
            true, said = confusion
            wrong &= (labelled.labels == true if true is not None else True) & (
                predicted == said if said is not None else True
            )
        return labelled.images[wrong], labelled.labels[wrong]

    def run(self, fixes, units) -> dict:
        from dissectjax.analysis.ablation import layer_data
        from dissectjax.analysis.debug import blame
        from dissectjax.evaluate import predict

        a, model, variables = self.args, self.model, self.variables
        if not isinstance(getattr(model, "num_classes", None), int):
            raise DissectError(f"the checkpoint's model ({type(model).__name__}) has no num_classes: not a classifier")
        clean = {split: self._set(a.clean, split) for split in ("rank", "eval")}
        if a.failing:  # the user's own failing images, halved into rank and eval; no shifted set
            shifted = None
            failing = _failing_file(a.failing, tuple(self.config["input_shape"]), model.num_classes, a.seed)
            what = f"the images of {a.failing}"
        else:
            shifted = {split: self._set(a.data, split) for split in ("rank", "eval")}
            names = shifted["rank"].class_names
            confusion = _confusion(a.confusion, names) if a.confusion else None
            predicted = {s: predict(model, variables, d.images) for s, d in shifted.items()}
            failing = {s: self._failing(shifted[s], predicted[s], confusion) for s in shifted}
            what = _confusion_name(confusion, names)
            for split, (x, _) in failing.items():
                if len(x) == 0:
                    raise DissectError(
                        f"no failing examples ({what}) in the {split} split of {a.data}: nothing to debug"
                    )
        right = predict(model, variables, clean["rank"].images) == clean["rank"].labels
        passing = (clean["rank"].images[right], clean["rank"].labels[right])
        say = (lambda _: None) if a.quiet else (lambda m: print(m, file=sys.stderr))
        say(f"{len(failing['rank'][1])} failing ({what}) and {len(passing[1])} passing rank examples; blaming the "
            f"{units} units of {a.layer}, each ablated alone ({a.mode})")  # fmt: skip
        f_data = layer_data(model, variables, a.layer, *failing["rank"])
        p_data = layer_data(model, variables, a.layer, *passing)
        b = blame(model, variables, f_data, p_data, a.mode)
        top = b.ranked()[: a.k]
        labels = self._labels(top)
        fix_rows = self._fixes(fixes, top, p_data, failing, passing, shifted, clean, units)
        blame_rows = [{"rank": r + 1, "unit": int(u), "score": round(float(b.score[u]), 6), "fixed": int(b.fixed[u]),
                       "broken": int(b.broken[u]), "gain": round(float(b.gain[u]), 6),
                       "loss": round(float(b.loss[u]), 6), **labels.get(int(u), {})}
                      for r, u in enumerate(b.ranked())]  # fmt: skip
        return {
            "summary": {
                "checkpoint": os.path.abspath(a.checkpoint),
                "layer": a.layer,
                "units": units,
                "k": a.k,
                "failing": what,
                "data": a.failing if shifted is None else shifted["eval"].source,
                "clean": clean["eval"].source,
                "failing_rank": len(failing["rank"][1]),
                "failing_eval": len(failing["eval"][1]),
                "passing_rank": len(passing[1]),
                "clean_eval": len(clean["eval"].labels),
                "mode": a.mode,
                "top_units": [int(u) for u in top],
            },
            "blame": blame_rows,
            "fixes": fix_rows,
        }

    def _labels(self, top) -> dict[int, dict]:
        """Dissection labels of the top units on ``--probe`` ({} with ``--probe none``)."""
        if self.args.probe == "none":
            return {}
        from dissectjax.data.open import open_probe
        from dissectjax.dissect import DissectConfig, dissect
        from dissectjax.dissect.sources import ModelSource

        probe, _ = open_probe(self.args.probe)
        source = ModelSource(self.model, self.variables, [self.args.layer], tuple(self.config["input_shape"]))
        r = dissect(source, probe, DissectConfig(batch_size=100))[self.args.layer]
        c = probe.concepts
        return {int(u): {"label": c.names[r.labels.label[u]], "category": c.categories[c.category[r.labels.label[u]]],
                         "iou": round(float(r.labels.score[u]), 6)} for u in top}  # fmt: skip

    def _fixes(self, fixes, top, p_data, failing, passing, shifted, clean, units) -> list[dict]:
        from dissectjax.analysis import debug

        a, model, variables = self.args, self.model, self.variables
        example = np.zeros((1, *self.config["input_shape"]), np.uint8)
        examples = _tuning_examples(failing["rank"], passing, a.examples, a.seed)
        rates = comma_floats(a.learning_rate, "--learning-rate")
        makers = {
            "zero": lambda u: debug.zero_units(model, variables, a.layer, u, example),
            "mean": lambda u: debug.mean_units(variables, a.layer, u, p_data.means),
            "rescale": lambda u: debug.rescale_units(model, variables, a.layer, u, a.scale, example),
            "finetune": lambda u: debug.finetune_selected(model, variables, *examples, debug.unit_parameter_mask(
                model, variables, a.layer, u, example), rates, a.steps, a.seed),
        }  # fmt: skip
        runs = [(f"{f} top-{a.k}", makers[f], top) for f in fixes]
        rng = np.random.default_rng(a.seed)
        for d in range(a.random_draws):
            runs.append((f"zero random-{a.k} (draw {d + 1})", makers["zero"], rng.choice(units, a.k, replace=False)))
        if "finetune" in fixes:
            runs.append(("finetune whole network",
                         lambda _: debug.finetune_selected(model, variables, *examples, None, rates, a.steps, a.seed),
                         ()))  # fmt: skip
        measure = debug.FixMeasure(model, variables, failing["eval"], _xy(clean["eval"]),
                                   None if shifted is None else _xy(shifted["eval"]))  # fmt: skip
        rows = [measure("original", variables).row()]
        for name, make, chosen in runs:
            fixed, seconds = debug.timed(make, list(chosen))
            setting = ""
            if isinstance(fixed, debug.Tuned):
                fixed, setting = fixed.variables, f"rate {fixed.learning_rate:g}"
            rows.append(measure(name, fixed, chosen, seconds, setting).row())
        if self.retrained is not None:  # its cost is the training time its checkpoint records
            retrained, seconds = self.retrained
            rows.append(measure("retrained without the bug", retrained, (), seconds).row())
        return rows


def _retrained(path: str, model, config: dict):
    """``--retrained``: (variables, training seconds) of the same architecture retrained without the bug."""
    from dissectjax.cli.surgery import _load, _same_architecture

    other, variables, other_config = _load(path)
    if not _same_architecture(other, other_config, model, config):
        raise DissectError(f"--retrained {path} ({other_config['model']}) is another architecture than --checkpoint "
                           f"({config['model']}): the baseline must be the same network retrained")  # fmt: skip
    seconds = other_config.get("seconds")
    if not isinstance(seconds, (int, float)):
        raise DissectError(f"--retrained {path} records no training time ('seconds' in its config.json): "
                           "its cost cannot be reported; train it with dissectjax train")  # fmt: skip
    return variables, float(seconds)


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _failing_file(path: str, shape: tuple, num_classes: int, seed: int) -> dict:
    """``--failing``: images uint8 [N, H, W, C] at the model's input shape and their right
    labels [N] from a .npz, split at random into halves: {"rank": (x, y), "eval": (x, y)}."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = np.asarray(f["images"]), np.asarray(f["labels"])
    except (OSError, ValueError, KeyError) as e:
        raise DissectError(f"--failing {path}: expected a .npz with arrays 'images' (uint8 [N, H, W, C]) and "
                           f"'labels' (the right classes [N]) ({type(e).__name__})") from None  # fmt: skip
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DissectError(f"--failing {path}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if tuple(images.shape[1:]) != tuple(shape):
        h, w, c = images.shape[1:]
        raise DissectError(f"--failing {path} holds {h}x{w}x{c} images but the checkpoint takes "
                           f"{'x'.join(map(str, shape))}: resize them (a labelled set given with --data is resized "
                           "for you)")  # fmt: skip
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DissectError(f"--failing {path}: labels must be {len(images)} integers, got {labels.dtype} "
                           f"{labels.shape}")  # fmt: skip
    if len(images) < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise DissectError(f"--failing {path}: needs at least 2 images with labels in [0, {num_classes}), got "
                           f"{len(images)} with labels {labels.min()}..{labels.max()}")  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(images))
    halves = {"rank": order[: len(order) // 2], "eval": order[len(order) // 2 :]}
    return {split: (images[i], labels[i].astype(np.int32)) for split, i in halves.items()}


def _xy(labelled):
    return labelled.images, labelled.labels


def _tuning_examples(failing, passing, count: int, seed: int):
    """Up to ``count`` failing examples with their right labels, and as many passing ones
    (so the fine-tune does not unlearn what works): images, labels."""
    rng = np.random.default_rng(seed)
    f = rng.permutation(len(failing[1]))[:count]
    p = rng.permutation(len(passing[1]))[: len(f)]
    return np.concatenate([failing[0][f], passing[0][p]]), np.concatenate([failing[1][f], passing[1][p]])


def _confusion(text: str, names) -> tuple[int | None, int | None]:
    """``TRUE:PREDICTED`` -> their class numbers (None for ``*``, any class)."""
    parts = text.split(":")
    if len(parts) != 2 or parts == ["*", "*"]:
        raise DissectError(
            f"--confusion takes TRUE:PREDICTED class names, one of them may be * (any class), e.g. street:playroom "
            f"or '*:playroom'; got {text!r}"
        )
    for name in parts:
        if name != "*" and name not in names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            raise DissectError(f"unknown class {name!r} in --confusion; classes: {shown}")
    return tuple(None if name == "*" else names.index(name) for name in parts)


def _confusion_name(confusion, names) -> str:
    if confusion is None:
        return "mistakes"
    true, said = (names[c] if c is not None else "any class" for c in confusion)
    return f"{true} predicted as {said}"


def _write(out: str, result: dict, args) -> None:
    from dissectjax.cli.common import write_table
    from dissectjax.output_dir import atomic_directory
    from dissectjax.report.debug import debug_page

    fixes = result["fixes"]
    print(table(["fix", "units", "failing acc.", "shifted acc.", "clean acc.", "agreement", "params changed", "s"],
                [[r["name"], r["units"] or "-", f"{r['failing_accuracy']:.3f}", _number(r["shifted_accuracy"]),
                  f"{r['clean_accuracy']:.3f}", f"{r['agreement']:.3f}", str(r["parameters_changed"]),
                  f"{r['seconds']:.2f}"] for r in fixes]))  # fmt: skip
    with atomic_directory(out, [args.checkpoint]) as tmp:
        write_table(os.path.join(tmp, "blame.csv"), result["blame"])
        write_table(os.path.join(tmp, "fixes.csv"), fixes)
        with open(os.path.join(tmp, "debug.json"), "w") as f:
            json.dump({**result["summary"], "fixes": fixes, "top": result["blame"][: args.k]}, f, indent=2)
        with open(os.path.join(tmp, "report.html"), "w") as f:
            f.write(debug_page(result["summary"], result["blame"][: max(args.k, 10)], fixes))
    print(f"wrote {out} (blame.csv, fixes.csv, debug.json, report.html)", file=sys.stderr)


def add_parsers(sub) -> None:
    from dissectjax.cli.surgery import _data_arguments

    d = sub.add_parser("debug", help="blame units for a network's mistakes, label them, and measure local fixes")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--layer", required=True, help="e.g. conv5")
    d.add_argument("--failing", metavar="FILE.npz",
                   help="your own failing images instead: 'images' uint8 [N, H, W, C] at the model's input size and "
                        "their right 'labels' [N]; halved at random into blame and measure sets")  # fmt: skip
    d.add_argument("--confusion", metavar="TRUE:PREDICTED",
                   help="only these mistakes fail; either side may be * (any class), e.g. '*:playroom' "
                        "(default: every mistake)")  # fmt: skip
    d.add_argument(
        "--clean", default="synthetic", help="labelled set the network should keep right (default: %(default)s)"
    )
    d.add_argument("--k", type=positive_int, default=4, help="units to edit (default: %(default)s)")
    d.add_argument("--fixes", default=DEFAULT_FIXES, help="edits to try (default: %(default)s)")
    d.add_argument("--mode", choices=["zero", "mean"], default="zero", help="how units are ablated to blame them")
    d.add_argument(
        "--scale", type=finite_float, default=0.25, help="rescale fix: factor on the units (default: %(default)s)"
    )
    d.add_argument("--steps", type=positive_int, default=100, help="fine-tune steps (default: %(default)s)")
    d.add_argument("--learning-rate", default="1e-3,3e-4,1e-4", metavar="RATE[,RATE]",
                   help="fine-tune rates: each is tried, the best on a held-out quarter of the examples kept "
                        "(default: %(default)s)")  # fmt: skip
    d.add_argument(
        "--examples", type=positive_int, default=64, help="failing examples to fine-tune on, plus as many passing ones"
    )
    d.add_argument("--random-draws", type=int, default=5, help="k-random-units baselines (default: %(default)s)")
    d.add_argument("--retrained", metavar="CHECKPOINT",
                   help="the same network retrained without the bug: measured as a baseline, its cost the "
                        "training time its checkpoint records")  # fmt: skip
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--probe", default="synthetic:500", help="probe set that labels the top units, or 'none'")
    _data_arguments(d, 1000)
    d.add_argument("--out", required=True, help="directory to write (created; refused if it holds other files)")
    d.set_defaults(func=cmd_debug)
