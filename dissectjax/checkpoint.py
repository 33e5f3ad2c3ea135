"""Model checkpoints: orbax-saved variables plus a JSON description of the model.

    DIR/config.json   {"model": name, "model_kwargs": {...}, "input_shape": [H, W, C],
                       "checksums": {"params/conv1/kernel": "sha256:...", ...}, ...}
    DIR/state/        orbax StandardCheckpointer tree: {"params": ..., "batch_stats": ...}

Arrays are restored onto the default device whatever the device count at save time.

Loading validates everything it reads, in this order, and refuses bad input with a
:class:`~dissectjax.errors.DissectError` that names the checkpoint, what was wrong and what
was expected:

1. ``config.json``: valid JSON, an object, with ``model`` (a registered name),
   ``input_shape`` ([H, W, C], positive integers, images the model can run on:
   :func:`check_model_runs`), ``model_kwargs`` (an object of arguments the model takes) and,
   if present, ``checksums``;
2. ``state/``: every value of its database is read once before orbax sees it (a missing,
   truncated or garbled file is named here, not deep inside an asynchronous restore), and
   its arrays are the model's arrays with the model's shapes;
3. each array's bytes against its checksum (checkpoints written before checksums existed
   have none, and are loaded without this step);
4. every value finite (no NaN/Inf).

:func:`check_image_shape` then says whether the model can take a dataset's images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dissectjax.errors import DissectError, one_line
from dissectjax.models import MODELS, build_model
from dissectjax.models.scenenet import fold_whitening

CHECKSUM = "sha256"
_EXPECTED = '{"model": NAME, "model_kwargs": {...}, "input_shape": [H, W, C]}'
_INTACT = "expected the files orbax wrote, intact: restore them or re-create the checkpoint"


def bundled_checkpoints() -> str:
    """The folder of the committed checkpoints, shipped as package data (``dissectjax/checkpoints``,
    also reachable as ``checkpoints/`` at the repository's root), or ``$DISSECTJAX_CHECKPOINTS``."""
    env = os.environ.get("DISSECTJAX_CHECKPOINTS")
    if env:
        return env
    return str(importlib.resources.files("dissectjax") / "checkpoints")


def demo_checkpoint() -> str:
    """The demo's trained scene classifier (``checkpoints/scenenet-strong``, validation accuracy 0.787;
    ``checkpoints/scenenet`` is the weaker one most of RESULTS.md was measured on)."""
    return os.path.join(bundled_checkpoints(), "scenenet-strong")


def init_variables(model: nn.Module, input_shape, seed: int = 0):
    """Freshly initialized variables for a batch of ``input_shape`` [H, W, C] images.

    Compiled: the same values as the eager ``model.init`` (tested), in a fraction of its
    time for a deep network, whose eager initializers dispatch op by op."""
    return jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape), jnp.uint8))


