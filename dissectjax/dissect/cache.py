"""Activations kept from the first pass for the others: the forward pass runs once.

A dissection reads every batch's activations in two to four passes (up to three threshold
passes, then the tally). A source that computes them (a model) would run its forward pass,
and decode the images, in every pass; with a cache the first pass keeps them and the
others read them back, decoding nothing but the label maps of the tally pass. Where they
are kept (:data:`PLACES`):

* ``device``: as the device arrays the source returned (fastest; device memory);
* ``host``: this process's rows in host memory, put back on the devices per batch;
* ``file``: this process's rows in a memory-mapped scratch file (deleted afterwards);
* ``none``: not kept: every pass reruns the source;
* ``auto``: the first of device, host, file that holds them with room to spare
  (:func:`choose_place`); ``none`` for a source that computes nothing (stored activations).

The kept arrays are the ones the source returned, bit for bit, with the same sharding:
every path gives identical counts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping

import jax
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.parallel import DataParallel

PLACES = ("auto", "device", "host", "file", "none")
ROOM = 0.5  # the share of free memory (or disk) a cache may take


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How a dissection runs, not what it measures (results are identical either way).

    cache: where activations are kept between passes, one of :data:`PLACES`;
    cache_dir: the directory of a ``file`` cache (default: the system's temporary directory);
    decode_workers: processes decoding probe rows (0: threads of this process).
    """

    cache: str = "auto"
    cache_dir: str | None = None
    decode_workers: int = 0

    def __post_init__(self):
        if self.cache not in PLACES:
            raise DissectError(f"activation cache must be one of {', '.join(PLACES)}, got {self.cache!r}")
        if self.decode_workers < 0:
            raise DissectError(f"decode workers must be 0 or more, got {self.decode_workers}")


def cache_bytes(layers: Mapping[str, tuple[int, ...]], rows: int, itemsize: int = 4) -> int:
    """Bytes of ``rows`` rows of every layer (``layers[name]``: a row's shape, e.g. (h, w, U))."""
    return rows * sum(int(np.prod(shape)) for shape in layers.values()) * itemsize


def host_memory() -> int | None:
    """Bytes of host memory available: ``MemAvailable`` of /proc/meminfo (Linux), else free
    pages; None where unknown. (The driver's ``device_memory`` on a CPU backend, too.)"""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None


def choose_place(need: int, device_free: int | None, host_free: int | None, disk_free: int | None,
                 on_cpu: bool) -> str:  # fmt: skip
    """Where ``need`` bytes of activations go under ``auto``: the device when they take at most
    :data:`ROOM` of its free memory (on a CPU backend the device is host memory), else host
    memory, else a scratch file, under the same rule; else ``none``.

    >>> choose_place(10, 100, 100, 100, on_cpu=False), choose_place(80, 100, 1000, 100, on_cpu=False)
    ('device', 'host')
    >>> choose_place(80, 100, 100, 1000, on_cpu=True), choose_place(80, 100, 100, 100, on_cpu=True)
    ('file', 'none')
    """
    fits = [("device", device_free), ("host", None if on_cpu else host_free), ("file", disk_free)]
    for place, free in fits:
        if free is not None and need <= ROOM * free:
            return place
    return "none"


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array split along axis 0 over the mesh, in order."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


class ActivationCache:
    """Every batch's activations (``{layer: [B, h, w, U]}``, batch ``i`` of the plan), kept at
    ``place`` (``device``, ``host`` or ``file``); ``complete`` once every batch is in."""

    def __init__(self, place: str, batches: int, directory: str | None = None):
        if place not in ("device", "host", "file"):
            raise ValueError(f"an ActivationCache is kept on the device, host or a file, not {place!r}")
        self.place, self.batches = place, batches
        self._directory = directory
        self._scratch: str | None = None
        self._kept: dict[int, dict] = {}
        self._files: dict[str, np.memmap] = {}

    @property
    def complete(self) -> bool:
        return len(self._kept) == self.batches

    def put(self, i: int, acts: Mapping[str, jax.Array]) -> None:
        if self.place == "device":
            self._kept[i] = dict(acts)
            return
        rows = {name: local_rows(a) for name, a in acts.items()}
        if self.place == "file":
            rows = {name: self._write(name, i, r) for name, r in rows.items()}
        self._kept[i] = rows

    def get(self, i: int, parallel: DataParallel) -> dict[str, jax.Array]:
        kept = self._kept[i]
        if self.place == "device":
            return kept
        return {name: parallel.shard(np.asarray(r)) for name, r in kept.items()}

    def _write(self, name: str, i: int, rows: np.ndarray) -> np.memmap:
        """Batch i's rows of ``name`` into the layer's scratch file; returns them as a view of it."""
        if name not in self._files:
            try:
                self._scratch = self._scratch or tempfile.mkdtemp(prefix="dissectjax-activations-", dir=self._directory)
                path = os.path.join(self._scratch, f"{len(self._files)}.bin")
                self._files[name] = np.memmap(path, rows.dtype, "w+", shape=(self.batches, *rows.shape))
            except OSError as e:
                raise DissectError(f"cannot keep activations in a file under {self._directory or tempfile.gettempdir()}"
                                   f" ({e.strerror or e}); pass --cache-activations none (or another place), or "
                                   "a --cache-dir with room") from None  # fmt: skip
        self._files[name][i] = rows
        return self._files[name][i]

    def close(self) -> None:
        """Drops everything kept and deletes a scratch directory."""
        self._kept.clear()
        self._files.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def open_cache(pipeline: Pipeline, needs_images: bool, need: int, batches: int,
               device_free: int | None) -> ActivationCache | None:  # fmt: skip
    """The cache ``pipeline`` asks for, for ``batches`` batches of ``need`` bytes in all (None:
    ``none``, or ``auto`` for a source that reads no images: its activations are stored
    already). ``device_free``: bytes free on this process's devices together."""
    place = pipeline.cache
    if place == "auto":
        if not needs_images:
            return None
        scratch = pipeline.cache_dir or tempfile.gettempdir()
        disk = shutil.disk_usage(scratch).free if os.path.isdir(scratch) else None
        place = choose_place(need, device_free, host_memory(), disk, jax.default_backend() == "cpu")
    if place == "none":
        return None
    return ActivationCache(place, batches, pipeline.cache_dir)


def default_decode_workers() -> int:
    """Decoding processes by default: none on a machine of four cores or fewer (threads of this
    process, which leave the cores to the forward pass), else all cores but two, at most eight."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 4 else min(8, cores - 2)
