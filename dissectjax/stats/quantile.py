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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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
    acts: jax.Array, valid: jax.Array, prefix: jax.Array, depth: int, bits: int, extremes: bool = True
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

    Returns:
      counts int32 [U, 2**bits], kmin uint32 [U, 2**bits], kmax uint32 [U, 2**bits]
      (kmin/kmax are the smallest/largest key in each bin; empty bins hold 0xFFFFFFFF/0;
      [U, 0] without ``extremes``), and nonfinite int32 [U], the NaN/Inf values per unit.
    """
    units = acts.shape[-1]
    nbins = 1 << bits
    flat = acts.reshape(acts.shape[0], -1, units)
    keys = order_key(flat)  # [B, P, U]
    finite = jnp.isfinite(flat)
    keep = valid[:, None, None] & finite
    if depth > 0:
        keep &= (keys >> (KEY_BITS - depth)) == (prefix >> (KEY_BITS - depth))[None, None, :]
    shift = KEY_BITS - depth - bits
    bins = ((keys >> shift) & jnp.uint32(nbins - 1)).astype(jnp.int32)
    bins = jnp.where(keep, bins, nbins)  # out-of-bucket values land in a dropped bin
    # one flat index per value; XLA's CPU scatter is much faster 1-D and on signed ints
    index = (jnp.arange(units, dtype=jnp.int32) * (nbins + 1) + bins).ravel()
    signed = jax.lax.bitcast_convert_type(keys ^ _SIGN, jnp.int32).ravel()  # same order as the keys
    size = units * (nbins + 1)
    counts = jnp.zeros(size, jnp.int32).at[index].add(1).reshape(units, nbins + 1)[:, :nbins]
    nonfinite = jnp.sum(valid[:, None, None] & ~finite, axis=(0, 1), dtype=jnp.int32)
    if not extremes:
        none = jnp.zeros((units, 0), jnp.uint32)
        return counts, none, none, nonfinite
    smin = jnp.full(size, jnp.iinfo(jnp.int32).max, jnp.int32).at[index].min(signed)
    smax = jnp.full(size, jnp.iinfo(jnp.int32).min, jnp.int32).at[index].max(signed)

    def unsigned(x):
        return jax.lax.bitcast_convert_type(x.reshape(units, nbins + 1)[:, :nbins], jnp.uint32) ^ _SIGN

    return counts, unsigned(smin), unsigned(smax), nonfinite


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

    @property
    def target_rank(self) -> int:
        """Number of values that should lie strictly above the threshold."""
        return int(np.floor(self.quantile * self.total))

    def step(self, counts: np.ndarray, kmin: np.ndarray, kmax: np.ndarray) -> None:
        """Narrow each unresolved unit's bucket with one pass's histogram ([U, 2**bits] each)."""
        counts = np.asarray(counts, np.int64)
        if self.level == 0:
            totals = counts.sum(1)
            if totals.min() != totals.max():
                raise ValueError("units saw different numbers of values")
            self.total = int(totals[0])
            if self.total == 0:
                raise ValueError("no activation values: the probe set is empty")
        k = self.target_rank
        # cumulative counts from the top bin down: above_bin[u, b] = values in bins > b
        from_top = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        above_bin = self.above[:, None] + from_top - counts
        holds_rank = (above_bin <= k) & (above_bin + counts > k)
        # the top bin holds rank k unless every value is above it; k < total always
        chosen = np.argmax(holds_rank, axis=1)
        rows = np.arange(self.units)
        shift = KEY_BITS - self.depth - self.bits
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
            # threshold = the largest value in the chosen bin: exactly above_bin values exceed it
            self.threshold_keys = np.where(newly, kmax[rows, chosen], self.threshold_keys).astype(np.uint32)
        narrow = ~self.resolved & ~newly
        self.prefix = np.where(
            narrow, self.prefix | (chosen.astype(np.uint32) << np.uint32(shift)), self.prefix
        ).astype(np.uint32)
        self.above = np.where(narrow, above_bin[rows, chosen], self.above)
        self.resolved |= newly
        self.level += 1

    @property
    def thresholds(self) -> np.ndarray:
        """float32 [U]; requires ``done``."""
        if not self.done:
            raise RuntimeError("thresholds requested before the search finished")
        return key_to_value(self.threshold_keys)
