"""Updates: pairs for replicate_from one by one, or whole states for merge_state; the same."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core.crdt import clock, replica, resolver, updates, values


def three_replicas() -> list[replica.Replica]:
    """Replicas holding concurrent siblings, a superseded write and a tombstone."""
    a, b, c = (replica.Replica(n, resolver.ConflictResolver(
        resolver.ConflictResolutionStrategy.MERGE_UNION)) for n in ("a", "b", "c"))
    a.write("k", {"from": "a"}, 1.0)
    b.write("k", {"from": "b"}, 2.0)  # concurrent with a's
    a.write("gone", 1, 1.0)
    for key, state in list(a.states.items()):
        b.merge(key, state, 3.0)
    b.delete("gone", 4.0)
    b.write("plain", [1, 2], 5.0)
    return [a, b, c]


def as_updates(r: replica.Replica, since: clock.VectorClock) -> updates.Updates:
    return updates.Updates(r.node_id, r.vclock.to_dict(), r.updates_since(since))


def test_pairs_one_by_one_build_the_same_states_as_merging_them_whole() -> None:
    _, b, c = three_replicas()
    ups = as_updates(b, clock.VectorClock())
    assert sorted(k for k, _ in ups) == ["gone", "k", "k", "plain"]  # one pair per sibling
    assert [v.deleted for k, v in ups if k == "gone"] == [True]
    whole = replica.Replica("w")
    for key, state in ups.states.items():
        whole.merge(key, state, 10.0)
    for key, value in ups:
        c.merge(key, replica.KeyState.single(value), 10.0)
    assert {k: s.digest for k, s in c.states.items()} == \
        {k: s.digest for k, s in whole.states.items()} == \
        {k: s.digest for k, s in b.states.items()}
    assert c.read("k") == b.read("k") == {"from": "b"}


def test_only_what_the_clock_has_not_seen() -> None:
    a, b, _ = three_replicas()
    assert [k for k, _ in as_updates(b, b.vclock)] == []
    ups = as_updates(b, a.vclock)
    assert sorted(ups.states) == ["gone", "k", "plain"]  # each holds an event a lacks
    assert ups.node_id == "b" and ups.vector_clock == b.vclock.to_dict()


def test_the_wire_form_still_reads_by_name() -> None:
    _, b, _ = three_replicas()
    ups = as_updates(b, clock.VectorClock())
    assert ups["node_id"] == "b" and ups["vector_clock"] == b.vclock.to_dict()
    assert ups["updates"] == ups.to_wire()["updates"]
    assert replica.KeyState.from_wire(ups["updates"]["k"]).digest == b.states["k"].digest
    assert ups[0] == next(iter(ups)) and ups[-1:] == list(ups)[-1:]
    with pytest.raises(KeyError, match="node_id, vector_clock, updates"):
        ups["states"]


def test_a_merged_value_stands_for_its_siblings() -> None:
    _, b, c = three_replicas()
    merged = b.resolved("k")
    assert merged is not None and merged.value == {"from": "b"}  # dict merge: latest wins
    assert len(merged.resolved_from) == 2
    state = updates.state_of(merged)
    assert state.digest == b.states["k"].digest
    c.merge("k", state, 10.0)
    assert c.states["k"].digest == b.states["k"].digest
    # a plain value stands for itself
    plain = b.resolved("plain")
    assert plain is not None and updates.state_of(plain) == replica.KeyState.single(plain)


def test_a_corrupt_sibling_inside_a_merged_value_is_refused() -> None:
    _, b, _ = three_replicas()
    merged = b.resolved("k")
    assert merged is not None
    first, second = merged.resolved_from
    forged = values.ReplicatedValue(["forged"], first.timestamp, first.node_id, first.version,
                                    first.checksum)
    with pytest.raises(values.ChecksumError):
        updates.state_of(values.ReplicatedValue.create(
            merged.value, merged.timestamp, merged.node_id, merged.version,
            resolved_from=(forged, second)))


def test_join_per_key() -> None:
    _, b, _ = three_replicas()
    pairs = [("k", replica.KeyState.single(v)) for v in b.states["k"].siblings]
    assert updates.join_per_key(pairs)["k"].digest == b.states["k"].digest
    assert updates.join_per_key([]) == {}
