"""The Raft core on its own: elections, replication, safety rules from the paper, and the
extensions (pre-vote, check-quorum, flow control, snapshots, membership, transfer,
ReadIndex, request ids). Deterministic: no clock, seeded randomness."""

from __future__ import annotations

import collections
import random

import msgpack
import pytest

from continuum.federation.distributed import errors
from continuum.federation.distributed.core.raft import config as rconfig
from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import quorum
from continuum.federation.distributed.core.raft import raft_node as rnode
from unit.raft.raft_net import CFG, Net, conf

# -- elections --------------------------------------------------------------------------------


def test_a_follower_campaigns_after_its_timeout_and_wins() -> None:
    net = Net("a", "b", "c")
    net.tick(times=CFG.election_ticks_max + 1)
    assert len(net.leaders()) == 1
    leader = net.nodes[net.leaders()[0]]
    assert leader.term == 1
    # The new leader's first entry is a no-op of its term, committed everywhere.
    assert all(n.log.commit == 1 and n.log.term(1) == 1 for n in net.nodes.values())


def test_sole_voter_elects_itself_on_the_first_tick() -> None:
    net = Net("solo")
    net.tick()
    assert net.leaders() == ["solo"]


def test_vote_is_persisted_before_the_vote_response_leaves() -> None:
    net = Net("a", "b", "c")
    net.nodes["a"].campaign()
    net.process("a")
    # a's pre-vote requests carry no state; b grants a real vote after it.
    net.stabilize()
    votes = [rd for rd in net.readies["b"]
             if any(isinstance(x, m.VoteResponse) and not x.pre for x in rd.messages)]
    assert votes, "b never answered a vote"
    rd = votes[0]
    assert rd.hard_state is not None and rd.hard_state.vote == "a"
    assert not any(isinstance(x, m.VoteResponse) for x in rd.early_messages)


def test_a_restarted_node_does_not_vote_twice_in_a_term() -> None:
    n = rnode.RaftNode("b", CFG, random.Random(1), hard_state=m.HardState(5, "a", 0),
                       snapshot=m.Snapshot(0, 0, conf("a", "b", "c"), b""))
    n.step(m.VoteRequest(5, "c", "b", 10, 5))
    rd = n.ready()
    (resp,) = rd.messages
    assert isinstance(resp, m.VoteResponse) and not resp.granted


def test_election_restriction_refuses_a_shorter_log() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"x")
    b = net.nodes["b"]
    b.step(m.VoteRequest(b.term + 1, "c", "b", 1, 1))  # c claims a log ending at 1/1
    net.process("b")
    grants = [x for x in net.sent if isinstance(x, m.VoteResponse) and x.frm == "b"
              and x.to == "c"]
    assert not any(g.granted for g in grants)


def test_prevote_keeps_a_partitioned_node_from_raising_terms() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    term = net.nodes["a"].term
    net.isolate("c")
    net.tick("c", times=5 * CFG.election_ticks_max)
    assert net.nodes["c"].term == term  # pre-votes failed: no term inflation
    net.heal()
    net.tick(times=3)
    assert net.leaders() == ["a"] and net.nodes["a"].term == term


def test_followers_ignore_vote_requests_while_they_hear_from_a_leader() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    b = net.nodes["b"]
    before = b.term
    b.step(m.VoteRequest(before + 5, "c", "b", 100, 100))
    assert b.term == before and not b.ready().messages


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.isolate("a")
    net.tick("a", times=2 * CFG.election_ticks_max + 1)
    assert not net.nodes["a"].is_leader


# -- replication ------------------------------------------------------------------------------


def test_proposals_commit_on_a_majority_and_apply_in_order() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    first = net.propose("a", b"1", b"2", b"3")
    for nid in "abc":
        assert [e.data for e in net.applied[nid] if e.kind == m.NORMAL] == [b"1", b"2", b"3"]
    assert net.nodes["a"].log.commit == first + 2


def test_a_minority_cannot_commit() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.isolate("a")
    idx = net.nodes["a"].propose([b"lost"])
    net.stabilize()
    assert net.nodes["a"].log.commit < idx


def test_the_leader_commits_only_after_its_own_write_is_durable() -> None:
    n = rnode.RaftNode("a", CFG, random.Random(1), snapshot=m.Snapshot(0, 0, conf("a"), b""))
    n.campaign()
    rd = n.ready()
    assert rd.entries and n.log.commit == 0  # the no-op is not durable yet
    n.advance(rd)
    assert n.log.commit == 1


