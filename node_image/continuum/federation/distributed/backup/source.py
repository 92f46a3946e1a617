"""The node's side of a backup: ``POST /v1/backup`` streams one archive (``archive``).

What the archive holds, and why it is consistent while the cluster keeps serving:

* the strong store as of a committed Raft index: this node first learns the leader's
  ReadIndex (every write acknowledged before the call is at or below it), waits until it
  has applied that far (else it refuses, ``not_caught_up``), then captures the state
  machine inside the Raft loop between two Readies, packed as a Raft snapshot
  (``RaftConsensus.capture_snapshot``), the same bytes log compaction stores;
* this node's multi-master store: first an anti-entropy round with every peer it can
  reach (so a default write acknowledged by any of them before the call is here too),
  then every pending change flushed to disk, then one SQLite read transaction copies the
  rows as of that moment while writes go on.

Refusals are raised before the stream starts, as the package's errors (the API answers
them): 409 ``not_caught_up``, ``busy`` (one backup at a time per node), ``empty``
(nothing committed yet), ``not_a_member``, ``no_store``; 503 ``no_leader``; 400 for a
bad query. Once the stream has started, a failure ends it with an ``X`` record
(or a cut connection): the archive has no manifest, and a client refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import msgpack
from aiohttp import web

from .. import consensus, errors, membership, raft_storage, replication, statemachine, storage
from ..core.raft import messages as rmsg
from ..transport import peer
from . import archive

log = logging.getLogger(__name__)

READ_INDEX_KIND = "backup.read_index"
CONTENT_TYPE = "application/vnd.continuum.backup"
CATCH_UP_SECONDS = 5.0  # how long a node that lags may take to catch up before refusing
MAX_CATCH_UP_SECONDS = 300.0
SYNC_SECONDS = 10.0  # per peer, for the anti-entropy round before the copy
CHUNK_BYTES = 1024 * 1024
ROWS_PER_FETCH = 2000


def _version() -> str:
    try:
        return metadata.version("continuum-federation")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class BackupSource:
    """Serves backups of one node; the leader's side answers followers' ReadIndex asks."""

    def __init__(self, node_id: str, cluster_name: str, raft: consensus.RaftConsensus,
                 state: statemachine.FederationStateMachine,
                 replicator: replication.MultiMasterReplicator, members: membership.Membership,
                 transport: peer.PeerTransport) -> None:
        self._node_id = node_id
        self._cluster_name = cluster_name
        self._raft = raft
        self._state = state
        self._replicator = replicator
        self._membership = members
        self._transport = transport
        self._lock = asyncio.Lock()
        self.stats = {"backups_streamed": 0, "backups_refused": 0, "backups_failed": 0,
                      "backup_bytes": 0}
        transport.on(READ_INDEX_KIND, self._on_read_index)

    # -- the HTTP call -----------------------------------------------------------------------

    async def respond(self, request: web.Request) -> web.StreamResponse:
        try:
            wait = _seconds(request.query.get("wait"), CATCH_UP_SECONDS, MAX_CATCH_UP_SECONDS)
            sync = request.query.get("sync", "true") != "false"
            rate = _rate(request.query.get("max_rate"))
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None
        if self._lock.locked():
            self.stats["backups_refused"] += 1
            raise errors.Conflict("a backup of this node is already running", code="busy")
        async with self._lock:
            try:
                capture = await self._capture(wait, sync)
            except errors.FederationError as exc:
                self.stats["backups_refused"] += 1
                log.info("backup refused: %s", exc)
                raise
            try:
                return await self._stream(request, capture, rate)
            finally:
                capture.close()

    async def _capture(self, wait: float, sync: bool) -> _Capture:
        raft = self._raft
        if not raft.running or self._membership.formation_state != "member":
            raise errors.Conflict(f"{self._node_id} is not a member of a cluster yet: nothing "
                                  "to back up", code="not_a_member")
        index = await self._committed_index()
        try:
            await raft.wait_applied(index, wait)
        except TimeoutError:
            applied = raft.get_stats()["last_applied"]
            raise errors.Conflict(
                f"{self._node_id} has applied {applied} of the {index} entries the "
                f"leader has committed and did not catch up within {wait:g} s: back up "
                "from another node, or retry with a longer ?wait=",
                code="not_caught_up") from None
        # Immutable once set: read before the capture, it is in the snapshot too.
        identity = self._state.identity
        snap = await raft.capture_snapshot(self._state.frozen)
        if snap is None:
            raise errors.Conflict("nothing is committed yet: nothing to back up", code="empty")
        synced, unreachable = await self._sync_multimaster() if sync else ([], [])
        repl = self._replicator
        await repl.flush()
        path = repl.store_path
        if path is None:
            raise errors.Conflict("this node keeps its multi-master store in memory only",
                                  code="no_store")
        reader = await asyncio.to_thread(storage.ConsistentReader, path, replication.KEYS_NS)
        fields: dict[str, Any] = {
            "backup_id": uuid.uuid4().hex,
            "cluster_name": self._cluster_name,
            "cluster_id": identity["id"] if identity else None,
            "node_id": self._node_id,
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "raft_index": snap.index, "raft_term": snap.term,
            "members": tuple(sorted(snap.config.members)),
            "software_version": _version(),
            "extra": {"multimaster_synced_with": synced,
                      "multimaster_unreachable": unreachable},
        }
        return _Capture(snap, reader, fields)

    async def _committed_index(self) -> int:
        """The leader's ReadIndex: every write acknowledged before this call is below it."""
        raft = self._raft
        leader, address = raft.leader_id, raft.leader_address()
        if leader is None:
            raise errors.Unavailable(f"{self._node_id} knows no leader: it cannot tell whether "
                                     "it is caught up; retry", code="no_leader")
        try:
            if raft.is_leader:
                return await raft.read_index()
            if address is None:
                raise errors.Unavailable(f"{self._node_id} does not know where {leader} "
                                         "listens; retry", code="no_leader")
            reply = await self._transport.request(address, READ_INDEX_KIND, {},
                                                  timeout=10.0, expect=leader)
        except (errors.NotLeader, errors.Unavailable, TimeoutError, peer.PeerError) as exc:
            raise errors.Unavailable(f"the leader did not confirm its commit index ({exc}); "
                                     "retry", code="no_leader") from None
        index = reply.get("index")
        if not reply.get("ok") or isinstance(index, bool) or not isinstance(index, int):
            raise errors.Unavailable("the node this one follows is no longer the leader; retry",
                                     code="no_leader")
        return index

    async def _on_read_index(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        raft = self._raft
        if not raft.is_leader:
            return {"ok": False}
        try:
            return {"ok": True, "index": await raft.read_index()}
        except Exception as exc:  # lost leadership meanwhile, or stopping
            log.debug("read index for %s's backup failed: %s", sender, exc)
            return {"ok": False}

    async def _sync_multimaster(self) -> tuple[list[str], list[str]]:
        repl = self._replicator
        synced, unreachable = [], []
        for peer_id in sorted(repl.peers):
            try:
                async with asyncio.timeout(SYNC_SECONDS):
                    await repl.sync_with(peer_id)
                synced.append(peer_id)
            except (TimeoutError, peer.PeerError, ValueError) as exc:
                log.warning("backup: no anti-entropy round with %s (%s): writes only it holds "
                            "are not in this backup", peer_id, exc)
                unreachable.append(peer_id)
        return synced, unreachable

    # -- the stream --------------------------------------------------------------------------

    async def _stream(self, request: web.Request, capture: _Capture, rate: float | None
                      ) -> web.StreamResponse:
        f = capture.fields
        response = web.StreamResponse(headers={
            "Content-Type": CONTENT_TYPE,
            "Continuum-Backup-Cluster": str(f["cluster_name"]),
            "Continuum-Backup-Raft-Index": str(f["raft_index"]),
            "Continuum-Backup-Created": str(f["created_at"]),
            "Continuum-Backup-Node": str(f["node_id"]),
        })
        await response.prepare(request)
        started, sent = time.monotonic(), 0
        try:
            async for chunk in capture.records():
                await response.write(chunk)
                sent += len(chunk)
                if rate is not None:  # paced: the backup takes longer, serving keeps more
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except asyncio.CancelledError:
            self.stats["backups_failed"] += 1
            raise
        except ConnectionError:
            self.stats["backups_failed"] += 1
            log.warning("backup: the client went away after %d bytes", sent)
            return response
        except Exception as exc:
            self.stats["backups_failed"] += 1
            log.exception("backup failed after %d bytes", sent)
            with contextlib.suppress(Exception):
                await response.write(archive.ArchiveWriter.failed(str(exc)))
                await response.write_eof()
            return response
        await response.write_eof()
        self.stats["backups_streamed"] += 1
        self.stats["backup_bytes"] += sent
        log.info("backup at raft index %d: %d bytes in %.2f s", f["raft_index"], sent,
                 time.monotonic() - started)
        return response


class _Capture:
    """What one backup copies: the strong snapshot and an open read of the replica store."""

    def __init__(self, snap: rmsg.Snapshot, reader: storage.ConsistentReader,
                 fields: dict[str, Any]) -> None:
        self.snap = snap
        self.reader = reader
        self.fields = fields

    def close(self) -> None:
        self.reader.close()

    async def records(self) -> AsyncIterator[bytes]:
        w = archive.ArchiveWriter()
        yield w.header() + w.start_part("strong")
        for rec in w.data(raft_storage.pack_snapshot_row(self.snap), items=1):
            yield rec
        self.snap = rmsg.Snapshot(self.snap.index, self.snap.term, self.snap.config, b"")
        yield w.start_part("multimaster")
        while True:  # SQLite reads and packing off the event loop
            chunk, count = await asyncio.to_thread(_pack_rows, self.reader)
            if not count:
                break
            for rec in w.data(chunk, items=count):
                yield rec
        _, closing = w.finish(self.fields)
        yield closing


def _pack_rows(reader: storage.ConsistentReader) -> tuple[bytes, int]:
    """About ``CHUNK_BYTES`` of ``[key, state]`` pairs, and how many."""
    packer = msgpack.Packer(use_bin_type=True)
    out = bytearray()
    count = 0
    while len(out) < CHUNK_BYTES:
        rows = reader.fetch(ROWS_PER_FETCH)
        if not rows:
            break
        for key, value in rows:
            out += packer.pack([key, value])
        count += len(rows)
    return bytes(out), count


def _rate(raw: str | None) -> float | None:
    """``max_rate`` in MiB/s as bytes per second (None: as fast as it goes)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"max_rate must be a number of MiB/s, got {raw!r}") from None
    if not 0 < value < 1e6:
        raise ValueError("max_rate must be a positive number of MiB/s")
    return value * 1024 * 1024


def _seconds(raw: str | None, default: float, limit: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"wait must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= limit:
        raise ValueError(f"wait must be between 0 and {limit:g} seconds")
    return value
