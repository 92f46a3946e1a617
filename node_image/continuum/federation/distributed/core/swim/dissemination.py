"""Epidemic dissemination: how often to retransmit, what to piggyback, what we have seen.

Each update is sent about ``mult * ceil(log10(N + 1))`` times by every member
that learns it (memberlist's rule, lambda*log(N) in the SWIM paper), the
least-sent first, so a new update overtakes old ones. A newer update about
the same subject (the same member, or the same node's key) replaces the
queued one: the queue never carries stale news.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def retransmit_limit(mult: int, n: int) -> int:
    """Transmissions per update at cluster size ``n``: ``mult * ceil(log10(n + 1))``."""
    if mult < 0 or n < 0:
        raise ValueError("mult and n must not be negative")
    return mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Queued(Generic[T]):
    key: Hashable
    item: T
    transmits: int
    born: float


_TRANSMITS = operator.attrgetter("transmits")


class BroadcastQueue(Generic[T]):
    """Updates waiting to be piggybacked, keyed by subject, bounded and aged.

    Every message a member sends takes from this queue, so its order does the
    work: a (re)queued update goes to the end of the dict, so dict order is
    age order (oldest first). Newest-first among equals is then a stable sort
    by transmit count of the reversed dict, the oldest are a prefix (expiry
    stops at the first fresh one), and the first most-sent is the eviction.
    """

    def __init__(self, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self._items: dict[Hashable, _Queued[T]] = {}
        self._last_born = -math.inf
        self.dropped = 0  # evicted before reaching the retransmit limit

    def __len__(self) -> int:
        return len(self._items)

    def push(self, key: Hashable, item: T, now: float) -> None:
        """Queue ``item``, replacing anything queued about the same ``key``."""
        self._items.pop(key, None)
        if len(self._items) >= self.capacity:
            # Make room by dropping the most-sent (then oldest) update: it has spread furthest.
            worst = max(self._items.values(), key=_TRANSMITS)
            del self._items[worst.key]
            self.dropped += 1
        self._last_born = max(self._last_born, now)  # keeps dict order = age order
        self._items[key] = _Queued(key, item, 0, self._last_born)

    def take(self, max_items: int, limit: int, now: float) -> list[T]:
        """Up to ``max_items`` updates, least-sent and newest first; counts a transmission each."""
        items = self._items
        if not items or max_items <= 0:
            return []
        while items:
            oldest = next(iter(items.values()))
            if now - oldest.born <= self.ttl:
                break
            del items[oldest.key]
        picked = heapq.nsmallest(max_items, reversed(items.values()), key=_TRANSMITS)
        out: list[T] = []
        for queued in picked:
            out.append(queued.item)
            queued.transmits += 1
            if queued.transmits >= limit:
                del items[queued.key]
        return out

    def clear(self) -> None:
        self._items.clear()


class DedupBuffer:
    """The ids of the last ``capacity`` updates seen, each remembered for ``ttl`` seconds."""

    def __init__(self, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, msg_id: Hashable, now: float) -> bool:
        """True if ``msg_id`` was seen within the window; otherwise remember it."""
        at = self._seen.get(msg_id)
        if at is not None and now - at <= self.ttl:
            return True
        self._seen[msg_id] = now
        self._seen.move_to_end(msg_id)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False