# ---- arrays by path, and their checksums ------------------------------------------------------
def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def array_paths(tree) -> dict[str, object]:
    """{"params/conv1/kernel": leaf, ...}: the leaves of a variables tree by their path."""
    return {"/".join(_key(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def array_checksum(array) -> str:
    """``"sha256:<hex>"`` of an array's bytes (C order, as stored)."""
    return f"{CHECKSUM}:{hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()}"


def checksums(variables) -> dict[str, str]:
    """{array path: :func:`array_checksum`} for every leaf of ``variables``."""
    return {path: array_checksum(leaf) for path, leaf in array_paths(variables).items()}


def _as_stored(variables):
    """Host copies in the dtypes JAX holds them in (a NumPy float64 leaf becomes float32 when
    64-bit mode is off), so the bytes saved and checksummed are the bytes a load gives back."""
    host = jax.device_get(dict(variables))
    return jax.tree.map(lambda x: np.asarray(x, jax.dtypes.canonicalize_dtype(np.asarray(x).dtype)), host)


# ---- writing ------------------------------------------------------------------------------------
def save_checkpoint(directory: str, model_name: str, model_kwargs: dict, input_shape, variables, **info) -> None:
    """Writes the checkpoint under a temporary name, then renames it to ``directory``.

    config.json records a checksum of every array (``checksums``), verified at load.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise DissectError(f"checkpoint {directory} already exists; remove it or choose another path")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ckpt-", dir=parent)
    try:
        host = _as_stored(variables)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "state"), host)
        checkpointer.wait_until_finished()
        config = {"model": model_name, "model_kwargs": model_kwargs, "input_shape": list(input_shape), **info,
                  "checksums": checksums(host)}  # fmt: skip
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def add_checksums(directory: str) -> dict[str, str]:
    """Records the checksums of a checkpoint written before checksums existed in its
    config.json (atomically); ``state/`` is not touched. The checkpoint is loaded (and so
    validated) first. Returns the checksums; a checkpoint that has them is left as it is."""
    directory = os.path.abspath(directory)
    config = read_config(directory)
    if "checksums" in config:
        load_checkpoint(directory)
        return config["checksums"]
    _, variables, _ = load_checkpoint(directory)
    config["checksums"] = checksums(jax.device_get(variables))
    path = os.path.join(directory, "config.json")
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".config-", suffix=".json", delete=False) as f:
        json.dump(config, f, indent=2)
    os.chmod(f.name, os.stat(path).st_mode & 0o777)  # as before, not the temporary file's 0600
    os.replace(f.name, path)
    return config["checksums"]


# ---- reading: config.json -----------------------------------------------------------------------
def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer that reads without waiting for the other processes of a multi-process run."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )


def read_config(directory: str) -> dict:
    """The checkpoint's config.json, checked: a JSON object with ``model``, ``input_shape``
    ([H, W, C], positive integers), ``model_kwargs`` (an object) and ``checksums`` (if any)."""
    if not os.path.exists(directory):
        raise DissectError(f"checkpoint {directory} does not exist")
    if not os.path.isdir(directory):
        raise DissectError(f"checkpoint {directory} is a file; expected a checkpoint directory (config.json, state/)")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise DissectError(f"{directory} is not a dissectjax checkpoint (no config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DissectError(f"checkpoint {directory}: config.json is not valid JSON ({one_line(e)}); "
                           f"expected {_EXPECTED}") from None  # fmt: skip
    except OSError as e:
        raise DissectError(f"checkpoint {directory}: cannot read config.json: {one_line(e)}") from None
    _check_config(directory, config)
    return config


def _check_config(directory: str, config) -> None:
    where = f"checkpoint {directory}: config.json"
    if not isinstance(config, dict):
        raise DissectError(f"{where} holds a JSON {type(config).__name__}; expected an object {_EXPECTED}")
    missing = [key for key in ("model", "input_shape") if key not in config]
    if missing:
        raise DissectError(f"{where} lacks {', '.join(map(repr, missing))}; expected {_EXPECTED}")
    if not isinstance(config["model"], str):
        raise DissectError(f"{where}: 'model' is {config['model']!r}; expected a model name")
    shape = config["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)):  # fmt: skip
        raise DissectError(f"{where}: 'input_shape' is {shape!r}; expected [H, W, C], three positive integers")
    if not isinstance(config.get("model_kwargs", {}), dict):
        raise DissectError(f"{where}: 'model_kwargs' is {config['model_kwargs']!r}; expected an object")
    sums = config.get("checksums")
    if sums is not None:
        bad = not isinstance(sums, dict) or any(
            not isinstance(v, str) or not v.startswith(f"{CHECKSUM}:") or len(v) != len(CHECKSUM) + 65
            for v in sums.values()
        )
        if bad:
            raise DissectError(f"{where}: 'checksums' must map array paths to \"{CHECKSUM}:<64 hex digits>\"")


def _build(directory: str, config: dict) -> nn.Module:
    """The model config.json describes; unknown names and arguments are refused by name."""
    name, kwargs = config["model"], config.get("model_kwargs", {})
    if name not in MODELS:
        raise DissectError(f"checkpoint {directory}: config.json names the unknown model {name!r}; "
                           f"available models: {', '.join(sorted(MODELS))}")  # fmt: skip
    cls = MODELS[name]
    if dataclasses.is_dataclass(cls):
        takes = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
        unknown = sorted(set(kwargs) - takes)
        if unknown:
            raise DissectError(f"checkpoint {directory}: config.json gives {name} the unknown model_kwargs "
                               f"{', '.join(unknown)}; {name} takes {', '.join(sorted(takes))}")  # fmt: skip
    return build_model(name, **kwargs)


def _dims(shape) -> str:
    return "x".join(str(int(x)) for x in shape)


def _describe(config: dict) -> str:
    kwargs = config.get("model_kwargs", {})
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{config['model']}({args}) on {_dims(config['input_shape'])} images"


# ---- reading: state/ ----------------------------------------------------------------------------
def _array_name(key: bytes) -> str:
    """The variables path of an orbax OCDBT key (``b'params.conv1.kernel/0.0.0.0'``)."""
    return key.decode("utf-8", "replace").split("/")[0].replace(".", "/")


def _scan_state(directory: str, state: str) -> None:
    """Reads every value of an OCDBT ``state/`` once, synchronously.

    Orbax restores arrays concurrently on an event loop; when a file is missing or damaged
    it fails with a bare Exception (or prints tracebacks from callbacks that outlive the
    loop). Reading the database first names what is wrong, cleanly. Nothing is written.
    """
    import tensorstore as ts

    entries = os.listdir(state)
    if "manifest.ocdbt" not in entries and not any(e.startswith("ocdbt.process_") for e in entries):
        return  # not an OCDBT checkpoint (older orbax): orbax reads it alone
    empty = None
    try:
        kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": state + os.sep}}).result()
        keys = kv.list().result()
        for key in keys:
            result = kv.read(key).result()
            if result.state != "value" or not len(result.value):
                empty = key
                break
    except ValueError as e:  # TensorStore's errors (missing, truncated or corrupt files)
        raise DissectError(
            f"checkpoint {directory}: state/ is damaged or incomplete ({one_line(e)}); {_INTACT}"
        ) from None
    if not keys:
        raise DissectError(f"checkpoint {directory}: state/ holds no arrays (state/manifest.ocdbt is missing or "
                           f"empty); {_INTACT}")  # fmt: skip
    if empty is not None:
        raise DissectError(f"checkpoint {directory}: array {_array_name(empty)} has no data in state/ (a file under "
                           f"state/ is missing or empty); {_INTACT}")  # fmt: skip


def _stored_arrays(directory: str, state: str, checkpointer) -> dict:
    """{path: (shape, dtype)} of the arrays in ``state/``, from orbax's metadata."""
    tree_file = os.path.join(state, "_METADATA")  # orbax's description of the tree (JSON)
    try:
        with open(tree_file, encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        raise DissectError(f"checkpoint {directory}: state/_METADATA is missing; {_INTACT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DissectError(f"checkpoint {directory}: state/_METADATA is damaged ({one_line(e)}); expected the "
                           "JSON orbax wrote: restore it or re-create the checkpoint") from None  # fmt: skip
    try:
        metadata = checkpointer.metadata(state)
    except (FileNotFoundError, ValueError) as e:
        raise DissectError(f"checkpoint {directory}: cannot read state/ ({one_line(e)})") from None
    tree = getattr(metadata, "item_metadata", None)
    if tree is None:
        raise DissectError(f"checkpoint {directory}: state/ has no readable array metadata; {_INTACT}")
    return {path: (tuple(m.shape), np.dtype(m.dtype)) for path, m in array_paths(tree).items()}


def _check_arrays(directory: str, config: dict, stored: dict, wanted: dict) -> None:
    """The stored arrays must be the model's: the same paths and shapes."""
    described = _describe(config)
    missing = [p for p in wanted if p not in stored]
    if missing:
        raise DissectError(f"checkpoint {directory}: state/ lacks {len(missing)} arrays that {described} needs "
                           f"({', '.join(missing[:5])}); config.json does not describe these weights")  # fmt: skip
    extra = [p for p in stored if p not in wanted]
    if extra:
        raise DissectError(f"checkpoint {directory}: state/ holds {len(extra)} arrays that {described} does not "
                           f"have ({', '.join(extra[:5])}); config.json does not describe these weights")  # fmt: skip
    for path, leaf in wanted.items():
        if tuple(stored[path][0]) != tuple(leaf.shape):
            raise DissectError(f"checkpoint {directory}: array {path} is {list(stored[path][0])} in state/, but "
                               f"{described} needs {list(leaf.shape)}; config.json does not describe these "
                               "weights")  # fmt: skip


def _orbax_read_error(e: Exception) -> bool:
    """Orbax wraps a TensorStore read error (e.g. an undecodable chunk) in a bare Exception."""
    return type(e) is Exception and isinstance(e.__cause__, ValueError | OSError)


def _verify(directory: str, config: dict, variables) -> None:
    """Each array against its checksum (when config.json has them), then finite values."""
    sums = config.get("checksums")
    host = array_paths(jax.device_get(variables))
    if sums is not None:
        unknown = [p for p in sums if p not in host]
        if unknown:
            raise DissectError(f"checkpoint {directory}: config.json has checksums for arrays state/ does not "
                               f"hold ({', '.join(unknown[:5])}): config.json and state/ do not belong "
                               "together")  # fmt: skip
    for path, array in host.items():
        if sums is not None:
            if path not in sums:
                raise DissectError(f"checkpoint {directory}: config.json has no checksum for array {path}; expected "
                                   "one per array: config.json and state/ do not belong together")  # fmt: skip
            if array_checksum(array) != sums[path]:
                raise DissectError(f"checkpoint {directory}: array {path} does not match its checksum: the file is "
                                   "damaged")  # fmt: skip
        if np.issubdtype(array.dtype, np.inexact):
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                raise DissectError(f"checkpoint {directory}: array {path} holds {bad} NaN/Inf values of "
                                   f"{array.size}; expected finite weights")  # fmt: skip


def load_checkpoint(directory: str, fold: bool = False):
    """Returns (model, variables, config) of a checkpoint written by :func:`save_checkpoint`.

    Everything read is validated (module docstring); bad input is a DissectError naming
    the checkpoint. With ``fold``, concept-whitened layers are folded into plain units (the
    same function at evaluation, :func:`dissectjax.models.scenenet.fold_whitening`), so that
    unit edits and transplants apply to their axes; ``config["model_kwargs"]`` then
    describes the folded model (what a checkpoint of an edited network records).
    """
    directory = os.path.abspath(directory)
    config = read_config(directory)
    model = _build(directory, config)
    abstract = check_model_runs(model, config["input_shape"], f"checkpoint {directory}: ", config)
    state = os.path.join(directory, "state")
    if not os.path.isdir(state):
        raise DissectError(f"checkpoint {directory} has no state/ directory; expected the arrays orbax wrote there")
    _scan_state(directory, state)
    checkpointer = _this_process_checkpointer()
    stored = _stored_arrays(directory, state, checkpointer)
    wanted = array_paths(abstract)
    _check_arrays(directory, config, stored, wanted)
    device = jax.local_devices()[0]  # in a multi-process run, each process reads the checkpoint itself
    sharding = jax.sharding.SingleDeviceSharding(device)
    # restored in the stored dtypes, so that checksums see the stored bytes; cast to the model's after
    as_stored = {path: jax.dtypes.canonicalize_dtype(stored[path][1]) for path in wanted}
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    target = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(leaf.shape, as_stored[path], sharding=sharding)
                                                    for path, leaf in zip(wanted, leaves)])  # fmt: skip
    try:
        variables = checkpointer.restore(state, target)
    except (FileNotFoundError, ValueError) as e:
        raise DissectError(f"cannot restore checkpoint {directory}: {one_line(e)}") from None
    except Exception as e:
        if not _orbax_read_error(e):
            raise
        raise DissectError(f"checkpoint {directory}: state/ is damaged ({one_line(e.__cause__)}); {_INTACT}") from None
    _verify(directory, config, variables)
    variables = jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype), variables, abstract)
    if fold and getattr(model, "whiten", ()):
        model, variables = fold_whitening(model, variables)
        config = {**config, "model_kwargs": {**config.get("model_kwargs", {}), "whiten": []}}
    return model, variables, config


