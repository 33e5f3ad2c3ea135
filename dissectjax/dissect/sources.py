"""Activation sources: where a dissection's per-unit maps come from.

A source turns a probe batch into ``{layer: float [B, h, w, U]}`` with
``source.activations(batch, parallel)``: ``batch`` holds this process's rows, and the
result is a global array split over ``parallel``'s device mesh. Two kinds:
a Flax model applied to the batch's images (:class:`ModelSource`), or activations
computed elsewhere and stored as ``[N, U, h, w]`` (NetDissect's channel-first layout, the
default) or ``[N, h, w, U]``, row i = dataset row i (:class:`ArraySource`).
"""

from __future__ import annotations

import functools
import math
import os
import tokenize
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
        self.map_shapes = {name: tuple(shapes[name].shape[1:3]) if shapes[name].ndim == 4 else (1, 1)
                           for name in self.layers}  # (h, w) of each layer's maps  # fmt: skip
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


LAYOUTS = {"nchw": "[N, U, h, w]", "nhwc": "[N, h, w, U]"}


def _aspect_off(h: int, w: int, aspects: np.ndarray) -> float:
    """By what factor the aspect h/w of a map is off the nearest of ``aspects`` (sh/sw): 1 = equal."""
    ratio = (h / w) / aspects
    return float(np.min(np.maximum(ratio, 1 / ratio)))


def _rounding(h: int, w: int) -> float:
    """How far a map's aspect may be off its image's by rounding alone (a side off by one)."""
    return (1 + 1 / h) * (1 + 1 / w)


