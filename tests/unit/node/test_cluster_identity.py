"""The cluster id carried through Raft: the first one applied wins, snapshots keep it, and
a stopped node's data reveals it without replaying its whole state."""

from __future__ import annotations

from continuum.federation.distributed import statemachine


def _sm() -> statemachine.FederationStateMachine:
    return statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)


def test_the_first_identity_applied_wins_and_survives_snapshot_and_reset() -> None:
    sm = _sm()
    assert sm.identity is None
    sm.apply(statemachine.identity_command("demo", "aaa"))
    sm.apply(statemachine.identity_command("demo", "bbb"))  # a second leader's, raced
    assert sm.identity == {"id": "aaa", "name": "demo"}
    other = _sm()
    other.restore(sm.snapshot())
    assert other.identity == {"id": "aaa", "name": "demo"}
    other.reset()
    assert other.identity is None


def test_identity_in_reads_a_snapshot_then_the_committed_commands() -> None:
    sm = _sm()
    assert statemachine.identity_in(sm.snapshot(), []) is None
    cmds = [{"type": "noop"}, statemachine.identity_command("x", "c1"),
            statemachine.identity_command("x", "c2")]
    assert statemachine.identity_in(b"", cmds) == {"id": "c1", "name": "x"}
    sm.apply(statemachine.identity_command("y", "s1"))
    assert statemachine.identity_in(sm.snapshot(), cmds) == {"id": "s1", "name": "y"}
