"""The Raft shell's durable state in a ``DurableStore``: its rows, and reading them back.

``raft/hard_state`` holds [term, vote, commit], ``raft/snapshot`` [index, term, config,
data], and ``raft.log/<index>`` [term, kind, data, request id]. ``RaftConsensus`` writes
each Ready as one batch of these rows; ``force_new_cluster_offline`` rewrites a stopped
node's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack

from . import storage
from .core.raft import messages as rmsg
from .core.raft import raft_node as rnode
from .core.raft import recovery

log = logging.getLogger(__name__)

NS = "raft"
NS_LOG = "raft.log"


def ready_ops(rd: rnode.Ready, disk_last: int) -> tuple[list[storage.Op], int]:
    """The rows that persist ``rd``, and the last log index on disk once they are written
    (``disk_last`` is the one before)."""
    ops: list[storage.Op] = []
    if rd.snapshot is not None:
        # The log rows first: SQLite deletes a range of rows ~50x slower (1.6 s of CPU for
        # 20,000 rows) right after a multi-megabyte row was written into the same table.
        ops.append(storage.DeleteRange(NS_LOG, 0, rd.snapshot.index + 1))
        ops.append(snapshot_row(rd.snapshot))
    if rd.truncate_after is not None:
        ops.append(storage.DeleteRange(NS_LOG, rd.truncate_after + 1, None))
        disk_last = rd.truncate_after
    if rd.entries:
        first = rd.entries[0].index
        if first <= disk_last:  # a leader overwrote our uncommitted suffix
            ops.append(storage.DeleteRange(NS_LOG, first, None))
        ops.extend(entry_row(e) for e in rd.entries)
        disk_last = rd.entries[-1].index
    if rd.hard_state is not None:
        ops.append(hard_state_row(rd.hard_state))
    return ops, disk_last


def entry_row(e: rmsg.Entry) -> storage.Put:
    return storage.Put(NS_LOG, e.index, msgpack.packb([e.term, e.kind, e.data, e.request_id],
                                                       use_bin_type=True))


def snapshot_row(s: rmsg.Snapshot) -> storage.Put:
    return storage.Put(NS, "snapshot", pack_snapshot_row(s))


def pack_snapshot_row(s: rmsg.Snapshot) -> bytes:
    """A snapshot as Raft stores it (and as a backup carries it)."""
    data: bytes = msgpack.packb([s.index, s.term, s.config.encode(), s.data], use_bin_type=True)
    return data


def unpack_snapshot_row(raw: bytes) -> rmsg.Snapshot:
    idx, term, conf, data = msgpack.unpackb(raw, raw=False)
    return rmsg.Snapshot(idx, term, rmsg.ClusterConfig.decode(conf), data)


def hard_state_row(hs: rmsg.HardState) -> storage.Put:
    return storage.Put(NS, "hard_state", msgpack.packb([hs.term, hs.vote, hs.commit]))


def read_durable(store: storage.DurableStore, node_id: str
                 ) -> tuple[rmsg.HardState, rmsg.Snapshot | None, list[rmsg.Entry]]:
    """Hard state, snapshot and log entries as ``store`` holds them."""
    hs = rmsg.HardState()
    snap: rmsg.Snapshot | None = None
    entries: list[rmsg.Entry] = []
    raw = store.get(NS, "hard_state")
    if raw is not None:
        term, vote, commit = msgpack.unpackb(raw, raw=False)
        hs = rmsg.HardState(term, vote, commit)
    raw = store.get(NS, "snapshot")
    if raw is not None:
        snap = unpack_snapshot_row(raw)
    base = snap.index if snap else 0
    for k, v in store.scan(NS_LOG, base + 1):
        assert isinstance(k, int)
        if k != base + 1 + len(entries):
            # A failed write with a later one landing behind it left a hole. Nothing
            # after the hole was acknowledged (a failed node sends nothing more), so
            # it goes, as a crash would have taken it.
            log.warning("raft log of %s has a hole at %d; dropping entries from %d",
                        node_id, base + 1 + len(entries), k)
            store.commit_sync([storage.DeleteRange(NS_LOG, k, None)])
            break
        t, kind, data, rid = msgpack.unpackb(v, raw=False)
        entries.append(rmsg.Entry(t, k, kind, data, rid))
    return hs, snap, entries


def force_new_cluster_offline(storage_path: str | Path, node_id: str,
                              address: str | None = None) -> recovery.Recovered:
    """``force_new_cluster`` on a STOPPED node's ``storage_path`` (the directory holding
    ``raft.db``): one fsynced transaction rewrites the log tail and the hard state. The
    node starts as the sole voter (and leader) of a new cluster."""
    db = Path(storage_path) / "raft.db"
    if not db.is_file():
        raise ValueError(f"no Raft state at {db}")
    store = storage.DurableStore(db)
    try:
        hs, snap, entries = read_durable(store, node_id)
        r = recovery.force_new_cluster(hs, snap, entries, node_id, address)
        store.commit_sync([storage.DeleteRange(NS_LOG, r.truncated_after + 1, None),
                           entry_row(r.config_entry), hard_state_row(r.hard_state)])
    finally:
        store.close()
    return r


def restore_offline(storage_path: str | Path, snapshot: rmsg.Snapshot, node_id: str,
                    address: str | None = None) -> recovery.Recovered:
    """Found a new one-voter cluster in an EMPTY ``storage_path`` from ``snapshot`` (a
    backup's): one fsynced transaction writes the snapshot, the configuration entry that
    makes ``node_id`` the sole voter, and the hard state (``recovery.from_snapshot``)."""
    db = Path(storage_path) / "raft.db"
    if db.exists():
        raise ValueError(f"{db} exists: a restore writes only into an empty directory")
    r = recovery.from_snapshot(snapshot, node_id, address)
    store = storage.DurableStore(db)
    try:
        assert r.snapshot is not None
        store.commit_sync([snapshot_row(r.snapshot), entry_row(r.config_entry),
                           hard_state_row(r.hard_state)])
    finally:
        store.close()
    return r
