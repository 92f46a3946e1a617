"""Table tests of the SWIM core's pure functions: transitions, suspicion, retransmits."""

from __future__ import annotations

import math

import pytest

from continuum.federation.distributed.core.swim import config as cfg
from continuum.federation.distributed.core.swim import dissemination, state, suspicion
from continuum.federation.distributed.core.swim import local_health as health
from continuum.federation.distributed.core.swim.membership import TRANSITIONS, Status, supersedes

A, S, D, L = Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(a, b) for a in Status for b in Status}


@pytest.mark.parametrize(("cur", "cur_inc", "new", "new_inc", "expected"), [
    # alive is replaced by worse news at the same incarnation, by alive only when newer
    (A, 3, A, 3, False), (A, 3, A, 4, True), (A, 3, S, 3, True), (A, 3, S, 2, False),
    (A, 3, D, 3, True), (A, 3, L, 3, True), (A, 3, D, 2, False),
    # a suspect refutes only with a higher incarnation
    (S, 3, A, 3, False), (S, 3, A, 4, True), (S, 3, S, 3, False), (S, 3, S, 4, True),
    (S, 3, D, 3, True), (S, 3, L, 3, True),
    # the dead come back only with a new incarnation; suspicion never revives them
    (D, 3, A, 3, False), (D, 3, A, 4, True), (D, 3, S, 9, False), (D, 3, D, 9, False),
    (D, 3, L, 3, True),
    # left is final unless the node rejoins with a new incarnation
    (L, 3, A, 4, True), (L, 3, A, 3, False), (L, 3, S, 9, False), (L, 3, D, 9, False),
    (L, 3, L, 9, False),
])
def test_supersedes(cur: Status, cur_inc: int, new: Status, new_inc: int, expected: bool) -> None:
    assert supersedes(cur, cur_inc, new, new_inc) is expected


@pytest.mark.parametrize(("mult", "n", "expected"), [
    (4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (4, 1000, 16),
    (4, 10_000, 20), (3, 30, 6), (0, 50, 0),
])
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert dissemination.retransmit_limit(mult, n) == expected


def test_retransmit_limit_rejects_negative() -> None:
    with pytest.raises(ValueError):
        dissemination.retransmit_limit(-1, 3)


@pytest.mark.parametrize(("n", "expected_lo"), [(1, 2.0), (10, 2.0), (100, 4.0), (1000, 6.0)])
def test_suspicion_bounds_scale_with_log_n(n: int, expected_lo: float) -> None:
    lo, hi = suspicion.suspicion_bounds(4, 6, n, 0.5)
    assert lo == pytest.approx(expected_lo)
    assert hi == pytest.approx(6 * expected_lo)


@pytest.mark.parametrize(("mult", "n", "k"), [(4, 100, 2), (4, 4, 2), (4, 3, 0), (3, 10, 1),
                                              (2, 10, 0)])
def test_expected_confirmations(mult: int, n: int, k: int) -> None:
    assert suspicion.expected_confirmations(mult, n) == k


@pytest.mark.parametrize(("confirmations", "k", "elapsed", "expected"), [
    (0, 2, 0.0, 12.0),  # no confirmation: the long timeout
    (0, 2, 5.0, 7.0),
    (1, 2, 0.0, 12.0 - 10.0 * math.log(2) / math.log(3)),
    (2, 2, 0.0, 2.0),  # all expected confirmations: the short timeout
    (5, 2, 0.0, 2.0),  # never below lo
    (2, 2, 3.0, -1.0),  # overdue
    (0, 0, 0.0, 2.0),  # nobody could confirm: lo straight away
])
def test_remaining_suspicion_time(confirmations: int, k: int, elapsed: float,
                                  expected: float) -> None:
    got = suspicion.remaining_suspicion_time(confirmations, k, elapsed, 2.0, 12.0)
    assert got == pytest.approx(expected)


def test_suspicion_counts_each_independent_confirmer_once() -> None:
    s = suspicion.Suspicion(started=10.0, k=2, lo=2.0, hi=12.0, accuser="a")
    assert s.deadline() == pytest.approx(22.0)
    assert not s.confirm("a")  # the accuser does not confirm itself
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.confirm("c")
    assert not s.confirm("d")  # beyond k: nothing left to shorten
    assert s.deadline() == pytest.approx(12.0)


@pytest.mark.parametrize(("n", "expected"), [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0),
                                             (65, 90.0), (1000, 180.0)])
