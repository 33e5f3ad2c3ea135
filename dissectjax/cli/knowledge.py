"""``dissectjax transplant-concept``: give instance B a concept it never saw, by moving A's units for it.

    dissectjax transplant-concept --source A --target B --layer conv5 --concept tree --out DIR
        [--k 4] [--candidates 12] [--probe synthetic:500] [--images 1000] [--random-draws 3]
        [--steps 100] [--learning-rate 1e-3] [--seed 0]

A's units for the concept: the ``--candidates`` with the highest dissection IoU with it on
``--probe``, of which the ``--k`` whose ablation costs A most on rank-split scenes showing the
concept, beyond the cost on the rest. They go into B's matched slots (matching on the rank
scenes) with their inputs reordered by the layer below's matching and their outgoing weights
copied. Every network is measured on held-out scenes (eval split) with the concept and
without: B, A, the transplant, A's random units moved the same way, and fine-tuning B on the
rank scenes changing only the same slots' parameters, or all of them. The scenes are the
synthetic ones: they record which objects each image shows. DIR gets units.csv,
knowledge.csv, knowledge.json, report.html and checkpoint/ (B after the transplant), all or nothing.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from dissectjax.cli.common import comma_floats, positive_int, table
from dissectjax.errors import DissectError


def cmd_transplant_concept(args) -> int:
    import jax.numpy as jnp

    from dissectjax.cli.surgery import _check_layer, _load, _same_architecture
    from dissectjax.data import synthetic
    from dissectjax.models.unit_wiring import unit_wiring
    from dissectjax.output_dir import check_output_path

    if args.concept not in synthetic.OBJECTS:
        raise DissectError(f"--concept must be an object of the synthetic scenes (they record which objects each "
                           f"image shows): one of {', '.join(synthetic.OBJECTS)}; got {args.concept!r}")  # fmt: skip
    if args.random_draws < 0:
        raise DissectError(f"--random-draws must be >= 0, got {args.random_draws}")
    model, source, config = _load(args.source)
    other, target, config_b = _load(args.target)
    if not _same_architecture(model, config, other, config_b):
        raise DissectError(f"{args.source} ({config['model']}) and {args.target} ({config_b['model']}) are "
                           "different architectures: a transplant needs two instances of one")  # fmt: skip
    if tuple(config["input_shape"])[-1] != 3:
        raise DissectError(f"{args.source} takes {config['input_shape']} images; the synthetic scenes are RGB")
    _check_layer(model, target, config, args.layer)
    example = jnp.zeros((1, *config["input_shape"]), jnp.uint8)
    w = unit_wiring(model, args.layer, target, example)  # a layer without wiring fails here, one line
    if w.transplant_refused:
        raise DissectError(f"cannot transplant units of {args.layer}: {w.transplant_refused}")
    if args.k > w.units:
        raise DissectError(f"--k {args.k} is more than the {w.units} units of {args.layer}")
    out = check_output_path(args.out, [args.source, args.target])
    say = (lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    iou = _concept_iou(args, model, source, config)
    chosen, held_out = (_scenes(args, split, config) for split in ("rank", "eval"))
    say(f"{int(chosen.has_concept.sum())} of {len(chosen.labels)} rank scenes and {int(held_out.has_concept.sum())} "
        f"of {len(held_out.labels)} held-out scenes show a {args.concept}")  # fmt: skip
    from dissectjax.analysis.knowledge import move_concept

    result = move_concept(model, source, target, args.layer, iou, chosen, held_out, args.k, args.candidates,
                          args.random_draws, 0 if args.no_finetune else args.steps,
                          comma_floats(args.learning_rate, "--learning-rate"), args.seed,
                          example)  # fmt: skip
    summary = {
        "source": os.path.abspath(args.source),
        "target": os.path.abspath(args.target),
        "layer": args.layer,
        "concept": args.concept,
        "k": args.k,
        "units": [int(u) for u in result["chosen"]],
        "slots": [int(s) for s in result["slots"]],
        "matching_mean_correlation": round(result["matching_mean"], 6),
        "probe": args.probe,
        "rank_scenes": len(chosen.labels),
        "rank_with_concept": int(chosen.has_concept.sum()),
        "held_out_scenes": len(held_out.labels),
        "held_out_with_concept": int(held_out.has_concept.sum()),
    }
    _write(out, summary, result, config_b, args)
    return 0


def _concept_iou(args, model, variables, config) -> np.ndarray:
    """float [U]: the units' dissection IoU with ``--concept`` on ``--probe``."""
    from dissectjax.data.open import open_probe
    from dissectjax.dissect import DissectConfig, dissect
    from dissectjax.dissect.sources import ModelSource

    probe, _ = open_probe(args.probe)
    names = list(probe.concepts.names)
    if args.concept not in names:
        raise DissectError(f"--probe {args.probe} has no concept {args.concept!r} to dissect for")
    source = ModelSource(model, variables, [args.layer], tuple(config["input_shape"]))
    result = dissect(source, probe, DissectConfig(batch_size=100))[args.layer]
    return np.asarray(result.iou[:, names.index(args.concept)])


