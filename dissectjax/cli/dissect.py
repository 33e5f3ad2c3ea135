"""``dissectjax dissect`` and ``dissectjax demo``: flags in, :func:`dissectjax.dissect.run_dissection` out."""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

from dissectjax.cli.common import (
    comma_list,
    finite_float,
    log_lines,
    non_negative_int,
    positive_int,
    progress_bars,
    seed,
    table,
)
from dissectjax.data.open import PROBE_SIZE, open_probe
from dissectjax.dissect.cache import PLACES, Pipeline, default_decode_workers
from dissectjax.dissect.config import DETECTOR_RULES, SEMANTICS, STRATEGIES, DissectConfig
from dissectjax.dissect.demo import DEMO_BATCH, DEMO_LAYERS, run_demo
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.run import run_dissection
from dissectjax.errors import DissectError

DATASET_HELP = (
    f"'synthetic' ({PROBE_SIZE} scenes), 'synthetic:N', 'synthetic:N:SEED', a Broden-format directory, or "
    "'tfds:NAME[:SPLIT]' (a prepared TFDS dataset)"
)
DEFAULTS = DissectConfig()


def format_table(results: dict[str, LayerResult]) -> str:
    """A short per-layer table: units, detectors (with the comparison used), unique detectors per
    category as ``best label/tables``, each rule's total, top labels.

    Unique detectors under the best-label rule (NetDissect-Lite: distinct labels among detectors)
    and the NetDissect-tables rule (CVPR 2017: per category, distinct best labels of that category
    whose IoU passes; summed), docs/ARCHITECTURE.md, Semantics 5.
    """
    first = next(iter(results.values()))
    cats = list(first.concepts.categories)
    detectors = f"detectors (IoU {first.detector_rule} {first.iou_threshold})"
    head = ["layer", "units", detectors, *(f"uniq:{c}" for c in cats), "uniq:best-label", "uniq:tables", "top labels"]
    rows = []
    for name, r in results.items():
        labels = [r.concepts.names[c] for c in r.labels.label[r.labels.detector]]
        top = ", ".join(f"{n} ({k})" for n, k in Counter(labels).most_common(4))
        counts = [f"{r.unique[c]}/{r.unique_tables[c]}" for c in cats]
        rows.append([name, str(r.units), str(r.detectors), *counts, str(r.unique["total"]),
                     str(r.unique_tables["total"]), top or "-"])  # fmt: skip
    counting = "" if first.semantics == SEMANTICS[0] else f"; counted with {first.semantics} semantics"
    return table(head, rows) + f"\nuniq:<category> = best-label rule/NetDissect-tables rule{counting}"


def model_source_from_args(args, dataset):
    """The source of ``--checkpoint``/``--model`` and ``--layers`` (or ``--layer``) on ``dataset``'s image size."""
    from dissectjax.dissect.sources import model_source

    text = getattr(args, "layers", None)
    layers = comma_list(text, "--layers")
    if not layers:
        raise DissectError(f"--layers {text!r} names no layer (e.g. --layers conv4,conv5)" if text else
                           "--layers is required with --model or --checkpoint (e.g. --layers conv4,conv5)")  # fmt: skip
    if not (args.checkpoint or args.model):
        raise DissectError("give --model NAME, --checkpoint PATH, or both (or --activations FILE.npy)")
    return model_source(layers, (*dataset.image_size(0), 3), args.checkpoint, args.model, args.seed)


def cmd_dissect(args) -> int:
    from dissectjax.dissect.sources import ArraySource

    if args.coordinator or args.num_processes or os.environ.get("DISSECTJAX_COORDINATOR"):
        from dissectjax.parallel import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    main_process = jax.process_index() == 0
    progress, say = progress_bars(not args.quiet and main_process), log_lines(args.quiet or not main_process)
    config = DissectConfig(args.quantile, args.iou_threshold, not args.no_condition, args.batch_size, args.strategy,
                           detector_rule=args.detector_rule, semantics=args.semantics)  # fmt: skip
    if args.skip_missing and args.activations:
        raise DissectError(
            "--skip-missing would misalign --activations rows with index.csv rows; fix the files instead"
        )
    if args.layout and not args.activations:
        raise DissectError(f"--layout {args.layout} says how a stored --activations array is laid out; a model's "
                           "layers are always NHWC: drop --layout, or give --activations FILE.npy")  # fmt: skip
    dataset, dataset_name = open_probe(args.dataset, progress, say, args.split, args.skip_missing,
                                       args.tfds_data_dir, args.tfds_map)  # fmt: skip
    if args.activations:
        if args.model or args.checkpoint or args.layers:
            raise DissectError(
                "--activations dissects a stored array; do not combine it with --model/--checkpoint/--layers"
            )
        source = ArraySource.from_npy(args.activations, len(dataset), args.layout or "nchw", dataset.shapes[:, 2:])
        model_name = f"activations:{os.path.abspath(args.activations)}"
    else:
        source, model_name = model_source_from_args(args, dataset)
    info = {"model": model_name, "dataset": dataset_name}
    if args.split:
        info["split"] = args.split
    if getattr(dataset, "skipped", None):
        info["skipped_rows"] = len(dataset.skipped)
    for key in ("checkpoint", "activations"):
        if getattr(args, key):
            info[key] = os.path.abspath(getattr(args, key))
    pipeline = Pipeline(args.cache_activations, args.cache_dir, args.decode_workers)
    results = run_dissection(source, dataset, config, args.out, info, progress, say, not args.no_resume,
                             args.save_every, not args.no_report, pipeline)  # fmt: skip
    if main_process:
        print(format_table(results))
    return 0