class ArraySource:
    """Precomputed activations of one layer (a memory-mapped ``.npy``): ``[N, U, h, w]``
    (``layout="nchw"``, NetDissect's channel-first order, the default) or ``[N, h, w, U]``
    (``layout="nhwc"``); row i holds dataset row i.

    Certain checks (a DissectError says what was found and what is expected): 4 axes; N =
    the dataset's rows; a numeric dtype (integers or floats: not bool, complex, strings,
    objects); at least one unit and maps of at least 1 x 1. NaN/Inf values are refused by
    the driver where it meets them.

    One heuristic, for the silent mistake (channels-last data read as channels-first, or the
    reverse), used only when ``label_sizes`` (the probe set's label maps, rows of (sh, sw))
    is given: a network's map keeps its images' aspect ratio up to rounding, and label maps
    have the images' aspect. The array is refused when the map read under ``layout`` is off
    every label aspect by more than twice what rounding explains (a factor
    ``2 (1 + 1/h)(1 + 1/w)``), while the map read under the other layout matches a label
    aspect within rounding (``(1 + 1/h')(1 + 1/w')``). E.g. [N, 7, 7, 512] with square
    labels read as NCHW: 7 units of 7 x 512 maps (off by 73 times) against 512 units of
    7 x 7 maps: refused, "pass --layout nhwc". Nothing else is guessed: when both readings
    fit (e.g. [N, 8, 8, 8]), or neither, or the unit count is close to the map's width
    (e.g. [N, 28, 28, 32] read as NCHW, 28 x 32 maps), the array is taken as the layout says.
    """

    needs_images = False

    def __init__(self, activations: np.ndarray, name: str, num_images: int, layout: str = "nchw",
                 label_sizes: np.ndarray | None = None):  # fmt: skip
        if layout not in LAYOUTS:
            raise DissectError(f"activations layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        order = LAYOUTS[layout]
        if activations.ndim != 4:
            raise DissectError(f"activations for {name!r} have shape {activations.shape}; expected 4 axes {order}")
        if activations.shape[0] != num_images:
            raise DissectError(
                f"activations for {name!r} have {activations.shape[0]} rows but the dataset has {num_images} images; "
                "row i must hold image i of index.csv"
            )
        if not np.issubdtype(activations.dtype, np.floating) and not np.issubdtype(activations.dtype, np.integer):
            raise DissectError(f"activations for {name!r} have dtype {activations.dtype}; expected numbers "
                               "(integers or floats)")  # fmt: skip
        _, a, b, c = activations.shape
        units, h, w = (a, b, c) if layout == "nchw" else (c, a, b)
        if units == 0 or h == 0 or w == 0:
            raise DissectError(f"activations for {name!r} have shape {list(activations.shape)}, read as {order}: "
                               f"{units} units of {h} x {w} maps; expected at least one unit and maps of at least "
                               "1 x 1")  # fmt: skip
        if label_sizes is not None:
            self._check_layout(activations.shape, name, layout, label_sizes)
        self.layers = [name]
        self.units = {name: units}
        self.map_shapes = {name: (h, w)}
        self.description = f"activations {name}"
        self.layout = layout
        self._acts = activations

    @staticmethod
    def _check_layout(shape, name: str, layout: str, label_sizes) -> None:
        sizes = np.unique(np.asarray(label_sizes, np.float64).reshape(-1, 2), axis=0)
        sizes = sizes[(sizes > 0).all(axis=1)]
        if not len(sizes):
            return
        aspects = sizes[:, 0] / sizes[:, 1]
        _, a, b, c = shape
        read = {"nchw": (a, b, c), "nhwc": (c, a, b)}  # (units, h, w)
        other = "nhwc" if layout == "nchw" else "nchw"
        _, h, w = read[layout]
        units2, h2, w2 = read[other]
        if min(h2, w2, units2) < 1:
            return
        far = _aspect_off(h, w, aspects) > 2 * _rounding(h, w)
        fits = _aspect_off(h2, w2, aspects) <= _rounding(h2, w2)
        if far and fits:
            labels = ", ".join(f"{int(sh)} x {int(sw)}" for sh, sw in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
            looks = {"nhwc": "channels-last [N, h, w, U]", "nchw": "channels-first [N, U, h, w]"}[other]
            raise DissectError(
                f"activations for {name!r} have shape {list(shape)}: read as {layout} {LAYOUTS[layout]} they are "
                f"{read[layout][0]} units of {h} x {w} maps, which cannot have the label maps' aspect ({labels}); "
                f"the array looks {looks}, {units2} units of {h2} x {w2} maps: pass --layout {other}"
            )

    @classmethod
    def from_npy(cls, path: str, num_images: int, layout: str = "nchw",
                 label_sizes: np.ndarray | None = None) -> ArraySource:  # fmt: skip
        """The array in a ``.npy`` file, memory-mapped; the layer is named after the file's stem.

        The file is checked before it is mapped: a file (not a directory), not empty, a
        ``.npy`` (not an ``.npz`` archive or anything else), a readable header with
        non-negative dimensions and a numeric dtype, and as many data bytes as the header
        says.
        """
        name = os.path.splitext(os.path.basename(path))[0]
        where = f"activations file {path}"
        if os.path.isdir(path):
            raise DissectError(f"{where} is a directory; expected a .npy file {LAYOUTS.get(layout, '')}")
        if not os.path.exists(path):
            raise DissectError(f"{where} does not exist")
        size = os.path.getsize(path)
        if size == 0:
            raise DissectError(f"{where} is empty; expected a .npy array {LAYOUTS.get(layout, '')}")
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic.startswith(b"PK"):
                raise DissectError(f"{where} is an .npz (zip) archive, not a .npy array: save the layer's array "
                                   "alone with np.save(path, array)")  # fmt: skip
            if magic != b"\x93NUMPY":
                raise DissectError(f"{where} is not a .npy file (it does not start with NumPy's magic string); "
                                   "expected an array saved with np.save")  # fmt: skip
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            # what NumPy's header parser raises on a damaged header
            except (ValueError, SyntaxError, tokenize.TokenError) as e:
                raise DissectError(f"{where} has a corrupt .npy header ({' '.join(str(e).split())})") from None
            offset = f.tell()
        if any(x < 0 for x in shape):
            raise DissectError(f"{where}: its header gives the shape {list(shape)}, with a negative dimension "
                               "(a corrupt header)")  # fmt: skip
        if dtype.hasobject or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise DissectError(f"{where} holds dtype {dtype}; expected numbers (integers or floats)")
        need = offset + math.prod(shape) * dtype.itemsize
        if size < need:
            raise DissectError(f"{where} is truncated: its header gives {list(shape)} {dtype}, {need} bytes with "
                               f"the header, and the file has {size}")  # fmt: skip
        try:
            acts = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DissectError(f"cannot read {where} as a .npy array: {' '.join(str(e).split())}") from None
        return cls(acts, name, num_images, layout, label_sizes)

    def activations(self, batch: ProbeBatch, parallel: DataParallel) -> dict[str, jax.Array]:
        rows = np.where(batch.index >= 0, batch.index, 0)
        acts = np.asarray(self._acts[rows], np.float32)
        if self.layout == "nchw":
            acts = acts.transpose(0, 2, 3, 1)
        return {self.layers[0]: parallel.shard(acts)}


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
    from dissectjax.checkpoint import check_image_shape, check_model_runs, init_variables, load_checkpoint
    from dissectjax.models import build_model

    if not layers:
        raise DissectError("name at least one layer to dissect (e.g. conv4,conv5)")
    if not 0 <= seed < 2**32:
        raise DissectError(f"seed must be in 0 .. 2**32 - 1, got {seed}")
    if checkpoint:
        net, variables, config = load_checkpoint(checkpoint)
        if model and model != config["model"]:
            raise DissectError(f"model {model} does not match the checkpoint's model {config['model']}")
        check_image_shape(os.path.abspath(checkpoint), net, variables, config, image_shape)
        name = f"{config['model']}:{os.path.abspath(checkpoint)}"
    elif model:
        net = build_model(model)
        check_model_runs(net, image_shape)
        variables = init_variables(net, image_shape, seed)
        name = f"{model}:random-init(seed={seed})"
    else:
        raise DissectError("give a checkpoint, or a registered model name to dissect at random initialization")
    return ModelSource(net, variables, layers, image_shape), name
