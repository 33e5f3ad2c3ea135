"""The package's boundary: what a dissection reads (a source of activations, a probe set)
and the callbacks it reports through."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import jax

from dissectjax.data.probe import ProbeBatch, ProbeDataset
from dissectjax.parallel import DataParallel

__all__ = ["ProbeDataset", "Progress", "Say", "Source", "no_progress", "silent"]

Progress = Callable[..., Iterable]  # progress(iterable, total=, initial=, desc=, ...) -> the same items
Say = Callable[[str], None]  # one log line


class Source(Protocol):
    """Activations of some layers for a batch of probe rows (a model, a stored array...).

    ``units[layer]`` is the layer's unit count U; ``activations`` returns, per layer in
    ``layers``, float [B, h, w, U] sharded over ``parallel`` along the batch axis.
    ``needs_images``: whether ``activations`` reads ``batch.images`` (else they are not loaded).
    """

    layers: list[str]
    units: dict[str, int]
    needs_images: bool
    description: str

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]: ...


def no_progress(iterable: Iterable, **_) -> Iterable:
    """A :data:`Progress` that shows nothing."""
    return iterable


def silent(_message: str) -> None:
    """A :data:`Say` that says nothing."""
