"""Activation sources: where a dissection's per-unit maps come from.

A source turns a probe batch into ``{layer: float [B, h, w, U]}`` with
``source.activations(batch, parallel)``: ``batch`` holds this process's rows, and the
result is a global array split over ``parallel``'s device mesh. Two kinds:
a Flax model applied to the batch's images (:class:`ModelSource`), or activations
computed elsewhere and stored as ``[N, U, h, w]`` (NetDissect's channel-first layout,
row i = dataset row i; :class:`ArraySource`).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=32)
def _sharded(forward: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """``forward(variables, images)`` compiled per device shard: variables replicated, images split."""
    spec = jax.sharding.PartitionSpec(DATA)
    return jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), spec), out_specs=spec))


class ModelSource:
    """Layers of a model, computed by one jitted forward pass per batch.

    A linen model's layers are read by :func:`~dissectjax.models.layers.activation_fn`;
    any other model (an NNX module: :mod:`dissectjax.models.nnx_bridge`) passes ``forward``, a pure,
    hashable function ``(variables, images [B, H, W, 3]) -> {layer: [B, h, w, U]}`` whose
    result includes ``layers`` (it may hold more: they are computed, then dropped).

    Variables are an argument of the compiled program, so sources over checkpoints of one
    architecture share it. Each device runs the forward pass on its own shard
    (``shard_map``), so a device's program depends only on the per-device batch size, not
    on how many devices there are: the same images give bit-identical activations on 1
    device or on many.
    """

    needs_images = True

    def __init__(self, model: nn.Module, variables, layers: Sequence[str], image_shape: tuple[int, int, int],
                 forward: Callable[[object, jax.Array], dict[str, jax.Array]] | None = None):  # fmt: skip
        example = jnp.zeros((1, *image_shape), jnp.uint8)
        self.model, self.image_shape, self.layers = model, tuple(image_shape), list(layers)
        self.variables = variables
        self._forward = forward or activation_fn(model, variables, self.layers, example)
        shapes = jax.eval_shape(self._forward, variables, example)
        self.units = {name: shapes[name].shape[-1] for name in self.layers}
        self.description = type(model).__name__
        self._replicated: dict = {}

    @classmethod
    def from_nnx(cls, module, layers: Sequence[str], image_shape: tuple[int, int, int]) -> ModelSource:
        """A source over an NNX module's sown layers (:mod:`dissectjax.models.nnx_bridge`)."""
        from dissectjax.models.nnx_bridge import activation_fn as nnx_activation_fn

        forward, state = nnx_activation_fn(module, layers, image_shape)
        return cls(module, state, layers, image_shape, forward=forward)

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        if parallel.mesh not in self._replicated:
            self._replicated[parallel.mesh] = jax.tree.map(parallel.replicate, self.variables)
        acts = _sharded(self._forward, parallel.mesh)(self._replicated[parallel.mesh], parallel.shard(batch.images))
        return {name: acts[name] for name in self.layers}


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


def model_source(layers: Sequence[str], image_shape: tuple[int, int, int], checkpoint: str | None = None,
                 model: str | None = None, seed: int = 0) -> tuple[ModelSource, str]:  # fmt: skip
    """(a source over ``layers`` of a checkpoint's model, or of a registered ``model`` at random
    initialization with ``seed``; the model's name as ``summary.json`` records it)."""
    from dissectjax.checkpoint import init_variables, load_checkpoint
    from dissectjax.models import build_model

    if not layers:
        raise DissectError("name at least one layer to dissect (e.g. conv4,conv5)")
    if checkpoint:
        net, variables, config = load_checkpoint(checkpoint)
        if model and model != config["model"]:
            raise DissectError(f"model {model} does not match the checkpoint's model {config['model']}")
        name = f"{config['model']}:{os.path.abspath(checkpoint)}"
    elif model:
        net = build_model(model)
        variables = init_variables(net, image_shape, seed)
        name = f"{model}:random-init(seed={seed})"
    else:
        raise DissectError("give a checkpoint, or a registered model name to dissect at random initialization")
    return ModelSource(net, variables, layers, image_shape), name
