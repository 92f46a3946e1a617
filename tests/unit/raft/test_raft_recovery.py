"""Forcing a new one-voter cluster from a survivor's state (the quorum is lost for good)."""

from __future__ import annotations

import random

import pytest

from continuum.federation.distributed import errors
from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import raft_node as rnode
from continuum.federation.distributed.core.raft import recovery
from unit.raft.raft_net import CFG, Net, conf

ABC = conf("a", "b", "c")


def _log(*terms: int, start: int = 1) -> list[m.Entry]:
    return [m.Entry(t, start + k, m.NORMAL, b"x%d" % (start + k)) for k, t in enumerate(terms)]


def _cfg_entry(index: int, term: int, c: m.ClusterConfig) -> m.Entry:
    return m.Entry(term, index, m.CONFIG, c.encode())


BOOT = m.Snapshot(0, 0, ABC, b"")


@pytest.mark.parametrize(("hs", "snap", "entries", "want"), [
    (m.HardState(3, "a", 4), BOOT, _log(1, 2, 3, 3, 3, 3), (4, 2)),   # drops 5, 6
    (m.HardState(3, None, 6), BOOT, _log(1, 2, 3, 3, 3, 3), (6, 0)),  # all committed
    (m.HardState(3, None, 9), BOOT, _log(1, 2, 3), (3, 0)),           # commit clamped to log
    (m.HardState(5, None, 10), m.Snapshot(10, 4, ABC, b"s"), [], (10, 0)),  # snapshot only
    (m.HardState(5, None, 11), m.Snapshot(10, 4, ABC, b"s"), _log(5, 5, start=11), (11, 1)),
])
def test_the_rewrite_keeps_the_committed_prefix_and_adds_a_sole_voter_config(
        hs: m.HardState, snap: m.Snapshot, entries: list[m.Entry], want: tuple[int, int]
) -> None:
    commit, discarded = want
    r = recovery.force_new_cluster(hs, snap, entries, "b", "b:9")
    assert r.discarded == discarded
    assert r.snapshot is snap  # nothing compacted is touched
    assert [e for e in r.entries[:-1]] == [e for e in entries if e.index <= commit]
    cfg = r.config_entry
    assert (cfg.index, cfg.kind) == (commit + 1, m.CONFIG)
    assert m.ClusterConfig.decode(cfg.data) == m.ClusterConfig(frozenset({"b"}), frozenset())
    assert r.config.addresses == {"b": "b:9"}
    # A term nobody used yet: the new entry can never match a lost member's entry.
    assert cfg.term == r.hard_state.term == hs.term + 1
    assert r.hard_state == m.HardState(hs.term + 1, None, commit + 1)
    assert r.old_config == ABC


def test_the_last_committed_configuration_counts_and_gives_the_address() -> None:
    ab = conf("a", "b")
    entries = [*_log(1, 1), _cfg_entry(3, 1, ab), _cfg_entry(4, 1, conf("a"))]
    r = recovery.force_new_cluster(m.HardState(1, None, 3), BOOT, entries, "b")
    assert r.old_config == ab  # entry 4 (b's removal) was never committed here: dropped
    assert r.config.addresses == {"b": "b:1"}
    assert r.discarded == 1


@pytest.mark.parametrize(("hs", "snap", "entries", "node", "why"), [
    (m.HardState(), None, [], "a", "no committed Raft data"),
    (m.HardState(2, "a", 0), BOOT, [], "a", "no committed Raft data"),
    (m.HardState(1, None, 0), BOOT, _log(1, 1), "a", "no committed Raft data"),
    (m.HardState(1, None, 2), None, _log(1, 1), "a", "no cluster configuration"),
    (m.HardState(1, None, 2), BOOT, _log(1, 1), "z", "not a member"),
    (m.HardState(1, None, 2), BOOT, _log(1, 1, start=3), "a", "do not start"),
])
def test_a_node_without_data_or_configuration_is_refused(
        hs: m.HardState, snap: m.Snapshot | None, entries: list[m.Entry], node: str,
        why: str) -> None:
    with pytest.raises(ValueError, match=why):
        recovery.force_new_cluster(hs, snap, entries, node)


def _lose_the_majority() -> tuple[Net, list[bytes]]:
    """a leads a, b, c; some commands commit everywhere, then a and b are gone for good
    while c still holds an entry it never saw committed."""
    net = Net("a", "b", "c")
    net.elect("a")
    committed = [b"one", b"two", b"three"]
    for cmd in committed:
        net.propose("a", cmd)
    net.isolate("c")
    net.nodes["a"].propose([b"lost"])
    net.process("a")
    net.queue.clear()
    # c receives "lost" but never its commit: the only copy of an unknown outcome.
    a = net.nodes["a"]
    c = net.nodes["c"]
    c.step(m.AppendRequest(a.term, "a", "c", c.log.last_index, c.log.last_term,
                           (a.log.entry(a.log.last_index),), c.log.commit))
    net.process("c")
    net.queue.clear()
    assert c.log.last_index == c.log.commit + 1
    for gone in ("a", "b"):
        del net.nodes[gone]
    return net, committed


