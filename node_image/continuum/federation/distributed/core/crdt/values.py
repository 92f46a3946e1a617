"""Replicated values and their canonical encoding.

Checksums and digests hash the *canonical* encoding: dict items and set
members are sorted by their own encoding, ``-0.0`` is ``0.0``, NaN is
refused (it is not equal to itself), so equal values encode to equal bytes on
every node whatever order they were built in. The encoding is also the form a
value travels and rests in, so a value decodes to exactly what was hashed.

Supported: None, bool, int, float, str, bytes, list, tuple, dict, set,
frozenset, nested up to ``MAX_DEPTH``. Decoded sets are ``set`` (``frozenset``
where they must be hashable: inside sets and as dict keys).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import clock

MAX_DEPTH = 64
MAX_VALUE_BYTES = 4 * 1024 * 1024


class ChecksumError(ValueError):
    """A replicated value whose checksum does not match its content."""


class EncodingError(ValueError):
    """A value that cannot be encoded canonically, or bytes that do not decode."""


# -- canonical encoding ----------------------------------------------------------------------


def encode(value: Any) -> bytes:
    return _enc(value, 0)


def _enc(v: Any, depth: int) -> bytes:
    # Exact-type checks first: this is the hot path of every write and merge.
    t = type(v)
    if t is str:
        b = v.encode("utf-8")
        return b"s%d:%s" % (len(b), b)
    if t is int:
        s = b"%d" % v
        return b"i%d:%s" % (len(s), s)
    if v is None:
        return b"N"
    if v is True:
        return b"T"
    if v is False:
        return b"F"
    if depth > MAX_DEPTH:
        raise EncodingError(f"value nested deeper than {MAX_DEPTH}")
    if t is dict or isinstance(v, dict):
        d = depth + 1
        pairs = sorted([_enc(k, d) + _enc(x, d) for k, x in v.items()])
        # Sorting the concatenations equals sorting by key: encodings are prefix-free.
        return b"d%d:%s" % (len(pairs), b"".join(pairs))
    if t is list or t is tuple or isinstance(v, list | tuple):
        d = depth + 1
        tag = b"l" if isinstance(v, list) else b"t"
        return b"%s%d:%s" % (tag, len(v), b"".join([_enc(x, d) for x in v]))
    if isinstance(v, float):
        if math.isnan(v):
            raise EncodingError("NaN cannot be replicated: it is not equal to itself")
        return b"f" + struct.pack(">d", v + 0.0)  # + 0.0 turns -0.0 into 0.0
    if isinstance(v, str):
        return _enc(str(v), depth)
    if isinstance(v, int):
        return _enc(int(v), depth)
    if isinstance(v, bytes | bytearray):
        return b"b%d:%s" % (len(v), bytes(v))
    if isinstance(v, set | frozenset):
        d = depth + 1
        items = sorted([_enc(x, d) for x in v])
        return b"S%d:%s" % (len(items), b"".join(items))
    raise EncodingError(f"cannot replicate a value of type {type(v).__name__}")


def decode(data: bytes) -> Any:
    """Inverse of ``encode``; raises ``EncodingError`` on malformed input."""
    if len(data) > MAX_VALUE_BYTES:
        raise EncodingError(f"encoded value of {len(data)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        value, pos = _dec(data, 0, 0, False)
    except (IndexError, ValueError, TypeError, UnicodeDecodeError, struct.error) as exc:
        if isinstance(exc, EncodingError):
            raise
        raise EncodingError(f"malformed encoded value: {exc}") from None
    if pos != len(data):
        raise EncodingError("trailing bytes after encoded value")
    return value


def _count(data: bytes, pos: int) -> tuple[int, int]:
    end = data.index(b":", pos, pos + 21)
    digits = data[pos:end]
    if not digits.isdigit():
        raise EncodingError("bad length prefix")
    return int(digits), end + 1


def _dec(data: bytes, pos: int, depth: int, hashable: bool) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise EncodingError(f"value nested deeper than {MAX_DEPTH}")
    tag = data[pos:pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"f":
        (x,) = struct.unpack(">d", data[pos:pos + 8])
        return x, pos + 8
    if tag in (b"i", b"s", b"b"):
        n, pos = _count(data, pos)
        raw = data[pos:pos + n]
        if len(raw) != n:
            raise EncodingError("truncated value")
        if tag == b"i":
            return int(raw), pos + n
        return (raw.decode("utf-8") if tag == b"s" else bytes(raw)), pos + n
    if tag in (b"l", b"t", b"S"):
        n, pos = _count(data, pos)
        items = []
        # Set members must be hashable; tuples pass the need down; lists never are.
        inner = True if tag == b"S" else (hashable if tag == b"t" else False)
        for _ in range(n):
            item, pos = _dec(data, pos, depth + 1, inner)
            items.append(item)
        if tag == b"S":
            return (frozenset(items) if hashable else set(items)), pos
        if tag == b"t":
            return tuple(items), pos
        if hashable:
            raise EncodingError("a list cannot be a set member or dict key")
        return items, pos
    if tag == b"d":
        if hashable:
            raise EncodingError("a dict cannot be a set member or dict key")
        n, pos = _count(data, pos)
        d: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _dec(data, pos, depth + 1, True)
            d[k], pos = _dec(data, pos, depth + 1, False)
        return d, pos
    raise EncodingError(f"unknown tag {tag!r}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- replicated values -----------------------------------------------------------------------


def compute_checksum(value: Any, timestamp: clock.HLCTimestamp, node_id: str,
                     version: clock.VectorClock, deleted: bool = False) -> str:
    """SHA-256 over the canonical encoding of the value and all its metadata."""
    return checksum_of_encoded(encode(value), timestamp, node_id, version, deleted)


def checksum_of_encoded(data: bytes, timestamp: clock.HLCTimestamp, node_id: str,
                        version: clock.VectorClock, deleted: bool) -> str:
    """The checksum over a value's canonical bytes and its metadata."""
    h = hashlib.sha256()
    h.update(meta_bytes(timestamp, node_id, version, deleted))
    h.update(data)
    return h.hexdigest()


