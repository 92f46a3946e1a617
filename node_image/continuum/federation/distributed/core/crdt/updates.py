"""``Updates``: what a replica holds that a given version vector has not seen.

Two ways to use it, and both lose nothing:

* as a list of ``(key, ReplicatedValue)`` pairs, one per sibling, to feed
  ``replicate_from(node, key, value)`` one by one. A key with concurrent
  writes yields one pair per write; merging them one at a time is the same
  join as merging the key's whole state at once. Tombstones come as values
  with ``deleted=True``.
* whole, to ``merge_state``: each key's state (causal context and siblings)
  merges in one step, with one durable write for the batch.

The values are the replica's own objects, as ``read_value`` returns them:
read them, do not change them. ``to_wire()`` gives the plain form that
travels (``{"node_id", "vector_clock", "updates": {key: state}}``), and
``updates["updates"]`` (or ``"node_id"``, ``"vector_clock"``) still reads
that form by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, SupportsIndex, overload

from . import clock, replica, values

WIRE_FIELDS = ("node_id", "vector_clock", "updates")


class Updates(list[tuple[str, values.ReplicatedValue]]):
    __slots__ = ("_states", "node_id", "vector_clock")

    def __init__(self, node_id: str, vector_clock: Mapping[str, int],
                 states: Iterable[tuple[str, replica.KeyState]]) -> None:
        self._states = dict(states)
        super().__init__((key, sibling) for key, state in self._states.items()
                         for sibling in state.siblings)
        self.node_id = node_id
        self.vector_clock = dict(vector_clock)

    @property
    def states(self) -> Mapping[str, replica.KeyState]:
        """Each key's whole state: what ``merge_state`` merges."""
        return self._states

    def to_wire(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "vector_clock": dict(self.vector_clock),
                "updates": {k: s.to_wire() for k, s in self._states.items()}}

    @overload
    def __getitem__(self, i: SupportsIndex) -> tuple[str, values.ReplicatedValue]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, values.ReplicatedValue]]: ...
    @overload
    def __getitem__(self, i: str) -> Any: ...

    def __getitem__(self, i: SupportsIndex | slice | str) -> Any:
        if isinstance(i, str):
            if i not in WIRE_FIELDS:
                raise KeyError(f"{i!r}: updates read by name only as {', '.join(WIRE_FIELDS)}")
            return self.to_wire()[i]
        return super().__getitem__(i)


def state_of(value: values.ReplicatedValue) -> replica.KeyState:
    """The key state a checked value stands for.

    A value a conflict strategy built (``resolved_from``) stands for the
    siblings it was built from, each held to the checks of any other value.
    """
    if not value.resolved_from:
        return replica.KeyState.single(value)
    sibs = [values.ReplicatedValue.validated(s) for s in value.resolved_from]
    context = clock.VectorClock()
    for s in sibs:
        context.update(s.version)
    return replica.KeyState.of(context, replica.normalize(sibs))


def join_per_key(states: Iterable[tuple[str, replica.KeyState]]) -> dict[str, replica.KeyState]:
    """Several states of the same keys (e.g. one per sibling) joined into one per key."""
    out: dict[str, replica.KeyState] = {}
    for key, state in states:
        cur = out.get(key)
        out[key] = state if cur is None else replica.join(cur, state)
    return out
