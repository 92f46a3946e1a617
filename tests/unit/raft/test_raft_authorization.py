"""Who may speak Raft: members only, leases that hold, terms that stay sane.

The transport proves which node a certificate speaks for; these rules of the core
decide whether that node may send what it sent. Each refused message changes
nothing (term, leader, vote, log) and is counted in ``refused``.
"""

from __future__ import annotations

import random

import pytest
from raft_net import CFG, Net

from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import raft_node as rnode
from continuum.federation.distributed.core.raft import recovery


def _snapshot(n: rnode.RaftNode) -> tuple[int, str | None, str | None, int, int]:
    return n.term, n.vote, n.leader_id, n.log.last_index, n.log.commit


def _stable_three() -> tuple[Net, rnode.RaftNode]:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"x")
    return net, net.nodes["b"]


FORGED = [
    m.VoteRequest(10**6, "intruder", "b", 99, 9, pre=False, transfer=True),
    m.VoteRequest(m.MAX_TERM, "intruder", "b", 99, 9),
    m.Heartbeat(50, "intruder", "b", 0),
    m.AppendRequest(50, "intruder", "b", 0, 0, (m.Entry(50, 1, m.NORMAL, b"evil"),), 1),
    m.TimeoutNow(1, "intruder", "b"),
    m.SnapshotChunk(50, "intruder", "b", 99, 49, b"", 0, b"", True),
    m.AppendResponse(60, "intruder", "b", True, 5),
]


@pytest.mark.parametrize("msg", FORGED, ids=lambda msg: type(msg).__name__)
def test_a_non_member_is_refused_whatever_it_sends(msg: m.Message) -> None:
    net, b = _stable_three()
    before = _snapshot(b)
    assert not b.step(msg)
    net.stabilize()
    assert _snapshot(b) == before and b.refused == 1
    assert not b.has_ready()


def test_a_learner_may_not_ask_for_votes() -> None:
    net = Net("a", "b", "c")
    net.add("l")
    net.elect("a")
    net.nodes["a"].change_config(rnode.ADD_LEARNER, "l", "l:1")
    net.stabilize()
    b = net.nodes["b"]
    assert "l" in b.admitted()
    net.tick("b", times=CFG.election_ticks_max)  # out of b's lease
    before = _snapshot(b)
    assert not b.step(m.VoteRequest(b.term + 1, "l", "b", 99, b.term))
    assert _snapshot(b) == before


def test_timeout_now_only_from_this_terms_leader() -> None:
    _net, b = _stable_three()
    term = b.term
    assert not b.step(m.TimeoutNow(term, "c", "b"))  # a member, but not the leader
    assert not b.step(m.TimeoutNow(term + 1, "a", "b"))  # the leader, but not its term
    assert b.term == term and not b.has_ready()
    assert b.step(m.TimeoutNow(term, "a", "b"))  # the real thing: b campaigns at once
    assert b.role == rnode.CANDIDATE and b.term == term + 1


@pytest.mark.parametrize("target", ["b", "a"], ids=["follower", "leader"])
def test_an_unannounced_transfer_does_not_break_a_lease(target: str) -> None:
    """``transfer=True`` from a voter the leader did not hand over to is an ordinary vote
    request: a follower that hears from its leader, and the leader, ignore it."""
    net, _ = _stable_three()
    node = net.nodes[target]
    before = _snapshot(node)
    assert node.step(m.VoteRequest(node.term + 1, "c", target, 99, node.term, transfer=True))
    net.stabilize()
    assert _snapshot(node)[:3] == before[:3] and net.leaders() == ["a"]


def test_an_announced_transfer_passes_the_lease_in_a_five_node_cluster() -> None:
    net = Net("a", "b", "c", "d", "e")
    net.elect("a")
    net.propose("a", b"x")
    term = net.nodes["a"].term
    net.nodes["a"].transfer_leader("e")
    net.stabilize()
    assert net.leaders() == ["e"] and net.nodes["e"].term == term + 1


def test_a_transfer_vote_that_outruns_the_announcement_is_ignored() -> None:
    _net, b = _stable_three()
    assert b.step(m.VoteRequest(b.term + 1, "c", "b", 99, b.term, transfer=True))
    assert b.leader_id == "a"  # not yet announced: the lease holds
    b.step(m.Heartbeat(b.term, "a", "b", b.log.commit, 0, "c"))
    assert b.transfer_sanctioned == "c"
    assert not b.step(m.VoteRequest(b.term + 1, "d", "b", 99, b.term, transfer=True))
    b.step(m.VoteRequest(b.term + 2, "c", "b", 99, b.term, transfer=True))
    assert b.leader_id == "a"  # announced, but only for the next term
    b.step(m.VoteRequest(b.term + 1, "c", "b", 99, b.term, transfer=True))
    assert b.vote == "c"


