"""Model checkpoints: orbax-saved variables plus a JSON description of the model.

    DIR/config.json   {"model": name, "model_kwargs": {...}, "input_shape": [H, W, C], ...}
    DIR/state/        orbax StandardCheckpointer tree: {"params": ..., "batch_stats": ...}

Arrays are restored onto the default device whatever the device count at save time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dissectjax.errors import DissectError
from dissectjax.models import build_model
from dissectjax.models.scenenet import fold_whitening


def bundled_checkpoints() -> str:
    """The folder of the project's committed checkpoints (``checkpoints/`` beside the
    package), or ``$DISSECTJAX_CHECKPOINTS``."""
    env = os.environ.get("DISSECTJAX_CHECKPOINTS")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")


def demo_checkpoint() -> str:
    """The demo's trained scene classifier (``checkpoints/scenenet``)."""
    return os.path.join(bundled_checkpoints(), "scenenet")


def init_variables(model: nn.Module, input_shape, seed: int = 0):
    """Freshly initialized variables for a batch of ``input_shape`` [H, W, C] images."""
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape), jnp.uint8))


def save_checkpoint(directory: str, model_name: str, model_kwargs: dict, input_shape, variables, **info) -> None:
    """Writes the checkpoint under a temporary name, then renames it to ``directory``."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise DissectError(f"checkpoint {directory} already exists; remove it or choose another path")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ckpt-", dir=parent)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "state"), jax.device_get(dict(variables)))
        checkpointer.wait_until_finished()
        config = {"model": model_name, "model_kwargs": model_kwargs, "input_shape": list(input_shape), **info}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer that reads without waiting for the other processes of a multi-process run."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise DissectError(f"{directory} is not a dissectjax checkpoint (no config.json)")
    with open(path) as f:
        return json.load(f)


def load_checkpoint(directory: str, fold: bool = False):
    """Returns (model, variables, config) of a checkpoint written by :func:`save_checkpoint`.

    With ``fold``, concept-whitened layers are folded into plain units (the same function
    at evaluation, :func:`dissectjax.models.scenenet.fold_whitening`), so that unit edits
    and transplants apply to their axes; ``config["model_kwargs"]`` then describes the
    folded model (what a checkpoint of an edited network records).
    """
    directory = os.path.abspath(directory)
    config = read_config(directory)
    model = build_model(config["model"], **config.get("model_kwargs", {}))
    device = jax.local_devices()[0]  # in a multi-process run, each process reads the checkpoint itself
    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = jax.eval_shape(lambda: init_variables(model, config["input_shape"]))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
    try:
        variables = _this_process_checkpointer().restore(os.path.join(directory, "state"), abstract)
    except (FileNotFoundError, ValueError) as e:
        raise DissectError(f"cannot restore checkpoint {directory}: {e}") from None
    if fold and getattr(model, "whiten", ()):
        model, variables = fold_whitening(model, variables)
        config = {**config, "model_kwargs": {**config.get("model_kwargs", {}), "whiten": []}}
    return model, variables, config
