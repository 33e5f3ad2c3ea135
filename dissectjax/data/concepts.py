"""The concept vocabulary of a probe dataset: numbers, names and categories."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Concepts:
    """C concepts in K categories; the column order of every count array.

    numbers: int [C], the dataset's label numbers (Broden numbering, 1-based), ascending.
    names: C names.
    category: int [C], index into ``categories`` of each concept's (primary) category.
    categories: K category names, in the dataset's column order.
    """

    numbers: np.ndarray
    names: tuple[str, ...]
    category: np.ndarray
    categories: tuple[str, ...]

    def __post_init__(self):
        if not (len(self.numbers) == len(self.names) == len(self.category)):
            raise ValueError("numbers, names and category must have one entry per concept")
        if np.any(np.diff(self.numbers) <= 0):
            raise ValueError("concept numbers must be strictly increasing")

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def lookup_table(self) -> np.ndarray:
        """int32 [max_number + 1]: label number -> concept index, -1 for 0 and unknown numbers."""
        table = np.full(int(self.numbers.max(initial=0)) + 1, -1, np.int32)
        table[self.numbers] = np.arange(len(self.numbers), dtype=np.int32)
        return table

    def index_of(self, name: str) -> int:
        """Concept index of ``name``; raises KeyError listing close names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown concept {name!r}; known: {', '.join(self.names[:20])}...") from None
