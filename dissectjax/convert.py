"""Importing PyTorch weights: torchvision-layout state dicts -> the Flax models' variables.

    weights file (.pth/.pt/.tar, .safetensors, .npz) -> {torch key: array}
        -> unwrap {'state_dict': ...} and 'module.' prefixes
        -> per Flax leaf: its torch key and layout change -> variables -> orbax checkpoint

Layout changes: convolution OIHW -> HWIO; linear [out, in] -> [in, out], and the first
linear after flattening re-ordered from PyTorch's (C, H, W) to NHWC's (H, W, C);
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var. Preprocessing
(channel order, value range, mean, std) is saved as part of the model, so a converted
network sees its inputs as it did in training. PyTorch is needed only to read pickled
``.pth`` files; ``.safetensors`` and ``.npz`` are read with NumPy alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.models import build_model
from dissectjax.models.ops import IMAGENET_MEAN, IMAGENET_STD

ARCHITECTURES = {"resnet18": "fc", "resnet50": "fc", "alexnet": "classifier.6", "vgg16": "classifier.6"}
IGNORED_SUFFIXES = (".num_batches_tracked",)
_RENAMES = {"stem.conv": "conv1", "stem.bn": "bn1", "downsample.conv": "downsample.0", "downsample.bn": "downsample.1"}


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a network's training images were prepared from RGB pixels (mean/std in the model's channel order)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr: bool = False
    value_range: float = 1.0  # pixels scaled to [0, value_range] before the mean is subtracted
    input_size: int = 224

    def __post_init__(self):
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) != 3 or not all(_finite(x) for x in values):
                raise DissectError(f"preprocessing {field} must be three finite numbers (one per channel), got "
                                   f"{list(values)}")  # fmt: skip
        if min(self.std) <= 0:
            raise DissectError(f"preprocessing std must be positive (it divides), got {list(self.std)}")
        if not (_finite(self.value_range) and self.value_range > 0):
            raise DissectError(f"preprocessing value_range must be a positive number, got {self.value_range}")
        if (
            not isinstance(self.input_size, numbers.Integral)
            or isinstance(self.input_size, bool)
            or self.input_size < 1
        ):
            raise DissectError(f"preprocessing input_size must be a positive integer, got {self.input_size}")

    def model_kwargs(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "bgr": self.bgr, "value_range": self.value_range}


PRESETS = {
    "torchvision": Preprocessing(),  # torchvision and the public Places365 PyTorch releases
    "caffe": Preprocessing((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True, value_range=255.0, input_size=227),
}


# ---- reading weight files ----------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}  # fmt: skip


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data) as arrays.

    The header is checked against the file: an object of tensors, each with a known dtype, a
    shape of non-negative integers and data offsets inside the file that hold exactly its
    bytes; anything else is a DissectError naming the file and the tensor.
    """
    with open(path, "rb") as f:
        data = f.read()
    bad = f"{path} is not a valid .safetensors file"
    if len(data) < 8:
        raise DissectError(f"{bad}: {len(data)} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise DissectError(f"{bad}: its header says {length} bytes of JSON but the file has {len(data) - 8} after "
                           "the length (truncated, or not a .safetensors file)")  # fmt: skip
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError) as e:
        raise DissectError(f"{bad}: the header is not JSON ({' '.join(str(e).split())})") from None
    if not isinstance(header, dict):
        raise DissectError(f"{bad}: the header is a JSON {type(header).__name__}; expected an object of tensors")
    body = memoryview(data)[8 + length :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise DissectError(f"{where}: expected {{'dtype', 'shape', 'data_offsets'}} in the header, got {info!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES:
            raise DissectError(f"{where} has dtype {dtype}, which the reader does not know")
        if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                  for x in shape):  # fmt: skip
            raise DissectError(f"{where}: shape {shape!r}; expected a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(x, int) for x in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= len(body)):  # fmt: skip
            raise DissectError(f"{where}: data offsets {offsets!r} are not inside the file's {len(body)} data bytes "
                               "(truncated?)")  # fmt: skip
        start, end = offsets
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if end - start != math.prod(shape) * itemsize:
            raise DissectError(f"{where}: {end - start} data bytes for shape {shape} of {dtype}, which needs "
                               f"{math.prod(shape) * itemsize}")  # fmt: skip
        if dtype == "BF16":  # bfloat16: the high half of a float32
            raw = np.frombuffer(body[start:end], "<u2").astype(np.uint32) << 16
            array = raw.view(np.float32)
        else:
            array = np.frombuffer(body[start:end], _SAFETENSORS_DTYPES[dtype])
        out[name] = array.reshape(shape).copy()
    return out


def _read_torch(path: str) -> Mapping:
    try:
        import torch
    except ImportError:
        raise DissectError(
            f"reading {os.path.basename(path)} needs PyTorch (pip install torch); or save the state dict as "
            ".safetensors or .npz where PyTorch is installed, and convert that"
        ) from None
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise DissectError(
            f"{path} is not a PyTorch file ({'empty' if not magic else f'it starts with {magic!r}'}); expected "
            "what torch.save writes (a zip archive), or a .safetensors/.npz file"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    # what torch.load raises on damaged files (RuntimeError from its zip reader) and on pickles
    # with custom classes (UnpicklingError): say what to do
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        text = " ".join(str(e).split())
        raise DissectError(
            f"cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: "
            f"{text[:300] + ' ...' if len(text) > 300 else text} (a damaged or truncated file?). Save just the state "
            "dict (torch.save(model.state_dict(), 'weights.pth')) and convert that"
        ) from None

    def to_numpy(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to(torch.float32 if x.is_floating_point() else x.dtype).cpu().numpy()
        if isinstance(x, Mapping):
            return {k: to_numpy(v) for k, v in x.items()}
        return x

    return to_numpy(loaded)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """The state dict in ``path`` as {key: array}, unwrapped (see :func:`unwrap`)."""
    if os.path.isdir(path):
        raise DissectError(f"weights file {path} is a directory; expected a .pth/.pt/.tar, .safetensors or .npz file")
    if not os.path.isfile(path):
        raise DissectError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        raw = read_safetensors(path)
    elif path.endswith(".npz"):
        raw = _read_npz(path)
    else:
        raw = _read_torch(path)
    state = unwrap(raw, path)
    check_finite(state, path)
    return state


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DissectError(f"{path} is a single .npy array, not an .npz archive of named tensors; save with "
                           "np.savez(path, **state_dict)")  # fmt: skip
    if not magic.startswith(b"PK"):
        raise DissectError(f"{path} is not an .npz file ({'empty' if not magic else 'not a zip archive'}); "
                           "expected what np.savez(path, **state_dict) writes")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    # damaged archives (BadZipFile: bad CRC, truncated), members that are not arrays (ValueError)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise DissectError(f"cannot read {path} as an .npz of tensors: {' '.join(str(e).split())} (a damaged "
                           "or truncated file?)") from None  # fmt: skip


def check_finite(state: Mapping[str, np.ndarray], source: str = "the state dict") -> None:
    """Refuses a tensor with NaN/Inf values, naming its key (a network with them computes nothing useful)."""
    for key, value in state.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.inexact):
            bad = value.size - int(np.count_nonzero(np.isfinite(value)))
            if bad:
                raise DissectError(f"{source}: tensor {key!r} holds {bad} NaN/Inf values of {value.size}; "
                                   "expected finite weights")  # fmt: skip


def unwrap(raw: Mapping, source: str = "the file") -> dict[str, np.ndarray]:
    """The tensors of a state dict, from ``{'state_dict': ...}`` wrappers and without ``module.`` prefixes
    (DataParallel checkpoints, as the public Places365 releases are)."""
    if not isinstance(raw, Mapping):
        raise DissectError(f"{source} holds a {type(raw).__name__}; expected a state dict {{name: tensor}}")
    while isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    arrays = {k: np.asarray(v) for k, v in raw.items() if isinstance(v, np.ndarray | np.generic)}
    if not arrays:
        raise DissectError(f"no tensors found in {source}; it holds the keys {', '.join(map(str, list(raw)[:10]))}")
    return {str(k).removeprefix("module."): v for k, v in arrays.items()}


# ---- mapping onto the Flax models ----------------------------------------------------------
def torch_prefix(path: Sequence[str]) -> str:
    """A Flax module path (``layer1_0``, ``downsample_conv``) -> its torchvision module name."""
    name = ".".join(part.replace("_", ".") for part in path)
    for flax_name, torch_name in _RENAMES.items():
        name = name.replace(flax_name, torch_name)
    return name


@dataclasses.dataclass(frozen=True)
class Leaf:
    """Where one Flax variable comes from: a torch key and how to change its layout."""

    collection: str
    path: tuple[str, ...]  # module path + variable name
    key: str  # torch state dict key
    shape: tuple[int, ...]  # the Flax shape


def leaves(variables: Mapping) -> list[Leaf]:
    """Every Flax variable of an (abstract) variables tree with its torch key."""
    names = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
             ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}  # fmt: skip
    out = []
    for collection, tree in variables.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = tuple(p.key for p in path)
            torch_name = names[(collection, keys[-1])]
            out.append(Leaf(collection, keys, f"{torch_prefix(keys[:-1])}.{torch_name}", tuple(leaf.shape)))
    return out


def _layout(leaf: Leaf, w: np.ndarray, flatten_from: tuple[int, int, int] | None) -> np.ndarray:
    """The torch array ``w`` in the Flax leaf's layout."""
    if leaf.path[-1] != "kernel":
        return w
    if w.ndim == 4:  # conv: [out, in, kh, kw] -> [kh, kw, in, out]
        return w.transpose(2, 3, 1, 0)
    if flatten_from is not None and w.shape[1] == math.prod(flatten_from) and leaf.shape[0] == w.shape[1]:
        c, h, wd = flatten_from  # PyTorch flattened (C, H, W); NHWC flattens (H, W, C)
        return w.reshape(w.shape[0], c, h, wd).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
    return w.T


def _flatten_shape(model) -> tuple[int, int, int] | None:
    """(C, H, W) of the feature map the first linear layer of a plain net flattens, else None."""
    if not hasattr(model, "pooled"):
        return None
    convs = [item for item in model.layers if item != "pool"]
    return (convs[-1][1], *model.pooled)


def to_variables(arch: str, state: Mapping[str, np.ndarray], preprocessing: Preprocessing = PRESETS["torchvision"]):
    """(model, variables) of architecture ``arch`` holding the weights of ``state``.

    Every Flax variable must find its torch key with the right number of elements and a
    numeric dtype, and every torch key (but BatchNorm's ``num_batches_tracked``) must be
    used; otherwise a DissectError lists the keys that do not fit. A tensor with NaN/Inf
    values is refused by name.
    """
    if arch not in ARCHITECTURES:
        raise DissectError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    check_finite(state)
    head = f"{ARCHITECTURES[arch]}.weight"
    if head not in state:
        raise DissectError(_mismatch(arch, [head], _unexpected(state, set()), []))
    num_classes = int(state[head].shape[0])
    model = build_model(arch, num_classes=num_classes, **preprocessing.model_kwargs())
    shape = (1, preprocessing.input_size, preprocessing.input_size, 3)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(shape, np.uint8)))
    flatten_from = _flatten_shape(model)
    wanted = leaves(abstract)
    missing = [leaf.key for leaf in wanted if leaf.key not in state]
    wrong = []
    for leaf in wanted:
        if leaf.key in state and math.prod(state[leaf.key].shape) != math.prod(leaf.shape):
            wrong.append(f"{leaf.key}: file {list(state[leaf.key].shape)}, {arch} needs {list(leaf.shape)}")
    for leaf in wanted:
        if leaf.key in state and not np.issubdtype(np.asarray(state[leaf.key]).dtype, np.number):
            wrong.append(f"{leaf.key}: dtype {np.asarray(state[leaf.key]).dtype}, {arch} needs numbers")
    unexpected = _unexpected(state, {leaf.key for leaf in wanted})
    if missing or wrong or unexpected:
        raise DissectError(_mismatch(arch, missing, unexpected, wrong))
    tree: dict = {}
    for leaf in wanted:
        value = _layout(leaf, np.asarray(state[leaf.key], np.float32), flatten_from)
        node = tree.setdefault(leaf.collection, {})
        for part in leaf.path[:-1]:
            node = node.setdefault(part, {})
        node[leaf.path[-1]] = value.reshape(leaf.shape)
    return model, tree


def _unexpected(state: Mapping, used: set[str]) -> list[str]:
    return [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES)]


def _mismatch(arch: str, missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    def part(title, keys):
        if not keys:
            return ""
        shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
        return f"\n  {len(keys)} {title}: {shown}"

    return (
        f"the weights do not fit {arch} (is the architecture right?):"
        + part("keys the model needs that the file lacks", missing)
        + part("keys in the file the model does not use", unexpected)
        + part("shape mismatches", wrong)
    )


def convert(weights: str, arch: str, out: str, preprocessing: Preprocessing = PRESETS["torchvision"]) -> dict:
    """Converts a weights file into a dissectjax checkpoint at ``out``; returns its config."""
    from dissectjax.checkpoint import read_config, save_checkpoint

    model, variables = to_variables(arch, read_weights(weights), preprocessing)
    size = preprocessing.input_size
    save_checkpoint(out, arch, {"num_classes": int(model.num_classes), **preprocessing.model_kwargs()},
                    (size, size, 3), variables, source=os.path.abspath(weights), converted_from="pytorch")  # fmt: skip
    return read_config(out)
