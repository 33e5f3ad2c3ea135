"""Bringing outside weights and data in: ``dissectjax convert`` (PyTorch weights in torchvision's
layout -> a checkpoint) and ``dissectjax prepare-tfds`` (a probe set -> an array_record TFDS dataset)."""

from __future__ import annotations

import dataclasses
import math
import sys

from dissectjax.cli.common import finite_float, positive_int
from dissectjax.errors import DissectError


def _floats(text: str | None, flag: str, positive: bool = False) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise DissectError(f"{flag} takes three comma-separated numbers (one per channel), got {text!r}")
    if not all(math.isfinite(x) for x in values):
        raise DissectError(f"{flag} takes finite numbers, got {text!r}")
    if positive and min(values) <= 0:
        raise DissectError(f"{flag} takes positive numbers (it divides), got {text!r}")
    return values


def preprocessing_from_args(args):
    """The preset, with any flag given on the command line replacing its field."""
    from dissectjax.convert import PRESETS

    prep = PRESETS[args.preset]
    if args.input_size is not None and args.input_size < 1:
        raise DissectError(f"--input-size must be a positive integer, got {args.input_size}")
    if args.value_range is not None and not (math.isfinite(args.value_range) and args.value_range > 0):
        raise DissectError(f"--value-range must be a positive number (1 or 255), got {args.value_range}")
    changes = {"mean": _floats(args.mean, "--mean"), "std": _floats(args.std, "--std", positive=True),
               "value_range": args.value_range, "input_size": args.input_size,
               "bgr": {"bgr": True, "rgb": False}.get(args.channels)}  # fmt: skip
    return dataclasses.replace(prep, **{k: v for k, v in changes.items() if v is not None})


def cmd_convert(args) -> int:
    from dissectjax.convert import convert

    prep = preprocessing_from_args(args)
    config = convert(args.weights, args.arch, args.out, prep)
    kwargs = config["model_kwargs"]
    print(f"wrote {args.out}: {args.arch}, {kwargs['num_classes']} classes, input {prep.input_size} px, "
          f"{'BGR' if prep.bgr else 'RGB'} x {prep.value_range:g}, mean {list(prep.mean)}, std {list(prep.std)}",
          file=sys.stderr)  # fmt: skip
    return 0


def cmd_prepare_tfds(args) -> int:
    try:
        from dissectjax.data.tfds_builders import prepare
    except ImportError as e:
        raise DissectError(f"tensorflow-datasets is not installed ({e}): pip install -e .[tfds]") from None
    path = prepare(args.name, args.data_dir, args.config, args.source)
    print(path)
    return 0


def add_parsers(sub) -> None:
    from dissectjax.convert import ARCHITECTURES, PRESETS

    c = sub.add_parser("convert", help="convert PyTorch weights (torchvision layout) into a dissectjax checkpoint")
    c.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES), help="the network's architecture")
    c.add_argument("--weights", required=True,
                   help="state dict: .pth/.pt/.tar (needs PyTorch; {'state_dict': ...} and 'module.' prefixes are "
                        "unwrapped), .safetensors or .npz (NumPy only)")  # fmt: skip
    c.add_argument("--out", required=True, help="checkpoint directory to create")
    c.add_argument("--preset", choices=sorted(PRESETS), default="torchvision",
                   help="input preprocessing the network was trained with (default: %(default)s: RGB in [0, 1], "
                        "ImageNet mean/std, 224 px; caffe: BGR in [0, 255], mean subtracted, 227 px)")  # fmt: skip
    c.add_argument("--channels", choices=["rgb", "bgr"], help="override the preset's channel order")
    c.add_argument("--mean", help="override: per-channel mean in the model's channel order, e.g. 0.485,0.456,0.406")
    c.add_argument("--std", help="override: per-channel std, e.g. 0.229,0.224,0.225")
    c.add_argument("--value-range", type=finite_float, help="override: pixels scaled to [0, this] (1 or 255)")
    c.add_argument("--input-size", type=positive_int, help="override: the training input size in pixels")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("prepare-tfds", help="write a probe set as a TFDS dataset (array_record, no TensorFlow)")
    names = "dissectjax_scenes: the synthetic scenes; dissectjax_broden: a Broden directory (--source)"
    t.add_argument("name", choices=["dissectjax_scenes", "dissectjax_broden"], help=names)
    t.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    t.add_argument("--config", help="dissectjax_scenes: 1000 (default) or 64 images")
    t.add_argument("--source", help="dissectjax_broden: the Broden-format directory to read")
    t.set_defaults(func=cmd_prepare_tfds)
