"""The coordinator's node registry as a deterministic state machine.

Every change is a *command*, a plain dict that msgpack carries unchanged, so
the same sequence of commands applied anywhere (locally, or on every Raft
replica through the log) yields the same registry::

    {"type": "coord.register",   "node_id", "address", "metadata", "at"}
    {"type": "coord.deregister", "node_id", "at"}
    {"type": "coord.status",     "changes": [[node_id, generation, status], ...], "at"}

``at`` is the proposer's wall-clock time, carried in the command so that
replicas record the same timestamps. ``apply`` never raises on a committed
command: an invalid or stale one is a deterministic no-op with a reason.

``generation`` fences stale status changes: it is the registry revision at
which the node was (re-)registered at its current address, and a status
change for an older generation is ignored. So a health verdict about a node's
old address, proposed by a coordinator that lost leadership, cannot land on
the node after it re-registered somewhere else.

Heartbeat load figures are NOT registry state: they change many times a
second and every coordinator receives them locally, so they never go through
the log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .health_checks import NodeStatus

REGISTER = "coord.register"
DEREGISTER = "coord.deregister"
STATUS = "coord.status"
COMMAND_TYPES = (REGISTER, DEREGISTER, STATUS)

MAX_NODE_ID = 253
MAX_ADDRESS = 300
MAX_METADATA_ITEMS = 256
MAX_METADATA_DEPTH = 6
MAX_METADATA_STRING = 4096


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    address: str
    metadata: Mapping[str, Any]
    status: NodeStatus
    generation: int
    registered_at: float
    status_changed_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "metadata": dict(self.metadata),
            "status": self.status.value,
            "generation": self.generation,
            "registered_at": self.registered_at,
            "status_changed_at": self.status_changed_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeRecord:
        return cls(
            node_id=str(d["node_id"]),
            address=str(d["address"]),
            metadata=dict(d.get("metadata") or {}),
            status=NodeStatus(d["status"]),
            generation=int(d["generation"]),
            registered_at=float(d["registered_at"]),
            status_changed_at=float(d["status_changed_at"]),
        )


@dataclass(frozen=True, slots=True)
class Applied:
    ok: bool
    changed: tuple[str, ...] = ()  # node ids whose record changed (or vanished)
    error: str | None = None


# -- validation --------------------------------------------------------------------------


def check_node_id(node_id: Any) -> str:
    if not isinstance(node_id, str) or not node_id or len(node_id) > MAX_NODE_ID:
        raise ValueError(f"node id must be a non-empty string of at most {MAX_NODE_ID} "
                         f"characters, got {node_id!r}")
    if any(ch.isspace() for ch in node_id) or not node_id.isprintable():
        raise ValueError(f"node id must not contain whitespace or control characters: {node_id!r}")
    return node_id


def check_address(address: Any) -> str:
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise ValueError(f"address must be a 'host:port' string, got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address must be 'host:port' with a port in 1..65535, got {address!r}")
    return address


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    """A deep copy of ``value`` as plain data (tuples become lists, as after msgpack)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"metadata has more than {MAX_METADATA_ITEMS} items")
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH}")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str | bytes):
        if len(value) > MAX_METADATA_STRING:
            raise ValueError(f"metadata strings are limited to {MAX_METADATA_STRING} characters")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1, budget) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata keys must be strings, got {k!r}")
            out[k] = _plain(v, depth + 1, budget)
        return out
    raise ValueError(f"metadata values must be plain data (str, number, bool, None, list, "
                     f"dict, bytes), got {type(value).__name__}")


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Validated, normalized metadata (``None`` is ``{}``)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    out: dict[str, Any] = _plain(metadata, 0, [MAX_METADATA_ITEMS + 1])
    return out


def _at(command: Mapping[str, Any]) -> float:
    at = command.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError(f"'at' must be a number, got {at!r}")
    return float(at)


