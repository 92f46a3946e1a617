"""Reading a backup back: ``verify`` checks every byte, ``restore`` writes a data directory.

Both stream the archive through ``archive.ArchiveReader`` against the stored manifest
(each part's SHA-256 and size, the archive's, the embedded manifest), and decode what
they read: the strong part must be a Raft snapshot at the manifest's index and term; the
multi-master rows must be ``[key, state]`` with keys strictly in order, and ``verify``
also decodes every state, checking every value's checksum.

``restore`` prepares the data directory of ONE node of a new cluster, as
``recover --force-new-cluster`` does for a survivor: Raft state made of the backup's
snapshot and a configuration entry that makes this node the sole voter
(``raft_storage.restore_offline``), and the multi-master store. It starts as a one-voter
cluster; the other nodes join it as new members, with empty data directories. Everything
is written into a staging directory beside the target, fsynced, and renamed into place
only once the whole archive checked out: a refused restore changes nothing. The target
must be empty (or absent); a directory that holds another cluster's node is refused with
that reason. A directory this very backup was already restored into (its
``restored-from.json`` names the backup) is left as it is, and the restore succeeds:
an init container may run it again after a restart.

A data directory that exists already may be a volume's root (a Kubernetes PVC mounted
at the node's data directory), which nothing can be renamed over and whose parent may
be read-only: it is restored in place. The staging directory is then inside it, and once
complete (its marker written last) its entries are moved up, the marker last; a restore
interrupted while moving finishes the move when run again. A fresh volume's
``lost+found`` does not make a directory "not empty".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .. import raft_storage, replication, statemachine, storage
from ..core.crdt import replica
from ..core.raft import messages as rmsg
from ..core.raft import raft_node as rnode
from . import archive, targets

MARKER = "restored-from.json"
# What a fresh volume's root may hold before anything is written to it.
VOLUME_ENTRIES = frozenset({"lost+found"})
STAGING_PREFIX = ".restoring-"
MAX_MANIFEST = 1024 * 1024
ROWS_PER_COMMIT = 5000


async def load_manifest(target: targets.Target, name: str) -> archive.Manifest:
    """The stored manifest of backup ``name``; ``BackupError`` when there is none."""
    archive.check_name(name)
    key = f"{name}/{targets.MANIFEST}"
    if not await target.exists(key):
        what = ("an incomplete or failed backup (its archive has no manifest)"
                if await target.exists(f"{name}/{targets.ARCHIVE}") else "no such backup")
        raise archive.BackupError(f"{target.url}/{name}: {what}")
    m = archive.Manifest.from_json(await target.read_bytes(key, MAX_MANIFEST))
    if m.name != name or m.archive_size is None:
        raise archive.CorruptArchive(f"{target.url}/{name}: the manifest is of backup "
                                     f"{m.name!r}, or lacks the archive's checksum")
    return m


@dataclass(frozen=True, slots=True)
class Contents:
    manifest: archive.Manifest
    strong_concepts: int
    multimaster_keys: int
    seconds: float


class _Checker:
    """Decodes and checks the parts as they stream by. ``deep`` (``verify``) also decodes
    every multi-master state and checks each value's own checksum; a restore relies on the
    part's SHA-256 for them (they are the bytes the source node stored, having checked
    them), and the restored node decodes them again as it starts."""

    def __init__(self, manifest: archive.Manifest, *, deep: bool = True) -> None:
        self.manifest = manifest
        self.deep = deep
        self._strong = bytearray()
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=128 * 1024 * 1024)
        self._last_key: str | None = None
        # A row that does not decode is reported at the end of the part: if the part's
        # checksum is wrong, that is the clearer reason, and the reader says it first.
        self._bad_row: archive.CorruptArchive | None = None
        self.keys = 0
        self.snapshot: rmsg.Snapshot | None = None
        self.strong_concepts = 0

    def on_event(self, ev: archive.PartStarted | archive.PartData) -> None:
        if isinstance(ev, archive.PartStarted):
            return
        if ev.name == "strong":
            self._strong += ev.data
        elif self._bad_row is None:
            self._unpacker.feed(ev.data)
            rows: list[tuple[str, bytes]] = []
            try:
                for item in self._unpacker:
                    rows.append(self._check_row(item))
            except (archive.CorruptArchive, ValueError, msgpack.UnpackException) as exc:
                self._bad_row = archive.CorruptArchive(f"the multi-master part: {exc}")
                return
            self.on_rows(rows)

    def _check_row(self, item: Any) -> tuple[str, bytes]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], bytes)):
            raise archive.CorruptArchive("a malformed multi-master row")
        key, raw = item
        if self._last_key is not None and key <= self._last_key:
            raise archive.CorruptArchive(f"multi-master key {key!r} out of order")
        try:
            replica.check_key(key)
            if self.deep:
                replica.KeyState.from_wire(msgpack.unpackb(raw, raw=False,
                                                           strict_map_key=False))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise archive.CorruptArchive(f"multi-master key {key!r}: {exc}") from None
        self._last_key = key
        self.keys += 1
        return key, raw

    def on_rows(self, rows: list[tuple[str, bytes]]) -> None:
        """Checked rows of the multi-master store (a restore writes them)."""

    def finish(self) -> None:
        if self._bad_row is not None:
            raise self._bad_row
        if self._unpacker.tell() != sum(p.size for p in self.manifest.parts
                                        if p.name == "multimaster"):
            raise archive.CorruptArchive("the multi-master part ends inside a row")
        m = self.manifest
        try:
            snap = raft_storage.unpack_snapshot_row(bytes(self._strong))
            app, _ = rnode.unpack_snapshot(snap.data)
            state = msgpack.unpackb(app, raw=False, strict_map_key=False)
            self.strong_concepts = len(state["concepts"])
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise archive.CorruptArchive(f"the strong part is not a Raft snapshot: {exc}"
                                         ) from None
        if (snap.index, snap.term) != (m.raft_index, m.raft_term):
            raise archive.CorruptArchive(f"the strong part is at raft index {snap.index}, term "
                                         f"{snap.term}; the manifest says {m.raft_index}, "
                                         f"{m.raft_term}")
        if self.keys != m.part("multimaster").items:
            raise archive.CorruptArchive(f"{self.keys} multi-master keys; the manifest says "
                                         f"{m.part('multimaster').items}")
        self.snapshot = snap


class _Writer(_Checker):
    """Checks as ``_Checker`` does and writes a node's stores into ``staging``."""

    def __init__(self, manifest: archive.Manifest, staging: Path) -> None:
        super().__init__(manifest, deep=False)
        self.staging = staging
        self._store = storage.DurableStore(staging / "replication" / replication.DB_FILE)

    def on_rows(self, rows: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(rows), ROWS_PER_COMMIT):
            self._store.commit_sync([storage.Put(replication.KEYS_NS, k, v)
                                     for k, v in rows[i:i + ROWS_PER_COMMIT]])

    def close(self) -> None:
        self._store.close()


