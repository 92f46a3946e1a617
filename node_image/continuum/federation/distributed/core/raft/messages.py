"""Log entries, cluster configurations, snapshots and the peer messages.

Every message carries the sender's ``term``, ``frm`` and ``to``. ``to_wire``
and ``from_wire`` turn messages into (kind, body) pairs of msgpack-able
values; ``from_wire`` validates every field and raises ``ValueError`` on
anything malformed, so bad input never reaches the state machine. That
includes numbers no honest node sends: a term above ``MAX_TERM`` or an index
above ``MAX_INDEX``, and fields that contradict each other (a candidate whose
last log term is after its own term, entries that do not follow the previous
index or carry a term after the leader's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

# No honest cluster comes near these: a thousand elections a second for 8,000 years, and
# more entries than any disk holds. A term or index above them is forged, and refused
# where decoded, so it is never stored (and term + 1 always fits 64 bits).
MAX_TERM = 2**48 - 1
MAX_INDEX = 2**62

NORMAL = 0  # a client command
CONFIG = 1  # a membership configuration (data = ClusterConfig.encode())
NOOP = 2  # a new leader's first entry of its term


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: int = NORMAL
    data: bytes = b""
    request_id: str | None = None  # client request id: applied at most once


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()
    addresses: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            {"voters": sorted(self.voters), "learners": sorted(self.learners),
             "addresses": dict(sorted(self.addresses.items()))}, use_bin_type=True)
        return data

    @staticmethod
    def decode(data: bytes) -> ClusterConfig:
        raw = msgpack.unpackb(data, raw=False)
        if not isinstance(raw, dict):
            raise ValueError("config must be a map")
        voters, learners, addrs = raw.get("voters"), raw.get("learners"), raw.get("addresses")
        if not (_str_list(voters) and _str_list(learners) and isinstance(addrs, dict)):
            raise ValueError("config fields have the wrong types")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in addrs.items()):
            raise ValueError("config addresses must map str to str")
        return ClusterConfig(frozenset(voters or ()), frozenset(learners or ()), dict(addrs))


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    index: int
    term: int
    config: ClusterConfig
    data: bytes  # core-packed: the application's bytes plus the request table


# -- peer messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int
    frm: str
    to: str
    last_index: int
    last_term: int
    pre: bool = False  # a pre-vote: asks "would you vote?" without changing any state
    transfer: bool = False  # leadership transfer: ignore leader leases


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    frm: str
    to: str
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    term: int
    frm: str
    to: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    term: int
    frm: str
    to: str
    success: bool
    index: int  # success: the follower's match; rejection: the rejected prev_index
    hint_index: int = 0  # rejection: where the leader should look next
    hint_term: int = 0  # rejection: the follower's term at prev_index (0: log too short)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    term: int
    frm: str
    to: str
    commit: int
    ctx: int = 0  # the newest ReadIndex request this round confirms
    transferee: str = ""  # the voter this leader is handing over to ("": none)


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    frm: str
    to: str
    ctx: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    term: int
    frm: str
    to: str
    index: int
    snap_term: int
    config: bytes
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    term: int
    frm: str
    to: str
    index: int
    offset: int  # bytes received so far (the next chunk's offset)
    done: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    term: int
    frm: str
    to: str


Message = (VoteRequest | VoteResponse | AppendRequest | AppendResponse | Heartbeat
           | HeartbeatResponse | SnapshotChunk | SnapshotResponse | TimeoutNow)

# -- wire -----------------------------------------------------------------------------------

_KINDS: dict[type, str] = {
    VoteRequest: "raft.vote", VoteResponse: "raft.vote_resp",
    AppendRequest: "raft.append", AppendResponse: "raft.append_resp",
    Heartbeat: "raft.heartbeat", HeartbeatResponse: "raft.heartbeat_resp",
    SnapshotChunk: "raft.snapshot", SnapshotResponse: "raft.snapshot_resp",
    TimeoutNow: "raft.timeout_now",
}
_TYPES = {k: t for t, k in _KINDS.items()}
KINDS = tuple(_TYPES)

# Field name, expected type(s) for each message, in declaration order after term/frm/to.
_FIELDS: dict[type, tuple[tuple[str, tuple[type, ...]], ...]] = {
    VoteRequest: (("last_index", (int,)), ("last_term", (int,)), ("pre", (bool,)),
                  ("transfer", (bool,))),
    VoteResponse: (("granted", (bool,)), ("pre", (bool,))),
    AppendRequest: (("prev_index", (int,)), ("prev_term", (int,)), ("entries", (list,)),
                    ("commit", (int,))),
    AppendResponse: (("success", (bool,)), ("index", (int,)), ("hint_index", (int,)),
                     ("hint_term", (int,))),
    Heartbeat: (("commit", (int,)), ("ctx", (int,)), ("transferee", (str,))),
    HeartbeatResponse: (("ctx", (int,)),),
    SnapshotChunk: (("index", (int,)), ("snap_term", (int,)), ("config", (bytes,)),
                    ("offset", (int,)), ("data", (bytes,)), ("done", (bool,))),
    SnapshotResponse: (("index", (int,)), ("offset", (int,)), ("done", (bool,))),
    TimeoutNow: (),
}
# Fields newer than the first release, with what their absence means (older senders).
_OPTIONAL: dict[str, Any] = {"transferee": ""}
_TERMS = frozenset({"last_term", "prev_term", "hint_term", "snap_term"})


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.term, e.index, e.kind, e.data, e.request_id]


def entry_from_wire(raw: Any) -> Entry:
    if not isinstance(raw, list) or len(raw) != 5:
        raise ValueError("entry must be a list of 5")
    term, index, kind, data, rid = raw
    if not (_nat(term, MAX_TERM) and _nat(index) and kind in (NORMAL, CONFIG, NOOP)
            and isinstance(data, bytes) and (rid is None or isinstance(rid, str))):
        raise ValueError("entry fields have the wrong types")
    return Entry(term, index, kind, data, rid)


def _nat(v: Any, bound: int = MAX_INDEX) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= bound


def to_wire(msg: Message) -> tuple[str, dict[str, Any]]:
    """The (kind, body) pair for ``transport.send``; ``to`` is implied by the address."""
    body: dict[str, Any] = {"t": msg.term}
    for name, _ in _FIELDS[type(msg)]:
        value = getattr(msg, name)
        if name in _OPTIONAL and value == _OPTIONAL[name]:
            continue  # what its absence means anyway (and what older nodes expect)
        body[name] = [entry_to_wire(e) for e in value] if name == "entries" else value
    return _KINDS[type(msg)], body


def from_wire(kind: str, sender: str, to: str, body: dict[str, Any]) -> Message:
    cls = _TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown raft message kind {kind!r}")
    if not isinstance(body, dict) or not _nat(body.get("t"), MAX_TERM):
        raise ValueError(f"{kind}: missing or bad term (at most {MAX_TERM})")
    args: list[Any] = [body["t"], sender, to]
    for name, types in _FIELDS[cls]:
        value: Any = body.get(name, _OPTIONAL.get(name))
        bound = MAX_TERM if name in _TERMS else MAX_INDEX
        if not isinstance(value, types) or (types == (int,) and not _nat(value, bound)):
            raise ValueError(f"{kind}: field {name!r} missing, of the wrong type or out of "
                             "bounds")
        if name == "entries":
            value = tuple(entry_from_wire(e) for e in body[name])
        args.append(value)
    msg: Message = cls(*args)
    _check_consistent(kind, msg)
    return msg


def _check_consistent(kind: str, msg: Message) -> None:
    """Refuse what no honest sender builds: terms after the message's own, entries that do
    not follow on from the previous one."""
    if isinstance(msg, VoteRequest) and msg.last_term > msg.term:
        raise ValueError(f"{kind}: last_term {msg.last_term} is after the term {msg.term}")
    if isinstance(msg, SnapshotChunk) and msg.snap_term > msg.term:
        raise ValueError(f"{kind}: snapshot term {msg.snap_term} is after the term {msg.term}")
    if isinstance(msg, AppendResponse) and msg.hint_term > msg.term:
        raise ValueError(f"{kind}: hint term {msg.hint_term} is after the term {msg.term}")
    if isinstance(msg, AppendRequest):
        if msg.prev_term > msg.term:
            raise ValueError(f"{kind}: prev_term {msg.prev_term} is after the term {msg.term}")
        index, term = msg.prev_index, msg.prev_term
        for e in msg.entries:
            if e.index != index + 1 or not term <= e.term <= msg.term:
                raise ValueError(f"{kind}: entries must follow index {index} with terms from "
                                 f"{term} to {msg.term}")
            index, term = e.index, e.term
