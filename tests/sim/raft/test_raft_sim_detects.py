"""The simulator must be able to fail: deliberately broken variants are caught.

A disk that forgets the vote (a missing fsync of the hard state) must lead to
two leaders in one term on some seed; a request table that forgets ids must
lead to a request applied twice; replies sent before their write is durable
must break a safety property; a ReadIndex that does not confirm leadership
must produce a history the linearizability checker rejects. If these pass,
the checks in test_raft_sim.py have teeth.
"""

from __future__ import annotations

import dataclasses

import pytest
from raft_sim import Faults, SafetyViolation, Sim, SimDisk

from checkers.linearizability import check
from continuum.federation.distributed.core.raft import log as rlog
from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import raft_node as rnode
from continuum.federation.distributed.core.raft import requests as rreq

CRASHY = Faults(crash=0.03, restart=0.3, crash_mid_ready=0.01, partition=0.02)
# Pre-vote and leases make a vote cast twice rare; more crashes, partitions and loss
# bring the split elections it needs.
SPLIT_VOTES = Faults(crash=0.06, restart=0.5, crash_mid_ready=0.01, partition=0.05, loss=0.1)


def _first_violation(seeds: range, **kw: object) -> str | None:
    for seed in seeds:
        try:
            Sim(seed, **kw).run()  # type: ignore[arg-type]
        except SafetyViolation as exc:
            return str(exc)
    return None


def test_a_vote_that_is_not_persisted_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def forgetful(self: SimDisk, rd: rnode.Ready) -> None:
        orig(self, rd)
        self.hs = m.HardState(self.hs.term, None, self.hs.commit)

    orig = SimDisk.persist
    monkeypatch.setattr(SimDisk, "persist", forgetful)
    found = _first_violation(range(200), faults=SPLIT_VOTES, membership=False, ticks=300)
    # Two leaders in one term show up as such, or as two entries at one (index, term).
    assert found is not None and ("two leaders" in found or "two different entries" in found)


def test_a_forgotten_request_id_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rreq.RequestTable, "record", lambda self, rid, index: True)
    found = _first_violation(range(50))
    assert found is not None and "applied at" in found


def test_replies_sent_before_their_write_is_durable_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Votes and acks that leave before the fsync: a crash in between forgets what they
    promised, and some seed shows the damage."""
    def hasty(self: rnode.RaftNode) -> rnode.Ready:
        rd = orig(self)
        return dataclasses.replace(rd, early_messages=rd.early_messages + rd.messages,
                                   messages=())

    orig = rnode.RaftNode.ready
    monkeypatch.setattr(rnode.RaftNode, "ready", hasty)
    found = _first_violation(range(200), faults=CRASHY, membership=False, ticks=300)
    assert found is not None


def test_a_read_index_that_skips_the_leadership_check_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A deposed leader that answers reads from its own commit index returns stale values.

    Check-quorum bounds how long a deposed leader lingers, but only by its own clock;
    ReadIndex must not depend on it, so it is off here, and partitions last long
    enough for the majority to elect a leader and commit newer writes."""
    def unconfirmed(self: rnode.RaftNode, ctx: int) -> None:
        self._read_states.append(rnode.ReadState(ctx, self.log.commit))

    monkeypatch.setattr(rnode.RaftNode, "_start_read", unconfirmed)
    for seed in range(100):
        sim = Sim(seed, check_quorum=False, membership=False, keys=1, faults=Faults(heal=0.01))
        sim.run()
        if not check(sim.history)[0]:
            return
    pytest.fail("stale reads went unnoticed")


def test_the_read_index_setup_alone_is_linearizable() -> None:
    """The same schedules with the real ReadIndex pass: the failure above is the read's."""
    for seed in range(10):
        sim = Sim(seed, check_quorum=False, membership=False, keys=1, faults=Faults(heal=0.01))
        sim.run()
        assert check(sim.history)[0], f"seed {seed}"


def test_appends_accepted_without_the_prefix_check_break_log_matching(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower that takes a leader's entries without checking the term before them ends
    up with a log that agrees with another at some (index, term) but not below it; the
    per-step log check says so the step it happens."""
    monkeypatch.setattr(rlog.RaftLog, "matches",
                        lambda self, index, term: index <= self.last_index)
    for seed in range(400):  # a budget: the first seed that shows it is ~180 today
        try:
            Sim(seed).run()
        except SafetyViolation as exc:
            if "below their match" in str(exc):
                return
    pytest.fail("no log-matching violation found")
