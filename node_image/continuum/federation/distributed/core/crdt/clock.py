"""Causality and time: version vectors and a hybrid logical clock.

``VectorClock`` holds one counter per *node* (never per client), so its size is
bounded by the cluster. ``HybridLogicalClock`` orders last-write-wins: its
timestamps follow wall time when clocks are sane and never go backwards, and a
node that has seen a timestamp always writes after it (Kulkarni et al. 2014).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Literal, NamedTuple

Ordering = Literal["before", "after", "equal", "concurrent"]

# Bounds no honest replica reaches (a counter per write, 2**62 of them; milliseconds of
# wall time for 8,000 years): larger numbers are forged and refused where decoded, so
# every clock we hold still fits 64 bits after it moves on.
MAX_COUNTER = 2**62
MAX_WALL_MS = 2**48
MAX_LOGICAL = 2**32


class VectorClock:
    """A version vector: node id -> highest counter seen from that node. Missing means 0."""

    __slots__ = ("_c",)

    def __init__(self, counters: Mapping[str, int] | None = None, *,
                 clocks: Mapping[str, int] | None = None) -> None:
        if counters is not None and clocks is not None:
            raise ValueError("pass the counters once: VectorClock(counters) or clocks=")
        self._c: dict[str, int] = {}
        for node, n in (counters if counters is not None else clocks or {}).items():
            _check_entry(node, n)
            if n:
                self._c[node] = n

    @property
    def clocks(self) -> Mapping[str, int]:
        """Node id -> counter, read-only (the original module's name; change it with
        ``increment`` and ``update``)."""
        return MappingProxyType(self._c)

    def get(self, node_id: str) -> int:
        return self._c.get(node_id, 0)

    def increment(self, node_id: str, to: int | None = None) -> VectorClock:
        """Advance ``node_id``'s entry by one (or to ``to``, which must be higher); returns self."""
        cur = self._c.get(node_id, 0)
        nxt = cur + 1 if to is None else to
        _check_entry(node_id, nxt)
        if nxt <= cur:
            raise ValueError(f"counter for {node_id!r} must grow: {nxt} <= {cur}")
        self._c[node_id] = nxt
        return self

    def update(self, other: VectorClock | Mapping[str, int]) -> VectorClock:
        """Pointwise maximum with ``other``, in place; returns self."""
        items = other._c.items() if isinstance(other, VectorClock) else other.items()
        for node, n in items:
            _check_entry(node, n)
            if n > self._c.get(node, 0):
                self._c[node] = n
        return self

    def merge(self, other: VectorClock) -> VectorClock:
        """A new clock, the pointwise maximum of both."""
        return self.copy().update(other)

    def covers(self, node_id: str, counter: int) -> bool:
        """True if the event ``(node_id, counter)`` is included in this clock."""
        return self._c.get(node_id, 0) >= counter

    def compare(self, other: VectorClock) -> Ordering:
        """``"before"`` (self precedes other), ``"after"``, ``"equal"`` or ``"concurrent"``."""
        less = greater = False
        for node in self._c.keys() | other._c.keys():
            a, b = self._c.get(node, 0), other._c.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return "concurrent"
        if less:
            return "before"
        if greater:
            return "after"
        return "equal"

    def dominates(self, other: VectorClock) -> bool:
        """self >= other pointwise."""
        return self.compare(other) in ("after", "equal")

    def copy(self) -> VectorClock:
        vc = VectorClock()
        vc._c = dict(self._c)
        return vc

    def to_dict(self) -> dict[str, int]:
        return dict(self.sorted_items())

    def sorted_items(self) -> list[tuple[str, int]]:
        """(node id, counter) in node id order: the order every hash over a clock uses."""
        items = list(self._c.items())
        if len(items) > 1:
            items.sort()
        return items

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> VectorClock:
        if not isinstance(data, Mapping):
            raise ValueError(f"a vector clock is a mapping of node id to counter, got {data!r}")
        return cls(data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._c)

    def __len__(self) -> int:
        return len(self._c)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._c == other._c

    def __hash__(self) -> int:
        return hash(frozenset(self._c.items()))

    def __repr__(self) -> str:
        return f"VectorClock({self.to_dict()!r})"


def _check_entry(node: object, n: object) -> None:
    if not isinstance(node, str) or not node:
        raise ValueError(f"vector clock node ids are non-empty strings, got {node!r}")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_COUNTER:
        raise ValueError(f"vector clock counters are integers from 0 to {MAX_COUNTER}, "
                         f"got {n!r}")


class HLCTimestamp(NamedTuple):
    """Milliseconds of wall time plus a logical counter; tuples order correctly."""

    wall: int
    logical: int

    @classmethod
    def parse(cls, raw: object) -> HLCTimestamp:
        # An HLCTimestamp is a tuple too, and is checked like one: nothing stops a caller
        # from building HLCTimestamp(-5, 0).
        if isinstance(raw, list | tuple) and len(raw) == 2:
            wall, logical = raw
            if (isinstance(wall, int) and not isinstance(wall, bool) and 0 <= wall <= MAX_WALL_MS
                    and isinstance(logical, int) and not isinstance(logical, bool)
                    and 0 <= logical <= MAX_LOGICAL):
                return raw if type(raw) is HLCTimestamp else cls(wall, logical)
        raise ValueError(f"an HLC timestamp is [wall_ms, logical], non-negative ints of at "
                         f"most {MAX_WALL_MS} and {MAX_LOGICAL}; got {raw!r}")

    @property
    def seconds(self) -> float:
        return self.wall / 1000.0


class HybridLogicalClock:
    """HLC: ``now(t)`` for a local event, ``observe(ts, t)`` when a remote timestamp arrives.

    ``max_offset`` bounds how far a remote timestamp may pull our clock ahead of
    our own wall time: a peer with a clock an hour fast must not drag every
    later write an hour into the future (the value is still accepted, only the
    clock is not advanced past the bound).
    """

    def __init__(self, max_offset: float = 60.0, last: HLCTimestamp | None = None) -> None:
        self.max_offset_ms = int(max_offset * 1000)
        self.last = last or HLCTimestamp(0, 0)

    def now(self, now: float) -> HLCTimestamp:
        wall = _ms(now)
        if wall > self.last.wall:
            self.last = HLCTimestamp(wall, 0)
        else:
            self.last = HLCTimestamp(self.last.wall, self.last.logical + 1)
        return self.last

    def observe(self, remote: HLCTimestamp, now: float) -> HLCTimestamp:
        wall = _ms(now)
        if remote.wall > wall + self.max_offset_ms:
            return self.last  # too far ahead: do not let it drag our clock
        if remote > self.last:
            self.last = remote
        return self.last


def _ms(now: float) -> int:
    return max(0, int(now * 1000))
