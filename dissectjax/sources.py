"""Activation sources: where a dissection's per-unit maps come from.

A source turns a probe batch into ``{layer: float [B, h, w, U]}`` with
``source.activations(batch, parallel)``: ``batch`` holds this process's rows, and the
result is a global array split over ``parallel``'s device mesh. Two kinds:
a Flax model applied to the batch's images (:class:`ModelSource`), or activations
computed elsewhere and stored as ``[N, U, h, w]`` (NetDissect's channel-first layout,
row i = dataset row i; :class:`ArraySource`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.data.probe import ProbeBatch, batch_plan, concept_presence, iterate_batches
from dissectjax.errors import DissectError
from dissectjax.models.layers import activation_fn
from dissectjax.parallel import DATA, DataParallel, to_host
from dissectjax.stats.upsample import upsample


class ModelSource:
    """Layers of a model, computed by one jitted forward pass per batch.

    A linen model's layers are read by :func:`~dissectjax.models.layers.activation_fn`;
    any other model (an NNX module: :mod:`dissectjax.nnx_tools`) passes ``forward``, a pure
    function ``images [B, H, W, 3] -> {layer: [B, h, w, U]}``.

    Each device runs the forward pass on its own shard (``shard_map``), so a device's
    program depends only on the per-device batch size, not on how many devices there are:
    the same images give bit-identical activations on 1 device or on many.
    """

    needs_images = True

    def __init__(self, model: nn.Module, variables, layers: Sequence[str], image_shape: tuple[int, int, int],
                 forward: Callable[[jax.Array], dict[str, jax.Array]] | None = None):  # fmt: skip
        example = jnp.zeros((1, *image_shape), jnp.uint8)
        self.model, self.image_shape, self.layers = model, tuple(image_shape), list(layers)
        self._forward = forward or activation_fn(model, variables, self.layers, example)
        shapes = jax.eval_shape(self._forward, example)
        self.units = {name: s.shape[-1] for name, s in shapes.items()}
        self.description = type(model).__name__
        self._compiled: dict = {}

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        if parallel.mesh not in self._compiled:
            spec = jax.sharding.PartitionSpec(DATA)
            self._compiled[parallel.mesh] = jax.jit(
                jax.shard_map(self._forward, mesh=parallel.mesh, in_specs=spec, out_specs=spec)
            )
        return self._compiled[parallel.mesh](parallel.shard(batch.images))


class ArraySource:
    """Precomputed activations [N, U, h, w] (memory-mapped ``.npy``), one layer."""

    needs_images = False

    def __init__(self, activations: np.ndarray, name: str, num_images: int):
        if activations.ndim != 4:
            raise DissectError(f"activations for {name!r} have shape {activations.shape}; expected 4 axes [N, U, h, w]")
        if activations.shape[0] != num_images:
            raise DissectError(
                f"activations for {name!r} have {activations.shape[0]} rows but the dataset has {num_images} images; "
                "row i must hold image i of index.csv"
            )
        if not np.issubdtype(activations.dtype, np.floating) and not np.issubdtype(activations.dtype, np.integer):
            raise DissectError(f"activations for {name!r} have dtype {activations.dtype}; expected numbers")
        self.layers = [name]
        self.units = {name: activations.shape[1]}
        self.description = f"activations {name}"
        self._acts = activations

    @classmethod
    def from_npy(cls, path: str, num_images: int) -> ArraySource:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            acts = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DissectError(f"activations file {path} does not exist") from None
        except ValueError as e:
            raise DissectError(f"cannot read activations file {path} as a .npy array: {e}") from None
        return cls(acts, name, num_images)

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        rows = np.where(batch.index >= 0, batch.index, 0)
        acts = np.asarray(self._acts[rows], np.float32)
        return {self.layers[0]: parallel.shard(acts.transpose(0, 2, 3, 1))}


def labelled_pixels(source, probe, layer: str, batch_size: int = 50):
    """Yields, per batch of valid rows, upsampled activations float32 [n, S, U] and concept
    presence bool [n, S, C] (``concept_presence``) at the label resolution."""
    parallel = DataParallel.create()
    plan = batch_plan(probe, parallel.global_batch_size(batch_size))
    for batch in iterate_batches(probe, plan, images=source.needs_images, labels=True):
        _, _, sh, sw = batch.labels.pixel.shape
        up = to_host(upsample(source.activations(batch, parallel)[layer], (sh, sw)))
        yield (
            up.reshape(len(batch.index), sh * sw, -1)[batch.valid],
            concept_presence(batch.labels, len(probe.concepts)),
        )
