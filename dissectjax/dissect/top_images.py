"""Per unit, the probe rows of highest maximum activation, and the unit's maps on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class TopImages:
    """Per unit, the k rows with the highest maximum activation (ties: the lower row), and
    those rows' activation maps.

    A total order on (value, row) makes the result independent of batching and order;
    the maps are fetched from the device only for the entries a batch brings into the top k,
    and written into the slots of the entries they push out (``slots``), so a batch moves no
    map: ``flush`` puts them in rank order.
    ``rows`` int64 [U, k] (-1: none), ``values`` float32 [U, k], in rank order; ``maps``
    float32 [U, k, h, w] in slot order (None until a batch has brought an entry), ``slots``
    int64 [U, k]: the slot of each ranked entry's map.
    """

    def __init__(self, units: int, k: int):
        self.rows = np.full((units, k), -1, np.int64)
        self.values = np.full((units, k), -np.inf, np.float32)
        self.slots = np.broadcast_to(np.arange(k), (units, k)).copy()
        self.maps: np.ndarray | None = None

    def add(self, maxima: np.ndarray, rows: np.ndarray, gather: Callable[[np.ndarray], np.ndarray]) -> None:
        """maxima float [B, U] of the batch's rows int [B] (-1 for padding);
        ``gather(positions int [U, j]) -> float32 [U, j, h, w]`` fetches unit u's map of
        batch position ``positions[u, i]``."""
        units, k = self.rows.shape
        none = np.iinfo(np.int64).max
        values = np.where(rows[:, None] >= 0, maxima, -np.inf).T.astype(np.float32)  # [U, B]
        ids = np.broadcast_to(np.where(rows >= 0, rows, none), values.shape)
        all_values = np.concatenate([self.values, values], axis=1)
        all_rows = np.concatenate([np.where(self.rows >= 0, self.rows, none), ids], axis=1)
        order = np.lexsort((all_rows, -all_values), axis=-1)[:, :k]  # [U, k] into (kept, batch)
        self.values = np.take_along_axis(all_values, order, axis=1)
        rows_kept = np.take_along_axis(all_rows, order, axis=1)
        self.rows = np.where(np.isfinite(self.values), rows_kept, -1)
        arrived = order >= k  # entries from this batch; as many as the kept entries pushed out
        if not arrived.any():
            self.slots = np.take_along_axis(self.slots, order, axis=1)
            return
        stays = np.zeros((units, k), bool)  # which kept entries stay in the top k
        u, i = np.nonzero(~arrived)
        stays[u, order[u, i]] = True
        free = np.take_along_axis(self.slots, np.argsort(stays, axis=1, kind="stable"), axis=1)  # pushed out first
        ranks = np.argsort(~arrived, axis=1, kind="stable")  # the arrivals' ranks first, in rank order
        slots = np.take_along_axis(self.slots, np.where(arrived, 0, order), axis=1)
        u, t = np.nonzero(np.take_along_axis(arrived, ranks, axis=1))
        slots[u, ranks[u, t]] = free[u, t]
        self.slots = slots
        self._fetch(order, arrived & np.isfinite(self.values), gather)

    def _fetch(self, order: np.ndarray, new: np.ndarray, gather) -> None:
        """Writes the maps of the ranked entries ``new`` marks into their slots."""
        units, k = order.shape
        if not new.any():
            return
        # the new entries first in each unit's row, padded to a power of two (few compiled shapes)
        width = min(k, 1 << int(new.sum(axis=1).max() - 1).bit_length())
        firsts = np.argsort(~new, axis=1, kind="stable")[:, :width]  # [U, width] ranks
        positions = np.take_along_axis(np.where(new, order - k, 0), firsts, axis=1)
        fetched = np.asarray(gather(positions), np.float32)  # [U, width, h, w]
        if self.maps is None:
            self.maps = np.zeros((units, k, *fetched.shape[2:]), np.float32)
        u, j = np.nonzero(np.take_along_axis(new, firsts, axis=1))
        self.maps[u, self.slots[u, firsts[u, j]]] = fetched[u, j]

    @property
    def ranked_maps(self) -> np.ndarray | None:
        """float32 [U, k, h, w]: the maps in rank order (None until a batch has brought an entry)."""
        return None if self.maps is None else np.take_along_axis(self.maps, self.slots[..., None, None], axis=1)

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, values, maps) to save, maps in rank order; maps [U, k, 0, 0] before any entry."""
        maps = self.ranked_maps
        return self.rows, self.values, np.zeros((*self.rows.shape, 0, 0), np.float32) if maps is None else maps

    def load(self, saved) -> None:
        """Continues from what :meth:`flush` returned (nothing if ``saved`` is None)."""
        if saved is not None:
            self.rows, self.values, maps = (np.asarray(x) for x in saved)
            self.maps = maps.copy() if maps.size else None
            self.slots = np.broadcast_to(np.arange(self.rows.shape[1]), self.rows.shape).copy()
