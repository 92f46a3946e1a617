"""The state machine that Raft's committed commands drive on every node.

Commands are plain dicts with a ``type``:

* ``concept.put`` / ``concept.delete``: the strongly consistent concept store;
* ``coord.*``: the coordinator's registry (handed to the coordinator);
* ``cluster.identity``: the cluster's id, proposed once by the first leader that finds
  none (the first one applied wins); backups record it, restores check it;
* ``noop``: ignored.

Every node applies the same commands in the same order, so every node holds
the same store; a snapshot is the store plus the registry, and restoring one
replaces both. Unknown command types are skipped with a warning rather than
halting the log (an older node may meet a newer command).
"""

from __future__ import annotations

import copy
import logging
from bisect import bisect_right, insort
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

log = logging.getLogger(__name__)

IDENTITY = "cluster.identity"


class StrongStore:
    """Concepts written through Raft: id -> value, kept in id order for paging."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._ids: list[str] = []
        self.applied = 0

    def __contains__(self, concept_id: str) -> bool:
        return concept_id in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, concept_id: str) -> Any:
        return copy.deepcopy(self._values.get(concept_id))

    def ids(self, after: str | None, limit: int) -> list[str]:
        start = 0 if after is None else bisect_right(self._ids, after)
        return self._ids[start:start + limit]

    def put(self, concept_id: str, value: Any) -> None:
        if concept_id not in self._values:
            insort(self._ids, concept_id)
        self._values[concept_id] = value

    def delete(self, concept_id: str) -> bool:
        if concept_id not in self._values:
            return False
        del self._values[concept_id]
        self._ids.remove(concept_id)
        return True

    def dump(self) -> dict[str, Any]:
        return dict(self._values)

    def load(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self._ids = sorted(self._values)


class FederationStateMachine:
    def __init__(self, coordinator_apply: Callable[[Mapping[str, Any]], Any],
                 coordinator_snapshot: Callable[[], dict[str, Any]],
                 coordinator_restore: Callable[[Mapping[str, Any]], None]) -> None:
        self.concepts = StrongStore()
        self._coord_apply = coordinator_apply
        self._coord_snapshot = coordinator_snapshot
        self._coord_restore = coordinator_restore
        self.identity: dict[str, str] | None = None  # {"id": ..., "name": ...}
        self.skipped = 0

    def apply(self, command: Any) -> Any:
        """Apply one committed command; returns its result (for the proposer)."""
        if not isinstance(command, Mapping):
            self.skipped += 1
            log.warning("skipping a committed command that is not a mapping")
            return None
        kind = command.get("type")
        self.concepts.applied += 1
        if kind == "concept.put":
            self.concepts.put(str(command["id"]), command.get("value"))
            return True
        if kind == "concept.delete":
            return self.concepts.delete(str(command["id"]))
        if kind == IDENTITY:
            if self.identity is None and isinstance(command.get("id"), str):
                self.identity = {"id": command["id"], "name": str(command.get("name", ""))}
            return self.identity
        if isinstance(kind, str) and kind.startswith("coord."):
            return self._coord_apply(command)
        if kind != "noop":
            self.skipped += 1
            log.warning("skipping a committed command of unknown type %r", kind)
        return None

    def snapshot(self) -> bytes:
        return self.frozen()()

    def frozen(self) -> Callable[[], bytes]:
        """The state as it is now, and a function that packs it as ``snapshot`` does, safe
        to call later on another thread: the copy is shallow (cheap in the Raft loop),
        which holds because stored values are replaced, never changed in place."""
        state = {"concepts": self.concepts.dump(), "registry": self._coord_snapshot(),
                 "identity": self.identity}

        def pack() -> bytes:
            data: bytes = msgpack.packb(state, use_bin_type=True)
            return data
        return pack

    def reset(self) -> None:
        """Empty, as before the first command: for a node that discards its Raft state and
        joins anew (the new cluster's log or snapshot is applied from scratch)."""
        self.concepts.load({})
        self._coord_restore({})
        self.identity = None

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        self.concepts.load(state.get("concepts", {}))
        self._coord_restore(state.get("registry", {}))
        self.identity = state.get("identity")


def identity_command(cluster_name: str, cluster_id: str) -> dict[str, str]:
    return {"type": IDENTITY, "id": cluster_id, "name": cluster_name}


def identity_in(app_snapshot: bytes, commands: list[Any]) -> dict[str, str] | None:
    """The identity a state machine restored from ``app_snapshot`` holds once it applied
    ``commands`` (a stopped node's committed log), without building the rest."""
    identity = None
    if app_snapshot:
        state = msgpack.unpackb(app_snapshot, raw=False, strict_map_key=False)
        identity = state.get("identity") if isinstance(state, dict) else None
    for c in commands:
        if identity is None and isinstance(c, Mapping) and c.get("type") == IDENTITY \
                and isinstance(c.get("id"), str):
            identity = {"id": c["id"], "name": str(c.get("name", ""))}
    return identity