def cmd_demo(args) -> int:
    start = time.perf_counter()
    progress, say = progress_bars(not args.quiet), log_lines(args.quiet)
    all_results, dataset_name = run_demo(args.out, args.checkpoint, args.images, args.batch_size, progress, say)
    config = DissectConfig()
    for tag, results in all_results.items():
        print(f"\n{tag} network on {dataset_name} (quantile {config.quantile}, "
              f"IoU {config.detector_rule} {config.iou_threshold})")  # fmt: skip
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


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--checkpoint``, ``--model``, ``--seed``: a model on a probe set."""
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--checkpoint", help="checkpoint directory written by 'dissectjax train' or 'convert'")
    p.add_argument("--model", help="registered model name (random init without --checkpoint)")
    p.add_argument("--seed", type=seed, default=0, help="initialization seed for --model without --checkpoint")


def add_parsers(sub) -> None:
    d = sub.add_parser("demo", help="dissect the committed scene classifier and a random-init twin")
    d.add_argument("--out", default="dissectjax-demo", help="output directory (default: %(default)s)")
    d.add_argument("--images", type=positive_int, default=PROBE_SIZE, help="probe images (default: %(default)s)")
    d.add_argument("--checkpoint", help="checkpoint directory (default: checkpoints/scenenet-strong)")
    d.add_argument(
        "--batch-size", type=positive_int, default=DEMO_BATCH, help="images per device and batch (default: %(default)s)"
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("dissect", help="dissect layers of a model, or stored activations")
    add_model_flags(s)
    s.add_argument("--out", required=True, help="output directory (replaced if it holds an earlier result)")
    s.add_argument("--layers", help="comma-separated layer names, e.g. conv4,conv5")
    s.add_argument("--activations", help="precomputed activations [N, U, h, w] .npy (row i = index.csv row i)")
    s.add_argument("--layout", choices=["nchw", "nhwc"],
                   help="axes of --activations: nchw [N, U, h, w] (default) or nhwc [N, h, w, U]")  # fmt: skip
    s.add_argument(
        "--quantile", type=finite_float, default=DEFAULTS.quantile, help="top quantile per unit (default: %(default)s)"
    )
    s.add_argument("--iou-threshold", type=finite_float, default=DEFAULTS.iou_threshold,
                   help="detector IoU threshold (default: %(default)s)")  # fmt: skip
    s.add_argument("--detector-rule", choices=DETECTOR_RULES, default=DEFAULTS.detector_rule,
                   help="a detector's IoU is >= or > the threshold; '>' is NetDissect's, for its published "
                        "figures (default: '%(default)s')")  # fmt: skip
    s.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="images per device and batch (default: %(default)s)")  # fmt: skip
    s.add_argument("--no-condition", action="store_true", help="count unit area in all images, not only labelled ones")
    s.add_argument("--semantics", choices=SEMANTICS, default=DEFAULTS.semantics,
                   help="counting rules: netdissect (the original paper's, default) or lite (NetDissect-Lite's tally: "
                        "area under the unit's own mask, repeated labels counted twice, Lite's interpolated "
                        "quantile, computed exactly); see docs/SEMANTICS.md")  # fmt: skip
    s.add_argument("--split", help="only rows of this index.csv split, e.g. train or val (default: all)")
    s.add_argument("--tfds-data-dir", help="TFDS data_dir for --dataset tfds:NAME (default: $TFDS_DATA_DIR or "
                                           "~/tensorflow_datasets)")  # fmt: skip
    s.add_argument("--tfds-map", help="for other TFDS datasets: CATEGORY=FEATURE[:CLASSES],... e.g. "
                                      "scene=label,object=segmentation_mask:150")  # fmt: skip
    s.add_argument("--skip-missing", action="store_true",
                   help="skip rows whose image or segmentation files are missing (reports how many)")  # fmt: skip
    s.add_argument("--strategy", choices=STRATEGIES,
                   help="tally kernels (default: dense on GPU/TPU, sparse on CPU); identical counts")  # fmt: skip
    s.add_argument("--cache-activations", choices=PLACES, default="auto",
                   help="where a model's activations are kept between passes, so its forward pass runs once: "
                        "device, host, file (a scratch file, deleted after), none (recompute), or auto: the first "
                        "of device, host, file with room (default: %(default)s); identical counts")  # fmt: skip
    s.add_argument("--cache-dir", help="directory of a file cache (default: the system's temporary directory)")
    s.add_argument("--decode-workers", type=non_negative_int, default=default_decode_workers(),
                   help="processes decoding a Broden directory's rows, 0 for threads of this process "
                        "(default here: %(default)s)")  # fmt: skip
    s.add_argument("--no-resume", action="store_true",
                   help="start afresh: do not save or reuse the state of an interrupted run")  # fmt: skip
    s.add_argument("--save-every", type=finite_float, default=60.0, metavar="SECONDS",
                   help="save the state for resuming this often (default: %(default)s)")  # fmt: skip
    s.add_argument("--no-report", action="store_true", help="skip top_images.npz and report.html")
    s.add_argument("--coordinator", help="multi-host: address:port of process 0 (jax.distributed)")
    s.add_argument("--num-processes", type=positive_int, help="multi-host: number of processes")
    s.add_argument("--process-id", type=non_negative_int, help="multi-host: this process's index")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_dissect)
