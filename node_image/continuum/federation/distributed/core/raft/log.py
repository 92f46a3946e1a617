"""The replicated log as one node holds it: a snapshot base plus entries.

Invariants: ``entries[k].index == snapshot_index + 1 + k``; ``applied <=
commit <= last_index``; entries before ``unstable`` have been handed to the
shell for persisting. Entries at or below ``commit`` are never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import messages as m


class RaftLog:
    def __init__(self, snapshot: m.Snapshot | None = None,
                 entries: Sequence[m.Entry] = (), commit: int = 0) -> None:
        self.snapshot = snapshot
        self.snapshot_index = snapshot.index if snapshot else 0
        self.snapshot_term = snapshot.term if snapshot else 0
        self.entries: list[m.Entry] = list(entries)
        if self.entries and self.entries[0].index != self.snapshot_index + 1:
            raise ValueError("log entries do not start right after the snapshot")
        self.applied = self.snapshot_index
        self.commit = max(min(commit, self.last_index), self.snapshot_index)
        self.unstable = self.last_index + 1  # loaded entries are already durable
        self.persisted = self.last_index

    # -- reading -------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """The term at ``index``; None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        k = index - self.snapshot_index - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> m.Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[m.Entry]:
        """Entries ``lo <= index < hi``; at least one, then up to ``max_bytes`` of data."""
        base = self.snapshot_index + 1
        out = self.entries[lo - base:hi - base]
        size = 0
        for n, e in enumerate(out):
            size += len(e.data) + 32
            if size > max_bytes and n > 0:
                return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The election restriction: is (last_term, last_index) at least as new as ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries sharing the term at ``index``."""
        term = self.term(index)
        while index - 1 > self.snapshot_index and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                return None
        return None

    # -- writing -------------------------------------------------------------------------

    def append(self, entries: Sequence[m.Entry]) -> int | None:
        """Append a leader's entries after a matching prefix.

        Returns the index from which the log was rewritten (for the
        configuration history), or None if nothing conflicted.
        """
        truncated: int | None = None
        for k, e in enumerate(entries):
            t = self.term(e.index)
            if e.index <= self.snapshot_index or t == e.term:
                continue  # already have it
            if t is not None:  # conflict: drop our suffix from here
                if e.index <= self.commit:
                    raise AssertionError(f"conflict at committed index {e.index}")
                del self.entries[e.index - self.snapshot_index - 1:]
                truncated = e.index
                self.unstable = min(self.unstable, e.index)
                self.persisted = min(self.persisted, e.index - 1)
            self.entries.extend(entries[k:])
            break
        return truncated

    def append_new(self, entries: Sequence[m.Entry]) -> None:
        """The leader's own entries, already numbered after ``last_index``."""
        self.entries.extend(entries)

    def commit_to(self, index: int) -> bool:
        if index > self.commit:
            self.commit = min(index, self.last_index)
            return True
        return False

    def unstable_entries(self) -> list[m.Entry]:
        return self.entries[self.unstable - self.snapshot_index - 1:]

    def committed_to_apply(self, limit: int) -> list[m.Entry]:
        lo = self.applied + 1 - self.snapshot_index - 1
        hi = min(self.commit, limit) - self.snapshot_index
        return self.entries[lo:hi] if hi > lo else []

    def compact(self, snapshot: m.Snapshot) -> None:
        """Drop entries up to ``snapshot.index`` (which we hold and have applied)."""
        keep = self.entries[snapshot.index - self.snapshot_index:]
        self._rebase(snapshot, keep)

    def restore(self, snapshot: m.Snapshot) -> bool:
        """Install a leader's snapshot; True if our log was discarded entirely."""
        if self.matches(snapshot.index, snapshot.term) and snapshot.index <= self.last_index:
            self._rebase(snapshot, self.entries[snapshot.index - self.snapshot_index:])
            self.commit = max(self.commit, snapshot.index)
            self.applied = max(self.applied, snapshot.index)
            return False
        self._rebase(snapshot, [])
        self.commit = self.applied = snapshot.index
        self.unstable = self.persisted = snapshot.index
        self.unstable += 1
        return True

    def _rebase(self, snapshot: m.Snapshot, keep: list[m.Entry]) -> None:
        self.snapshot = snapshot
        self.snapshot_index, self.snapshot_term = snapshot.index, snapshot.term
        self.entries = keep
        self.unstable = max(self.unstable, snapshot.index + 1)
        self.persisted = max(self.persisted, snapshot.index)
