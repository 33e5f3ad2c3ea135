"""The compiled per-batch kernels of a dissection, for one device mesh.

Each kernel takes sharded activations ``acts`` float [B, h, w, U] and returns statistics
already reduced over every device (and host) of the mesh.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dissectjax.dissect.accumulate import COUNT_REDUCTIONS, HISTOGRAM_REDUCTIONS, REDUCE
from dissectjax.parallel import DataParallel, to_host
from dissectjax.stats.quantile import capacity_for, census, prefix_histogram, raise_floor
from dissectjax.stats.sparse import SparseTally
from dissectjax.stats.tally import tally


class Kernels(NamedTuple):
    """histogram(acts, valid bool [B], prefix, depth, bits, extremes, into, units, floor, deciding) ->
    ((counts, kmin, kmax, nonfinite), floor): the per-unit histograms of a threshold pass (see
    :func:`~dissectjax.stats.quantile.prefix_histogram`) added to ``into`` (a histogram it returned
    before, donated, or None), of the units int32 [k] ``units`` names (None: all; ``prefix`` then
    holds theirs); in the first pass, ``floor`` uint32 [U] raised with ``deciding`` int32 []
    (:func:`~dissectjax.stats.quantile.raise_floor`), else None; values compacted in batches
    of at least ``compact_from`` values per device (default :data:`COMPACT_FROM`);
    tally(acts, labels, thresholds float32 [U], category int32 [C], num_categories, rule, strategy)
    -> Counts (int32 [U, C], [U, K], [C]);
    image_max(acts) -> float [B, U], each image's maximum per unit;
    unit_maps(acts, positions int32 [U, j]) -> float [U, j, h, w], unit u's maps at batch
    positions ``positions[u]``.
    image_max and unit_maps are replicated to every process."""

    histogram: Callable
    tally: Callable
    image_max: Callable
    unit_maps: Callable


@functools.lru_cache(maxsize=8)
def kernels(parallel: DataParallel) -> Kernels:
    """The kernels for ``parallel``'s mesh (compiled once per mesh and static arguments)."""
    histogram = _histogram(parallel)
    count = parallel.reduce(lambda a, labels, t, cat, **kw: tally(a, t, labels, cat, **kw), 2, COUNT_REDUCTIONS)
    dense = jax.jit(
        lambda a, labels, t, cat, k, rule, strategy: count(
            a, labels, t, cat, num_categories=k, rule=rule, strategy=strategy
        ),
        static_argnums=(4, 5, 6),
    )
    sparse = SparseTally(
        parallel, fallback=lambda a, labels, t, cat, k, rule: dense(a, labels, t, cat, k, rule, "segment")
    )

    def tally_fn(acts, labels, t, cat, num_categories, rule, strategy):
        if strategy == "sparse":
            return sparse(acts, labels, t, cat, num_categories, rule)
        return dense(acts, labels, t, cat, num_categories, rule, strategy)

    image_max = jax.jit(lambda a: jnp.max(a, axis=(1, 2)), out_shardings=parallel.replicated)
    unit_maps = jax.jit(
        lambda a, positions: a[positions, :, :, jnp.arange(a.shape[-1])[:, None]], out_shardings=parallel.replicated
    )
    return Kernels(histogram, tally_fn, image_max, unit_maps)


# values per device and batch from which a threshold pass compacts the values it keeps: below,
# the census's round trip to the host costs about what compaction saves (measured on a CPU).
# DISSECTJAX_COMPACT_FROM overrides it (0: always; the multi-device tests use it)
def _compact_from(text: str | None) -> int:
    try:
        return 1 << 20 if text is None else int(text)
    except ValueError:
        raise ValueError(f"DISSECTJAX_COMPACT_FROM must be a whole number of values, got {text!r}") from None


COMPACT_FROM = _compact_from(os.environ.get("DISSECTJAX_COMPACT_FROM"))


def _histogram(parallel: DataParallel) -> Callable:
    """A batch's histograms added to a running one, in two programs where the batch has at
    least ``compact_from`` values per device: a census of the values the batch keeps, which
    picks a static capacity on the host (:func:`capacity_for`), then the histogram of those
    values. On one device they are scattered straight into the
    running arrays (in place: no fresh buffer per batch); on a mesh each device's histogram
    is reduced over it first, then combined (integers: the same result). With a ``floor``,
    the running histogram then raises it (:func:`raise_floor`), and both are returned."""

    def subset(acts, units):
        return acts if units is None else jnp.take(acts, units, axis=-1)

    def count(acts, valid, prefix, units, floor, *, depth):
        return census(subset(acts, units), valid, prefix, depth, floor)

    def add(acts, valid, prefix, units, floor, into, **static):
        return prefix_histogram(subset(acts, units), valid, prefix, floor=floor, into=into, **static)

    count = jax.jit(parallel.reduce(count, 2, "max"), static_argnames="depth")
    reduce = parallel.reduce(add, 2, HISTOGRAM_REDUCTIONS)

    @functools.partial(jax.jit, static_argnames=("depth", "bits", "extremes", "capacity"), donate_argnums=5)
    def step(acts, valid, prefix, units, floor, into, deciding, **static):
        if parallel.size == 1:
            total = reduce(acts, valid, prefix, units, floor, into, **static)
        else:
            total = reduce(acts, valid, prefix, units, floor, None, **static)
            if into is not None:
                total = jax.tree.map(lambda r, a, b: REDUCE[r][0](a, b), HISTOGRAM_REDUCTIONS, into, total)
        return total, None if floor is None else raise_floor(total[0], floor, deciding)

    def histogram(acts, valid, prefix, depth, bits, extremes, into=None, units=None, floor=None, deciding=None,
                  compact_from=None):  # fmt: skip
        compact_from = COMPACT_FROM if compact_from is None else compact_from
        width = acts.shape[-1] if units is None else len(units)
        values = acts.size // acts.shape[-1] * width // parallel.size  # per device
        capacity = None  # small batches: every value scattered, no round trip to the host
        if compact_from <= values < 2**31:  # (int32 indices into the batch)
            capacity = capacity_for(int(to_host(count(acts, valid, prefix, units, floor, depth=depth))), values)
        return step(acts, valid, prefix, units, floor, into, deciding, depth=depth, bits=bits, extremes=extremes,
                    capacity=capacity)  # fmt: skip

    return histogram