def test_push_pull_interval(n: int, expected: float) -> None:
    assert cfg.push_pull_interval(30.0, n) == pytest.approx(expected)


def test_local_health_is_bounded() -> None:
    h = health.LocalHealth(max_multiplier=4)
    assert h.multiplier == 1
    h.apply(10)
    assert h.multiplier == 4
    assert h.scale(0.5) == pytest.approx(2.0)
    h.apply(-1)
    assert h.multiplier == 3
    h.apply(-10)
    assert h.multiplier == 1


def test_broadcast_queue_sends_least_sent_first_and_stops_at_limit() -> None:
    q: dissemination.BroadcastQueue[str] = dissemination.BroadcastQueue(capacity=10, ttl=100.0)
    q.push("a", "a1", 0.0)
    assert q.take(5, limit=2, now=0.0) == ["a1"]
    q.push("b", "b1", 0.0)
    assert q.take(1, limit=2, now=0.0) == ["b1"]  # the fresh one first
    assert q.take(5, limit=2, now=0.0) == ["b1", "a1"]  # newest first among equals
    assert len(q) == 0


def test_broadcast_queue_newer_update_replaces_older_about_same_subject() -> None:
    q: dissemination.BroadcastQueue[str] = dissemination.BroadcastQueue(capacity=10, ttl=100.0)
    q.push("k", "v1", 0.0)
    q.push("k", "v2", 0.0)
    assert q.take(5, limit=3, now=0.0) == ["v2"]


def test_broadcast_queue_is_bounded_and_ages_out() -> None:
    q: dissemination.BroadcastQueue[int] = dissemination.BroadcastQueue(capacity=3, ttl=10.0)
    for i in range(3):
        q.push(i, i, 0.0)
    q.take(1, limit=5, now=0.0)  # item 2 (newest) sent once
    q.push(3, 3, 1.0)
    assert len(q) == 3 and q.dropped == 1
    assert 2 not in q.take(10, limit=5, now=1.0)  # the most-sent one made room
    q.push(9, 9, 5.0)
    assert q.take(10, limit=5, now=12.0) == [9]  # the rest expired


def test_dedup_buffer_window() -> None:
    d = dissemination.DedupBuffer(capacity=2, ttl=5.0)
    assert not d.seen("a", 0.0)
    assert d.seen("a", 1.0)
    assert not d.seen("b", 1.0)
    assert not d.seen("c", 1.0)  # evicts "a"
    assert not d.seen("a", 2.0)
    assert not d.seen("c", 7.0)  # expired


def test_state_map_is_last_writer_by_version() -> None:
    m = state.StateMap()
    assert m.merge(state.Entry("n1", "load", 2, 0.5))
    assert not m.merge(state.Entry("n1", "load", 1, 0.9))  # late message
    assert not m.merge(state.Entry("n1", "load", 2, 0.9))  # duplicate
    assert m.merge(state.Entry("n1", "load", 3, 0.7))
    assert m.node_view("n1") == {"load": 0.7}
    assert m.max_version("n1") == 3


@pytest.mark.parametrize("bad", [object(), {1: "x"}, {"a": {1, 2}}, 2**70, [[[]]] * 1 and
                                 [[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]])
def test_check_value_rejects_non_plain_data(bad: object) -> None:
    with pytest.raises(ValueError):
        state.check_value(bad)


@pytest.mark.parametrize("kwargs", [
    {"fanout": 0}, {"probe_interval": 0.0}, {"probe_timeout": 1.0, "probe_interval": 0.5},
    {"message_buffer_size": 0}, {"gossip_interval": float("nan")}, {"indirect_checks": -1},
])
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        cfg.SwimConfig(**kwargs)  # type: ignore[arg-type]
