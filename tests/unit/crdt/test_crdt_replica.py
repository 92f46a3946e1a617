"""The replica: writes, siblings, merges, deletes and tombstone collection."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core.crdt import clock, replica, resolver, values


def pair() -> tuple[replica.Replica, replica.Replica]:
    return replica.Replica("a"), replica.Replica("b")


def sync(x: replica.Replica, y: replica.Replica, now: float = 10.0) -> None:
    for k, s in list(x.states.items()):
        y.merge(k, s, now, sender=x.node_id)
    for k, s in list(y.states.items()):
        x.merge(k, s, now, sender=y.node_id)


def test_local_write_supersedes_and_reads_back() -> None:
    a, _ = pair()
    v1, _ = a.write("k", {"n": 1}, 1.0)
    v2, st = a.write("k", {"n": 2}, 1.0)
    assert a.read("k") == {"n": 2}
    assert st.siblings == (v2,)
    assert v2.version.compare(v1.version) == "after"
    assert a.stats["writes_local"] == 2


def test_concurrent_writes_become_siblings_then_a_write_covers_them() -> None:
    a, b = pair()
    a.write("k", "from-a", 1.0)
    b.write("k", "from-b", 2.0)
    sync(a, b)
    assert len(a.states["k"].siblings) == 2
    assert a.states["k"].digest == b.states["k"].digest
    assert a.read("k") == b.read("k") == "from-b"  # later HLC wins
    assert a.stats["conflicts_resolved"] == 1
    a.write("k", "resolved", 3.0)
    sync(a, b)
    assert [s.value for s in b.states["k"].siblings] == ["resolved"]


def test_old_value_arriving_late_changes_nothing() -> None:
    a, b = pair()
    _, s1 = a.write("k", 1, 1.0)
    _, s2 = a.write("k", 2, 1.0)
    b.merge("k", s2, 2.0)
    res = b.merge("k", s1, 2.0)  # reordered delivery
    assert not res.changed and b.read("k") == 2
    assert b.merge("k", s2, 2.0).changed is False  # duplicate


def test_join_of_a_superseding_state_is_that_state() -> None:
    a, b = pair()
    _, old = a.write("k", 1, 1.0)
    _, new = a.write("k", 2, 1.0)
    assert replica.join(old, new) is new and replica.join(new, old) is new
    _, theirs = b.write("k", 3, 2.0)  # concurrent with both: no shortcut, two siblings
    both = replica.join(new, theirs)
    assert {s.value for s in both.siblings} == {2, 3}
    assert both.digest == replica._join_siblings(new, theirs).digest
    assert replica.join(both, both).digest == both.digest


def test_delete_is_a_tombstone_and_wins_over_what_it_saw() -> None:
    a, b = pair()
    a.write("k", 1, 1.0)
    sync(a, b)
    b.delete("k", 2.0)
    sync(a, b)
    assert a.read("k") is None and a.keys() == [] and a.tombstones == 1
    assert a.delete("k", 3.0) is None  # nothing live
    assert a.delete("missing", 3.0) is None
    a.write("k", "again", 4.0)
    sync(a, b)
    assert b.read("k") == "again" and b.tombstones == 0


def test_tombstone_collected_only_after_every_known_replica_confirmed() -> None:
    a, b = pair()
    a.known_replicas = {"b", "c"}
    a.tombstone_grace = 5.0
    a.write("k", 1, 1.0)
    a.delete("k", 2.0)
    sync(a, b, now=2.0)  # b pushed back the identical tombstone: b confirmed
    assert a.collect_garbage(100.0) == []  # c has not confirmed yet
    snap = a.tombstone_digests()
    a.confirm_round("c", snap, differing={"k"})  # k differed with c: no confirmation
    assert a.collect_garbage(100.0) == []
    a.confirm_round("c", snap, differing=set())
    assert a.collect_garbage(3.0) == []  # grace not over
    assert a.collect_garbage(100.0) == ["k"]
    assert "k" not in a.states and a.tree.root == 0
    # A later write after collection uses a fresh dot that no stale context covers.
    v, _ = a.write("k", "new", 101.0)
    assert not b.states["k"].context.covers(*v.dot)


def test_rewrite_of_a_tombstone_resets_confirmations() -> None:
    a, b = pair()
    a.known_replicas = {"b"}
    a.tombstone_grace = 0.0
    a.write("k", 1, 1.0)
    a.delete("k", 1.0)
    sync(a, b)
    b.write("k", 2, 2.0)
    b.delete("k", 2.0)
    a.merge("k", b.states["k"], 3.0)  # a new tombstone: b's old confirmation is void
    assert a.collect_garbage(3.0) == []
    a.merge("k", b.states["k"], 3.0, sender="b")  # b sends the same state: b holds it
    assert a.collect_garbage(3.0) == ["k"]


def test_dots_never_reused_after_losing_the_disk() -> None:
    a, b = pair()
    v1, _ = a.write("k", 1, 50.0)
    sync(a, b)
    fresh = replica.Replica("a")  # same id, empty disk, clock behind the old dot
    fresh.merge("k", b.states["k"], 10.0)
    v2, _ = fresh.write("k", 2, 10.0)
    assert v2.dot[1] > v1.dot[1]


def test_updates_since_and_vclock() -> None:
    a, b = pair()
    a.write("x", 1, 1.0)
    b.write("y", 2, 1.0)
    sync(a, b)
    before = a.vclock.copy()
    a.write("z", 3, 2.0)
    keys = [k for k, _ in a.updates_since(before)]
    assert keys == ["z"]
    assert a.updates_since(a.vclock) == []
    assert {k for k, _ in a.updates_since(clock.VectorClock())} == {"x", "y", "z"}


def test_keys_paginate_in_order() -> None:
    a, _ = pair()
    for i in range(25):
        a.write(f"k{i:02d}", i, 1.0)
    a.delete("k03", 2.0)
    page1 = a.keys(limit=10)
    page2 = a.keys(after=page1[-1], limit=10)
    page3 = a.keys(after=page2[-1], limit=10)
    assert page1 + page2 + page3 == [f"k{i:02d}" for i in range(25) if i != 3]
    with pytest.raises(ValueError):
        a.keys(limit=0)


def test_state_wire_validation() -> None:
    a, _ = pair()
    _, st = a.write("k", {"v": 1}, 1.0)
    w = st.to_wire()
    assert replica.KeyState.from_wire(w).digest == st.digest
    corrupt = {**w, "s": [{**w["s"][0], "data": values.encode({"v": 2})}]}
    with pytest.raises(values.ChecksumError):
        replica.KeyState.from_wire(corrupt)
    for bad in ({"c": {}, "s": w["s"]}, {"c": w["c"], "s": []}, {"c": w["c"]}, "x"):
        with pytest.raises(ValueError):
            replica.KeyState.from_wire(bad)
    for key in ("", 5, "x" * 2000):
        with pytest.raises(ValueError):
            a.write(key, 1, 1.0)  # type: ignore[arg-type]


def test_superseded_siblings_are_dropped_on_parse() -> None:
    a, _ = pair()
    v1, _ = a.write("k", 1, 1.0)
    v2, st = a.write("k", 2, 1.0)
    w = {"c": st.context.to_dict(), "s": [v1.to_wire(), v2.to_wire()]}
    assert replica.KeyState.from_wire(w).siblings == (v2,)


def test_strategy_applies_on_read() -> None:
    r = resolver.ConflictResolver(resolver.ConflictResolutionStrategy.MERGE_UNION)
    a, b = replica.Replica("a", r), replica.Replica("b", r)
    a.write("k", {"tags": {"x"}}, 1.0)
    b.write("k", {"tags": {"y"}}, 1.0)
    sync(a, b)
    assert a.read("k") == b.read("k") == {"tags": {"x", "y"}}


def test_collected_tombstone_keeps_what_it_covered_deleted() -> None:
    a, b = pair()
    a.tombstone_grace = 0.0
    a.known_replicas = {"b"}
    _, old_state = a.write("k", "old", 1.0)
    sync(a, b)
    a.delete("k", 2.0)
    sync(a, b)
    assert a.collect_garbage(3.0) == ["k"]
    assert not a.merge("k", old_state, 4.0).changed  # a straggler's stale copy
    assert not a.merge("k", b.states["k"], 4.0).changed  # b's tombstone
    assert "k" not in a.states
    # A stale sibling riding along with a genuinely new write stays deleted.
    _, newer = b.write("other", 1, 5.0)
    mixed = replica.KeyState.of(old_state.context.merge(newer.context),
                                [old_state.siblings[0], newer.siblings[0]])
    res = a.merge("k", mixed, 6.0)
    assert res.changed and [s.value for s in a.states["k"].siblings] == [1]
    assert a.states["k"].context.dominates(old_state.context)
