"""The backup archive format: a header, named parts in framed chunks, the manifest last.

::

    archive := MAGIC (8 bytes) version (u16, big-endian) reserved (u16 = 0)
               record* ; then nothing
    record  := type (1 byte) length (u32, big-endian) payload
      P  part start   payload: JSON {"name": NAME}; the parts follow one another
      D  data chunk   payload: 1..MAX_CHUNK bytes of the current part
      M  manifest     payload: JSON manifest; the last record
      X  failed       payload: JSON {"error": why}; the producer gave up, nothing follows

A part's checksum (SHA-256) and size are of its data payloads joined. The manifest
carries them, so a reader checks every part as it streams; an archive that ends before
its manifest (truncated) or whose parts do not match it (corrupt) is refused. The
manifest stored beside the archive (``manifest.json``) is the same document plus the
backup's ``name`` and the whole archive's size and SHA-256.

Parts of format version 1:

* ``strong``: one Raft snapshot row, msgpack ``[index, term, config, data]``, exactly
  as Raft stores its own snapshots (``data`` is the state machine's snapshot and the
  request table that makes retried strong writes apply once);
* ``multimaster``: a msgpack stream of ``[key, state]`` pairs, ``state`` being the
  packed CRDT key state as the replicator stores it (values, version vectors, checksums).

Pure: no I/O, no clock. ``ArchiveWriter`` makes bytes, ``ArchiveReader`` checks them.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"CFBACKUP"
FORMAT = "continuum-federation-backup"
FORMAT_VERSION = 1
READABLE_VERSIONS = frozenset({1})
PARTS = ("strong", "multimaster")
MAX_CHUNK = 4 * 1024 * 1024
MAX_JSON = 1024 * 1024  # part headers and manifests
HEADER = struct.Struct(">8sHH")
RECORD = struct.Struct(">cI")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BackupError(Exception):
    """A backup that cannot be taken, read or restored; the message says why."""


class CorruptArchive(BackupError):
    """The archive is damaged: a bad checksum, a truncation, a malformed record."""


class UnsupportedFormat(BackupError):
    """A backup of a format version this build cannot read."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise BackupError(f"backup name {name!r} must be 1-128 letters, digits and ._- "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class PartInfo:
    name: str
    size: int
    sha256: str
    items: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256,
                "items": self.items}


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds. ``name`` and ``archive_*`` exist only in the stored copy."""

    backup_id: str
    cluster_name: str
    cluster_id: str | None
    node_id: str
    created_at: str          # UTC, ISO 8601: when the strong store was captured
    raft_index: int
    raft_term: int
    members: tuple[str, ...]  # the Raft voters and learners at that index
    parts: tuple[PartInfo, ...]
    software_version: str
    format_version: int = FORMAT_VERSION
    name: str | None = None
    archive_size: int | None = None
    archive_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. peers synced with

    def part(self, name: str) -> PartInfo:
        for p in self.parts:
            if p.name == name:
                return p
        raise CorruptArchive(f"the manifest lists no part {name!r}")

    @property
    def size(self) -> int:
        return self.archive_size if self.archive_size is not None else sum(
            p.size for p in self.parts)

    def embedded(self) -> Manifest:
        """The copy inside the archive (it cannot know its own name or checksum)."""
        return Manifest(self.backup_id, self.cluster_name, self.cluster_id, self.node_id,
                        self.created_at, self.raft_index, self.raft_term, self.members,
                        self.parts, self.software_version, self.format_version,
                        extra=dict(self.extra))

    def stored(self, name: str, archive_size: int, archive_sha256: str) -> Manifest:
        m = self.embedded()
        return Manifest(m.backup_id, m.cluster_name, m.cluster_id, m.node_id, m.created_at,
                        m.raft_index, m.raft_term, m.members, m.parts, m.software_version,
                        m.format_version, name, archive_size, archive_sha256, dict(m.extra))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "format_version": self.format_version,
            "backup_id": self.backup_id,
            "cluster": {"name": self.cluster_name, "id": self.cluster_id},
            "node_id": self.node_id, "created_at": self.created_at,
            "raft": {"index": self.raft_index, "term": self.raft_term,
                     "members": list(self.members)},
            "parts": [p.to_dict() for p in self.parts],
            "software_version": self.software_version,
        }
        if self.extra:
            d["extra"] = self.extra
        if self.name is not None:
            d["name"] = self.name
        if self.archive_size is not None:
            d["archive"] = {"size": self.archive_size, "sha256": self.archive_sha256}
        return d

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptArchive(f"the manifest is not JSON: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise CorruptArchive(f"not a {FORMAT} manifest")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise UnsupportedFormat(
                f"backup format version {version!r}; this build reads version(s) "
                f"{', '.join(map(str, sorted(READABLE_VERSIONS)))}: use a matching release")
        try:
            cluster, raft = d["cluster"], d["raft"]
            parts = tuple(PartInfo(str(p["name"]), _int(p["size"]), _hex(p["sha256"]),
                                   _int(p["items"])) for p in d["parts"])
            archive = d.get("archive")
            m = cls(
                backup_id=str(d["backup_id"]), cluster_name=str(cluster["name"]),
                cluster_id=None if cluster.get("id") is None else str(cluster["id"]),
                node_id=str(d["node_id"]), created_at=str(d["created_at"]),
                raft_index=_int(raft["index"]), raft_term=_int(raft["term"]),
                members=tuple(str(x) for x in raft["members"]), parts=parts,
                software_version=str(d["software_version"]), format_version=int(version),
                name=None if d.get("name") is None else check_name(str(d["name"])),
                archive_size=None if archive is None else _int(archive["size"]),
                archive_sha256=None if archive is None else _hex(archive["sha256"]),
                extra=dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, BackupError) as exc:
            raise CorruptArchive(f"malformed manifest: {exc!r}") from None
        if [p.name for p in m.parts] != list(PARTS):
            raise CorruptArchive(f"the manifest lists parts {[p.name for p in m.parts]}, "
                                 f"expected {list(PARTS)}")
        return m


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return int(v)


def _hex(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
        raise ValueError(f"expected a SHA-256 hex digest, got {v!r}")
    return v


# -- writing ------------------------------------------------------------------------------------

def _record(kind: bytes, payload: bytes) -> bytes:
    return RECORD.pack(kind, len(payload)) + payload


class ArchiveWriter:
    """Makes an archive's bytes part by part, keeping each part's checksum and size."""

    def __init__(self) -> None:
        self._parts: list[PartInfo] = []
        self._current: str | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._items = 0

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, FORMAT_VERSION, 0)

    def start_part(self, name: str) -> bytes:
        out = self._end_part()
        self._current, self._hash, self._size, self._items = name, hashlib.sha256(), 0, 0
        return out + _record(b"P", json.dumps({"name": name}).encode())

    def data(self, chunk: bytes, items: int = 0) -> Iterator[bytes]:
        """``chunk`` as data records (split at ``MAX_CHUNK``); ``items`` it holds."""
        if self._current is None:
            raise RuntimeError("data before any part")
        self._items += items
        view = memoryview(chunk)
        for off in range(0, len(view), MAX_CHUNK):
            piece = view[off:off + MAX_CHUNK]
            self._hash.update(piece)
            self._size += len(piece)
            yield RECORD.pack(b"D", len(piece)) + piece.tobytes()

    def _end_part(self) -> bytes:
        if self._current is not None:
            self._parts.append(PartInfo(self._current, self._size, self._hash.hexdigest(),
                                        self._items))
            self._current = None
        return b""

    def finish(self, manifest_fields: Mapping[str, Any]) -> tuple[Manifest, bytes]:
        """The manifest (``manifest_fields`` plus the parts) and its closing record."""
        self._end_part()
        m = Manifest(parts=tuple(self._parts), **manifest_fields)
        return m, _record(b"M", m.to_json())

    @staticmethod
    def failed(why: str) -> bytes:
        return _record(b"X", json.dumps({"error": why}).encode())


# -- reading ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PartStarted:
    name: str


@dataclass(frozen=True, slots=True)
class PartData:
    name: str
    data: bytes


class ArchiveReader:
    """Checks an archive as it streams: ``feed(bytes)`` yields ``PartStarted`` and
    ``PartData`` events; ``finish()`` returns the manifest once the archive ended right
    after it. With ``expected`` (the stored manifest), each part is checked against it as
    soon as it ends, and the embedded manifest must equal it. ``CorruptArchive`` for any
    damage, ``UnsupportedFormat`` for a version this build cannot read."""

    def __init__(self, expected: Manifest | None = None) -> None:
        self.expected = expected
        self._buf = bytearray()
        self._header_done = False
        self._current: str | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._seen: dict[str, PartInfo] = {}
        self.manifest: Manifest | None = None
        self.bytes_read = 0

    def feed(self, data: bytes) -> Iterator[PartStarted | PartData]:
        if self.manifest is not None and data:
            raise CorruptArchive("data after the manifest")
        self.bytes_read += len(data)
        self._buf += data
        if not self._header_done:
            if len(self._buf) < HEADER.size:
                return
            magic, version, _ = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise CorruptArchive("not a backup archive (bad magic bytes)")
            if version not in READABLE_VERSIONS:
                raise UnsupportedFormat(f"archive format version {version}; this build reads "
                                        f"{', '.join(map(str, sorted(READABLE_VERSIONS)))}")
            del self._buf[:HEADER.size]
            self._header_done = True
        while len(self._buf) >= RECORD.size:
            kind, length = RECORD.unpack_from(self._buf)
            limit = MAX_CHUNK if kind == b"D" else MAX_JSON
            if length > limit:
                raise CorruptArchive(f"a {kind!r} record of {length} bytes (limit {limit})")
            end = RECORD.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[RECORD.size:end])
            del self._buf[:end]
            yield from self._record(kind, payload)
            if self.manifest is not None and self._buf:
                raise CorruptArchive("data after the manifest")

    def _record(self, kind: bytes, payload: bytes) -> Iterator[PartStarted | PartData]:
        if kind == b"D":
            if self._current is None or not payload:
                raise CorruptArchive("a data record outside a part, or empty")
            self._hash.update(payload)
            self._size += len(payload)
            yield PartData(self._current, payload)
        elif kind == b"P":
            self._end_part()
            name = _json(payload).get("name")
            if name not in PARTS or name in self._seen:
                raise CorruptArchive(f"unexpected part {name!r}")
            self._current, self._hash, self._size = name, hashlib.sha256(), 0
            yield PartStarted(name)
        elif kind == b"M":
            self._end_part()
            m = Manifest.from_dict(_json(payload))
            for part in m.parts:
                self._check_part(part, self._seen.get(part.name))
            if self.expected is not None and m != self.expected.embedded():
                raise CorruptArchive("the archive's manifest differs from the stored one")
            self.manifest = m
        elif kind == b"X":
            why = _json(payload).get("error", "unknown")
            raise BackupError(f"the node failed while writing the backup: {why}")
        else:
            raise CorruptArchive(f"unknown record type {kind!r}")

    def _end_part(self) -> None:
        if self._current is None:
            return
        seen = PartInfo(self._current, self._size, self._hash.hexdigest(), 0)
        self._seen[self._current] = seen
        if self.expected is not None:
            self._check_part(self.expected.part(self._current), seen)
        self._current = None

    @staticmethod
    def _check_part(want: PartInfo, got: PartInfo | None) -> None:
        if got is None:
            raise CorruptArchive(f"part {want.name!r} is missing from the archive")
        if got.size != want.size or got.sha256 != want.sha256:
            raise CorruptArchive(
                f"part {want.name!r} is corrupt: {got.size} bytes with SHA-256 "
                f"{got.sha256[:16]}..., the manifest says {want.size} bytes, "
                f"{want.sha256[:16]}...")

    def finish(self) -> Manifest:
        if self.manifest is None or self._buf:
            raise CorruptArchive(f"the archive ends after {self.bytes_read} bytes, before its "
                                 "manifest: it is truncated")
        return self.manifest


def _json(payload: bytes) -> dict[str, Any]:
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptArchive(f"a malformed record: {exc}") from None
    if not isinstance(d, dict):
        raise CorruptArchive("a malformed record: not a JSON object")
    return d