def test_a_node_built_from_the_rewrite_leads_alone_and_keeps_every_committed_command() -> None:
    net, committed = _lose_the_majority()
    c = net.nodes["c"]
    r = recovery.force_new_cluster(c.hard_state(), c.log.snapshot, c.log.entries, "c")
    assert r.discarded == 1
    net.nodes["c"] = rnode.RaftNode("c", CFG, random.Random(5), hard_state=r.hard_state,
                                    snapshot=r.snapshot, entries=r.entries)
    net.applied["c"] = []
    net.tick("c", times=2)
    assert net.leaders() == ["c"]
    assert net.nodes["c"].conf.voters == {"c"} and not net.nodes["c"].conf.learners
    assert [e.data for e in net.applied["c"] if e.kind == m.NORMAL] == committed
    net.propose("c", b"after")
    assert net.applied["c"][-1].data == b"after"


def test_in_place_recovery_is_refused_while_a_leader_is_known_then_works() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"one")
    c = net.nodes["c"]
    with pytest.raises(errors.MembershipError) as exc:
        c.force_new_cluster()
    assert exc.value.code == "has_leader"
    assert c.conf == ABC  # nothing changed
    applied = list(net.applied["c"])
    del net.nodes["a"], net.nodes["b"]
    net.tick("c", times=CFG.election_ticks_max + 1)  # c campaigns in vain: no leader known
    assert c.leader_id is None
    r = c.force_new_cluster("c:7")
    rd = c.ready()
    # One atomic write: the truncation point, the configuration entry, the new hard state.
    assert rd.truncate_after == r.truncated_after
    assert rd.entries[-1] == r.config_entry
    assert rd.hard_state == r.hard_state
    c.advance(rd)
    net.tick("c", times=2)
    assert net.leaders() == ["c"] and c.conf.addresses == {"c": "c:7"}
    assert net.applied["c"][:len(applied)] == applied  # applied state is kept, not replayed
    net.propose("c", b"two")
    assert net.applied["c"][-1].data == b"two"
    # The others come back through the ordinary path: learner, then voter.
    net.add("b")
    c.change_config(rnode.ADD_LEARNER, "b", "b:1")
    net.tick(times=3)
    c.change_config(rnode.PROMOTE, "b")
    net.tick(times=3)
    assert c.conf.voters == {"b", "c"}
    assert [e.data for e in net.applied["b"] if e.kind == m.NORMAL] == [b"one", b"two"]


def test_a_node_without_configuration_votes_for_nobody() -> None:
    # A fresh node waiting to be added (e.g. a pod whose volume was replaced) would
    # otherwise grant an empty-log vote to a stale member of the old configuration.
    fresh = rnode.RaftNode("b", CFG, random.Random(3))
    for pre in (True, False):
        assert not fresh.step(m.VoteRequest(9, "a", "b", 40, 8, pre=pre))
    rd = fresh.ready()
    assert not [x for x in rd.messages if isinstance(x, m.VoteResponse) and x.granted]
    assert rd.hard_state is None or rd.hard_state.vote is None
    assert fresh.term == 0 and fresh.refused == 2  # not even the term was taken up


def test_a_backup_snapshot_becomes_a_new_one_voter_cluster_that_forgets_the_old_members() -> None:
    old = m.ClusterConfig(frozenset({"a", "b", "c"}), frozenset(), {"a": "old-a:7", "b": "b:7"})
    snap = m.Snapshot(40, 6, old, rnode.pack_snapshot(b"state", [["r1", 12]]))
    r = recovery.from_snapshot(snap, "z", "new-z:7")
    assert r.snapshot is not None and r.snapshot.data == snap.data
    assert (r.snapshot.index, r.snapshot.term) == (40, 6)
    # A member that installs this snapshot must never dial the old cluster's addresses.
    assert r.snapshot.config == r.config == m.ClusterConfig(frozenset({"z"}), frozenset(),
                                                            {"z": "new-z:7"})
    assert r.config_entry == m.Entry(7, 41, m.CONFIG, r.config.encode())
    assert r.hard_state == m.HardState(7, None, 41) and r.old_config == old
    node = rnode.RaftNode("z", CFG, random.Random(1), hard_state=r.hard_state,
                          snapshot=r.snapshot, entries=list(r.entries))
    assert node.conf.voters == {"z"} and node.requests.dump().rows() == [["r1", 12]]
    with pytest.raises(ValueError, match="no committed entry"):
        recovery.from_snapshot(m.Snapshot(0, 0, old, b""), "z")
