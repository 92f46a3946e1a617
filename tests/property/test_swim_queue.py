"""Hypothesis: the SWIM broadcast queue behaves exactly like the plain sorted model.

The queue leans on dict order (age order) to avoid sorting and scanning the
whole queue on every message; the model below is the obvious version, with an
explicit insertion counter. Any sequence of pushes (new subjects,
replacements, a full queue) and takes (any size, any limit, time passing the
TTL) must give the same updates in the same order, the same size and the
same drop count.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.federation.distributed.core.swim import dissemination


@dataclass
class _Entry:
    item: str
    transmits: int
    born: float
    order: int


class ModelQueue:
    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity, self.ttl = capacity, ttl
        self.items: dict[int, _Entry] = {}
        self.order = 0
        self.dropped = 0

    def push(self, key: int, item: str, now: float) -> None:
        self.order += 1
        self.items.pop(key, None)
        if len(self.items) >= self.capacity:
            worst = max(self.items, key=lambda k: (self.items[k].transmits, -self.items[k].order))
            del self.items[worst]
            self.dropped += 1
        self.items[key] = _Entry(item, 0, now, self.order)

    def take(self, max_items: int, limit: int, now: float) -> list[str]:
        if not self.items or max_items <= 0:
            return []
        for k in [k for k, e in self.items.items() if now - e.born > self.ttl]:
            del self.items[k]
        picked = sorted(self.items.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        out = []
        for key, e in picked[:max_items]:
            out.append(e.item)
            e.transmits += 1
            if e.transmits >= limit:
                del self.items[key]
        return out


ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 12), st.floats(0.0, 3.0)),
    st.tuples(st.just("take"), st.integers(0, 6), st.integers(1, 5)),
), max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 8), st.sampled_from([2.0, 5.0, 1e9]), ops)
def test_queue_matches_the_sorted_model(capacity: int, ttl: float,
                                        schedule: list[tuple[str, int, float]]) -> None:
    q: dissemination.BroadcastQueue[str] = dissemination.BroadcastQueue(capacity, ttl)
    model = ModelQueue(capacity, ttl)
    now = 0.0
    for i, (kind, a, b) in enumerate(schedule):
        if kind == "push":
            now += b
            q.push(a, f"{a}@{i}", now)
            model.push(a, f"{a}@{i}", now)
        else:
            assert q.take(a, int(b), now) == model.take(a, int(b), now)
        assert len(q) == len(model.items) and q.dropped == model.dropped
