"""The saved state of an interrupted dissection: one ``.npz`` file, written atomically.

Keys: ``stage`` and ``batch`` (where the current pass stands), ``select/<layer>/<field>``
(each layer's threshold search), ``<stage>/<layer>/<i>`` (leaf i of a partial total).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile

import jax
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.stats.quantile import RadixSelect


class ResumeSaveError(DissectError):
    """The state could not be saved (a full disk): what was saved before stays for the rerun."""


class ResumeFile:
    """Atomically saved dissection state, tied to a fingerprint of the run's inputs."""

    def __init__(self, path: str, fingerprint: dict, every_seconds: float = 60.0):
        self.path = path
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        self.every = every_seconds
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def load(self) -> dict | None:
        """The saved state, or None when there is none or another run saved it."""
        if not os.path.isfile(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
            fingerprint = str(state.pop("fingerprint"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # damaged (e.g. a disk that filled up): start afresh; it is replaced at the next save
        if fingerprint != self.fingerprint:
            return None  # saved by a different run: start afresh
        return state

    def save(self, state: dict) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".resume-", suffix=".npz", dir=directory)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, fingerprint=np.array(self.fingerprint), **state)
            os.replace(tmp, self.path)
        except OSError as e:
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
            kept = " (the state saved before is kept there)" if os.path.exists(self.path) else ""
            raise ResumeSaveError(f"could not save the state for resuming to {self.path}: {e.strerror or e}{kept}; "
                               "make room and run the same command again") from None  # fmt: skip
        except BaseException:
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._last = time.monotonic()

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def flatten(prefix: str, tree) -> dict[str, np.ndarray]:
    """The leaves of ``tree`` as ``{prefix/i: array}``."""
    leaves = jax.tree.leaves(tree)
    return {f"{prefix}/{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def unflatten(prefix: str, like, state: dict):
    """The tree saved by :func:`flatten`, shaped like ``like``; None if nothing was saved."""
    keys = [f"{prefix}/{i}" for i in range(len(jax.tree.leaves(like)))]
    if not all(k in state for k in keys):
        return None
    return jax.tree.unflatten(jax.tree.structure(like), [state[k] for k in keys])


def select_state(select: dict[str, RadixSelect]) -> dict[str, np.ndarray]:
    """Every layer's threshold search, as arrays."""
    state = {}
    for name, s in select.items():
        for field in s.STATE:
            state[f"select/{name}/{field}"] = getattr(s, field)
        state[f"select/{name}/level"] = np.array(s.level)
        state[f"select/{name}/total"] = np.array(-1 if s.total is None else s.total)
    return state


def restore_select(select: dict[str, RadixSelect], state: dict) -> None:
    """Puts the searches saved by :func:`select_state` back into ``select``."""
    for name, s in select.items():
        for field in s.STATE:
            setattr(s, field, state[f"select/{name}/{field}"])
        s.level = int(state[f"select/{name}/level"])
        total = int(state[f"select/{name}/total"])
        s.total = None if total < 0 else total