def test_only_entries_of_the_current_term_commit_by_counting() -> None:
    # Raft figure 8: an entry of an old term on a majority is not committed by counting.
    boot = m.Snapshot(0, 0, conf("a", "b", "c"), b"")
    old = [m.Entry(1, 1), m.Entry(2, 2)]
    a = rnode.RaftNode("a", CFG, random.Random(1), hard_state=m.HardState(2, None, 1),
                       snapshot=boot, entries=old)
    a.campaign()
    a.step(m.VoteResponse(3, "b", "a", True, pre=True))
    a.step(m.VoteResponse(3, "b", "a", True))
    assert a.is_leader and a.term == 3
    a.advance(a.ready())
    a.step(m.AppendResponse(3, "b", "a", True, 2))  # b holds the old entry 2 only
    assert a.log.commit == 1
    a.step(m.AppendResponse(3, "b", "a", True, 3))  # and now our no-op of term 3
    assert a.log.commit == 3


def test_fast_backtracking_skips_a_whole_divergent_term() -> None:
    boot = m.Snapshot(0, 0, conf("a", "b", "c"), b"")
    # b holds 50 entries of a term-2 leader that never committed them.
    stale = [m.Entry(1, 1)] + [m.Entry(2, i) for i in range(2, 52)]
    net = Net("a", "b", "c")
    net.nodes["b"] = rnode.RaftNode("b", CFG, random.Random(3), hard_state=m.HardState(2, "b"),
                                    snapshot=boot, entries=stale)
    net.nodes["a"] = rnode.RaftNode("a", CFG, random.Random(4), hard_state=m.HardState(2, "a"),
                                    snapshot=boot, entries=[m.Entry(1, 1)])
    net.elect("a")
    net.stabilize()
    rejections = [x for x in net.sent if isinstance(x, m.AppendResponse)
                  and x.frm == "b" and not x.success]
    assert len(rejections) <= 3
    assert net.nodes["b"].log.last_index == net.nodes["a"].log.last_index
    assert net.nodes["b"].log.term(2) == net.nodes["a"].term


def test_flow_control_bounds_appends_in_flight() -> None:
    cfg = rconfig.RaftConfig(election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2,
                             max_inflight=2, max_entries_per_message=1)
    net = Net("a", "b", "c", cfg=cfg)
    net.elect("a")
    net.cut |= {("b", "a"), ("c", "a")}  # acks never come back
    net.sent.clear()
    for k in range(10):
        net.nodes["a"].propose([bytes([k])])
        net.stabilize()
    appends = [x for x in net.sent if isinstance(x, m.AppendRequest) and x.to == "b"]
    assert len(appends) == 2


WINDOW_OF_ONE = rconfig.RaftConfig(election_ticks_min=10, election_ticks_max=20,
                                   heartbeat_ticks=2, max_inflight=1)


def test_a_full_window_that_is_answered_is_not_resent_on_a_heartbeat() -> None:
    net = Net("a", "b", "c", cfg=WINDOW_OF_ONE)
    net.elect("a")
    net.propose("a", b"first")  # answered: the window moves
    a = net.nodes["a"]
    index = a.propose([b"second"])
    net.process("a")
    held = [x for x in net.queue if isinstance(x, m.AppendRequest)]
    net.queue = collections.deque(x for x in net.queue if x not in held)
    net.tick("a", times=2)  # a heartbeat and its answers, with the append still out
    net.queue.extend(held)
    net.stabilize()
    carrying = [x for x in net.sent if isinstance(x, m.AppendRequest) and x.to == "b"
                and any(e.index == index for e in x.entries)]
    assert len(carrying) == 1
    assert net.nodes["b"].log.last_index == a.log.last_index


def test_a_lost_append_is_resent_once_a_heartbeat_passes_without_answers() -> None:
    net = Net("a", "b", "c", cfg=WINDOW_OF_ONE)
    net.elect("a")
    net.cut.add(("a", "b"))
    index = net.propose("a", b"lost on the way to b")
    net.heal()
    assert net.nodes["b"].log.last_index < index
    net.tick("a", times=4)  # the first heartbeat clears the mark, the second resends
    assert net.nodes["b"].log.last_index == index


def test_pipelined_appends_are_batched() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.sent.clear()
    a = net.nodes["a"]
    for k in range(50):
        a.propose([bytes([k])])
    net.stabilize()
    appends = [x for x in net.sent if isinstance(x, m.AppendRequest) and x.to == "b"
               and x.entries]
    assert len(appends) == 1 and len(appends[0].entries) == 50


