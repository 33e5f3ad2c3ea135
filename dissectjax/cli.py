"""The ``dissectjax`` command line: a thin layer over the library (DESIGN.md section 7)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

from dissectjax.cli_args import comma_list
from dissectjax.cli_chimera import add_parsers as add_chimera_parsers
from dissectjax.cli_convert import add_parsers as add_convert_parsers
from dissectjax.cli_localize import add_parsers as add_localize_parsers
from dissectjax.cli_localize import add_recipe_flags, recipe_from_args
from dissectjax.cli_report import add_parsers as add_report_parsers
from dissectjax.cli_specialize import add_parsers as add_specialize_parsers
from dissectjax.cli_surgery import add_parsers as add_surgery_parsers
from dissectjax.errors import DissectError

DEMO_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DEMO_PROBE = dict(size=1000, seed=1)
DATASET_HELP = (
    "'synthetic' (1,000 scenes), 'synthetic:N', 'synthetic:N:SEED', a Broden-format directory, or "
    "'tfds:NAME[:SPLIT]' (a prepared TFDS dataset)"
)


def _progress(enabled: bool):
    if not enabled:
        return lambda iterable, **_: iterable
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, so logs and pipes stay readable
    return lambda iterable, **kw: tqdm(iterable, file=sys.stderr, dynamic_ncols=True, disable=None, **kw)


def _say(quiet: bool):
    return (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def default_checkpoint_dir() -> str:
    """``checkpoints/`` of the source tree (the package's parent), or $DISSECTJAX_CHECKPOINTS."""
    env = os.environ.get("DISSECTJAX_CHECKPOINTS")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "checkpoints")


# ---- shared pieces --------------------------------------------------------------------
def open_dataset(spec: str, progress, say, split: str | None = None, skip_missing: bool = False,
                 tfds_data_dir: str | None = None, tfds_map: str | None = None):  # fmt: skip
    from dissectjax.data import synthetic
    from dissectjax.data.broden import BrodenDataset

    if spec == "synthetic" or spec.startswith("synthetic:"):
        parts = spec.split(":")[1:]
        if len(parts) > 2 or not all(x.isdigit() for x in parts) or (parts and int(parts[0]) < 1):
            raise DissectError(
                f"--dataset {spec!r}: expected 'synthetic', 'synthetic:N' or 'synthetic:N:SEED' "
                "(N images, a positive integer; SEED a non-negative integer)"
            )
        size = int(parts[0]) if parts else DEMO_PROBE["size"]
        seed = int(parts[1]) if len(parts) == 2 else DEMO_PROBE["seed"]
        config = synthetic.SyntheticConfig(size=size, seed=seed)
        say(f"probe set: synthetic scenes, {size} images (seed {config.seed}), cache {synthetic.default_cache_dir()}")
        name = f"synthetic:{size}" if seed == DEMO_PROBE["seed"] else f"synthetic:{size}:{seed}"
        return BrodenDataset(synthetic.ensure_broden(config, progress=progress), split), name
    if spec.startswith("tfds:"):
        from dissectjax.data.tfds_probe import TFDSProbe, parse_mapping

        name, _, tfds_split = spec[len("tfds:") :].partition(":")
        data_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
        dataset = TFDSProbe(name, tfds_split or split, data_dir, parse_mapping(tfds_map))
        say(f"probe set: TFDS {name} split {dataset.split}, {len(dataset)} images, from {data_dir}")
        return dataset, f"tfds:{name}:{dataset.split}"
    if not os.path.exists(spec):
        raise DissectError(f"--dataset {spec!r} is neither 'synthetic', 'tfds:NAME' nor an existing Broden directory")
    dataset = BrodenDataset(spec, split, skip_missing)
    if dataset.skipped:
        line, path = dataset.skipped[0]
        say(f"skipped {len(dataset.skipped)} rows with missing files (first: index.csv line {line}, {path}); "
            f"dissecting the other {len(dataset)}")  # fmt: skip
    return dataset, os.path.abspath(spec)


