"""The state machine that Raft's committed commands drive on every node.

Commands are plain dicts with a ``type``:

* ``concept.put`` / ``concept.delete``: the strongly consistent concept store;
* ``coord.*``: the coordinator's registry (handed to the coordinator);
* ``cluster.identity``: the cluster's id, proposed once by the first leader that finds
  none (the first one applied wins); backups record it, restores check it;
* ``cert.revoke``: certificate fingerprints no node or client may use any more (a
  removed member's, or one an admin revoked); every node's transport refuses them;
* ``noop``: ignored.

Every node applies the same commands in the same order, so every node holds
the same store; a snapshot is the store plus the registry, and restoring one
replaces both. Unknown command types are skipped with a warning rather than
halting the log (an older node may meet a newer command).
"""

from __future__ import annotations

import copy
import logging
import re
from bisect import bisect_right, insort
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

log = logging.getLogger(__name__)

IDENTITY = "cluster.identity"
REVOKE = "cert.revoke"
FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")  # hex SHA-256 of a certificate's DER


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
        # fingerprint -> {"node_id": ..., "reason": ...}: the cluster's denylist
        self.revoked: dict[str, dict[str, str]] = {}
        self.on_revoked: Callable[[frozenset[str]], None] | None = None
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
        if kind == REVOKE:
            return self._revoke(command)
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

    def _revoke(self, command: Mapping[str, Any]) -> list[str]:
        """The fingerprints this command newly revoked (checked when proposed, and again
        here: a malformed one is skipped, never applied half)."""
        fps = command.get("fingerprints")
        if not isinstance(fps, list) or not all(isinstance(f, str) and FINGERPRINT.match(f)
                                                 for f in fps):
            self.skipped += 1
            log.warning("skipping a malformed certificate revocation")
            return []
        info = {"node_id": str(command.get("node_id") or ""),
                "reason": str(command.get("reason") or "")}
        new = [f for f in fps if f not in self.revoked]
        for f in new:
            self.revoked[f] = info
        if new:
            self._revocations_changed()
        return new

    def _revocations_changed(self) -> None:
        if self.on_revoked is not None:
            self.on_revoked(frozenset(self.revoked))

    def snapshot(self) -> bytes:
        return self.frozen()()

    def frozen(self) -> Callable[[], bytes]:
        """The state as it is now, and a function that packs it as ``snapshot`` does, safe
        to call later on another thread: the copy is shallow (cheap in the Raft loop),
        which holds because stored values are replaced, never changed in place."""
        state = {"concepts": self.concepts.dump(), "registry": self._coord_snapshot(),
                 "identity": self.identity, "revoked": dict(self.revoked)}

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
        self.revoked = {}
        self._revocations_changed()

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        self.concepts.load(state.get("concepts", {}))
        self._coord_restore(state.get("registry", {}))
        self.identity = state.get("identity")
        revoked = state.get("revoked", {})
        self.revoked = {f: dict(i) for f, i in revoked.items()
                        if isinstance(f, str) and FINGERPRINT.match(f) and isinstance(i, dict)}
        self._revocations_changed()


def revoke_command(fingerprints: list[str], node_id: str | None, reason: str
                   ) -> dict[str, Any]:
    """Revoke certificates by fingerprint (``ValueError`` for one that is not hex SHA-256)."""
    fps = sorted({f.lower() for f in fingerprints})
    bad = [f for f in fps if not FINGERPRINT.match(f)]
    if bad or not fps:
        raise ValueError("a certificate fingerprint is the hex SHA-256 of its DER encoding "
                         f"(64 hex digits); got {bad[0] if bad else 'none'!r}")
    return {"type": REVOKE, "fingerprints": fps, "node_id": node_id, "reason": reason}


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
