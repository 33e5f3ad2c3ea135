"""Exact host totals of per-batch device statistics.

A statistic is a pytree of arrays; its *reductions* mirror it with ``"sum"``, ``"min"``
or ``"max"`` at each leaf, saying how two batches' values combine.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.parallel import to_host
from dissectjax.stats.tally import Counts

REDUCE = {"sum": (jnp.add, np.add), "min": (jnp.minimum, np.minimum), "max": (jnp.maximum, np.maximum)}
HISTOGRAM_REDUCTIONS = ("sum", "min", "max", "sum")  # prefix_histogram: counts, kmin, kmax, nonfinite
COUNT_REDUCTIONS = Counts("sum", "sum", "sum")  # tally: intersection, unit_area, concept_area


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _combine(reductions, total, value):
    """The running device total combined with one batch's value, in place (``total`` is donated)."""
    return jax.tree.map(lambda r, a, b: REDUCE[r][0](a, b), reductions, total, value)


class Accumulator:
    """Reduces per-batch device statistics into exact host totals (int64 for sums).

    Sums accumulate in int32 on the device; ``add(value, bound)`` promises that no entry
    of a summed leaf grows by more than ``bound``, and the partial result moves to the
    host before the bounds could overflow int32. ``total`` is the host total so far
    (None before the first flush); set it to continue from a saved total.
    """

    _LIMIT = 2**31 - 1

    def __init__(self, reductions, total=None):
        self._reductions = reductions
        self._device = None
        self._bound = 0
        self.total = total

    def add(self, value, bound: int) -> None:
        """Adds one batch's statistic (``value``, reduced over the mesh)."""
        self.update(lambda total: value if total is None else _combine(self._reductions, total, value), bound)

    def update(self, step, bound: int) -> None:
        """``step(total) -> total``: adds one batch's statistic to the running device total (None
        before the first), which ``step`` may update in place (donate it)."""
        if self._bound + bound > self._LIMIT:
            self.flush()
        self._device = step(self._device)
        self._bound += bound

    def flush(self):
        """Moves the device part into ``total`` and returns ``total``."""
        if self._device is not None:
            host = jax.tree.map(
                lambda r, a: to_host(a).astype(np.int64) if r == "sum" else to_host(a), self._reductions, self._device
            )
            if self.total is None:
                self.total = host
            else:
                self.total = jax.tree.map(lambda r, a, b: REDUCE[r][1](a, b), self._reductions, self.total, host)
            self._device, self._bound = None, 0
        return self.total
