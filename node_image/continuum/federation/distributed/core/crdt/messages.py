"""Replication's wire messages and their plain-dict form (pure).

Kinds (all under ``repl.``):

* ``repl.push``   one-way  ``Push``: ``{"states": [[key, state], ...]}``
* ``repl.digest`` call     ``DigestRequest`` ``{"level": L, "nodes": [i, ...]}``
  -> ``DigestReply`` ``{"hashes": [...]}``; with ``"entries": true`` (leaf level)
  -> ``{"entries": [[[key, digest], ...], ...]}``
* ``repl.fetch``  call     ``FetchRequest`` ``{"states": [...], "want": [key, ...]}``
  -> ``FetchReply`` ``{"states": [...], "more": [key, ...], "collected": {key:
  context}}`` (``more``: keys that did not fit; ``collected``: tombstones the
  peer already garbage-collected, which count as seen by it)

``decode_*`` validate everything a peer sent and raise ``ValueError`` for a
malformed message. A list of states is decoded entry by entry: a corrupt state
(a bad checksum, a sibling outside its context) is dropped and reported in
``States.rejected``, and the rest is kept, since one bad value must not stop
the repair of the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import clock, replica

PUSH = "repl.push"
DIGEST = "repl.digest"
FETCH = "repl.fetch"
KINDS = (PUSH, DIGEST, FETCH)

MAX_NODES = 65536  # node indexes in one digest request
MAX_WANTED = 65536  # keys asked for in one fetch


@dataclass(frozen=True, slots=True)
class States:
    """Decoded ``[[key, state], ...]``; ``rejected`` says why each dropped entry was."""

    states: dict[str, replica.KeyState]
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Push:
    states: States


@dataclass(frozen=True, slots=True)
class DigestRequest:
    level: int
    nodes: tuple[int, ...]
    entries: bool = False  # the leaves' (key, digest) entries instead of hashes


@dataclass(frozen=True, slots=True)
class DigestReply:
    hashes: tuple[int, ...] = ()
    entries: tuple[tuple[tuple[str, int], ...], ...] = ()


@dataclass(frozen=True, slots=True)
class FetchRequest:
    states: States
    want: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FetchReply:
    states: States
    more: tuple[str, ...] = ()
    collected: dict[str, clock.VectorClock] = field(default_factory=dict)


# -- encoding -------------------------------------------------------------------------------


def encode_states(batch: Sequence[tuple[str, replica.KeyState]]) -> list[list[Any]]:
    return [[key, state.to_wire()] for key, state in batch]


def encode_push(batch: Sequence[tuple[str, replica.KeyState]]) -> dict[str, Any]:
    return {"states": encode_states(batch)}


def encode_digest_request(req: DigestRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"level": req.level, "nodes": list(req.nodes)}
    if req.entries:
        body["entries"] = True
    return body


def encode_digest_reply(reply: DigestReply, *, entries: bool) -> dict[str, Any]:
    if entries:
        return {"entries": [[list(e) for e in leaf] for leaf in reply.entries]}
    return {"hashes": list(reply.hashes)}


def encode_fetch_request(batch: Sequence[tuple[str, replica.KeyState]],
                         want: Sequence[str]) -> dict[str, Any]:
    return {"states": encode_states(batch), "want": list(want)}


def encode_fetch_reply(batch: Sequence[tuple[str, replica.KeyState]], more: Sequence[str],
                       collected: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    return {"states": encode_states(batch), "more": list(more),
            "collected": {k: dict(v) for k, v in collected.items()}}


# -- decoding -------------------------------------------------------------------------------


def decode_states(raw: object) -> States:
    if not isinstance(raw, list):
        raise ValueError("'states' must be a list of [key, state]")
    out: dict[str, replica.KeyState] = {}
    rejected: list[str] = []
    for item in raw:
        try:
            key, state = item
            out[replica.check_key(key)] = replica.KeyState.from_wire(state)
        except (ValueError, TypeError) as exc:
            rejected.append(str(exc))
    return States(out, tuple(rejected))


def decode_push(body: Mapping[str, Any]) -> Push:
    return Push(decode_states(body.get("states")))


def decode_digest_request(body: Mapping[str, Any]) -> DigestRequest:
    level, nodes = body.get("level"), body.get("nodes")
    if (not isinstance(level, int) or isinstance(level, bool) or not isinstance(nodes, list)
            or len(nodes) > MAX_NODES
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in nodes)):
        raise ValueError(f"repl.digest needs an int level and a list of at most {MAX_NODES} "
                         "node indexes")
    return DigestRequest(level, tuple(nodes), bool(body.get("entries", False)))


def decode_digest_reply(body: Mapping[str, Any], req: DigestRequest) -> DigestReply:
    """The peer's answer to ``req``; it must line up with the nodes asked for."""
    if req.entries:
        raw = body.get("entries")
        if not isinstance(raw, list) or len(raw) != len(req.nodes):
            raise ValueError("leaf entries do not match the request")
        leaves = []
        for leaf in raw:
            if not isinstance(leaf, list):
                raise ValueError("a leaf's entries are a list of [key, digest]")
            entries = []
            for e in leaf:
                if (not isinstance(e, list | tuple) or len(e) != 2 or not isinstance(e[0], str)
                        or not isinstance(e[1], int) or isinstance(e[1], bool)):
                    raise ValueError("a leaf entry is [key, digest]")
                entries.append((e[0], e[1]))
            leaves.append(tuple(entries))
        return DigestReply(entries=tuple(leaves))
    hashes = body.get("hashes")
    if (not isinstance(hashes, list) or len(hashes) != len(req.nodes)
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in hashes)):
        raise ValueError("hash lists do not match the requested nodes")
    return DigestReply(hashes=tuple(hashes))


def decode_fetch_request(body: Mapping[str, Any]) -> FetchRequest:
    want = body.get("want", [])
    if not isinstance(want, list) or len(want) > MAX_WANTED:
        raise ValueError(f"'want' must be a list of at most {MAX_WANTED} keys")
    return FetchRequest(decode_states(body.get("states", [])),
                        tuple(k for k in want if isinstance(k, str)))


def decode_fetch_reply(body: Mapping[str, Any], want: Sequence[str]) -> FetchReply:
    """The peer's answer to a fetch of ``want``: keys outside it are ignored."""
    wanted = set(want)
    more = body.get("more", [])
    more_keys = tuple(k for k in more if isinstance(k, str) and k in wanted) \
        if isinstance(more, list) else ()
    collected: dict[str, clock.VectorClock] = {}
    raw = body.get("collected", {})
    if isinstance(raw, Mapping):
        for key, ctx in raw.items():
            try:
                collected[str(key)] = clock.VectorClock.from_dict(ctx)
            except (ValueError, TypeError):
                continue  # a malformed context only delays that tombstone's collection
    return FetchReply(decode_states(body.get("states", [])), more_keys, collected)