def _scenes(args, split: str, config):
    """The first ``--images`` scenes of a split at the model's input size, and which show the concept."""
    from dissectjax.analysis.knowledge import LabelledSplit
    from dissectjax.data.labelled import fit_arrays
    from dissectjax.data.splits import scene_images, scenes_showing

    shape = tuple(config["input_shape"])
    images, labels = scene_images(args.images, split, image_size=max(shape[:2]))
    has = scenes_showing(args.images, split, (args.concept,))
    if has.all() or not has.any():
        raise DissectError(f"the {args.images} {split} scenes are all with or all without a {args.concept}: "
                           "raise --images")  # fmt: skip
    return LabelledSplit(fit_arrays(images, shape), labels, has)


def _write(out: str, summary: dict, result: dict, config_b: dict, args) -> None:
    from dissectjax.checkpoint import save_checkpoint
    from dissectjax.cli.common import write_table
    from dissectjax.output_dir import atomic_directory
    from dissectjax.report.knowledge import knowledge_page

    rows = result["results"]
    header = ["network", "units", "slots", f"with {args.concept}", "without", "overall", "params changed", "s"]
    print(table(header, [[r["name"], r["units"] or "-", r["slots"] or "-", f"{r['with_concept']:.3f}",
                          f"{r['without']:.3f}", f"{r['overall']:.3f}", str(r["parameters_changed"]),
                          f"{r['seconds']:.2f}"] for r in rows]))  # fmt: skip
    with atomic_directory(out, [args.source, args.target]) as tmp:
        write_table(os.path.join(tmp, "units.csv"), result["units"])
        write_table(os.path.join(tmp, "knowledge.csv"), rows)
        with open(os.path.join(tmp, "knowledge.json"), "w") as f:
            json.dump({**summary, "results": rows, "candidates": result["units"]}, f, indent=2)
        with open(os.path.join(tmp, "report.html"), "w") as f:
            f.write(knowledge_page(summary, result["units"], rows))
        save_checkpoint(os.path.join(tmp, "checkpoint"), config_b["model"], config_b["model_kwargs"],
                        config_b["input_shape"], result["variables"],
                        transplant_concept={k: summary[k] for k in ("source", "target", "layer", "concept", "units",
                                                                    "slots")})  # fmt: skip
    print(f"wrote {out} (units.csv, knowledge.csv, knowledge.json, report.html, checkpoint/)", file=sys.stderr)


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "transplant-concept", help="move instance A's units for a concept into instance B; measure B with and without"
    )
    t.add_argument("--source", required=True, help="checkpoint that knows the concept (A)")
    t.add_argument("--target", required=True, help="checkpoint to give it to (B)")
    t.add_argument("--layer", required=True, help="e.g. conv5")
    t.add_argument("--concept", required=True, help="an object of the synthetic scenes, e.g. tree")
    t.add_argument("--k", type=positive_int, default=4, help="units to move (default: %(default)s)")
    t.add_argument("--candidates", type=positive_int, help="units by IoU the k are picked from (default: 3k)")
    t.add_argument("--probe", default="synthetic:500", help="probe set for A's dissection (default: %(default)s)")
    t.add_argument("--images", type=positive_int, default=1000,
                   help="scenes per split: rank (choose, match, fine-tune) and eval (measure) "
                        "(default: %(default)s)")  # fmt: skip
    t.add_argument("--random-draws", type=int, default=3, help="random-unit baselines (default: %(default)s)")
    t.add_argument("--steps", type=positive_int, default=100, help="fine-tune baseline steps (default: %(default)s)")
    t.add_argument("--learning-rate", default="1e-3,3e-4,1e-4", metavar="RATE[,RATE]",
                   help="fine-tune baseline rates: each is tried, the best on a held-out quarter of the rank scenes "
                        "kept (default: %(default)s)")  # fmt: skip
    t.add_argument("--no-finetune", action="store_true", help="skip the fine-tune baselines (quick sweeps over k)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--out", required=True, help="directory to write (created; refused if it holds other files)")
    t.set_defaults(func=cmd_transplant_concept)
