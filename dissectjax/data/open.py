"""A probe set named by a string, as ``--dataset`` takes it:

    synthetic              the default synthetic scenes (PROBE_SIZE images, seed PROBE_SEED)
    synthetic:N[:SEED]     N synthetic scenes, generated once and cached
    tfds:NAME[:SPLIT]      a prepared TFDS dataset (read without TensorFlow)
    DIR                    a Broden-format directory

Errors name the string: ``dataset 'x': ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.data.probe import ProbeDataset
from dissectjax.data.tfds_probe import TFDSProbe, default_tfds_dir, parse_mapping
from dissectjax.errors import DissectError

PROBE_SIZE = synthetic.SyntheticConfig.size  # 'synthetic' is the generator's default set
PROBE_SEED = synthetic.SyntheticConfig.seed


def open_probe(
    spec: str,
    progress: Callable[..., Iterable] | None = None,
    say: Callable[[str], None] = lambda _: None,
    split: str | None = None,
    skip_missing: bool = False,
    tfds_data_dir: str | None = None,
    tfds_map: str | None = None,
) -> tuple[ProbeDataset, str]:
    """(the probe set, its canonical name) for ``spec``.

    ``progress`` wraps the generation of synthetic scenes; ``say`` gets one line about what
    was opened. ``split`` keeps one split of ``index.csv`` (or is the TFDS split when
    ``spec`` names none); ``skip_missing`` drops Broden rows whose files are missing;
    ``tfds_data_dir`` (default: $TFDS_DATA_DIR or ~/tensorflow_datasets) and ``tfds_map``
    (see :func:`~dissectjax.data.tfds_probe.parse_mapping`) are for ``tfds:`` sets.
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec, progress, say, split)
    if spec.startswith("tfds:"):
        return _tfds(spec, say, split, tfds_data_dir, tfds_map)
    if not os.path.exists(spec):
        raise DissectError(f"dataset {spec!r} is neither 'synthetic', 'tfds:NAME' nor an existing Broden directory")
    dataset = BrodenDataset(spec, split, skip_missing)
    if dataset.skipped:
        line, path = dataset.skipped[0]
        say(f"skipped {len(dataset.skipped)} rows with missing files (first: index.csv line {line}, {path}); "
            f"dissecting the other {len(dataset)}")  # fmt: skip
    return dataset, os.path.abspath(spec)


def synthetic_config(spec: str) -> synthetic.SyntheticConfig:
    """The generator settings of ``synthetic``, ``synthetic:N`` or ``synthetic:N:SEED``.

    >>> c = synthetic_config("synthetic:200:7")
    >>> c.size, c.seed, synthetic_config("synthetic").size
    (200, 7, 1000)
    """
    parts = spec.split(":")[1:]
    if len(parts) > 2 or not all(x.isdigit() for x in parts) or (parts and int(parts[0]) < 1):
        raise DissectError(
            f"dataset {spec!r}: expected 'synthetic', 'synthetic:N' or 'synthetic:N:SEED' "
            "(N images, a positive integer; SEED a non-negative integer)"
        )
    size = int(parts[0]) if parts else PROBE_SIZE
    seed = int(parts[1]) if len(parts) == 2 else PROBE_SEED
    return synthetic.SyntheticConfig(size=size, seed=seed)


def _synthetic(spec: str, progress, say, split: str | None) -> tuple[ProbeDataset, str]:
    config = synthetic_config(spec)
    say(f"probe set: synthetic scenes, {config.size} images (seed {config.seed}), "
        f"cache {synthetic.default_cache_dir()}")  # fmt: skip
    name = f"synthetic:{config.size}" if config.seed == PROBE_SEED else f"synthetic:{config.size}:{config.seed}"
    return BrodenDataset(synthetic.ensure_broden(config, progress=progress), split), name


def _tfds(spec: str, say, split: str | None, data_dir: str | None, mapping: str | None) -> tuple[ProbeDataset, str]:
    name, _, tfds_split = spec[len("tfds:") :].partition(":")
    data_dir = data_dir or default_tfds_dir()
    dataset = TFDSProbe(name, tfds_split or split, data_dir, parse_mapping(mapping))
    say(f"probe set: TFDS {name} split {dataset.split}, {len(dataset)} images, from {data_dir}")
    return dataset, f"tfds:{name}:{dataset.split}"
