"""Timing rules of the Raft core: a leader that holds, fast failover, local health.

* a follower that saw its leader's connection drop campaigns within ``hurry_ticks``,
  and its pre-vote cannot depose a leader the others still hear;
* a follower whose own timers ran late (Lifeguard's local health) does not count the
  stall against its leader, and widens its timeout while its health is poor;
* a leader ignores vote requests of a higher term while it leads (its lease);
* the core tells the shell how long it may sleep.
"""

from __future__ import annotations

import dataclasses

from continuum.federation.distributed.core.raft import config as rconfig
from continuum.federation.distributed.core.raft import messages as m
from unit.raft.raft_net import CFG, Net

HURRY = dataclasses.replace(CFG, hurry_ticks=3)  # election timeout 10-20 ticks, heartbeat 2


def settled(*ids: str, cfg: rconfig.RaftConfig = HURRY) -> Net:
    net = Net(*ids, cfg=cfg)
    net.elect(ids[0])
    net.tick(times=2)  # a heartbeat round: every follower has heard the leader
    return net


def test_a_follower_that_lost_its_leaders_connection_takes_over_within_the_hurry_window(
) -> None:
    net = settled("a", "b", "c")
    net.isolate("a")  # the leader's process died: both followers see their streams drop
    for nid in "bc":
        net.nodes[nid].peer_unreachable("a")
        assert net.nodes[nid].leader_id is None
    net.tick("b", "c", times=HURRY.hurry_ticks + 2)
    assert len([n for n in "bc" if net.nodes[n].is_leader]) == 1
    assert net.nodes["b"].term == net.nodes["c"].term == 2


def test_a_dropped_connection_to_a_live_leader_deposes_nobody() -> None:
    net = settled("a", "b", "c")
    net.nodes["b"].peer_unreachable("a")  # a blip: a and c still talk
    net.tick("b", times=HURRY.hurry_ticks + 1)  # b's pre-vote goes out ...
    assert net.leaders() == ["a"] and net.nodes["a"].term == 1  # ... and is refused
    net.tick(times=HURRY.heartbeat_ticks)  # the leader's next heartbeat reaches b
    assert net.nodes["b"].leader_id == "a" and net.nodes["b"].term == 1


def test_without_hurry_a_dropped_connection_changes_nothing() -> None:
    net = settled("a", "b", "c", cfg=CFG)
    net.nodes["b"].peer_unreachable("a")
    assert net.nodes["b"].leader_id == "a"


def test_a_new_node_campaigns_soon_when_it_has_never_seen_a_leader() -> None:
    net = Net("a", "b", "c", cfg=HURRY)
    net.tick(times=HURRY.hurry_ticks + 1)
    assert len(net.leaders()) == 1


def test_a_leader_ignores_a_higher_term_vote_request_but_yields_to_its_own_transfer() -> None:
    net = settled("a", "b", "c")
    a = net.nodes["a"]
    a.step(m.VoteRequest(5, "b", "a", a.log.last_index, a.log.last_term, False, False))
    assert a.is_leader and a.term == 1
    # A transfer vote the leader did not start is a disruption like any other.
    a.step(m.VoteRequest(2, "b", "a", a.log.last_index, a.log.last_term, False, True))
    assert a.is_leader and a.term == 1
    a.transfer_leader("b")
    a.step(m.VoteRequest(2, "b", "a", a.log.last_index, a.log.last_term, False, True))
    assert not a.is_leader and a.term == 2


def test_a_stalled_follower_does_not_count_its_own_stall_against_the_leader() -> None:
    net = settled("a", "b", "c")
    b = net.nodes["b"]
    # b's loop stalled past its whole election timeout; the leader's heartbeats were
    # waiting unread meanwhile. The timer that woke it ran that late:
    stall = HURRY.election_ticks_max + 5
    b.note_lag(stall)
    assert b.local_health == 1
    for _ in range(stall):
        b.tick()
    assert b.role == "follower" and b.leader_id == "a"
    net.process("b")
    assert not [x for x in net.queue if isinstance(x, m.VoteRequest)]


def test_poor_local_health_widens_the_timeout_and_timers_on_time_restore_it() -> None:
    net = settled("a", "b", "c")
    b = net.nodes["b"]
    for _ in range(HURRY.max_local_health + 2):
        b.note_lag(HURRY.heartbeat_ticks)
    assert b.local_health == HURRY.max_local_health
    net.isolate("b")  # b hears nothing more, so it would campaign after one timeout ...
    net.tick("b", times=HURRY.election_ticks_max + 1)
    assert b.role == "follower"  # ... but waits up to 1 + max_local_health times that
    for _ in range(HURRY.max_local_health):
        b.note_lag(0)
    assert b.local_health == 0
    net.tick("b", times=HURRY.election_ticks_max + 1)
    assert b.role == "pre_candidate"


def test_the_core_says_how_long_the_shell_may_sleep() -> None:
    net = settled("a", "b", "c")
    a, b = net.nodes["a"], net.nodes["b"]
    assert 1 <= a.ticks_until_due() <= HURRY.heartbeat_ticks
    assert b.ticks_until_due() == b.randomized_timeout - b.election_elapsed
    net.tick(times=a.ticks_until_due())  # exactly then, the leader's heartbeat goes out
    assert a.heartbeat_elapsed == 0


def test_settings_map_a_quarter_of_the_shortest_timeout_to_the_hurry_window() -> None:
    tick_s, cfg = rconfig.ticks_for((1000, 2000), 100)
    assert tick_s == 0.01 and (cfg.election_ticks_min, cfg.heartbeat_ticks) == (100, 10)
    assert cfg.hurry_ticks == 25