# -- snapshots --------------------------------------------------------------------------------


def test_a_lagging_follower_catches_up_from_a_chunked_snapshot() -> None:
    cfg = rconfig.RaftConfig(election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2,
                             snapshot_chunk_bytes=16)
    net = Net("a", "b", "c", cfg=cfg)
    net.elect("a")
    net.isolate("c")
    for k in range(20):
        net.propose("a", f"cmd{k}".encode())
    a = net.nodes["a"]
    snap = a.compact(b"application-state" * 10)
    assert snap is not None and a.log.snapshot_index == snap.index
    net.stabilize()
    net.heal()
    net.tick(times=3)
    c = net.nodes["c"]
    assert c.log.snapshot_index == snap.index and c.log.last_index == a.log.last_index
    chunks = [x for x in net.sent if isinstance(x, m.SnapshotChunk) and x.to == "c"]
    assert len(chunks) > 5
    received = [rd for rd in net.readies["c"] if rd.snapshot_received]
    assert received and rnode.unpack_snapshot(received[0].snapshot.data)[0] == (  # type: ignore[union-attr]
        b"application-state" * 10)


# -- membership ------------------------------------------------------------------------------


def test_learner_catches_up_is_promoted_and_counts() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"before")
    net.add("d")
    a = net.nodes["a"]
    a.change_config(rnode.ADD_LEARNER, "d", "d:1")
    net.stabilize()
    d = net.nodes["d"]
    assert d.conf.learners == {"d"} and d.log.last_index == a.log.last_index
    assert not d.promotable()
    a.change_config(rnode.PROMOTE, "d")
    net.stabilize()
    assert a.conf.voters == {"a", "b", "c", "d"} and d.promotable()
    assert d.conf.addresses["d"] == "d:1"
    # With 4 voters a commit needs 3: a and d alone cannot commit.
    net.isolate("b")
    net.cut |= {("c", "a"), ("a", "c")}
    idx = a.propose([b"needs-three"])
    net.stabilize()
    assert a.log.commit < idx


def test_one_membership_change_at_a_time_and_clear_errors() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    a = net.nodes["a"]
    net.isolate("a")
    a.change_config(rnode.ADD_LEARNER, "d", "d:1")
    with pytest.raises(errors.MembershipError) as busy:
        a.change_config(rnode.ADD_LEARNER, "e", "e:1")
    assert busy.value.code == "busy"
    net.heal()
    net.tick(times=2)
    with pytest.raises(errors.MembershipError) as exists:
        a.change_config(rnode.ADD_LEARNER, "d", "d:1")
    assert exists.value.code == "exists"
    with pytest.raises(errors.MembershipError) as missing:
        a.change_config(rnode.REMOVE, "zz")
    assert missing.value.code == "not_member"
    with pytest.raises(errors.MembershipError) as notl:
        a.change_config(rnode.PROMOTE, "b")
    assert notl.value.code == "not_learner"
    with pytest.raises(errors.NotLeader):
        net.nodes["b"].change_config(rnode.REMOVE, "c")


def test_a_removed_leader_steps_down_once_the_change_commits() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.nodes["a"].change_config(rnode.REMOVE, "a")
    net.stabilize()
    assert not net.nodes["a"].is_leader
    net.tick("b", "c", times=CFG.election_ticks_max + 1)
    assert len(net.leaders()) == 1 and net.leaders()[0] in "bc"
    net.tick(times=CFG.election_ticks_max * 3)
    assert "a" not in net.leaders()  # no longer a voter: it never campaigns


def test_a_removed_follower_receives_its_removal_then_is_left_alone() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    a, c = net.nodes["a"], net.nodes["c"]
    idx = a.change_config(rnode.REMOVE, "c")
    net.stabilize()
    # c holds the entry that removes it, so it can tell it was removed on purpose
    assert c.log.last_index >= idx and "c" not in c.conf.members
    assert a.log.commit >= idx and "c" not in a.progress
    sent = len(net.sent)
    net.tick(times=CFG.election_ticks_max * 3)
    assert not [msg for msg in net.sent[sent:] if msg.to == "c" or msg.frm == "c"]
    assert net.leaders() == ["a"]


def test_removing_the_last_voter_is_refused() -> None:
    net = Net("a")
    net.elect("a")
    with pytest.raises(errors.MembershipError) as err:
        net.nodes["a"].change_config(rnode.REMOVE, "a")
    assert err.value.code == "last_voter"


# -- transfer and reads ---------------------------------------------------------------------