def validate(command: Any) -> None:
    """Raise ``ValueError`` with a clear reason unless ``command`` is well formed."""
    if not isinstance(command, Mapping):
        raise ValueError(f"a registry command is a dict, got {type(command).__name__}")
    kind = command.get("type")
    if kind not in COMMAND_TYPES:
        raise ValueError(f"unknown registry command {kind!r}; known: {', '.join(COMMAND_TYPES)}")
    _at(command)
    if kind == REGISTER:
        check_node_id(command.get("node_id"))
        check_address(command.get("address"))
        check_metadata(command.get("metadata"))
    elif kind == DEREGISTER:
        check_node_id(command.get("node_id"))
    else:
        changes = command.get("changes")
        if not isinstance(changes, list | tuple) or not changes:
            raise ValueError("'changes' must be a non-empty list of [node_id, generation, status]")
        for change in changes:
            if not isinstance(change, list | tuple) or len(change) != 3:
                raise ValueError(
                    f"a status change is [node_id, generation, status], got {change!r}")
            nid, gen, status = change
            check_node_id(nid)
            if isinstance(gen, bool) or not isinstance(gen, int):
                raise ValueError(f"generation must be an integer, got {gen!r}")
            if status not in NodeStatus._value2member_map_:
                raise ValueError(f"unknown status {status!r}; known: "
                                 f"{', '.join(s.value for s in NodeStatus)}")


# -- commands (built by the proposer) ----------------------------------------------------


def register_command(node_id: str, address: str, metadata: Mapping[str, Any] | None,
                     at: float) -> dict[str, Any]:
    return {"type": REGISTER, "node_id": node_id, "address": address,
            "metadata": check_metadata(metadata), "at": at}


def deregister_command(node_id: str, at: float) -> dict[str, Any]:
    return {"type": DEREGISTER, "node_id": node_id, "at": at}


def status_command(changes: Mapping[str, tuple[int, NodeStatus]], at: float) -> dict[str, Any]:
    return {"type": STATUS, "at": at,
            "changes": [[nid, gen, st.value] for nid, (gen, st) in sorted(changes.items())]}


# -- the state machine -------------------------------------------------------------------


@dataclass(slots=True)
class Registry:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    revision: int = 0  # commands applied, valid or not: identical on every replica

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(self.nodes.values())

    def get(self, node_id: str) -> NodeRecord | None:
        return self.nodes.get(node_id)

    def apply(self, command: Mapping[str, Any]) -> Applied:
        self.revision += 1
        try:
            validate(command)
        except ValueError as exc:
            return Applied(False, error=str(exc))
        kind = command["type"]
        if kind == REGISTER:
            return self._register(command)
        if kind == DEREGISTER:
            return self._deregister(command)
        return self._status(command)

    def _register(self, c: Mapping[str, Any]) -> Applied:
        nid, address, at = c["node_id"], c["address"], _at(c)
        metadata = check_metadata(c.get("metadata"))
        old = self.nodes.get(nid)
        if old is not None and old.address == address:
            if old.metadata == metadata:
                return Applied(True)  # a retried command: nothing to do
            self.nodes[nid] = NodeRecord(nid, address, metadata, old.status, old.generation,
                                         old.registered_at, old.status_changed_at)
            return Applied(True, (nid,))
        # New node, or the node moved: what we knew about its health no longer holds.
        self.nodes[nid] = NodeRecord(nid, address, metadata, NodeStatus.UNKNOWN, self.revision,
                                     at, at)
        return Applied(True, (nid,))

    def _deregister(self, c: Mapping[str, Any]) -> Applied:
        nid = c["node_id"]
        if self.nodes.pop(nid, None) is None:
            return Applied(False, error=f"node {nid!r} is not registered")
        return Applied(True, (nid,))

    def _status(self, c: Mapping[str, Any]) -> Applied:
        at = _at(c)
        changed: list[str] = []
        for nid, gen, status in c["changes"]:
            rec = self.nodes.get(nid)
            if rec is None or rec.generation != gen or rec.status.value == status:
                continue  # gone, re-registered since, or already there
            self.nodes[nid] = NodeRecord(rec.node_id, rec.address, rec.metadata,
                                         NodeStatus(status), rec.generation, rec.registered_at, at)
            changed.append(nid)
        return Applied(True, tuple(changed))

    # -- snapshots (persistence and Raft log compaction) ----------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"revision": self.revision,
                "nodes": [r.to_dict() for _, r in sorted(self.nodes.items())]}

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any]) -> Registry:
        nodes = {}
        for d in snap.get("nodes", ()):
            rec = NodeRecord.from_dict(d)
            nodes[rec.node_id] = rec
        return cls(nodes, int(snap.get("revision", 0)))