async def _stream(target: targets.Target, manifest: archive.Manifest, sink: _Checker) -> None:
    assert manifest.name is not None
    reader = archive.ArchiveReader(expected=manifest)
    digest, size = hashlib.sha256(), 0

    def consume(chunk: bytes) -> None:  # parsing, decoding and SQLite writes: off the loop
        for ev in reader.feed(chunk):
            sink.on_event(ev)

    async for chunk in target.read_stream(f"{manifest.name}/{targets.ARCHIVE}"):
        digest.update(chunk)
        size += len(chunk)
        await asyncio.to_thread(consume, chunk)
    reader.finish()
    if size != manifest.archive_size or digest.hexdigest() != manifest.archive_sha256:
        raise archive.CorruptArchive(
            f"the archive is {size} bytes with SHA-256 {digest.hexdigest()[:16]}...; the "
            f"manifest says {manifest.archive_size} bytes, {str(manifest.archive_sha256)[:16]}...")
    await asyncio.to_thread(sink.finish)


async def verify(target: targets.Target, name: str) -> Contents:
    started = time.monotonic()
    manifest = await load_manifest(target, name)
    sink = _Checker(manifest)
    await _stream(target, manifest, sink)
    return Contents(manifest, sink.strong_concepts, sink.keys, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Restored:
    contents: Contents
    data_dir: Path
    node_id: str
    already: bool  # this backup was restored into data_dir before: nothing was done


async def restore(target: targets.Target, name: str, data_dir: Path, node_id: str,
                  address: str) -> Restored:
    started = time.monotonic()
    manifest = await load_manifest(target, name)
    staging = await asyncio.to_thread(_prepare, data_dir, manifest)
    if staging is None:
        return Restored(Contents(manifest, 0, 0, 0.0), data_dir, node_id, already=True)
    try:
        sink = await asyncio.to_thread(_Writer, manifest, staging)
        try:
            await _stream(target, manifest, sink)
        finally:
            sink.close()
        await asyncio.to_thread(_publish, sink, data_dir, node_id, address)
    except BaseException:
        # An in-place restore that started moving entries up keeps its staging folder
        # (marker written): the next run finishes the move.
        if staging.parent != data_dir or not (staging / MARKER).exists():
            await asyncio.to_thread(shutil.rmtree, staging, True)
        raise
    contents = Contents(manifest, sink.strong_concepts, sink.keys, time.monotonic() - started)
    return Restored(contents, data_dir, node_id, already=False)


def _prepare(data_dir: Path, manifest: archive.Manifest) -> Path | None:
    """A new staging directory: inside ``data_dir`` when it exists (in place), else beside
    it. None when this backup is there."""
    if data_dir.is_dir():
        _finish_interrupted(data_dir, manifest)
    if _check_target_dir(data_dir, manifest):
        return None
    if data_dir.is_dir():
        staging = data_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    else:
        data_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = (data_dir.absolute().parent
                   / f".{data_dir.name}{STAGING_PREFIX}{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    return staging


def _finish_interrupted(data_dir: Path, manifest: archive.Manifest) -> None:
    """An in-place restore of this backup that stopped while moving its entries up is
    finished; any other staging left inside ``data_dir`` is removed."""
    for leftover in sorted(data_dir.glob(f"{STAGING_PREFIX}*")):
        marker = leftover / MARKER
        backup_id = None
        with contextlib.suppress(ValueError, OSError):
            backup_id = json.loads(marker.read_text()).get("backup_id")
        if backup_id == manifest.backup_id:
            _move_up(leftover, data_dir)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(sink: _Writer, data_dir: Path, node_id: str, address: str) -> None:
    """Raft state and the marker into the staging directory, fsync, rename into place."""
    m, staging = sink.manifest, sink.staging
    assert sink.snapshot is not None
    raft_storage.restore_offline(staging / "raft", sink.snapshot, node_id, address)
    marker = {"backup": m.name, "backup_id": m.backup_id,
              "cluster": {"name": m.cluster_name, "id": m.cluster_id},
              "raft_index": m.raft_index, "node_id": node_id,
              "restored_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _fsync_tree(staging)
    _check_target_dir(data_dir, m)  # nothing appeared there meanwhile
    if staging.parent == data_dir:
        _move_up(staging, data_dir)
        return
    if data_dir.exists():
        data_dir.rmdir()  # empty, as just checked
    os.replace(staging, data_dir)
    _fsync_dir(data_dir.absolute().parent)


def _move_up(staging: Path, data_dir: Path) -> None:
    """Move a complete staging directory's entries into ``data_dir`` (its parent), the
    marker last, so the marker's presence says the move finished."""
    for entry in sorted(staging.iterdir()):
        if entry.name != MARKER:
            os.replace(entry, data_dir / entry.name)
    _fsync_dir(data_dir)
    os.replace(staging / MARKER, data_dir / MARKER)
    staging.rmdir()
    _fsync_dir(data_dir)


def _check_target_dir(data_dir: Path, manifest: archive.Manifest) -> bool:
    """True when this backup was restored into ``data_dir`` already; raises when the
    directory may not be restored into; False when it is empty or absent."""
    if not data_dir.exists():
        return False
    if not data_dir.is_dir():
        raise archive.BackupError(f"{data_dir} is not a directory")
    if not any(e.name not in VOLUME_ENTRIES and not e.name.startswith(STAGING_PREFIX)
               for e in data_dir.iterdir()):
        return False
    marker = data_dir / MARKER
    if marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text()).get("backup_id") == manifest.backup_id:
                return True
    identity = read_identity(data_dir)
    if identity is not None and manifest.cluster_id is not None \
            and identity["id"] != manifest.cluster_id:
        raise archive.BackupError(
            f"{data_dir} holds a node of another cluster ({identity.get('name') or '?'}, id "
            f"{identity['id']}); the backup is of cluster {manifest.cluster_name} (id "
            f"{manifest.cluster_id}): refusing to restore over it; nothing was changed")
    whose = ("a node of this backup's cluster" if identity is not None
             else "data (no cluster this build can identify)")
    raise archive.BackupError(
        f"{data_dir} is not empty: it holds {whose}. A restore writes only into an empty "
        "directory; move it aside first (stop its node). Nothing was changed")


def read_identity(data_dir: Path) -> dict[str, str] | None:
    """The cluster identity in a STOPPED node's data directory, read without writing."""
    db = data_dir / "raft" / "raft.db"
    if not db.is_file():
        return None
    # Without a WAL file the database is whole in raft.db: read it as immutable, which
    # leaves no -shm or -wal file behind. With one (a node killed, or running), read it too.
    wal = db.with_name(db.name + "-wal").exists()
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro{'' if wal else '&immutable=1'}", uri=True)
    except sqlite3.Error:
        return None
    try:
        def get(key: str) -> bytes | None:
            row = conn.execute("SELECT v FROM kv WHERE ns = ? AND k = ?",
                               (raft_storage.NS, key)).fetchone()
            return None if row is None else bytes(row[0])

        raw_hs, raw_snap = get("hard_state"), get("snapshot")
        commit = msgpack.unpackb(raw_hs, raw=False)[2] if raw_hs else 0
        app = b""
        base = 0
        if raw_snap is not None:
            snap = raft_storage.unpack_snapshot_row(raw_snap)
            app, base = rnode.unpack_snapshot(snap.data)[0], snap.index
        commands = []
        for _, v in conn.execute("SELECT k, v FROM kv WHERE ns = ? AND k > ? AND k <= ? "
                                 "ORDER BY k", (raft_storage.NS_LOG, base, commit)):
            _, kind, data, _ = msgpack.unpackb(bytes(v), raw=False)
            if kind == rmsg.NORMAL:
                commands.append(msgpack.unpackb(data, raw=False, strict_map_key=False))
        return statemachine.identity_in(app, commands)
    except (sqlite3.Error, ValueError, TypeError, msgpack.UnpackException):
        return None
    finally:
        conn.close()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(Path(dirpath) / f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