def test_leadership_transfer_via_timeout_now() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    term = net.nodes["a"].term
    net.nodes["a"].transfer_leader("c")
    net.stabilize()
    assert net.leaders() == ["c"] and net.nodes["c"].term == term + 1
    with pytest.raises(errors.NotLeader):
        net.nodes["a"].propose([b"x"])


def test_a_transfer_without_a_target_skips_a_voter_that_stopped_answering() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.isolate("b")  # as caught up as c, and first by name: the old choice
    # a check-quorum round, then a heartbeat that c answers
    net.tick("a", times=CFG.election_ticks_max + CFG.heartbeat_ticks)
    assert net.nodes["a"].is_leader
    assert net.nodes["a"].transfer_leader() == "c"
    net.stabilize()
    assert net.leaders() == ["c"]


def test_proposals_are_refused_during_a_transfer() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.isolate("b")
    net.nodes["a"].transfer_leader("b")
    with pytest.raises(errors.Overloaded):
        net.nodes["a"].propose([b"x"])


def test_read_index_needs_a_heartbeat_quorum() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"w")
    a = net.nodes["a"]
    ctx = a.read_index()
    net.process("a")
    assert not net.read_states["a"]  # not before a quorum confirmed leadership
    net.stabilize()
    assert net.read_states["a"] == [rnode.ReadState(ctx, a.log.commit)]


def test_a_deposed_leader_never_answers_a_read() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.isolate("a")
    net.nodes["a"].read_index()
    net.tick("b", "c", times=CFG.election_ticks_max + 1)
    net.stabilize()
    assert not net.read_states["a"]


def test_reads_wait_for_the_new_leaders_first_commit() -> None:
    net = Net("a", "b", "c")
    net.nodes["a"].campaign()
    net.process("a")
    while not net.nodes["a"].is_leader:
        net.deliver_one()
    assert not net.nodes["a"].committed_in_term()
    ctx = net.nodes["a"].read_index()
    net.stabilize()
    (rs,) = net.read_states["a"]
    assert rs.ctx == ctx and rs.index >= 1


def test_a_follower_cannot_serve_read_index() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    with pytest.raises(errors.NotLeader) as err:
        net.nodes["b"].read_index()
    assert err.value.leader_id == "a"


# -- request ids ------------------------------------------------------------------------------


def test_a_retried_request_id_is_applied_once() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"x", rid="req-1")
    net.propose("a", b"x", rid="req-1")  # the client retried: outcome was unknown
    net.propose("a", b"y", rid="req-2")
    for nid in "abc":
        assert [e.data for e in net.applied[nid] if e.kind == m.NORMAL] == [b"x", b"y"]


def test_request_table_survives_snapshots() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"x", rid="req-1")
    snap = net.nodes["a"].compact(b"")
    assert snap is not None
    restarted = rnode.RaftNode("a2", CFG, random.Random(1), snapshot=snap)
    assert "req-1" in restarted.requests


def test_a_snapshot_captured_earlier_compacts_only_the_log_it_came_from() -> None:
    net = Net("a", "b", "c")
    net.elect("a")
    net.propose("a", b"x", rid="req-1")
    a = net.nodes["a"]
    early = a.capture(b"state")  # packed elsewhere while the log moves on
    assert early is not None
    net.propose("a", b"y")
    later = a.capture(b"state2")
    assert later is not None and later.index > early.index
    assert a.compact_to(later) and a.log.snapshot_index == later.index
    assert not a.compact_to(early)  # older than what is in place: nothing changes
    assert a.log.snapshot_index == later.index
    stranger = m.Snapshot(later.index + 1, 99, later.config, later.data)
    assert not a.compact_to(stranger)  # not of this log's applied prefix


def test_the_request_table_travels_as_columns_and_old_snapshots_still_load() -> None:
    table = rnode.unpack_snapshot(rnode.pack_snapshot(b"app", [["r1", 4], ["r2", 9]]))[1]
    assert table.ids == ["r1", "r2"] and table.at == [4, 9]
    old_layout = msgpack.packb({"app": b"app", "req": [["r1", 4]]}, use_bin_type=True)
    app, table = rnode.unpack_snapshot(old_layout)
    assert app == b"app" and table.rows() == [["r1", 4]]
    for bad in ({"app": b"", "req_ids": ["r1"], "req_at": []}, {"app": b"", "req": [["r1"]]},
                {"app": b""}):
        with pytest.raises(ValueError, match="request table"):
            rnode.unpack_snapshot(msgpack.packb(bad, use_bin_type=True))