def check_model_runs(model: nn.Module, image_shape, where: str = "", config: dict | None = None):
    """Refuses images [H, W, C] that ``model`` cannot run on, before any real work: its first
    abstract run (``jax.eval_shape`` of its initialization on one such image; no arrays are
    made) must succeed. A network that pools or convolves with no padding needs images at least
    so large (LeNet-5 on 8x8 images divides by zero inside Flax). ``where`` starts the message
    (e.g. ``"checkpoint DIR: "``), ``config`` is the checkpoint's config.json, whose
    ``input_shape`` the message names.

    Returns the abstract variables (shapes and dtypes) of the model built for such images.
    Call it wherever a model first meets images of a size of the user's choosing:
    :func:`load_checkpoint` (the checkpoint's own ``input_shape``) and :func:`check_image_shape`
    do; so should every command that runs a model on a dataset.

    >>> from dissectjax.models import build_model
    >>> check_model_runs(build_model("lenet5"), (8, 8, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dissectjax.errors.DissectError: model lenet5 cannot run on images of shape (8, 8, 1): ...
    """
    image_shape = tuple(int(x) for x in image_shape)
    try:
        return jax.eval_shape(lambda: init_variables(model, image_shape))
    except (ZeroDivisionError, TypeError, ValueError, flax.errors.FlaxError) as e:  # Flax/XLA shape errors
        name = config["model"] if config else _model_name(model)
        trained = tuple(config["input_shape"]) if config else None
        if trained == image_shape:
            advice = ("its config.json gives this input_shape: write there the size the model was trained on, or "
                      "re-create the checkpoint")  # fmt: skip
        elif trained:
            advice = f"give images of the size it was trained on (its checkpoint says {_dims(trained)})"
        else:
            advice = "give larger images"
        raise DissectError(f"{where}model {name} cannot run on images of shape {image_shape}: "
                           f"{one_line(e)[:300]}; {advice}") from None  # fmt: skip


