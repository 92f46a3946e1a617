"""The simulator must be able to fail: deliberately broken variants are caught.

A disk that forgets the vote (a missing fsync of the hard state) must lead to
two leaders in one term on some seed; a request table that forgets ids must
lead to a request applied twice. If these pass, the checks in test_raft_sim.py
have teeth.
"""

from __future__ import annotations

import dataclasses

import pytest
from raft_sim import Faults, SafetyViolation, Sim, SimDisk

from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import node as rnode
from continuum.federation.distributed.core.raft import requests as rreq

CRASHY = Faults(crash=0.03, restart=0.3, crash_mid_ready=0.01, partition=0.02)


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
    found = _first_violation(range(200), faults=CRASHY, membership=False, ticks=300)
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
