"""Epidemic dissemination: how often to retransmit, what to piggyback, what we have seen.

Each update is sent about ``mult * ceil(log10(N + 1))`` times by every member
that learns it (memberlist's rule, lambda*log(N) in the SWIM paper), the
least-sent first, so a new update overtakes old ones. A newer update about
the same subject (the same member, or the same node's key) replaces the
queued one: the queue never carries stale news.
"""

from __future__ import annotations

import math
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
    item: T
    transmits: int
    born: float
    order: int  # insertion order; breaks ties so newer updates go first


class BroadcastQueue(Generic[T]):
    """Updates waiting to be piggybacked, keyed by subject, bounded and aged."""

    def __init__(self, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self._items: dict[Hashable, _Queued[T]] = {}
        self._order = 0
        self.dropped = 0  # evicted before reaching the retransmit limit

    def __len__(self) -> int:
        return len(self._items)

    def push(self, key: Hashable, item: T, now: float) -> None:
        """Queue ``item``, replacing anything queued about the same ``key``."""
        self._order += 1
        self._items.pop(key, None)
        if len(self._items) >= self.capacity:
            # Make room by dropping the most-sent (then oldest) update: it has spread furthest.
            items = self._items
            worst = max(items, key=lambda k: (items[k].transmits, -items[k].order))
            del self._items[worst]
            self.dropped += 1
        self._items[key] = _Queued(item, 0, now, self._order)

    def take(self, max_items: int, limit: int, now: float) -> list[T]:
        """Up to ``max_items`` updates, least-sent and newest first; counts a transmission each."""
        if not self._items or max_items <= 0:
            return []
        expired = [k for k, q in self._items.items() if now - q.born > self.ttl]
        for k in expired:
            del self._items[k]
        picked = sorted(self._items.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        out: list[T] = []
        for key, queued in picked[:max_items]:
            out.append(queued.item)
            queued.transmits += 1
            if queued.transmits >= limit:
                del self._items[key]
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
