"""Per-unit top quantiles by radix selection over mergeable histograms.

A float32 maps to a uint32 *order key* whose unsigned order is the float order. The
threshold of a unit is found by narrowing a key prefix a few bits at a time: each pass
histograms the keys that share the current prefix into ``2**bits`` bins (counts, and the
smallest and largest key seen in each bin), and the host picks the bin that holds the
target rank. Histograms are integer sums (and min/max) over values, so they merge across
batches, devices and hosts in any order with bit-identical results. No activation is
stored or sorted; memory is ``O(U * 2**bits)``.

The schedule ``(12, 10, 10)`` covers all 32 bits, so after at most three passes the
threshold is an exact order statistic; usually a unit is resolved after one or two,
as soon as the bin holding the target rank has at most ``rank_tolerance * n / 2``
values or holds a single distinct value (ties, e.g. ReLU zeros).

Only a unit's largest values decide its threshold (:meth:`RadixSelect.deciding`), so the
first pass may count the values below a running per-unit *floor* in bin 0, unscattered
(:func:`raise_floor` keeps it at or below those values), and each pass may compact the
values it keeps before scattering them (:func:`census`, :func:`capacity_for`). Any floor
raised this way gives the same thresholds, whatever the batches or the mesh.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.stats.compact import nonzero

KEY_BITS = 32
_SIGN = np.uint32(0x80000000)
DEFAULT_SCHEDULE = (12, 10, 10)


def order_key(x: jax.Array) -> jax.Array:
    """float32 [...] -> uint32 [...], monotone: ``a < b  <=>  key(a) < key(b)``; -0 == +0.

    (XLA flushes subnormals to zero, so they share the key of 0, as they compare in XLA.)
    """
    x = jnp.where(x == 0, jnp.zeros_like(x), x).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def key_to_value(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`order_key` on the host: uint32 [...] -> float32 [...]."""
    key = np.asarray(key, np.uint32)
    positive = (key >> 31) == 1
    bits = np.where(positive, key & np.uint32(0x7FFFFFFF), ~key).astype(np.uint32)
    return bits.view(np.float32)