# -- pure pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(("matches", "want"), [
    ({"a": 5}, 5), ({"a": 5, "b": 3, "c": 1}, 3), ({"a": 5, "b": 3, "c": 1, "d": 9}, 3),
    ({"a": 5, "b": 5, "c": 5, "d": 1, "e": 1}, 5), ({}, 0),
])
def test_committed_index(matches: dict[str, int], want: int) -> None:
    assert quorum.committed_index(list(matches) or [], matches) == want


def test_vote_result() -> None:
    v = ["a", "b", "c"]
    assert quorum.vote_result(v, {"a": True, "b": True}) is True
    assert quorum.vote_result(v, {"a": True, "b": False, "c": False}) is False
    assert quorum.vote_result(v, {"a": True}) is None


def _samples() -> list[m.Message]:
    e = m.Entry(3, 7, m.NORMAL, b"data", "rid")
    return [
        m.VoteRequest(3, "a", "b", 7, 3, pre=True, transfer=False),
        m.VoteResponse(3, "b", "a", True, pre=True),
        m.AppendRequest(3, "a", "b", 6, 2, (e,), 5),
        m.AppendResponse(3, "b", "a", False, 6, 4, 2),
        m.Heartbeat(3, "a", "b", 5, 9),
        m.HeartbeatResponse(3, "b", "a", 9),
        m.SnapshotChunk(3, "a", "b", 10, 3, conf("a", "b").encode(), 0, b"xy", True),
        m.SnapshotResponse(3, "b", "a", 10, 2, True),
        m.TimeoutNow(3, "a", "b"),
    ]


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_wire_round_trip(msg: m.Message) -> None:
    kind, body = m.to_wire(msg)
    assert kind.startswith("raft.")
    assert m.from_wire(kind, msg.frm, msg.to, body) == msg


@pytest.mark.parametrize(("kind", "body"), [
    ("raft.nope", {"t": 1}),
    ("raft.vote", {"t": -1, "last_index": 1, "last_term": 1, "pre": False, "transfer": False}),
    ("raft.vote", {"t": 1, "last_index": "1", "last_term": 1, "pre": False, "transfer": False}),
    ("raft.vote", {"t": 1, "last_index": True, "last_term": 1, "pre": False, "transfer": False}),
    ("raft.append", {"t": 1, "prev_index": 0, "prev_term": 0, "entries": [[1, 1, 9, b"", None]],
                     "commit": 0}),
    ("raft.append", {"t": 1, "prev_index": 0, "prev_term": 0, "entries": [[1, 1]],
                     "commit": 0}),
    ("raft.heartbeat", {"t": 1, "commit": 0}),
    ("raft.snapshot", []),
])
def test_malformed_messages_are_refused(kind: str, body: object) -> None:
    with pytest.raises(ValueError):
        m.from_wire(kind, "a", "b", body)  # type: ignore[arg-type]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        rconfig.RaftConfig(election_ticks_min=5, election_ticks_max=4)
    with pytest.raises(ValueError):
        rconfig.RaftConfig(heartbeat_ticks=20, election_ticks_min=10)


def test_a_leader_without_quorum_stops_taking_proposals_at_the_cap() -> None:
    cfg = rconfig.RaftConfig(election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2,
                             max_uncommitted_entries=5)
    net = Net("a", "b", "c", cfg=cfg)
    net.elect("a")
    net.isolate("a")
    a = net.nodes["a"]
    a.propose([b"1", b"2", b"3", b"4", b"5"])
    with pytest.raises(errors.Overloaded):
        a.propose([b"6"])


def test_a_configuration_is_committed_only_once_its_entry_is() -> None:
    net = Net("a", "b", "c", join=("d",))
    net.elect("a")
    a, b = net.nodes["a"], net.nodes["b"]
    assert a.conf_committed() and b.conf_committed() and a.conf_index == 0
    assert not net.nodes["d"].conf_committed()  # no configuration yet: nothing committed
    idx = a.change_config(rnode.ADD_LEARNER, "d", "d:1")
    assert a.conf_index == idx > a.log.commit and not a.conf_committed()
    assert b.conf_committed()  # b still holds the old configuration, which is committed
    net.process("a")
    while not b.conf_index:  # deliver until b has appended the new configuration
        net.deliver_one()
    assert b.conf_index == idx and not b.conf_committed()
    net.stabilize()
    assert all(n.conf_committed() and n.conf_index == idx for n in net.nodes.values())
    a.compact(b"")  # a configuration kept in a snapshot is committed too
    assert a.conf_index == a.log.snapshot_index >= idx and a.conf_committed()
