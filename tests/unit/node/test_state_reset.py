"""A node that discards its Raft state to join anew also empties its state machine."""

from __future__ import annotations

from typing import Any

from continuum.federation.distributed import statemachine


def test_reset_forgets_concepts_and_the_registry() -> None:
    restored: list[Any] = []
    sm = statemachine.FederationStateMachine(lambda c: None, lambda: {"nodes": []},
                                             restored.append)
    sm.apply({"type": "concept.put", "id": "only-in-the-old-cluster", "value": 1})
    sm.reset()
    assert sm.concepts.get("only-in-the-old-cluster") is None
    assert len(sm.concepts) == 0
    assert restored == [{}]  # the coordinator's registry is emptied too
    sm.apply({"type": "concept.put", "id": "new", "value": 2})
    assert sm.concepts.get("new") == 2