def test_a_candidate_too_far_ahead_is_refused() -> None:
    net, b = _stable_three()
    net.tick("b", times=CFG.election_ticks_max)  # b stops hearing from a: no lease
    net.isolate("b")
    term = b.term
    assert b.step(m.VoteRequest(term + CFG.max_election_gap + 1, "c", "b", 99, term))
    assert b.term == term and b.refused == 1
    b.step(m.VoteRequest(term + 2, "c", "b", 99, term))
    assert b.term == term + 2 and b.vote == "c"


def test_a_joining_node_hears_only_its_sponsor() -> None:
    fresh = rnode.RaftNode("j", CFG, random.Random(1))
    fresh.expect_leader(frozenset({"a"}))
    assert not fresh.step(m.Heartbeat(7, "intruder", "j", 0))
    assert fresh.term == 0 and fresh.leader_id is None
    assert fresh.step(m.Heartbeat(7, "a", "j", 0))
    assert fresh.leader_id == "a" and fresh.term == 7


def test_a_removed_member_is_refused_once_its_removal_commits() -> None:
    net, b = _stable_three()
    a = net.nodes["a"]
    a.change_config(rnode.REMOVE, "c")
    net.stabilize()
    assert "c" not in a.admitted() and "c" not in b.admitted()
    term = b.term
    net.tick("b", times=CFG.election_ticks_max)
    assert not b.step(m.VoteRequest(term + 1, "c", "b", 99, term))
    assert not a.step(m.AppendResponse(term + 5, "c", "a", True, 99))
    assert a.is_leader and b.term == term


def test_a_member_being_removed_keeps_its_say_until_the_removal_commits() -> None:
    net, _b = _stable_three()
    a = net.nodes["a"]
    net.cut |= {("a", "b"), ("a", "c")}
    a.change_config(rnode.REMOVE, "c")
    net.stabilize()
    assert "c" not in a.conf.members and "c" in a.admitted()  # appended, not committed


@pytest.mark.parametrize(("kind", "body"), [
    ("raft.vote", {"t": m.MAX_TERM + 1, "last_index": 0, "last_term": 0, "pre": False,
                   "transfer": True}),
    ("raft.vote", {"t": 2**64 - 1, "last_index": 0, "last_term": 0, "pre": False,
                   "transfer": True}),
    ("raft.vote", {"t": 5, "last_index": 9, "last_term": 6, "pre": False, "transfer": False}),
    ("raft.heartbeat", {"t": 5, "commit": m.MAX_INDEX + 1, "ctx": 0}),
    ("raft.append", {"t": 5, "prev_index": 3, "prev_term": 6, "entries": [], "commit": 0}),
    ("raft.append", {"t": 5, "prev_index": 3, "prev_term": 2, "commit": 0,
                     "entries": [[2, 5, 0, b"", None]]}),
    ("raft.append", {"t": 5, "prev_index": 3, "prev_term": 2, "commit": 0,
                     "entries": [[6, 4, 0, b"", None]]}),
    ("raft.append", {"t": 5, "prev_index": 3, "prev_term": 2, "commit": 0,
                     "entries": [[3, 4, 0, b"", None], [2, 5, 0, b"", None]]}),
    ("raft.snapshot", {"t": 5, "index": 9, "snap_term": 6, "config": b"", "offset": 0,
                       "data": b"", "done": True}),
], ids=["term-over-bound", "term-2^64-1", "last-term-after-term", "index-over-bound",
        "prev-term-after-term", "entries-skip-an-index", "entry-term-after-term",
        "entry-terms-go-back", "snapshot-term-after-term"])
def test_numbers_no_honest_node_sends_are_refused_where_decoded(kind: str,
                                                                body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        m.from_wire(kind, "a", "b", body)


def test_heartbeats_of_older_nodes_still_decode() -> None:
    hb = m.from_wire("raft.heartbeat", "a", "b", {"t": 3, "commit": 1, "ctx": 0})
    assert hb == m.Heartbeat(3, "a", "b", 1, 0, "")
    assert m.to_wire(hb) == ("raft.heartbeat", {"t": 3, "commit": 1, "ctx": 0})


def test_no_election_past_the_bound_and_force_new_cluster_starts_from_the_log() -> None:
    """A term poisoned before terms were bounded: the node never campaigns (the next term
    would not fit), and a forced new cluster starts after the last term of its log."""
    conf = m.ClusterConfig(frozenset({"a"}), frozenset(), {"a": "a:1"})
    entries = [m.Entry(1, 1, m.CONFIG, conf.encode()), m.Entry(4, 2, m.NORMAL, b"x")]
    hs = m.HardState(2**64 - 1, None, 2)
    node = rnode.RaftNode("a", CFG, random.Random(1), hard_state=hs, entries=entries)
    assert node.term_exhausted
    node.campaign()
    for _ in range(CFG.election_ticks_max * 2):
        node.tick()
    assert not node.is_leader and node.term == 2**64 - 1
    r = recovery.force_new_cluster(hs, None, entries, "a", "a:1")
    assert r.hard_state.term == 5 and r.config_entry.term == 5
    assert recovery.next_term(7, None, entries) == 8  # a sane term just moves on