def _model_name(model: nn.Module) -> str:
    """The registered name of ``model``'s class (its class name if it has none)."""
    return next((name for name, cls in MODELS.items() if cls is type(model)), type(model).__name__)


def check_image_shape(
    directory: str, model: nn.Module, variables, config: dict, image_shape, what: str = "the dataset"
):
    """Refuses images [H, W, C] the checkpoint's model cannot take with its weights.

    Images of the checkpoint's ``input_shape`` always fit; others fit when the model runs on
    them (:func:`check_model_runs`) and, built for them, has the same arrays with the same
    shapes (a network that pools globally takes any size; one that flattens a feature map, or
    whose first layer reads C channels, does not).
    """
    image_shape = tuple(int(x) for x in image_shape)
    if image_shape == tuple(config["input_shape"]):
        return
    have = array_paths(variables)
    need = array_paths(check_model_runs(model, image_shape, f"checkpoint {directory}: ", config))
    for path in sorted(set(have) | set(need)):
        if path not in have or path not in need or tuple(have[path].shape) != tuple(need[path].shape):
            detail = (f"array {path} would be {list(need[path].shape)}, the checkpoint holds {list(have[path].shape)}"
                      if path in have and path in need else f"array {path} differs")  # fmt: skip
            raise DissectError(f"checkpoint {directory}: {config['model']} takes {_dims(config['input_shape'])} "
                               f"images and {what} has {_dims(image_shape)} ({detail})")  # fmt: skip