def meta_bytes(timestamp: clock.HLCTimestamp, node_id: str, version: clock.VectorClock,
               deleted: bool) -> bytes:
    """Length-prefixed metadata: unambiguous, and cheaper than the generic encoder."""
    parts = [b"%d.%d" % (timestamp[0], timestamp[1]), node_id.encode("utf-8"),
             b"D" if deleted else b"L"]
    for node, n in version.to_dict().items():
        parts.append(node.encode("utf-8"))
        parts.append(b"%d" % n)
    return b"".join(b"%d:%s" % (len(p), p) for p in parts) + b"|"


@dataclass(frozen=True, slots=True)
class ReplicatedValue:
    """One write: the value, when (HLC), by whom, its causal context and a checksum.

    ``version`` is the writer's version vector for the key at the time of the
    write, including the write's own event ``(node_id, version[node_id])``
    (its *dot*). ``deleted`` marks a tombstone (``value`` is then None).

    ``resolved_from`` is empty for a value someone wrote. A value that a
    conflict strategy built from concurrent siblings (MERGE_UNION, CUSTOM)
    carries them there: it borrows the latest sibling's dot, so merged into a
    replica on its own it would stand in for that sibling and hide the others.
    Replicators merge its siblings instead. It is not part of the wire form.
    """

    value: Any
    timestamp: clock.HLCTimestamp
    node_id: str
    version: clock.VectorClock
    checksum: str
    deleted: bool = False
    _encoded: bytes = field(default=b"", repr=False, compare=False)
    resolved_from: tuple[ReplicatedValue, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def create(cls, value: Any, timestamp: clock.HLCTimestamp, node_id: str,
               version: clock.VectorClock, deleted: bool = False, *,
               resolved_from: tuple[ReplicatedValue, ...] = ()) -> ReplicatedValue:
        data = encode(value)
        _check_size(data)
        version = version.copy()
        _check_metadata(timestamp, node_id, version, deleted)
        checksum = checksum_of_encoded(data, timestamp, node_id, version, deleted)
        # Keep a decoded copy, never the caller's object: later mutation cannot corrupt it.
        return cls(decode(data), timestamp, node_id, version, checksum, deleted, data,
                   resolved_from)

    @property
    def dot(self) -> tuple[str, int]:
        """The write's own event: (author, its counter)."""
        return self.node_id, self.version.get(self.node_id)

    @property
    def encoded_value(self) -> bytes:
        return self._encoded or encode(self.value)

    def verify(self) -> bool:
        """True if the checksum matches the content."""
        try:
            expect = compute_checksum(self.value, self.timestamp, self.node_id, self.version,
                                      self.deleted)
        except (EncodingError, ValueError):
            return False
        return expect == self.checksum

    def to_dict(self) -> dict[str, Any]:
        """Plain form (the value as a Python object)."""
        return {"value": self.value, "timestamp": list(self.timestamp), "node_id": self.node_id,
                "version": self.version.to_dict(), "checksum": self.checksum,
                "deleted": self.deleted}

    def to_wire(self) -> dict[str, Any]:
        """Wire and disk form: the value as its canonical bytes (sets survive msgpack)."""
        return {"data": self.encoded_value, "timestamp": list(self.timestamp),
                "node_id": self.node_id, "version": self.version.to_dict(),
                "checksum": self.checksum, "deleted": self.deleted}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, verify: bool = True) -> ReplicatedValue:
        """Parse either form; with ``verify`` raise ``ChecksumError`` if the checksum is off."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a replicated value is a mapping, got {type(d).__name__}")
        try:
            if "data" in d:
                if not isinstance(d["data"], bytes):
                    raise ValueError("'data' must be bytes")
                # The checksum covers these exact bytes, so corruption cannot pass even
                # if the bytes happen to decode.
                data = d["data"]
                value = decode(data)
            else:
                value = d["value"]
                data = encode(value)
            node_id = d["node_id"]
            checksum = d["checksum"]
            deleted = d.get("deleted", False)
            ts = clock.HLCTimestamp.parse(d["timestamp"])
            version = clock.VectorClock.from_dict(d["version"])
        except KeyError as exc:
            raise ValueError(f"replicated value lacks {exc.args[0]!r}") from None
        return cls._checked(value, data, ts, node_id, version, checksum, deleted, verify)

    @classmethod
    def validated(cls, rv: object) -> ReplicatedValue:
        """``rv``, built in memory rather than parsed, held to every check ``from_dict`` applies.

        Returns a copy rebuilt from the canonical bytes (value and version
        copied), so neither a malformed field nor a later change to the
        caller's objects reaches a replica. Raises ``ValueError`` (or
        ``ChecksumError``) like ``from_dict``.
        """
        if not isinstance(rv, ReplicatedValue):
            raise ValueError(f"expected a ReplicatedValue, got {type(rv).__name__}")
        if not isinstance(rv.version, clock.VectorClock):
            raise ValueError(f"version must be a VectorClock, got {type(rv.version).__name__}")
        data = encode(rv.value)
        ts = clock.HLCTimestamp.parse(rv.timestamp)
        return cls._checked(decode(data), data, ts, rv.node_id, rv.version.copy(), rv.checksum,
                            rv.deleted, True)

    @classmethod
    def _checked(cls, value: Any, data: bytes, ts: clock.HLCTimestamp, node_id: object,
                 version: clock.VectorClock, checksum: object, deleted: object,
                 verify: bool) -> ReplicatedValue:
        """The checks every way into a replica shares (parsing, or a value object)."""
        _check_size(data)
        writer, tombstone = _check_metadata(ts, node_id, version, deleted)
        if not isinstance(checksum, str):
            raise ValueError("checksum must be a string")
        rv = cls(value, ts, writer, version, checksum, tombstone, data)
        if verify and checksum_of_encoded(data, ts, writer, version, tombstone) != checksum:
            raise ChecksumError(
                f"checksum mismatch for a value written by {writer!r} at {list(ts)}: "
                "content corrupted or forged")
        return rv


def _check_size(data: bytes) -> None:
    if len(data) > MAX_VALUE_BYTES:
        raise EncodingError(f"value of {len(data)} bytes exceeds {MAX_VALUE_BYTES}")


def _check_metadata(ts: object, node_id: object, version: clock.VectorClock,
                    deleted: object) -> tuple[str, bool]:
    """A replica stores nothing it would refuse to read back (or that peers would refuse)."""
    clock.HLCTimestamp.parse(ts)
    if not isinstance(node_id, str) or not node_id:
        raise ValueError("replicated value needs a non-empty node_id")
    if not isinstance(deleted, bool):
        raise ValueError("deleted must be a bool")
    if version.get(node_id) < 1:
        # The write's own event (its dot) is what lets later writes supersede it.
        raise ValueError(f"version {version!r} lacks the writer's own entry {node_id!r}")
    return node_id, deleted
