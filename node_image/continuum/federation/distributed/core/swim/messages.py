"""SWIM messages, the updates they piggyback, and their plain-dict wire form.

Every message kind is ``swim.<name>``; bodies are msgpack-able dicts. Updates
travel as short lists (``["m", node, address, incarnation, status, origin]``
and ``["s", node, key, version, value]``) because every message carries
several. ``decode`` validates everything and raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import membership, state


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    node: str
    address: str
    incarnation: int
    status: membership.Status
    origin: str  # who makes the claim (the accuser, for a suspicion)


Update = MemberUpdate | state.Entry


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # the node we mean: an address may now belong to someone else
    reply_to: str  # our address, so an unknown sender can be answered
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_address: str
    reply_to: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Gossip:
    updates: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull anti-entropy: our whole member list and state; answered in kind once."""

    members: tuple[MemberUpdate, ...]
    entries: tuple[state.Entry, ...]
    reply_to: str
    reply: bool


Message = Ping | Ack | PingReq | Nack | Gossip | Sync

KINDS: dict[type[Any], str] = {
    Ping: "swim.ping",
    Ack: "swim.ack",
    PingReq: "swim.ping_req",
    Nack: "swim.nack",
    Gossip: "swim.gossip",
    Sync: "swim.sync",
}


def kind(msg: Message) -> str:
    return KINDS[type(msg)]


def _enc_update(u: Update) -> list[Any]:
    if isinstance(u, MemberUpdate):
        return ["m", u.node, u.address, u.incarnation, int(u.status), u.origin]
    return ["s", u.node, u.key, u.version, u.value]


def encode(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Ping):
        return {"seq": msg.seq, "target": msg.target, "reply_to": msg.reply_to,
                "u": [_enc_update(u) for u in msg.updates]}
    if isinstance(msg, Ack):
        return {"seq": msg.seq, "u": [_enc_update(u) for u in msg.updates]}
    if isinstance(msg, PingReq):
        return {"seq": msg.seq, "target": msg.target, "target_address": msg.target_address,
                "reply_to": msg.reply_to, "u": [_enc_update(u) for u in msg.updates]}
    if isinstance(msg, Nack):
        return {"seq": msg.seq}
    if isinstance(msg, Gossip):
        return {"u": [_enc_update(u) for u in msg.updates]}
    return {"members": [_enc_update(m) for m in msg.members],
            "entries": [_enc_update(e) for e in msg.entries],
            "reply_to": msg.reply_to, "reply": msg.reply}


# -- decoding: strict, every field checked ---------------------------------------------------

MAX_UPDATES = 100_000


def _str(body: dict[str, Any], name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str) or len(v) > 1024:
        raise ValueError(f"{name!r} must be a string")
    return v


# Incarnations, versions and sequence numbers only ever grow by one: a number this large
# is forged, and refusing it keeps ``n + 1`` (a refutation, a new version) within 64 bits.
MAX_NUMBER = 2**62


def _int(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_NUMBER:
        raise ValueError(f"{name!r} must be an integer from 0 to {MAX_NUMBER}")
    return v


def _dec_update(raw: Any) -> Update:
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError("an update must be a non-empty list")
    tag = raw[0]
    if tag == "m" and len(raw) == 6:
        _, node, address, inc, status, origin = raw
        if not (isinstance(node, str) and isinstance(address, str) and isinstance(origin, str)):
            raise ValueError("member update fields must be strings")
        if not node:
            raise ValueError("member update without a node id")
        if status not in (0, 1, 2, 3) or isinstance(status, bool):
            raise ValueError(f"unknown member status {status!r}")
        return MemberUpdate(node, address, _int(inc, "incarnation"),
                            membership.Status(status), origin)
    if tag == "s" and len(raw) == 5:
        _, node, key, version, value = raw
        if not (isinstance(node, str) and node and isinstance(key, str)):
            raise ValueError("state update node and key must be strings")
        state.check_value(value)
        return state.Entry(node, key, _int(version, "version"), value)
    raise ValueError(f"malformed update {str(raw)[:80]!r}")


def _updates(body: dict[str, Any], name: str = "u") -> tuple[Update, ...]:
    raw = body.get(name, [])
    if not isinstance(raw, list) or len(raw) > MAX_UPDATES:
        raise ValueError(f"{name!r} must be a list")
    return tuple(_dec_update(r) for r in raw)


def decode(kind_: str, body: Any) -> Message:
    """The message of ``kind_`` in ``body``; ``ValueError`` if anything is off."""
    if not isinstance(body, dict):
        raise ValueError("a message body must be a map")
    if kind_ == "swim.ping":
        return Ping(_int(body.get("seq"), "seq"), _str(body, "target"), _str(body, "reply_to"),
                    _updates(body))
    if kind_ == "swim.ack":
        return Ack(_int(body.get("seq"), "seq"), _updates(body))
    if kind_ == "swim.ping_req":
        return PingReq(_int(body.get("seq"), "seq"), _str(body, "target"),
                       _str(body, "target_address"), _str(body, "reply_to"), _updates(body))
    if kind_ == "swim.nack":
        return Nack(_int(body.get("seq"), "seq"))
    if kind_ == "swim.gossip":
        return Gossip(_updates(body))
    if kind_ == "swim.sync":
        members = _updates(body, "members")
        entries = _updates(body, "entries")
        if not all(isinstance(m, MemberUpdate) for m in members):
            raise ValueError("'members' must hold member updates")
        if not all(isinstance(e, state.Entry) for e in entries):
            raise ValueError("'entries' must hold state updates")
        reply = body.get("reply")
        if not isinstance(reply, bool):
            raise ValueError("'reply' must be a boolean")
        return Sync(tuple(m for m in members if isinstance(m, MemberUpdate)),
                    tuple(e for e in entries if isinstance(e, state.Entry)),
                    _str(body, "reply_to"), reply)
    raise ValueError(f"unknown message kind {kind_!r}")
