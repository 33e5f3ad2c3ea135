"""The sparse tally: only the pixels that can lie above a unit's threshold are touched.

A bilinearly upsampled pixel is a convex combination of four low-resolution values, its
*quad*'s corners, so it can exceed the threshold only if one of them does. The output
grid is split into quads: runs of rows (and columns) that interpolate between the same
pair of low-resolution rows (columns). Per batch, in programs of their own (XLA's CPU
fusion would otherwise recompute a producer inside every lookup that reads it):

1. prepare the labels (:func:`dissectjax.stats.tally.prepare_labels`), and count the
   (image, unit, quad) triples with a corner above the threshold;
2. compact them (:func:`dissectjax.stats.compact.nonzero`, with a static bound chosen from
   the count), upsample only their tiles, and threshold: the unit masks, tile by tile, and
   each tile row's masked interval (bilinear values along a row are monotone);
3. spell out one entry per masked pixel from the row intervals (a second static bound);
4. look up each entry's labels in every label layer and add them into
   ``intersection[u, c]``.

Each step is compiled per bound; bounds take four steps per power of two, so few programs
are compiled. Counts are exactly those of :func:`dissectjax.stats.tally.tally`: a pixel's value comes
from the same :func:`dissectjax.stats.upsample.lerp` calls in the same order, and a pixel
whose corners are all at or below the threshold is at or below it too (``lerp`` stays
within its inputs). Every device works on its own shard; statistics are summed over the
mesh.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dissectjax.parallel import DATA, DataParallel, to_host
from dissectjax.stats.compact import count_through, nonzero, nonzero_nd
from dissectjax.stats.semantics import Rules
from dissectjax.stats.tally import LabelBatch, assemble_counts, label_categories, prepare_labels
from dissectjax.stats.upsample import lerp, sample_coords


@functools.lru_cache(maxsize=64)
def quad_runs(n_out: int, n_in: int):
    """Runs of output samples that interpolate between the same two input samples.

    Returns numpy arrays: start [G], lo [G], hi [G] (the two input samples), frac [G, T]
    (weight of ``hi`` for each sample of the run, padded), inside [G, T] (bool: a real
    sample, not padding), and T, the longest run.
    """
    lo, hi, sample_frac = sample_coords(n_out, n_in)
    raw = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    key = np.stack([lo, raw < 0, raw > n_in - 1], axis=1)  # clamped edges get runs of their own
    breaks = np.flatnonzero(np.any(key[1:] != key[:-1], axis=1)) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [n_out]]))
    longest = int(lengths.max())
    run_lo, run_hi = lo[starts], hi[starts]
    frac = np.zeros((len(starts), longest), np.float32)
    inside = np.zeros((len(starts), longest), bool)
    for g, (start, length) in enumerate(zip(starts, lengths)):
        rows = np.arange(start, start + length)
        frac[g, :length] = sample_frac[rows]
        inside[g, :length] = True
    return starts, run_lo, run_hi, frac, inside, longest


def _bound(count: int, floor: int = 2048) -> int:
    """A static size for ``count`` items, at least ``floor``: the next of 4, 5, 6 or 7 times a
    power of two (padding wastes at most a quarter; four programs per octave)."""
    count = max(int(count), floor)
    step = 1 << max(0, count.bit_length() - 3)  # an eighth to a quarter of count
    return -(-count // step) * step if count > 4 * step else 4 * step


def _active(acts, thresholds, valid, ys, xs):
    """bool [B, Gy, Gx, U]: the quads with a corner above its unit's threshold (in valid rows).
    Thresholded first, so that the corners gathered are bytes, not floats."""
    (ylo, yhi), (xlo, xhi) = ys, xs
    hot = acts > thresholds
    rows = hot[:, ylo] | hot[:, yhi]
    return (rows[:, :, xlo] | rows[:, :, xhi]) & valid[:, None, None, None]


class SparseTally:
    """The sparse tally on a device mesh; call like :func:`dissectjax.stats.tally.tally`.

    ``fallback`` (same call) takes batches where more than ``dense_share`` of the quads
    are active (high quantiles): there, compacting costs more than it saves, and the tiles
    would outgrow the dense mask. Both give identical counts.
    """

    def __init__(self, parallel: DataParallel, fallback=None, dense_share: float = 0.25):
        self.dp = parallel
        self.fallback = fallback
        self.dense_share = dense_share

    def _map(self, fn, in_specs, out_specs):
        return jax.jit(self.dp.shard_map(fn, in_specs, out_specs))

    @functools.lru_cache(maxsize=32)  # noqa: B019 (one instance per mesh, kept for the run)
    def _count_fn(self, geometry):
        ys, xs = _arrays(geometry)

        def count(acts, thresholds, valid):
            active = _active(acts.astype(jnp.float32), thresholds, valid, ys, xs)
            return self.dp.across("max")(jnp.sum(active, dtype=jnp.int32))

        return self._map(count, (P(DATA), P(), P(DATA)), P())

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _tiles_fn(self, geometry, tiles_y, tiles_x, bound, label_size, starts_y, starts_x):
        ys, xs = _arrays(geometry)
        sy, sx = jnp.asarray(np.array(starts_y)), jnp.asarray(np.array(starts_x))
        sh, sw = label_size
        fy_runs, iy_runs = (jnp.asarray(a.array) for a in tiles_y)
        fx_runs, ix_runs = (jnp.asarray(a.array) for a in tiles_x)

        def tiles(acts, thresholds, valid):
            acts = acts.astype(jnp.float32)
            active = _active(acts, thresholds, valid, ys, xs)
            (b, gy, gx, u), n = nonzero_nd(active, bound)
            ok = jnp.arange(bound) < n
            fy, fx = fy_runs[gy], fx_runs[gx]  # [K, T]
            (ylo, yhi), (xlo, xhi) = (tuple(jnp.asarray(a)[g] for a in axis) for axis, g in ((ys, gy), (xs, gx)))
            c00, c01, c10, c11 = (acts[b, y, x, u][:, None] for y in (ylo, yhi) for x in (xlo, xhi))  # the corners
            # along rows, then along columns: the arithmetic of the dense upsample, value for value
            col_lo = lerp(c00, c10, fy)  # [K, Ty]
            col_hi = lerp(c01, c11, fy)
            values = lerp(col_lo[:, :, None], col_hi[:, :, None], fx[:, None, :])
            mask = values > thresholds[u][:, None, None]
            mask &= iy_runs[gy][:, :, None] & ix_runs[gx][:, None, :] & ok[:, None, None]
            batch, units = active.shape[0], active.shape[3]
            area = jnp.zeros((batch, units), jnp.int32).at[b, u].add(jnp.sum(mask, axis=(1, 2), dtype=jnp.int32))
            # each tile row's mask: its length and first pixel, and whether it is one interval. Along a
            # row the values are monotone (lerp in its weight), so the mask is a suffix of the row's
            # columns where they rise and a prefix where they fall; checked below, batch by batch
            lengths = jnp.sum(mask, axis=2, dtype=jnp.int32)  # [K, Ty]
            columns = jnp.sum(ix_runs[gx], axis=1, dtype=jnp.int32)[:, None]  # [K, 1] real columns of the tile
            first = jnp.where(col_hi >= col_lo, columns - lengths, 0)
            x = jnp.arange(mask.shape[2])
            interval = (x >= first[:, :, None]) & (x < (first + lengths)[:, :, None])
            broken = jnp.any(mask != interval, axis=2)
            sizes = jnp.stack([jnp.sum(mask, dtype=jnp.int32), jnp.sum(lengths > 0, dtype=jnp.int32),
                               jnp.sum(broken, dtype=jnp.int32)])  # fmt: skip
            # where each tile row starts in the batch's flattened label maps, and whose tile it is
            origin = (b[:, None] * sh + sy[gy][:, None] + jnp.arange(mask.shape[1])) * sw + sx[gx][:, None]
            table = _Tiles(origin, u, b * units + u, mask, lengths, first)
            return table, area, self.dp.across("max")(sizes)

        return self._map(tiles, (P(DATA), P(), P(DATA)), (_Tiles(*(P(DATA),) * 6), P(DATA), P()))

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _labels_fn(self, num_concepts: int, repeats: bool):
        def prepare(labels):
            ids, whole, pixel_count = prepare_labels(labels, num_concepts, repeats)
            batch, layers, pixels = ids.shape
            return jnp.swapaxes(ids, 1, 2).reshape(batch * pixels, layers), whole, pixel_count

        # its own program: fused into the gathers of the pixels, every lookup would recompute it
        return self._map(prepare, (P(DATA),), (P(DATA), P(DATA), P(DATA)))

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _entries_fn(self, bound, row_bound, num_concepts, num_categories):
        def entries(tiles: _Tiles, area):
            batch, units = area.shape
            intervals = _row_intervals(tiles, row_bound) if row_bound else _pixel_intervals(tiles, bound)
            which, position, ok = _spell_out(intervals.length, bound)
            row = intervals.row[which]  # [P] the tile row of each entry
            tile = row // tiles.origin.shape[1]
            pixel = tiles.origin.ravel()[row] + (intervals.first - position.start)[which] + position.entry
            # padding entries point past the end of the counts, and are dropped
            slot = jnp.where(ok, tiles.unit[tile] * num_concepts, units * num_concepts)
            cell = jnp.where(ok, tiles.cell[tile] * (num_categories + 1), batch * units * (num_categories + 1))
            return _Masked(jnp.where(ok, pixel, 0), slot, cell)

        # its own program: fused into the per-layer lookups, every entry's arithmetic would be redone per layer
        return self._map(entries, (_Tiles(*(P(DATA),) * 6), P(DATA)), _Masked(*(P(DATA),) * 3))

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _pixels_fn(self, num_categories, rule: Rules):
        def pixels(masked: _Masked, area, prepared, valid, category):
            pixel_ids, whole, pixel_count = prepared  # [B * sh * sw, L], [B, C], [B, C]
            num_concepts = category.shape[0]
            batch, units = area.shape
            hit = pixel_ids[masked.pixel]  # [P, L] concept of each masked pixel in each layer
            size = units * num_concepts
            slot = jnp.where(hit < num_concepts, masked.slot[:, None] + hit, size)  # unlabelled: dropped
            pixel_inter = jnp.zeros(size, jnp.int32).at[slot.ravel()].add(1, mode="drop").reshape(units, num_concepts)
            covered = None
            if rule.area == "mask":  # the categories each unit's mask covers in each image
                cells = batch * units * (num_categories + 1)
                cell = masked.cell[:, None] + label_categories(hit, category, num_categories)  # [P, L]
                covered = jnp.zeros(cells, bool).at[cell.ravel()].set(True, mode="drop")
                covered = covered.reshape(batch, units, num_categories + 1)[:, :, :num_categories]
            counts = assemble_counts(area, pixel_inter, whole, pixel_count, valid, category, num_categories, rule,
                                     pixel_ids.shape[0] // batch, covered)  # fmt: skip
            return jax.tree.map(self.dp.across("sum"), counts)

        specs = (_Masked(*(P(DATA),) * 3), P(DATA), (P(DATA),) * 3, P(DATA), P())
        return self._map(pixels, specs, P())

    def __call__(self, acts, labels: LabelBatch, thresholds, category, num_categories: int, rule: Rules):
        _, h, w, _ = acts.shape
        _, _, sh, sw = labels.pixel.shape
        sy, ylo, yhi, fy, iy, _ = quad_runs(sh, h)
        sx, xlo, xhi, fx, ix, _ = quad_runs(sw, w)
        geometry = ((_Static(ylo), _Static(yhi)), (_Static(xlo), _Static(xhi)))
        prepared = self._labels_fn(category.shape[0], rule.repeats)(labels)  # dispatched first, runs meanwhile
        count = int(to_host(self._count_fn(geometry)(acts, thresholds, labels.valid)))
        per_device = acts.shape[0] // self.dp.size * len(ylo) * len(xlo) * acts.shape[-1]
        if self.fallback is not None and count > self.dense_share * per_device:
            return self.fallback(acts, labels, thresholds, category, num_categories, rule)
        tiles_fn = self._tiles_fn(geometry, (_Static(fy), _Static(iy)), (_Static(fx), _Static(ix)), _bound(count),
                                  (sh, sw), tuple(sy.tolist()), tuple(sx.tolist()))  # fmt: skip
        tiles, area, sizes = tiles_fn(acts, thresholds, labels.valid)
        masked, rows, broken = (int(x) for x in to_host(sizes))
        row_bound = _bound(rows) if not broken else 0  # every row's mask one interval: enumerate rows, not pixels
        entries = self._entries_fn(_bound(masked), row_bound, category.shape[0], num_categories)(tiles, area)
        return self._pixels_fn(num_categories, rule)(entries, area, prepared, labels.valid, category)


class _Tiles(NamedTuple):
    """The active quads' tiles of a batch, K of them (padded; padding tiles have empty masks).

    origin int32 [K, Ty]: each tile row's column 0 in the batch's flattened label maps;
    unit int32 [K]: the tile's unit; cell int32 [K]: its (image, unit) pair, ``b * U + u``;
    mask bool [K, Ty, Tx]: the tile's pixels above threshold; lengths int32 [K, Ty] and
    first int32 [K, Ty]: each tile row's masked pixels and the first of them.
    """

    origin: jax.Array
    unit: jax.Array
    cell: jax.Array
    mask: jax.Array
    lengths: jax.Array
    first: jax.Array


class _Masked(NamedTuple):
    """The masked pixels of the tiles, one entry each (P, padded): pixel int32 [P], its index in
    the batch's flattened label maps; slot int32 [P], where its unit's row of intersection
    counts starts; cell int32 [P], where its (image, unit) pair's categories start. Padding
    entries have slot and cell past the end."""

    pixel: jax.Array
    slot: jax.Array
    cell: jax.Array


class _Intervals(NamedTuple):
    """Masked intervals of the tiles' rows, R of them, padded (length 0): row int32 [R] (index
    into the K * Ty tile rows), first column int32 [R] and length int32 [R]."""

    row: jax.Array
    first: jax.Array
    length: jax.Array


class _Entries(NamedTuple):
    """Where each spelled-out entry sits: start [R], the entry index of each interval's first
    pixel; entry [P], 0, 1, 2, ... (an entry's column is ``first + entry - start``)."""

    start: jax.Array
    entry: jax.Array


def _row_intervals(tiles: _Tiles, row_bound: int) -> _Intervals:
    """The masked interval of every tile row with one: a ``nonzero`` over the rows. Bilinear
    values along a tile row are monotone (``lerp`` with fixed ends is monotone in its weight,
    and the weights increase along a run), so the masked pixels of a row are one interval;
    the caller checks it, batch by batch."""
    lengths, first = tiles.lengths.ravel(), tiles.first.ravel()
    row, rows = nonzero(lengths > 0, row_bound)
    length = jnp.where(jnp.arange(row_bound) < rows, lengths[row], 0)
    return _Intervals(row, first[row], length)


def _pixel_intervals(tiles: _Tiles, bound: int) -> _Intervals:
    """Every masked pixel of the tiles as an interval of its own: one ``nonzero`` over every
    pixel of the tiles (where a row's mask is not one interval)."""
    tiles_y = tiles.mask.shape[1]
    (tile, row, column), pixels = nonzero_nd(tiles.mask, bound)
    length = (jnp.arange(bound) < pixels).astype(jnp.int32)
    return _Intervals(tile * tiles_y + row, column, length)


def _spell_out(length, bound: int):
    """The entries of intervals of ``length`` [R], one per pixel, padded to ``bound``: which [P]
    (the interval of each entry), :class:`_Entries`, and ok bool [P] (a real entry). Empty
    intervals may only follow the last nonempty one (padding)."""
    ends = jnp.cumsum(length)
    start = ends - length
    # an entry's interval: the intervals that start at or before it, less one
    starts = jnp.zeros(bound, bool).at[jnp.where(length > 0, start, bound)].set(True, mode="drop")
    which = jnp.maximum(count_through(starts) - 1, 0)
    entry = jnp.arange(bound, dtype=jnp.int32)
    return which, _Entries(start, entry), entry < ends[-1]


class _Static:
    """A NumPy array usable as a cache key and as a compile-time constant."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)
        self._key = (self.array.shape, self.array.dtype.str, self.array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def _arrays(geometry):
    """((ylo, yhi), (xlo, xhi)) of _Static -> the same of NumPy arrays."""
    return tuple(tuple(part.array for part in axis) for axis in geometry)
