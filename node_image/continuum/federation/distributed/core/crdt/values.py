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


# Tags as the ints that indexing bytes gives: no one-byte slice per tag.
_NONE, _TRUE, _FALSE, _FLOAT = b"NTFf"
_STR, _INT, _BYTES, _LIST, _TUPLE, _SET, _DICT = b"sibltSd"
_SCALARS = frozenset((_STR, _INT, _BYTES))
_SIZED = frozenset((_STR, _INT, _BYTES, _LIST, _TUPLE, _SET, _DICT))  # a length prefix follows
_unpack_double = struct.Struct(">d").unpack_from


def _dec(data: bytes, pos: int, depth: int, hashable: bool) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise EncodingError(f"value nested deeper than {MAX_DEPTH}")
    tag = data[pos]  # an int; IndexError past the end, which decode() reports
    pos += 1
    if tag not in _SIZED:
        if tag == _NONE:
            return None, pos
        if tag == _TRUE:
            return True, pos
        if tag == _FALSE:
            return False, pos
        if tag == _FLOAT:
            return _unpack_double(data, pos)[0], pos + 8
        raise EncodingError(f"unknown tag {bytes([tag])!r}")
    end = data.index(b":", pos, pos + 21)
    digits = data[pos:end]
    if not digits.isdigit():
        raise EncodingError("bad length prefix")
    n = int(digits)
    pos = end + 1
    if tag in _SCALARS:
        stop = pos + n
        if stop > len(data):
            raise EncodingError("truncated value")
        if tag == _STR:
            return data[pos:stop].decode("utf-8"), stop
        if tag == _INT:
            return int(data[pos:stop]), stop
        return bytes(data[pos:stop]), stop
    depth += 1
    if tag == _DICT:
        if hashable:
            raise EncodingError("a dict cannot be a set member or dict key")
        d: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _dec(data, pos, depth, True)
            d[k], pos = _dec(data, pos, depth, False)
        return d, pos
    # Set members must be hashable; tuples pass the need down; lists never are.
    inner = True if tag == _SET else (hashable if tag == _TUPLE else False)
    items = []
    for _ in range(n):
        item, pos = _dec(data, pos, depth, inner)
        items.append(item)
    if tag == _SET:
        return (frozenset(items) if hashable else set(items)), pos
    if tag == _TUPLE:
        return tuple(items), pos
    if hashable:
        raise EncodingError("a list cannot be a set member or dict key")
    return items, pos


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
    """Length-prefixed metadata: unambiguous, and cheaper than the generic encoder.

    Each part is ``len:bytes``: the timestamp ``wall.logical``, the writer, ``D`` or
    ``L``, then each version entry's node and counter in node order; ``|`` ends it.
    """
    stamp = b"%d.%d" % (timestamp[0], timestamp[1])
    writer = node_id.encode("utf-8")
    out = [b"%d:%s%d:%s1:%s" % (len(stamp), stamp, len(writer), writer,
                                 b"D" if deleted else b"L")]
    for node, n in version.sorted_items():
        name, count = node.encode("utf-8"), b"%d" % n
        out.append(b"%d:%s%d:%s" % (len(name), name, len(count), count))
    out.append(b"|")
    return b"".join(out)


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
            ts = d["timestamp"]
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
        return cls._checked(decode(data), data, rv.timestamp, rv.node_id, rv.version.copy(),
                            rv.checksum, rv.deleted, True)

    @classmethod
    def _checked(cls, value: Any, data: bytes, ts: object, node_id: object,
                 version: clock.VectorClock, checksum: object, deleted: object,
                 verify: bool) -> ReplicatedValue:
        """The checks every way into a replica shares (parsing, or a value object)."""
        _check_size(data)
        stamp, writer, tombstone = _check_metadata(ts, node_id, version, deleted)
        if not isinstance(checksum, str):
            raise ValueError("checksum must be a string")
        rv = cls(value, stamp, writer, version, checksum, tombstone, data)
        if verify and checksum_of_encoded(data, stamp, writer, version, tombstone) != checksum:
            raise ChecksumError(
                f"checksum mismatch for a value written by {writer!r} at {list(stamp)}: "
                "content corrupted or forged")
        return rv


def _check_size(data: bytes) -> None:
    if len(data) > MAX_VALUE_BYTES:
        raise EncodingError(f"value of {len(data)} bytes exceeds {MAX_VALUE_BYTES}")


def _check_metadata(ts: object, node_id: object, version: clock.VectorClock,
                    deleted: object) -> tuple[clock.HLCTimestamp, str, bool]:
    """A replica stores nothing it would refuse to read back (or that peers would refuse)."""
    stamp = clock.HLCTimestamp.parse(ts)
    if not isinstance(node_id, str) or not node_id:
        raise ValueError("replicated value needs a non-empty node_id")
    if not isinstance(deleted, bool):
        raise ValueError("deleted must be a bool")
    if version.get(node_id) < 1:
        # The write's own event (its dot) is what lets later writes supersede it.
        raise ValueError(f"version {version!r} lacks the writer's own entry {node_id!r}")
    return stamp, node_id, deleted
