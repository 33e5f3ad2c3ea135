"""Per unit, the probe rows of highest maximum activation, and the unit's maps on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class TopImages:
    """Per unit, the k rows with the highest maximum activation (ties: the lower row), and
    those rows' activation maps.

    A total order on (value, row) makes the result independent of batching and order;
    the maps are fetched from the device only for the entries a batch brings into the top k.
    ``rows`` int64 [U, k] (-1: none), ``values`` float32 [U, k], ``maps`` float32 [U, k, h, w]
    (None until a batch has brought an entry).
    """

    def __init__(self, units: int, k: int):
        self.rows = np.full((units, k), -1, np.int64)
        self.values = np.full((units, k), -np.inf, np.float32)
        self.maps: np.ndarray | None = None

    def add(self, maxima: np.ndarray, rows: np.ndarray, gather: Callable[[np.ndarray], np.ndarray]) -> None:
        """maxima float [B, U] of the batch's rows int [B] (-1 for padding);
        ``gather(positions int [U, j]) -> float32 [U, j, h, w]`` fetches unit u's map of
        batch position ``positions[u, i]``."""
        k = self.rows.shape[1]
        none = np.iinfo(np.int64).max
        values = np.where(rows[:, None] >= 0, maxima, -np.inf).T.astype(np.float32)  # [U, B]
        ids = np.broadcast_to(np.where(rows >= 0, rows, none), values.shape)
        all_values = np.concatenate([self.values, values], axis=1)
        all_rows = np.concatenate([np.where(self.rows >= 0, self.rows, none), ids], axis=1)
        order = np.lexsort((all_rows, -all_values), axis=-1)[:, :k]  # [U, k] into (kept, batch)
        self.values = np.take_along_axis(all_values, order, axis=1)
        rows_kept = np.take_along_axis(all_rows, order, axis=1)
        self.rows = np.where(np.isfinite(self.values), rows_kept, -1)
        self.maps = self._merge_maps(order, (order >= k) & np.isfinite(self.values), gather)

    def _merge_maps(self, order: np.ndarray, new: np.ndarray, gather) -> np.ndarray | None:
        units, k = order.shape
        if not new.any():
            return None if self.maps is None else np.take_along_axis(self.maps, order[..., None, None], axis=1)
        # the new entries first in each unit's row, padded to a power of two (few compiled shapes)
        width = min(k, 1 << int(new.sum(axis=1).max() - 1).bit_length())
        slots = np.argsort(~new, axis=1, kind="stable")[:, :width]  # [U, width]
        positions = np.take_along_axis(np.where(new, order - k, 0), slots, axis=1)
        fetched = np.asarray(gather(positions), np.float32)  # [U, width, h, w]
        if self.maps is None:
            self.maps = np.zeros((units, k, *fetched.shape[2:]), np.float32)
        maps = np.take_along_axis(self.maps, np.where(new, 0, order)[..., None, None], axis=1)
        u, j = np.nonzero(np.take_along_axis(new, slots, axis=1))
        maps[u, slots[u, j]] = fetched[u, j]
        return maps

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, values, maps) to save; maps [U, k, 0, 0] before any entry."""
        maps = np.zeros((*self.rows.shape, 0, 0), np.float32) if self.maps is None else self.maps
        return self.rows, self.values, maps

    def load(self, saved) -> None:
        """Continues from what :meth:`flush` returned (nothing if ``saved`` is None)."""
        if saved is not None:
            self.rows, self.values, maps = (np.asarray(x) for x in saved)
            self.maps = maps if maps.size else None
