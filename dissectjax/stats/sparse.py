"""The sparse tally: only the pixels that can lie above a unit's threshold are touched.

A bilinearly upsampled pixel is a convex combination of four low-resolution values, its
*quad*'s corners, so it can exceed the threshold only if one of them does. The output
grid is split into quads: runs of rows (and columns) that interpolate between the same
pair of low-resolution rows (columns). Per batch:

1. count the (image, unit, quad) triples whose corner maximum exceeds the threshold;
2. compact them (``jnp.nonzero`` with a static bound chosen from the count), upsample
   only their tiles, and threshold: the unit masks, tile by tile; and count the masked
   pixels;
3. compact the masked pixels (a second static bound), look up their labels in every
   label layer, and add them into ``intersection[u, c]``.

Each step is compiled per bound; bounds are powers of two, so few programs are compiled.
Counts are exactly those of :func:`dissectjax.stats.tally.tally`: a pixel's value comes
from the same :func:`dissectjax.stats.upsample.lerp` calls in the same order, and a pixel
whose corners are all at or below the threshold is at or below it too (``lerp`` stays
within its inputs). Every device works on its own shard; statistics are summed over the
mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dissectjax.parallel import DATA, DataParallel, to_host
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


def _corners(acts, ys, xs):
    """acts [B, h, w, U] at the quads' corners: four arrays [B, Gy, Gx, U]."""
    (ylo, yhi), (xlo, xhi) = ys, xs
    rows_lo, rows_hi = acts[:, ylo], acts[:, yhi]
    return rows_lo[:, :, xlo], rows_lo[:, :, xhi], rows_hi[:, :, xlo], rows_hi[:, :, xhi]


