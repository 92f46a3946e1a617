"""VectorClock partial order and the hybrid logical clock."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core.crdt import clock


def vc(**kw: int) -> clock.VectorClock:
    return clock.VectorClock(kw)


@pytest.mark.parametrize(
    ("a", "b", "expect"),
    [
        ({}, {}, "equal"),
        ({"a": 1}, {"a": 1}, "equal"),
        ({"a": 1}, {"a": 2}, "before"),
        ({"a": 2, "b": 1}, {"a": 2}, "after"),
        ({"a": 1}, {"b": 1}, "concurrent"),
        ({"a": 2, "b": 1}, {"a": 1, "b": 2}, "concurrent"),
        ({"a": 0}, {}, "equal"),  # a zero entry is the same as a missing one
    ],
)
def test_compare(a: dict[str, int], b: dict[str, int], expect: str) -> None:
    assert clock.VectorClock(a).compare(clock.VectorClock(b)) == expect
    mirror = {"before": "after", "after": "before"}.get(expect, expect)
    assert clock.VectorClock(b).compare(clock.VectorClock(a)) == mirror


def test_increment_update_merge_and_round_trip() -> None:
    a = vc(a=1).increment("a").increment("b")
    assert a.to_dict() == {"a": 2, "b": 1}
    b = vc(b=5, c=1)
    m = a.merge(b)
    assert m.to_dict() == {"a": 2, "b": 5, "c": 1}
    assert a.to_dict() == {"a": 2, "b": 1}  # merge does not mutate
    a.update(b)
    assert a == m
    assert clock.VectorClock.from_dict(m.to_dict()) == m
    assert m.covers("b", 5) and not m.covers("b", 6)


@pytest.mark.parametrize("bad", [{"a": -1}, {"": 1}, {"a": 1.5}, {"a": True}, {1: 1}])
def test_rejects_bad_entries(bad: dict[object, object]) -> None:
    with pytest.raises(ValueError):
        clock.VectorClock.from_dict(bad)  # type: ignore[arg-type]


def test_increment_must_grow() -> None:
    with pytest.raises(ValueError):
        vc(a=5).increment("a", to=5)


def test_hlc_monotonic_under_a_clock_going_back() -> None:
    h = clock.HybridLogicalClock()
    t1 = h.now(100.0)
    t2 = h.now(99.0)  # wall clock stepped back
    t3 = h.now(99.0)
    assert t1 < t2 < t3
    assert t2.wall == t1.wall


def test_hlc_observe_orders_after_remote_but_bounds_skew() -> None:
    h = clock.HybridLogicalClock(max_offset=1.0)
    remote = clock.HLCTimestamp(100_500, 7)  # 0.5 s ahead of us: adopted
    h.observe(remote, 100.0)
    assert h.now(100.0) > remote
    far = clock.HLCTimestamp(200_000, 0)  # 100 s ahead: does not drag our clock
    h.observe(far, 100.0)
    assert h.now(100.0) < far


def test_hlc_timestamp_parse() -> None:
    assert clock.HLCTimestamp.parse([5, 1]) == clock.HLCTimestamp(5, 1)
    for bad in ([1], ["a", 1], [-1, 0], "x", [1, True]):
        with pytest.raises(ValueError):
            clock.HLCTimestamp.parse(bad)
