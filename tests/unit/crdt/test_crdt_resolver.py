"""Conflict strategies: the same winner from any order, on any node."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from continuum.federation.distributed.core.crdt import clock, resolver, values

S = resolver.ConflictResolutionStrategy


def rv(value: Any, node: str, wall: int, *, ctx: dict[str, int] | None = None,
       deleted: bool = False) -> values.ReplicatedValue:
    version = clock.VectorClock(ctx or {node: 1})
    return values.ReplicatedValue.create(value, clock.HLCTimestamp(wall, 0), node, version,
                                         deleted)


def all_orders(strategy: resolver.ConflictResolver, sibs: list[values.ReplicatedValue]
               ) -> values.ReplicatedValue:
    results = {strategy.resolve(list(p)).checksum for p in itertools.permutations(sibs)}
    assert len(results) == 1, "resolution depends on the order of the siblings"
    return strategy.resolve(sibs)


def test_last_write_wins_by_hlc_then_node_id() -> None:
    r = resolver.ConflictResolver(S.LAST_WRITE_WINS)
    a, b, c = rv("a", "n1", 10), rv("b", "n2", 30), rv("c", "n3", 20)
    assert all_orders(r, [a, b, c]).value == "b"
    tie1, tie2 = rv("x", "n1", 50), rv("y", "n2", 50)  # equal timestamps: node id breaks it
    assert all_orders(r, [tie1, tie2]).value == "y"


def test_causally_newer_wins_even_with_an_older_clock() -> None:
    r = resolver.ConflictResolver(S.LAST_WRITE_WINS)
    old = rv("old", "n1", 100)
    newer = rv("new", "n2", 5, ctx={"n1": 1, "n2": 1})  # saw `old`, but its wall clock is slow
    assert all_orders(r, [old, newer]).value == "new"


def test_highest_node_wins() -> None:
    r = resolver.ConflictResolver(S.HIGHEST_NODE_WINS)
    assert all_orders(r, [rv("a", "node-9", 99), rv("b", "node-a", 1)]).value == "b"


def test_merge_union_dicts_sets_lists() -> None:
    r = resolver.ConflictResolver(S.MERGE_UNION)
    a = rv({"tags": {"x"}, "refs": [1, 2], "name": "old", "only_a": 1}, "n1", 10)
    b = rv({"tags": {"y"}, "refs": [2, 3], "name": "new", "only_b": {"k": 1}}, "n2", 20)
    out = all_orders(r, [a, b])
    assert out.value == {"tags": {"x", "y"}, "refs": [1, 2, 3], "name": "new", "only_a": 1,
                         "only_b": {"k": 1}}
    assert out.verify()
    assert out.version.to_dict() == {"n1": 1, "n2": 1}


def test_merge_union_live_value_beats_concurrent_delete() -> None:
    r = resolver.ConflictResolver(S.MERGE_UNION)
    out = all_orders(r, [rv({"a": 1}, "n1", 10), rv(None, "n2", 20, deleted=True)])
    assert out.value == {"a": 1} and not out.deleted
    lww = resolver.ConflictResolver(S.LAST_WRITE_WINS)
    assert lww.resolve([rv({"a": 1}, "n1", 10), rv(None, "n2", 20, deleted=True)]).deleted


def test_custom_strategy_sees_canonical_order() -> None:
    seen: list[list[str]] = []

    def longest(sibs: list[values.ReplicatedValue]) -> Any:
        seen.append([s.node_id for s in sibs])
        return max((s.value for s in sibs), key=lambda v: (len(v), v))

    r = resolver.ConflictResolver(S.CUSTOM, custom_fn=longest)
    out = all_orders(r, [rv("ccc", "n3", 1), rv("a", "n1", 2), rv("bb", "n2", 3)])
    assert out.value == "ccc"
    assert all(order == ["n3", "n1", "n2"] for order in seen)


def test_detect_conflicts() -> None:
    r = resolver.ConflictResolver()
    a = rv("a", "n1", 1)
    b = rv("b", "n2", 2)
    c = rv("c", "n3", 3, ctx={"n1": 1, "n3": 1})  # supersedes a
    assert r.detect_conflicts([a]) == []
    assert r.detect_conflicts([a, c]) == []
    assert {v.value for v in r.detect_conflicts([a, b, c])} == {"b", "c"}


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        resolver.ConflictResolver(S.CUSTOM)
    with pytest.raises(ValueError):
        resolver.ConflictResolver("no-such")  # type: ignore[arg-type]
    assert resolver.ConflictResolver("merge_union").strategy is S.MERGE_UNION  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resolver.ConflictResolver().resolve([])


@pytest.mark.parametrize("ids", [
    ["node-1", "node-2", "node-9", "node-10", "node-11", "node-100"],
    ["n2", "n10", "n10a", "n10b", "n11"],  # a digit run, then text
    ["a", "a0", "a1", "a01x", "b"],  # text runs order character by character
    ["node-01", "node-1", "node-001x"],  # leading zeros: numeric tie, then plain string order
    ["", "0", "00", "1", "9", "10"],
    ["x" + "9" * 5000, "x1" + "0" * 5000],  # longer than int() accepts: still numeric order
])
def test_node_order_is_natural(ids: list[str]) -> None:
    shuffled = ids[::-1]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=resolver.node_order) == ids


def test_highest_node_wins_compares_numbered_nodes_by_number() -> None:
    r = resolver.ConflictResolver(S.HIGHEST_NODE_WINS)
    sibs = [rv("nine", "node-9", 50), rv("ten", "node-10", 10), rv("two", "node-2", 99)]
    assert all_orders(r, sibs).value == "ten"
    assert all_orders(r, [rv("a", "node-01", 5), rv("b", "node-1", 5)]).value == "b"


def test_a_merged_value_remembers_the_siblings_it_was_built_from() -> None:
    a, b = rv({"x"}, "n1", 10), rv({"y"}, "n2", 20)
    out = resolver.ConflictResolver(S.MERGE_UNION).resolve([b, a])
    assert out.resolved_from == (a, b)  # canonical order
    assert resolver.ConflictResolver(S.LAST_WRITE_WINS).resolve([a, b]) is b
    assert b.resolved_from == ()
