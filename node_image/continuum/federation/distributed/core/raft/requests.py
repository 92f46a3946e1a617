"""The applied-request table (Raft thesis 6.3): retried proposals apply once.

A proposal may carry a client request id. When an entry is applied, its id is
recorded with the entry's index; a later entry with the same id (a retry whose
first attempt had an unknown outcome) is reported as a duplicate and not
applied again. Ids are forgotten ``window`` entries after they were applied;
that depends only on the log, so every replica forgets the same ids.

A snapshot carries the table as two columns (``Table``): copying them is two list
copies, cheap enough to do between two Readies however full the window is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple


class Table(NamedTuple):
    """The table's content: request ids and the indexes they were applied at, oldest first."""

    ids: list[str]
    at: list[int]

    def rows(self) -> list[list[str | int]]:
        return [[rid, at] for rid, at in zip(self.ids, self.at, strict=True)]

    @classmethod
    def of_rows(cls, rows: list[list[str | int]]) -> Table:
        """The table of ``[[id, index], ...]`` rows (the layout of older snapshots)."""
        return cls([str(r[0]) for r in rows], [int(r[1]) for r in rows])


class RequestTable:
    def __init__(self, window: int) -> None:
        self.window = window
        self._applied: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._applied)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._applied

    def record(self, request_id: str | None, index: int) -> bool:
        """Record an applied entry; False if ``request_id`` was already applied."""
        self._expire(index)
        if request_id is None:
            return True
        if request_id in self._applied:
            return False
        self._applied[request_id] = index
        return True

    def _expire(self, index: int) -> None:
        horizon = index - self.window
        while self._applied:
            rid, at = next(iter(self._applied.items()))
            if at >= horizon:
                return
            del self._applied[rid]

    def dump(self) -> Table:
        return Table(list(self._applied), list(self._applied.values()))

    def load(self, table: Table) -> None:
        if len(table.ids) != len(table.at):
            raise ValueError("request table columns differ in length")
        self._applied = OrderedDict(zip(table.ids, table.at, strict=True))