def format_table(results) -> str:
    """A short per-layer table: units, detectors, unique detectors per category, top labels."""
    from collections import Counter

    first = next(iter(results.values()))
    cats = list(first.concepts.categories)
    head = ["layer", "units", "detectors"] + [f"uniq:{c}" for c in cats] + ["uniq", "top labels"]
    rows = []
    for name, r in results.items():
        labels = [r.concepts.names[c] for c in r.labels.label[r.labels.detector]]
        top = ", ".join(f"{n} ({k})" for n, k in Counter(labels).most_common(4))
        rows.append(
            [name, str(r.units), str(r.detectors)]
            + [str(r.unique[c]) for c in cats]
            + [str(r.unique["total"]), top or "-"]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def input_stamps(info: dict) -> dict[str, list[int]]:
    """Size and modification time of every input file: a resumed run must read the same data."""
    paths = []
    for key in ("dataset", "checkpoint", "activations"):
        where = info.get(key)
        if where and os.path.isdir(where):  # a dataset's tables, or every file of a checkpoint
            for folder, _, files in os.walk(where):
                paths += [os.path.join(folder, f) for f in files if key == "checkpoint" or f.endswith(".csv")]
        elif where and os.path.isfile(where):
            paths.append(where)
    return {p: [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in sorted(paths)}


def run_dissection(source, dataset, config, out: str, info: dict, progress, say, resume: bool = True,
                   save_every: float = 60.0, report: bool = True):  # fmt: skip
    """Dissects and writes ``out`` atomically (on the main process), resuming a killed run;
    with ``report``, also the top images and ``report.html``."""
    from dissectjax.dissect import ResumeFile, dissect
    from dissectjax.parallel import DataParallel
    from dissectjax.results import atomic_directory, check_output_path, write_results

    parallel = DataParallel.create()
    check_output_path(out)
    resume_file = None
    if resume:
        out_abs = os.path.abspath(out)
        path = os.path.join(os.path.dirname(out_abs), f".{os.path.basename(out_abs)}.resume.npz")
        fingerprint = {
            **info,
            "layers": list(source.layers),
            "config": dataclasses.asdict(config),
            "images": len(dataset),
            "inputs": input_stamps(info),
            "global_batch": parallel.global_batch_size(config.batch_size),
        }
        resume_file = ResumeFile(path, fingerprint, save_every)
        if parallel.is_main and resume_file.load() is not None:
            say(f"resuming from {path}")
    if not parallel.is_main:
        return dissect(source, dataset, config, progress, parallel, resume_file)
    with atomic_directory(out) as tmp:
        results = dissect(source, dataset, config, progress, parallel, resume_file)
        write_results(tmp, results, info)
        if report:
            write_report_files(tmp, results, dataset, say)
    if resume_file is not None:
        resume_file.remove()
    say(f"wrote {out}")
    return results


def write_report_files(directory: str, results, dataset, say) -> None:
    """The top images and the HTML report; a failure here is reported, never fatal (the counts are written)."""
    from dissectjax.report import write_report
    from dissectjax.results import write_top_images

    try:
        write_top_images(os.path.join(directory, "top_images.npz"), results, dataset)
        write_report(directory)
    except Exception as e:  # the dissection itself succeeded: keep it
        say(f"warning: the report could not be written ({type(e).__name__}: {e}); "
            "the results are complete; run `dissectjax report DIR` to retry")  # fmt: skip


# ---- commands -------------------------------------------------------------------------
def cmd_dissect(args) -> int:
    from dissectjax.dissect import DissectConfig
    from dissectjax.sources import ArraySource

    if args.coordinator or args.num_processes or os.environ.get("DISSECTJAX_COORDINATOR"):
        from dissectjax.parallel import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    main_process = jax.process_index() == 0
    progress, say = _progress(not args.quiet and main_process), _say(args.quiet or not main_process)
    config = DissectConfig(args.quantile, args.iou_threshold, not args.no_condition, args.batch_size, args.strategy)
    if args.skip_missing and args.activations:
        raise DissectError(
            "--skip-missing would misalign --activations rows with index.csv rows; fix the files instead"
        )
    dataset, dataset_name = open_dataset(args.dataset, progress, say, args.split, args.skip_missing,
                                         args.tfds_data_dir, args.tfds_map)  # fmt: skip
    if args.activations:
        if args.model or args.checkpoint or args.layers:
            raise DissectError(
                "--activations dissects a stored array; do not combine it with --model/--checkpoint/--layers"
            )
        source = ArraySource.from_npy(args.activations, len(dataset))
        model_name = f"activations:{os.path.abspath(args.activations)}"
    else:
        source, model_name = _model_source(args, dataset)
    info = {"model": model_name, "dataset": dataset_name}
    if args.split:
        info["split"] = args.split
    if getattr(dataset, "skipped", None):
        info["skipped_rows"] = len(dataset.skipped)
    for key in ("checkpoint", "activations"):
        if getattr(args, key):
            info[key] = os.path.abspath(getattr(args, key))
    results = run_dissection(source, dataset, config, args.out, info, progress, say, not args.no_resume,
                             args.save_every, not args.no_report)  # fmt: skip
    if main_process:
        print(format_table(results))
    return 0


def _model_source(args, dataset):
    from dissectjax.checkpoint import init_variables, load_checkpoint
    from dissectjax.models import build_model
    from dissectjax.sources import ModelSource

    if not args.layers:
        raise DissectError("--layers is required with --model (e.g. --layers conv4,conv5)")
    layers = comma_list(args.layers, "--layers")
    if not layers:
        raise DissectError(f"--layers {args.layers!r} names no layer (e.g. --layers conv4,conv5)")
    shape = (*dataset.image_size(0), 3)
    if args.checkpoint:
        model, variables, ckpt = load_checkpoint(args.checkpoint)
        if args.model and args.model != ckpt["model"]:
            raise DissectError(f"--model {args.model} does not match the checkpoint's model {ckpt['model']}")
        name = f"{ckpt['model']}:{os.path.abspath(args.checkpoint)}"
    elif args.model:
        model = build_model(args.model)
        variables = init_variables(model, shape, args.seed)
        name = f"{args.model}:random-init(seed={args.seed})"
    else:
        raise DissectError("give --model NAME with --checkpoint PATH (or --activations FILE.npy)")
    return ModelSource(model, variables, layers, shape), name


def cmd_demo(args) -> int:
    from dissectjax.checkpoint import init_variables, load_checkpoint
    from dissectjax.dissect import DissectConfig
    from dissectjax.sources import ModelSource

    progress, say = _progress(not args.quiet), _say(args.quiet)
    start = time.perf_counter()
    ckpt_dir = args.checkpoint or os.path.join(default_checkpoint_dir(), "scenenet")
    model, trained, meta = load_checkpoint(ckpt_dir)
    dataset, dataset_name = open_dataset(f"synthetic:{args.images}", progress, say)
    shape = tuple(meta["input_shape"])
    config = DissectConfig(batch_size=args.batch_size)
    random = init_variables(model, shape, seed=0)
    say(f"model: {meta['model']} from {ckpt_dir} (validation accuracy {meta.get('val_accuracy', '?')})")
    all_results = {}
    for tag, variables in (("trained", trained), ("random", random)):
        say(f"dissecting the {tag} network: layers {', '.join(DEMO_LAYERS)}")
        source = ModelSource(model, variables, DEMO_LAYERS, shape)
        info = {"model": f"{meta['model']}:{tag}", "dataset": dataset_name}
        # the random twin is not the checkpoint: recording it would let `serve` ablate the wrong weights
        info |= {"checkpoint": os.path.abspath(ckpt_dir)} if tag == "trained" else {"init_seed": 0}
        all_results[tag] = run_dissection(source, dataset, config, os.path.join(args.out, tag), info, progress, say)
    for tag, results in all_results.items():
        print(f"\n{tag} {meta['model']} on {dataset_name} (quantile {config.quantile}, IoU >= {config.iou_threshold})")
        print(format_table(results))
    last = DEMO_LAYERS[-1]
    t, r = all_results["trained"][last], all_results["random"][last]
    print(
        f"\nemergence at {last}: trained {t.detectors}/{t.units} detectors, {t.unique['total']} unique; "
        f"random init {r.detectors}/{r.units} detectors, {r.unique['total']} unique"
    )
    print(f"reports: {os.path.abspath(os.path.join(args.out, 'trained', 'report.html'))} (and random/)")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {os.path.abspath(args.out)}")
    return 0


def cmd_train(args) -> int:
    from dissectjax.checkpoint import save_checkpoint
    from dissectjax.models import build_model
    from dissectjax.train import TrainConfig, train_scene_classifier

    say = _say(args.quiet)
    if os.path.exists(args.out):
        raise DissectError(f"--out {args.out} already exists; remove it or choose another path")
    config = TrainConfig(
        seed=args.seed,
        train_size=args.train_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )
    recipe = recipe_from_args(args)
    kwargs = {"num_classes": 12}
    if recipe is None:
        model, terms, concepts, info = build_model(args.model, **kwargs), (), (), {}
    else:
        if args.model != "scenenet":
            raise DissectError(f"localizing flags train SceneNet, not --model {args.model}")
        model, terms, concepts = recipe.model(**kwargs), recipe.terms(**kwargs), recipe.numbers()
        if model.whiten:
            kwargs["whiten"] = list(model.whiten)
        info = {"localize": recipe.to_json()}
        say(f"localizing in {recipe.layer}: " + ", ".join(f"{k}={v}" for k, v in info["localize"].items()))
    variables, metrics = train_scene_classifier(model, config, log=say, terms=terms, concepts=concepts)
    save_checkpoint(
        args.out,
        args.model,
        kwargs,
        (config.image_size, config.image_size, 3),
        variables,
        dataset="synthetic-scenes",
        train_config=dataclasses.asdict(config),
        **info,
        **metrics,
    )
    print(
        f"saved {args.out}: validation accuracy {metrics['val_accuracy']:.3f} after {config.epochs} epochs "
        f"({metrics['seconds']:.0f} s)"
    )
    return 0


# ---- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dissectjax", description="Network Dissection in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="dissect the committed scene classifier and a random-init twin")
    d.add_argument("--out", default="dissectjax-demo", help="output directory (default: %(default)s)")
    d.add_argument("--images", type=int, default=DEMO_PROBE["size"], help="probe images (default: %(default)s)")
    d.add_argument("--checkpoint", help="checkpoint directory (default: checkpoints/scenenet)")
    d.add_argument("--batch-size", type=int, default=100, help="images per device and batch (default: %(default)s)")
    d.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("dissect", help="dissect layers of a model, or stored activations")
    s.add_argument("--dataset", required=True, help=DATASET_HELP)
    s.add_argument("--out", required=True, help="output directory (replaced if it holds an earlier result)")
    s.add_argument("--model", help="registered model name (scenenet, resnet18, lenet5)")
    s.add_argument("--checkpoint", help="checkpoint directory written by 'dissectjax train'")
    s.add_argument("--layers", help="comma-separated layer names, e.g. conv4,conv5")
    s.add_argument("--activations", help="precomputed activations [N, U, h, w] .npy (row i = index.csv row i)")
    s.add_argument("--quantile", type=float, default=0.005, help="top quantile per unit (default: %(default)s)")
    s.add_argument("--iou-threshold", type=float, default=0.04, help="detector IoU threshold (default: %(default)s)")
    s.add_argument("--batch-size", type=int, default=64, help="images per device and batch (default: %(default)s)")
    s.add_argument("--no-condition", action="store_true", help="count unit area in all images, not only labelled ones")
    s.add_argument("--split", help="only rows of this index.csv split, e.g. train or val (default: all)")
    s.add_argument("--tfds-data-dir", help="TFDS data_dir for --dataset tfds:NAME (default: $TFDS_DATA_DIR or "
                                           "~/tensorflow_datasets)")  # fmt: skip
    s.add_argument("--tfds-map", help="for other TFDS datasets: CATEGORY=FEATURE[:CLASSES],... e.g. "
                                      "scene=label,object=segmentation_mask:150")  # fmt: skip
    s.add_argument("--skip-missing", action="store_true",
                   help="skip rows whose image or segmentation files are missing (reports how many)")  # fmt: skip
    s.add_argument(
        "--strategy",
        choices=["dense", "sparse", "segment"],
        help="tally kernels (default: dense on GPU/TPU, sparse on CPU); identical counts",
    )
    s.add_argument("--seed", type=int, default=0, help="initialization seed for --model without --checkpoint")
    s.add_argument(
        "--no-resume", action="store_true", help="start afresh: do not save or reuse the state of an interrupted run"
    )
    s.add_argument(
        "--save-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="save the state for resuming this often (default: %(default)s)",
    )
    s.add_argument("--no-report", action="store_true", help="skip top_images.npz and report.html")
    s.add_argument("--coordinator", help="multi-host: address:port of process 0 (jax.distributed)")
    s.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    s.add_argument("--process-id", type=int, help="multi-host: this process's index")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_dissect)

    sub.add_parser("bench", help="throughput benchmarks (dissectjax bench --help)", add_help=False)
    add_surgery_parsers(sub)
    add_chimera_parsers(sub)
    add_report_parsers(sub)
    add_convert_parsers(sub)
    add_specialize_parsers(sub)

    t = sub.add_parser("train", help="train a scene classifier on synthetic scenes and save a checkpoint")
    t.add_argument("--out", required=True, help="checkpoint directory to create")
    t.add_argument("--model", default="scenenet")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--train-size", type=int, default=12000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--learning-rate", type=float, default=2e-3)
    t.add_argument("--quiet", action="store_true")
    add_recipe_flags(t)
    t.set_defaults(func=cmd_train)
    add_localize_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own flags: see dissectjax/bench.py
        from dissectjax.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DissectError as e:
        print(f"dissectjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dissectjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
