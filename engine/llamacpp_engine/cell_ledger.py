"""The KV budget in cells: which cells of the unified cache each sequence holds, shared cells counted once.

llama.cpp frees a cell when no sequence holds it any more, and `seq_cp` makes a second sequence hold the same
cells; this ledger mirrors that with reference counts, so the engine knows before a decode whether the batch
fits and how many cells evicting a set of idle sequences would give back.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class CellLedger:
    """Reference counts of `n_cells` KV cells and the free ones (virtual ids; llama.cpp places the real ones)."""

    def __init__(self, n_cells: int) -> None:
        if n_cells < 1:
            raise ValueError("the KV budget needs at least one cell")
        self.n_cells = n_cells
        self._refs = np.zeros(n_cells, dtype=np.int32)
        self._free = list(range(n_cells - 1, -1, -1))

    @property
    def free_count(self) -> int:
        """Cells no sequence holds."""
        return len(self._free)

    @property
    def used_count(self) -> int:
        """Cells at least one sequence holds."""
        return self.n_cells - len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """n fresh cells held once, or None (and nothing taken) if fewer than n are free."""
        if n > len(self._free):
            return None
        out = [self._free.pop() for _ in range(n)]
        self._refs[out] = 1
        return out

    def share(self, cells: list[int]) -> None:
        """One more holder for cells already held (a seq_cp)."""
        if cells:
            self._refs[cells] += 1

    def release(self, cells: list[int]) -> None:
        """One holder fewer for each cell; cells nobody holds become free."""
        if not cells:
            return
        idx = np.asarray(cells, dtype=np.int64)
        self._refs[idx] -= 1
        self._free.extend(idx[self._refs[idx] == 0].tolist())

    def unshared_tail(self, cells: list[int], limit: int) -> int:
        """How many of the last cells of `cells`, up to `limit`, have no other holder (freed if released)."""
        n = 0
        while n < min(limit, len(cells)) and self._refs[cells[len(cells) - 1 - n]] == 1:
            n += 1
        return n

    def freed_by(self, holders: Iterable[list[int]]) -> int:
        """Cells that would become free if each of these holders released its cells."""
        lists = [c for c in holders if c]
        if not lists:
            return 0
        counts = np.bincount(np.concatenate([np.asarray(c, dtype=np.int64) for c in lists]), minlength=self.n_cells)
        return int(np.count_nonzero((counts > 0) & (counts == self._refs)))
