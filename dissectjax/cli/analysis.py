"""``dissectjax chimera``, ``explain`` and ``multiunit``: the controls against chimeras from the CLI.

Each dissects one layer of a model on a probe set (thresholds, labels) and writes its
results into ``--out`` beside a dissection's outputs (which it leaves in place):

* ``chimera-LAYER.csv``/``.png``: the rotation test and random directions;
* ``explain-LAYER.csv``: compositional explanations (formulas of concepts) per unit;
* ``multiunit-LAYER.csv``: per concept, the best single unit, top-k unit averages and a learned
  combination of units.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from dissectjax.cli.common import (
    comma_floats,
    comma_ints,
    finite_float,
    log_lines,
    non_negative_int,
    positive_int,
    progress_bars,
    seed,
    write_table,
)
from dissectjax.cli.dissect import add_model_flags, model_source_from_args
from dissectjax.errors import DissectError

DIRECTION_SEED = 100  # random directions are drawn apart from the rotation seeds (0, 1, 2, ...)


def _setup(args):
    """(base source, probe set, dissection config, say, progress) for one layer."""
    from dissectjax.data.open import open_probe
    from dissectjax.dissect import DissectConfig

    if "," in args.layer:
        raise DissectError(f"--layer takes one layer, got {args.layer!r}")
    progress, say = progress_bars(not args.quiet), log_lines(args.quiet)
    dataset, _ = open_probe(args.dataset, progress, say, args.split)
    args.layers = args.layer
    source, name = model_source_from_args(args, dataset)
    say(f"model: {name}, layer {args.layer}")
    return source, dataset, DissectConfig(args.quantile, batch_size=args.batch_size), say, progress


def _rounded(x: float) -> float:
    return round(float(x), 6)


# ---- chimera ----------------------------------------------------------------------------
def cmd_chimera(args) -> int:
    from dissectjax.analysis.chimera import (
        ProjectedSource,
        plot_rotation_curves,
        point_name,
        random_directions,
        rotation_summary,
        rotations,
    )
    from dissectjax.checkpoint import init_variables
    from dissectjax.dissect import dissect
    from dissectjax.dissect.sources import ModelSource

    alphas, seeds = comma_floats(args.alphas, "--alphas"), comma_ints(args.seeds, "--seeds")
    if not alphas or not all(0 <= a <= 1 for a in alphas):
        raise DissectError(f"--alphas must be numbers in [0, 1], got {args.alphas!r}")
    if not seeds:
        raise DissectError("--seeds names no seed")
    if args.directions < 0:
        raise DissectError(f"--directions must be >= 0, got {args.directions}")
    base, probe, config, say, progress = _setup(args)
    networks = {"network": base}
    if args.random_init:
        networks["random init"] = ModelSource(base.model, init_variables(base.model, base.image_shape, args.seed),
                                              base.layers, base.image_shape)  # fmt: skip
    cats = list(probe.concepts.categories)
    rows, curves = [], {}
    units = base.units[args.layer]
    for tag, source in networks.items():
        views = rotations(args.layer, units, alphas, seeds)
        if args.directions:
            views["random directions"] = random_directions(units, args.directions, seed=args.direction_seed)
        say(f"{tag}: dissecting {len(views)} views of {args.layer} in one run")
        results = dissect(ProjectedSource(source, args.layer, views), probe, config, progress)
        for a in alphas:
            for s in seeds:
                r = results[point_name(args.layer, a, s)]
                rows.append(_point_row(tag, "rotation", a, s, r, cats))
        if args.directions:
            rows.append(_point_row(tag, "random directions", None, args.direction_seed, results["random directions"],
                                   cats))  # fmt: skip
        curves[tag] = rotation_summary(results, args.layer, alphas, seeds, cats)
        print(f"\n{tag} {args.layer}: rotation Q^a, {len(seeds)} seeds, {len(probe)} probe images")
        print(f"{'a':>5} {'detectors':>14} {'unique (tables)':>16} {'unique (best)':>14} {'mean IoU':>9}")
        for c in curves[tag]:
            print(
                f"{c['a']:5.2f} {c['detectors']:8.1f} +-{c['detectors_std']:4.1f} {c['unique_tables']:9.1f} "
                f"+-{c['unique_tables_std']:4.1f} {c['unique']:7.1f} +-{c['unique_std']:4.1f} {c['mean_iou']:9.3f}"
            )
        if args.directions:
            d = results["random directions"]
            print(
                f"{args.directions} random unit-norm directions: {d.detectors} detectors, {d.unique_tables['total']} "
                f"unique (tables), {d.unique['total']} unique (best label), "
                f"mean IoU {d.labels.score.mean():.3f}"
            )
    path = os.path.join(args.out, f"chimera-{args.layer}")
    write_table(path + ".csv", rows)
    plot_rotation_curves(curves, f"{args.layer} (of {units} units)", path + ".png")
    print(f"wrote {path}.png", file=sys.stderr)
    return 0


def _point_row(network: str, view: str, a, seed: int, result, categories) -> dict:
    return {
        "network": network,
        "view": view,
        "a": "" if a is None else a,
        "seed": seed,
        "units": result.units,
        "detectors": result.detectors,
        "unique": result.unique["total"],
        "unique_tables": result.unique_tables["total"],
        **{f"unique_{c}": result.unique[c] for c in categories},
        "mean_iou": _rounded(result.labels.score.mean()),
    }


# ---- explain ----------------------------------------------------------------------------
def cmd_explain(args) -> int:
    from dissectjax.analysis.compositional import collect_masks, explain_units
    from dissectjax.dissect import dissect

    source, probe, config, say, progress = _setup(args)
    result = dissect(source, probe, config, progress)[args.layer]
    say("collecting bit-packed unit and concept masks")
    masks = collect_masks(source, probe, args.layer, result.thresholds, args.batch_size)
    out = explain_units(masks, args.length, args.beam, progress=progress)
    names = probe.concepts.names
    single = out.best_single()
    rows = []
    for u, f in enumerate(out.formulas):
        rows.append(
            {
                "unit": u,
                "label": names[result.labels.label[u]],
                "label_iou": _rounded(result.labels.score[u]),
                "best_single": names[single[u]],
                "best_single_iou": _rounded(out.single_iou[u, single[u]]),
                "formula": f.describe(names),
                "formula_iou": _rounded(f.iou),
                "length": len(f.terms),
            }
        )
    gains = sorted(rows, key=lambda r: r["best_single_iou"] - r["formula_iou"])
    print(f"{args.layer}: formulas of up to {args.length} concepts (beam {args.beam}) on {len(probe)} images")
    print(f"{'unit':>5} {'best single (IoU)':>28}  formula (IoU)")
    for r in gains[: args.show]:
        single_text = f"{r['best_single']} ({r['best_single_iou']:.3f})"
        print(f"{r['unit']:>5} {single_text:>28}  {r['formula']} ({r['formula_iou']:.3f})")
    mean_single = np.mean([r["best_single_iou"] for r in rows])
    mean_formula = np.mean([r["formula_iou"] for r in rows])
    print(f"mean over {len(rows)} units: best single concept {mean_single:.3f}, best formula {mean_formula:.3f}")
    write_table(os.path.join(args.out, f"explain-{args.layer}.csv"), rows)
    return 0


# ---- multiunit ------------------------------------------------------------------------------
def cmd_multiunit(args) -> int:
    from dissectjax.analysis.chimera import ProjectedSource
    from dissectjax.analysis.multiunit import fit_concepts, pixel_samples, top_k_views
    from dissectjax.data.open import open_probe
    from dissectjax.dissect import dissect

    ks = comma_ints(args.k, "--k")
    if not ks or min(ks) < 1:
        raise DissectError(f"--k must be positive integers, got {args.k!r}")
    base, probe, config, say, progress = _setup(args)
    if args.fit_dataset:
        fit, _ = open_probe(args.fit_dataset, progress, say)
        if fit.concepts.names != probe.concepts.names:
            raise DissectError("--fit-dataset has other concepts than --dataset; both must share label.csv")
    else:
        fit = probe
        say("fitting on the probe set itself (in-sample); give --fit-dataset for a held-out fit")
    if max(ks) > base.units[args.layer]:
        raise DissectError(f"--k {max(ks)} exceeds the {base.units[args.layer]} units of {args.layer}")
    units_fit = dissect(base, fit, config, progress)[args.layer]
    say("sampling pixels and fitting per-concept logistic regressions")
    x, y = pixel_samples(base, fit, args.layer, per_image=args.pixels_per_image, seed=args.seed)
    views = {"learned": fit_concepts(x, y, steps=args.steps), **top_k_views(units_fit.iou, x.std(0) + 1e-6, ks)}
    results = dissect(ProjectedSource(base, args.layer, views), probe, config, progress)
    cols = [f"top-{k}" for k in ks] + ["learned"]
    names, cats = probe.concepts.names, probe.concepts.categories
    rows = []
    for c in range(len(names)):
        scores = {col: _rounded(results[col].iou[c, c]) for col in cols}
        rows.append({"concept": names[c], "category": cats[probe.concepts.category[c]], **scores})
    rows.sort(key=lambda r: -max(r[col] for col in cols))
    print(f"{args.layer}: IoU of each concept with its best units and a learned combination ({len(probe)} images)")
    print(f"{'concept':20} {'category':9} " + " ".join(f"{c:>8}" for c in cols))
    for r in rows[: args.show]:
        print(f"{r['concept']:20} {r['category']:9} " + " ".join(f"{r[c]:8.3f}" for c in cols))
    write_table(os.path.join(args.out, f"multiunit-{args.layer}.csv"), rows)
    return 0


# ---- parsers ----------------------------------------------------------------------------
def _common(p) -> None:
    from dissectjax.dissect.config import DissectConfig

    defaults = DissectConfig()
    add_model_flags(p)
    p.add_argument("--out", required=True, help="folder for the results (a dissection's outputs there are kept)")
    p.add_argument("--layer", required=True, help="one layer, e.g. conv5")
    p.add_argument("--quantile", type=finite_float, default=defaults.quantile,
                   help="top quantile per unit (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help="images per device and batch (default: %(default)s)")  # fmt: skip
    p.add_argument("--split", help="only rows of this index.csv split (default: all)")
    p.add_argument("--quiet", action="store_true")


def add_parsers(sub) -> None:
    c = sub.add_parser("chimera", help="rotation test and random directions: are units special?")
    _common(c)
    c.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="rotation powers in [0, 1] (default: %(default)s)")
    c.add_argument("--seeds", default="0,1,2", help="rotation seeds (default: %(default)s)")
    c.add_argument(
        "--directions", type=non_negative_int, default=0, help="also dissect this many random unit-norm directions"
    )
    c.add_argument("--direction-seed", type=seed, default=DIRECTION_SEED,
                   help="seed of the random directions (default: %(default)s)")  # fmt: skip
    c.add_argument("--random-init", action="store_true", help="also run the same architecture at random init")
    c.set_defaults(func=cmd_chimera)

    e = sub.add_parser("explain", help="compositional explanations: each unit as a formula of concepts")
    _common(e)
    e.add_argument(
        "--length", type=positive_int, default=3, help="concepts per formula, at most (default: %(default)s)"
    )
    e.add_argument("--beam", type=positive_int, default=5, help="beam width (default: %(default)s)")
    e.add_argument("--show", type=positive_int, default=15, help="units printed, by gain over one concept")
    e.set_defaults(func=cmd_explain)

    for name in ("multiunit", "probe"):  # "probe" is the old name; a probe set is the data
        r = sub.add_parser(name, help="multi-unit concepts: best unit, top-k units and a learned combination"
                           if name == "multiunit" else "deprecated name of 'multiunit'")  # fmt: skip
        _add_multiunit_flags(r)
        r.set_defaults(func=cmd_multiunit)
        if name == "probe":
            r.set_defaults(
                deprecated="'dissectjax probe' is now 'dissectjax multiunit' (it writes multiunit-LAYER.csv)"
            )


def _add_multiunit_flags(r) -> None:
    _common(r)
    r.add_argument("--fit-dataset", help="probe set to fit on (default: --dataset itself, in-sample)")
    r.add_argument("--k", default="1,2,4,8", help="top-k unit averages (default: %(default)s)")
    r.add_argument("--steps", type=positive_int, default=300, help="Adam steps per fit (default: %(default)s)")
    r.add_argument(
        "--pixels-per-image", type=positive_int, default=64, help="sampled pixels per image (default: %(default)s)"
    )
    r.add_argument("--show", type=positive_int, default=15, help="concepts printed")