def _active(acts, thresholds, valid, ys, xs):
    c00, c01, c10, c11 = _corners(acts, ys, xs)
    peak = jnp.maximum(jnp.maximum(c00, c01), jnp.maximum(c10, c11))
    return (peak > thresholds) & valid[:, None, None, None], (c00, c01, c10, c11)


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
        return jax.jit(jax.shard_map(fn, mesh=self.dp.mesh, in_specs=in_specs, out_specs=out_specs))

    @functools.lru_cache(maxsize=32)  # noqa: B019 (one instance per mesh, kept for the run)
    def _count_fn(self, geometry):
        ys, xs = _arrays(geometry)

        def count(acts, thresholds, valid):
            active, _ = _active(acts.astype(jnp.float32), thresholds, valid, ys, xs)
            return jax.lax.pmax(jnp.sum(active, dtype=jnp.int32), DATA)

        return self._map(count, (P(DATA), P(), P(DATA)), P())

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _tiles_fn(self, geometry, tiles_y, tiles_x, bound):
        ys, xs = _arrays(geometry)
        fy_runs, iy_runs = (jnp.asarray(a.array) for a in tiles_y)
        fx_runs, ix_runs = (jnp.asarray(a.array) for a in tiles_x)

        def tiles(acts, thresholds, valid):
            acts = acts.astype(jnp.float32)
            active, (c00, c01, c10, c11) = _active(acts, thresholds, valid, ys, xs)
            n = jnp.sum(active, dtype=jnp.int32)
            b, gy, gx, u = jnp.nonzero(active, size=bound, fill_value=0)
            ok = jnp.arange(bound) < n
            fy, fx = fy_runs[gy], fx_runs[gx]  # [K, T]
            at = (b, gy, gx, u)
            # along rows, then along columns: the arithmetic of the dense upsample, value for value
            col_lo = lerp(c00[at][:, None], c10[at][:, None], fy)  # [K, Ty]
            col_hi = lerp(c01[at][:, None], c11[at][:, None], fy)
            values = lerp(col_lo[:, :, None], col_hi[:, :, None], fx[:, None, :])
            mask = values > thresholds[u][:, None, None]
            mask &= iy_runs[gy][:, :, None] & ix_runs[gx][:, None, :] & ok[:, None, None]
            batch, units = active.shape[0], active.shape[3]
            area = jnp.zeros((batch, units), jnp.int32).at[b, u].add(jnp.sum(mask, axis=(1, 2), dtype=jnp.int32))
            # each tile row's mask: its length and first pixel, and whether it is one interval
            lengths = jnp.sum(mask, axis=2, dtype=jnp.int32)  # [K, Ty]
            first = jnp.argmax(mask, axis=2).astype(jnp.int32)
            last = mask.shape[2] - 1 - jnp.argmax(mask[:, :, ::-1], axis=2).astype(jnp.int32)
            broken = (lengths > 0) & (last - first + 1 != lengths)
            sizes = jnp.stack([jnp.sum(mask, dtype=jnp.int32), jnp.sum(lengths > 0, dtype=jnp.int32),
                               jnp.sum(broken, dtype=jnp.int32)])  # fmt: skip
            return (b, gy, gx, u), mask, (lengths, first), area, jax.lax.pmax(sizes, DATA)

        quad_spec = (P(DATA),) * 4
        return self._map(tiles, (P(DATA), P(), P(DATA)), (quad_spec, P(DATA), (P(DATA), P(DATA)), P(DATA), P()))

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _pixels_fn(self, starts_y, starts_x, bound, row_bound, num_categories, rule: Rules):
        sy, sx = jnp.asarray(np.array(starts_y)), jnp.asarray(np.array(starts_x))

        def pixels(quads, mask, runs, area, labels, category):
            b, gy, gx, u = quads
            num_concepts = category.shape[0]
            _, layers, sh, sw = labels.pixel.shape
            ids, whole, pixel_count = prepare_labels(labels, num_concepts, rule.repeats)
            k, r, c, ok = _masked_rows(runs, bound, row_bound) if row_bound else _masked_pixels(mask, bound)
            ok = ok.astype(jnp.int32)
            flat = (sy[gy[k]] + r) * sw + (sx[gx[k]] + c)
            hit = ids[b[k], :, flat]  # [K2, L] concept of each masked pixel in each layer
            slot = u[k][:, None] * (num_concepts + 1) + hit
            batch, units = area.shape
            pixel_inter = jnp.zeros(units * (num_concepts + 1), jnp.int32).at[slot.ravel()].add(jnp.repeat(ok, layers))
            pixel_inter = pixel_inter.reshape(units, num_concepts + 1)[:, :num_concepts]
            covered = None
            if rule.area == "mask":  # the categories each unit's mask covers in each image
                cats = label_categories(hit, category, num_categories)  # [K2, L]
                rows, cols = jnp.broadcast_to(b[k][:, None], cats.shape), jnp.broadcast_to(u[k][:, None], cats.shape)
                covered = jnp.zeros((batch, units, num_categories + 1), jnp.int32).at[rows, cols, cats].max(ok[:, None])
                covered = covered[:, :, :num_categories] > 0
            counts = assemble_counts(area, pixel_inter, whole, pixel_count, labels.valid, category, num_categories,
                                     rule, sh * sw, covered)  # fmt: skip
            return jax.tree.map(lambda x: jax.lax.psum(x, DATA), counts)

        quad_spec = (P(DATA),) * 4
        return self._map(pixels, (quad_spec, P(DATA), (P(DATA), P(DATA)), P(DATA), P(DATA), P()), P())

    def __call__(self, acts, labels: LabelBatch, thresholds, category, num_categories: int, rule: Rules):
        _, h, w, _ = acts.shape
        _, _, sh, sw = labels.pixel.shape
        sy, ylo, yhi, fy, iy, _ = quad_runs(sh, h)
        sx, xlo, xhi, fx, ix, _ = quad_runs(sw, w)
        geometry = ((_Static(ylo), _Static(yhi)), (_Static(xlo), _Static(xhi)))
        count = int(to_host(self._count_fn(geometry)(acts, thresholds, labels.valid)))
        per_device = acts.shape[0] // self.dp.size * len(ylo) * len(xlo) * acts.shape[-1]
        if self.fallback is not None and count > self.dense_share * per_device:
            return self.fallback(acts, labels, thresholds, category, num_categories, rule)
        tiles = self._tiles_fn(geometry, (_Static(fy), _Static(iy)), (_Static(fx), _Static(ix)), _bound(count))
        quads, mask, runs, area, sizes = tiles(acts, thresholds, labels.valid)
        masked, rows, broken = (int(x) for x in to_host(sizes))
        row_bound = _bound(rows) if not broken else 0  # every row's mask one interval: enumerate rows, not pixels
        pixels = self._pixels_fn(tuple(sy.tolist()), tuple(sx.tolist()), _bound(masked), row_bound, num_categories,
                                 rule)  # fmt: skip
        return pixels(quads, mask, runs, area, labels, category)


def _masked_pixels(mask, bound: int):
    """(tile k, row r, column c, in use) of every masked pixel of the tiles mask [K, Ty, Tx],
    padded to ``bound`` entries: one ``nonzero`` over every pixel of the tiles."""
    k, r, c = jnp.nonzero(mask, size=bound, fill_value=0)
    return k, r, c, jnp.arange(bound) < jnp.sum(mask)


def _masked_rows(runs, bound: int, row_bound: int):
    """The same as :func:`_masked_pixels` where each tile row's mask is one interval (runs:
    lengths [K, Ty] and first columns [K, Ty]): a ``nonzero`` over the rows, then each row's
    interval spelled out. Bilinear values along a tile row are monotone (``lerp`` with fixed
    ends is monotone in its weight, and the weights increase along a run), so the masked
    pixels of a row are one interval; the caller checks it, batch by batch."""
    lengths, first = runs
    k_row, r_row = jnp.nonzero(lengths > 0, size=row_bound, fill_value=0)
    length = jnp.where(jnp.arange(row_bound) < jnp.sum(lengths > 0), lengths[k_row, r_row], 0)
    start = jnp.cumsum(length) - length
    which = jnp.repeat(jnp.arange(row_bound), length, total_repeat_length=bound)  # the row of each entry
    j = jnp.arange(bound)
    ok = j < jnp.sum(length)
    k, r = k_row[which], r_row[which]
    c = jnp.where(ok, first[k, r] + j - start[which], 0)
    return k, r, c, ok


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