def prefix_histogram(
    acts: jax.Array,
    valid: jax.Array,
    prefix: jax.Array,
    depth: int,
    bits: int,
    extremes: bool = True,
    into=None,
    floor: jax.Array | None = None,
    capacity: int | None = None,
):
    """Histogram of the keys that start with each unit's ``prefix``, on their next ``bits`` bits.

    Args:
      acts: float [B, ..., U] activations (units last).
      valid: bool [B]; False rows (batch padding) are ignored.
      prefix: uint32 [U], the key bits fixed so far (left-aligned, low bits zero).
      depth: number of fixed leading bits (static), 0 <= depth < 32.
      bits: bits resolved by this pass (static), depth + bits <= 32.
      extremes: also the smallest and largest key per bin (static). The first pass skips
        them: its bins are too wide to settle a threshold, and its scatters, spread over
        every bin, cost most.
      into: a histogram this function returned before, to add these values to (its arrays
        updated in place where the caller donates them), or None for a fresh one.
      floor: uint32 [U] order keys, or None; used only with a ``capacity``, in the first
        pass (``depth == 0``). Keys below a unit's floor are counted in bin 0, as if they
        were the lowest value (its counts only, not its extremes). Where at least as many
        of the unit's values lie at or above its floor as decide its threshold
        (:meth:`RadixSelect.deciding`; :func:`raise_floor` keeps that true), the threshold
        is the same.
      capacity: None, to scatter every value; or (static) at least the number of values
        :func:`census` finds kept (with the prefix and at or above the floor, and every
        NaN/Inf, to be counted): only those are compacted
        (:func:`~dissectjax.stats.compact.nonzero`) and scattered. XLA's CPU scatter costs
        nearly as much for an index it drops as for one it counts.

    Returns:
      counts int32 [U, 2**bits]; kmin int32 [U, 2**bits] and kmax int32 [U, 2**bits], the
      smallest and largest key in each bin as *signed keys* (:func:`signed_key`: the same
      order, and XLA's CPU scatter is much faster on signed ints; empty bins hold the int32
      maximum and minimum; [U, 0] without ``extremes``); and nonfinite int32 [U], the NaN/Inf
      values per unit.
    """
    units = acts.shape[-1]
    nbins = 1 << bits
    size = units * nbins
    shift = KEY_BITS - depth - bits
    if into is None:
        into = empty_histogram(units, bits, extremes)
    counts, kmin, kmax, nonfinite = into
    values, keep = _kept(acts, valid, prefix, depth, floor if capacity is not None else None)
    if capacity is None:  # every value: [B, P, U] in order, consecutive values in distinct units' bins
        unit = jnp.broadcast_to(jnp.arange(units, dtype=jnp.int32), values.shape).ravel()
        nonfinite = nonfinite + jnp.sum(keep & ~jnp.isfinite(values), axis=(0, 1), dtype=jnp.int32)
        values, keep = values.ravel(), keep.ravel()
    else:
        flat, count = nonzero(keep, capacity)
        unit, values, keep = flat % units, values.ravel()[flat], jnp.arange(capacity) < count
        nonfinite = nonfinite.at[jnp.where(keep & ~jnp.isfinite(values), unit, units)].add(1, mode="drop")
    finite = jnp.isfinite(values)
    keys = order_key(values)
    index = jnp.where(keep & finite, unit * nbins + ((keys >> shift) & jnp.uint32(nbins - 1)).astype(jnp.int32), size)
    counts = counts.reshape(size).at[index].add(1, mode="drop")
    if capacity is not None and floor is not None:  # the values below the floor, in bin 0
        counts = counts.at[jnp.where(keep, unit * nbins, size)].add(-1, mode="drop")
        counts = counts.reshape(units, nbins).at[:, 0].add(jnp.sum(valid, dtype=jnp.int32) * (acts[0].size // units))
    counts = counts.reshape(units, nbins)
    if extremes:
        signed = signed_key(keys)
        kmin = kmin.reshape(size).at[index].min(signed, mode="drop").reshape(units, nbins)
        kmax = kmax.reshape(size).at[index].max(signed, mode="drop").reshape(units, nbins)
    return counts, kmin, kmax, nonfinite


def census(acts: jax.Array, valid: jax.Array, prefix: jax.Array, depth: int, floor: jax.Array | None = None):
    """int32 []: how many values of a batch :func:`prefix_histogram` keeps with a capacity
    (same other arguments): those with the prefix and at or above the floor, and every
    NaN/Inf. Its caller picks the ``capacity`` from it (:func:`capacity_for`)."""
    return jnp.sum(_kept(acts, valid, prefix, depth, floor)[1], dtype=jnp.int32)


def _kept(acts, valid, prefix, depth: int, floor):
    """(values float [B, P, U], kept bool [B, P, U]): a batch's values, and which are kept:
    in valid rows, NaN/Inf (to be counted), or with the prefix and at or above the floor."""
    if floor is not None and depth > 0:
        raise ValueError("a floor applies to the first pass only (depth 0)")
    values = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    keep = jnp.ones(values.shape, bool)
    if depth > 0 or floor is not None:
        keys = order_key(values)
        if depth > 0:
            keep &= (keys >> (KEY_BITS - depth)) == (prefix >> (KEY_BITS - depth))
        if floor is not None:
            keep &= keys >= floor
        keep |= ~jnp.isfinite(values)
    return values, valid[:, None, None] & keep


def capacity_for(kept: int, values: int) -> int | None:
    """The ``capacity`` :func:`prefix_histogram` compacts a batch of ``values`` into, from its
    :func:`census`: an eighth of the values, or a quarter of that, or a sixteenth, ... (few
    compiled programs: each costs about a second), the smallest that holds ``kept``; None
    (every value scattered) where more than an eighth are kept: compaction then costs
    about as much.

    >>> capacity_for(100, 8192), capacity_for(300, 8192), capacity_for(2000, 8192)
    (256, 1024, None)
    """
    capacity = values // 8
    if kept > capacity:
        return None
    while capacity // 4 >= max(kept, values // 2048, 1):
        capacity //= 4
    return max(capacity, 1)


def raise_floor(counts: jax.Array, floor: jax.Array, deciding: jax.Array) -> jax.Array:
    """Each unit's floor raised, never lowered, to the lower edge of the highest bin that
    holds, with the bins above it, at least ``deciding`` values.

    A first-pass histogram (counts int32 [U, 2**bits], depth 0) of some of the values, floor
    uint32 [U], deciding int32 [] (:meth:`RadixSelect.deciding` of all of a unit's values)
    -> uint32 [U]. All the values hold at least as many at or above the new floor, so the
    values that decide a threshold stay at or above it (:func:`prefix_histogram`).
    Two levels of bins (groups, then the bins of one group) keep the prefix sums short.
    """
    units, nbins = counts.shape
    group = math.isqrt(nbins)
    assert group * group == nbins, "the first pass resolves an even number of bits"
    coarse_above = _from_top(counts.reshape(units, -1, group).sum(-1))  # values in groups >= g
    top = jnp.maximum(jnp.sum(coarse_above >= deciding, axis=1) - 1, 0)  # the highest such group (0 if none)
    beyond = jnp.take_along_axis(jnp.pad(coarse_above, ((0, 0), (0, 1))), top[:, None] + 1, axis=1)
    fine_above = _from_top(jnp.take_along_axis(counts, top[:, None] * group + jnp.arange(group), axis=1)) + beyond
    bin_ = top * group + jnp.sum(fine_above >= deciding, axis=1) - 1  # -1 where too few values yet: edge 0
    edge = jnp.maximum(bin_, 0).astype(jnp.uint32) << (KEY_BITS - nbins.bit_length() + 1)
    return jnp.maximum(floor, edge)


def _from_top(counts: jax.Array) -> jax.Array:
    """[U, n] -> [U, n]: the sum of each entry and those after it along the last axis."""
    return jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]


def empty_histogram(units: int, bits: int, extremes: bool):
    """The histogram of no values, as :func:`prefix_histogram` returns them: zero counts, and
    per-bin extremes that any key replaces (the int32 maximum and minimum; [U, 0] without
    ``extremes``)."""
    nbins = (1 << bits) if extremes else 0
    return (
        jnp.zeros((units, 1 << bits), jnp.int32),
        jnp.full((units, nbins), jnp.iinfo(jnp.int32).max, jnp.int32),
        jnp.full((units, nbins), jnp.iinfo(jnp.int32).min, jnp.int32),
        jnp.zeros(units, jnp.int32),
    )


def signed_key(key: jax.Array) -> jax.Array:
    """uint32 order keys -> int32 in the same order (the top bit flipped)."""
    return jax.lax.bitcast_convert_type(key ^ _SIGN, jnp.int32)


def unsigned_key(signed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`signed_key`, on the host; uint32 input is returned as it is."""
    signed = np.asarray(signed)
    return signed if signed.dtype == np.uint32 else signed.astype(np.int32).view(np.uint32) ^ _SIGN


@dataclasses.dataclass
class RadixSelect:
    """Host-side state of the per-unit threshold search for one layer.

    ``step`` consumes one pass's merged histogram and narrows each unresolved unit's
    bucket; ``thresholds`` is valid once ``done``.
    """

    units: int
    quantile: float
    rank_tolerance: float = 1e-4
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    level: int = 0
    total: int | None = None  # values per unit, set by the first pass
    prefix: np.ndarray = dataclasses.field(init=False)
    above: np.ndarray = dataclasses.field(init=False)  # values strictly above the bucket
    resolved: np.ndarray = dataclasses.field(init=False)
    threshold_keys: np.ndarray = dataclasses.field(init=False)

    STATE: ClassVar[tuple[str, ...]] = ("prefix", "above", "resolved", "threshold_keys")  # saved for resuming

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if sum(self.schedule) != KEY_BITS:
            raise ValueError(f"schedule {self.schedule} must cover {KEY_BITS} bits")
        self.prefix = np.zeros(self.units, np.uint32)
        self.above = np.zeros(self.units, np.int64)
        self.resolved = np.zeros(self.units, bool)
        self.threshold_keys = np.zeros(self.units, np.uint32)

    @property
    def depth(self) -> int:
        return sum(self.schedule[: self.level])

    @property
    def bits(self) -> int:
        return self.schedule[self.level]

    @property
    def extremes(self) -> bool:
        """Whether this pass needs per-bin min/max keys (all but the first)."""
        return self.level > 0

    @property
    def done(self) -> bool:
        return bool(self.resolved.all())

    def open_units(self) -> np.ndarray | None:
        """int [k]: the units still searched, padded to a power of two by repeating the last
        (few compiled shapes), for a pass that histograms only them; None where more than half
        are still open (a pass over every unit then costs about the same)."""
        open_ = np.flatnonzero(~self.resolved)
        if self.level == 0 or not 0 < len(open_) <= self.units // 2:
            return None
        return np.pad(open_, (0, (1 << (len(open_) - 1).bit_length()) - len(open_)), mode="edge")

    def _whole(self, counts: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, units: np.ndarray | None):
        """A histogram of the ``units`` rows (:meth:`open_units`) as one of every unit (the
        others empty), extremes as uint32 keys."""
        kmin, kmax = unsigned_key(kmin), unsigned_key(kmax)
        if units is None:
            return np.asarray(counts, np.int64), kmin, kmax
        whole = (
            np.zeros((self.units, counts.shape[1]), np.int64),
            np.full((self.units, kmin.shape[1]), 0xFFFFFFFF, np.uint32),
            np.zeros((self.units, kmax.shape[1]), np.uint32),
        )
        for full, part in zip(whole, (counts, kmin, kmax)):
            full[units] = part
        return whole

    @property
    def target_rank(self) -> int:
        """Number of values that should lie strictly above the threshold."""
        return int(np.floor(self.quantile * self.total))

    def deciding(self, total: int) -> int:
        """How many of a unit's ``total`` values, the largest, decide its threshold: the
        others may be counted as the lowest value (``floor`` of :func:`prefix_histogram`)."""
        return int(np.floor(self.quantile * total)) + 1

    def _locate(self, counts: np.ndarray, rank) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, the bin of this pass's histogram (counts int [U, 2**bits]) that holds the
        value with ``rank`` values strictly above it (``above`` counts those above the bucket),
        and the number of values above that bin. The bin always exists: rank < total."""
        from_top = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        above_bin = self.above[:, None] + from_top - counts  # values in bins > b, and above the bucket
        rank = np.asarray(rank)[..., None]
        chosen = np.argmax((above_bin <= rank) & (above_bin + counts > rank), axis=1)
        rows = np.arange(self.units)
        return chosen, above_bin[rows, chosen]

    def _first_pass(self, counts: np.ndarray) -> None:
        if self.level == 0:
            totals = counts.sum(1)
            if totals.min() != totals.max():
                raise ValueError("units saw different numbers of values")
            self.total = int(totals[0])
            if self.total == 0:
                raise ValueError("no activation values: the probe set is empty")

    def _narrow(self, narrow: np.ndarray, chosen: np.ndarray, above: np.ndarray) -> None:
        """Fixes the next bits of the unresolved units in ``narrow`` to their ``chosen`` bin."""
        shift = KEY_BITS - self.depth - self.bits
        bits = chosen.astype(np.uint32) << np.uint32(shift)
        self.prefix = np.where(narrow, self.prefix | bits, self.prefix).astype(np.uint32)
        self.above = np.where(narrow, above, self.above)
        self.level += 1

    def step(self, counts: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, units: np.ndarray | None = None) -> None:
        """Narrow each unresolved unit's bucket with one pass's histogram ([U, 2**bits] each;
        extremes as :func:`prefix_histogram` returns them, or as uint32 keys), or with the
        histogram of the ``units`` rows that :meth:`open_units` named ([k, 2**bits] each)."""
        counts, kmin, kmax = self._whole(counts, kmin, kmax, units)
        self._first_pass(counts)
        chosen, above = self._locate(counts, self.target_rank)
        rows = np.arange(self.units)
        last_level = self.level == len(self.schedule) - 1
        if kmin.shape[1] == 0:  # no extremes: no threshold value to settle on yet
            if last_level:
                raise ValueError("the last pass needs per-bin extremes")
            newly = np.zeros(self.units, bool)
        else:
            in_bin = counts[rows, chosen]
            ties = kmin[rows, chosen] == kmax[rows, chosen]
            small = in_bin <= 0.5 * self.rank_tolerance * self.total
            newly = ~self.resolved & (small | ties | last_level)
            # threshold = the largest value in the chosen bin: exactly ``above`` values exceed it
            self.threshold_keys = np.where(newly, kmax[rows, chosen], self.threshold_keys).astype(np.uint32)
        self._narrow(~self.resolved & ~newly, chosen, above)
        self.resolved |= newly

    @property
    def thresholds(self) -> np.ndarray:
        """float32 [U]; requires ``done``."""
        if not self.done:
            raise RuntimeError("thresholds requested before the search finished")
        return key_to_value(self.threshold_keys)


def lite_readout_index(quantile: float) -> int:
    """The column NetDissect-Lite reads from its 1,000-point quantile readout for ``quantile``
    (its own float arithmetic): ``int(1000 * (1 - q) - 1)``.

    >>> lite_readout_index(0.005), lite_readout_index(0.05), lite_readout_index(0.9999)
    (994, 949, 0)
    """
    return int(1000 * (1 - quantile) - 1)


def lite_position(quantile: float, n: int) -> tuple[int, Fraction]:
    """Where Lite's threshold lies among n sorted values: ascending index j and weight w in
    [0, 1) of value j + 1, so that t = v[j] + w (v[j+1] - v[j]).

    Lite's readout(1000) holds the quantiles p = i / 999 and interpolates linearly between
    the sorted values placed at (j + 1/2) / n (every weight 1 while its sketch holds every
    value; the minimum and maximum at 0 and 1), so p sits at x = p n - 1/2, clamped to
    [0, n - 1]. Exact rational arithmetic.

    >>> lite_position(0.005, 2000)  # x = 994 * 2000 / 999 - 1/2
    (1989, Fraction(979, 1998))
    """
    i = lite_readout_index(quantile)
    x = Fraction(2 * i * n - 999, 1998)
    j = x.numerator // x.denominator
    if j < 0:
        return 0, Fraction(0)
    if j >= n - 1:
        return n - 1, Fraction(0)
    return j, x - j


def round_down_float32(value: Fraction) -> np.float32:
    """The largest float32 at or below ``value`` (finite). For any float32 a, ``a > value``
    exactly when ``a > round_down_float32(value)``.

    >>> float(round_down_float32(Fraction(1, 3))) <= 1 / 3 < float(np.nextafter(round_down_float32(Fraction(1, 3)), 1))
    True
    """
    f = np.float32(float(value))
    while Fraction(float(f)) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    up = np.nextafter(f, np.float32(np.inf))
    while Fraction(float(up)) <= value:
        f, up = up, np.nextafter(up, np.float32(np.inf))
    return np.float32(f)


@dataclasses.dataclass
class LiteSelect(RadixSelect):
    """NetDissect-Lite's per-unit threshold, computed exactly rather than by its sampled sketch.

    The threshold interpolates between two adjacent order statistics v[j] and v[j+1]
    (:func:`lite_position`). Both are found by the same radix passes: their ranks share a
    bucket until a pass puts them in different bins, and then, being adjacent, v[j] is the
    largest value of its bin and v[j+1] the smallest of its own; or they stay in one bin
    until it holds a single value. So every pass needs per-bin extremes, and the result is
    exact: ``t = v[j] + w (v[j+1] - v[j])``, rounded down to float32, so that ``a > t`` is
    decided exactly for float32 activations ``a``. (Lite's sketch is exact up to 24,576
    values per unit, apart from float32 rounding of its weights; above that it samples.)
    """

    lo_keys: np.ndarray = dataclasses.field(init=False)  # order keys of v[j] and v[j+1]
    hi_keys: np.ndarray = dataclasses.field(init=False)

    STATE: ClassVar[tuple[str, ...]] = ("prefix", "above", "resolved", "lo_keys", "hi_keys")

    def __post_init__(self):
        super().__post_init__()
        self.lo_keys = np.zeros(self.units, np.uint32)
        self.hi_keys = np.zeros(self.units, np.uint32)

    @property
    def extremes(self) -> bool:
        return True

    def deciding(self, total: int) -> int:
        j, _ = lite_position(self.quantile, total)
        return total - j  # v[j] and every value after it

    def step(self, counts: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, units: np.ndarray | None = None) -> None:
        counts, kmin, kmax = self._whole(counts, kmin, kmax, units)
        self._first_pass(counts)
        if kmin.shape[1] == 0:
            raise ValueError("Lite thresholds need per-bin extremes in every pass")
        j, weight = lite_position(self.quantile, self.total)
        upper = j + 1 if weight else j
        # ranks from the top: v[j] has total - 1 - j values after it in sorted order
        chosen_lo, above_lo = self._locate(counts, self.total - 1 - j)
        chosen_hi, _ = self._locate(counts, self.total - 1 - upper)
        rows = np.arange(self.units)
        open_ = ~self.resolved
        parted = open_ & (chosen_lo != chosen_hi)
        single = open_ & ~parted & (kmin[rows, chosen_lo] == kmax[rows, chosen_lo])
        self.lo_keys = np.where(parted | single, kmax[rows, chosen_lo], self.lo_keys).astype(np.uint32)
        self.hi_keys = np.where(parted, kmin[rows, chosen_hi],
                                np.where(single, kmax[rows, chosen_lo], self.hi_keys)).astype(np.uint32)  # fmt: skip
        narrow = open_ & ~parted & ~single
        if narrow.any() and self.level == len(self.schedule) - 1:
            raise ValueError("the search ended with an unresolved bucket")  # a single key cannot hold two values
        self._narrow(narrow, chosen_lo, above_lo)
        self.resolved |= parted | single

    @property
    def thresholds(self) -> np.ndarray:
        if not self.done:
            raise RuntimeError("thresholds requested before the search finished")
        _, weight = lite_position(self.quantile, self.total)
        lo, hi = key_to_value(self.lo_keys), key_to_value(self.hi_keys)
        return np.array(
            [round_down_float32(Fraction(float(a)) + weight * (Fraction(float(b)) - Fraction(float(a))))
             for a, b in zip(lo, hi)], np.float32)  # fmt: skip


def threshold_search(quantile_rule: str, units: int, quantile: float) -> RadixSelect:
    """The search for ``units`` thresholds under a rule of :data:`dissectjax.stats.semantics.QUANTILE_RULES`:
    ``"rank"`` (:class:`RadixSelect`) or ``"lite"`` (:class:`LiteSelect`)."""
    return LiteSelect(units, quantile) if quantile_rule == "lite" else RadixSelect(units, quantile)
