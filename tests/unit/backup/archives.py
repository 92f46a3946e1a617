"""Real backup archives made without a cluster: the state machine, CRDT replica and archive
writer a node uses, fed with the concepts a test names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from continuum.federation.distributed import raft_storage, statemachine
from continuum.federation.distributed.backup import archive, targets
from continuum.federation.distributed.core.crdt import replica, resolver
from continuum.federation.distributed.core.raft import messages as rmsg
from continuum.federation.distributed.core.raft import raft_node as rnode

CLUSTER_ID = "0123456789abcdef0123456789abcdef"


def strong_state(concepts: dict[str, Any], cluster_id: str | None = CLUSTER_ID) -> bytes:
    sm = statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)
    if cluster_id is not None:
        sm.apply(statemachine.identity_command("src", cluster_id))
    for cid, value in concepts.items():
        sm.apply({"type": "concept.put", "id": cid, "value": value})
    return sm.snapshot()


def multimaster_rows(values: dict[str, Any], node_id: str = "node-2") -> list[tuple[str, bytes]]:
    r = replica.Replica(node_id, resolver.ConflictResolver(
        resolver.ConflictResolutionStrategy.LAST_WRITE_WINS))
    for n, (key, value) in enumerate(values.items()):
        r.write(key, value, 1_800_000_000.0 + n)
    return [(k, msgpack.packb(r.states[k].to_wire(), use_bin_type=True))
            for k in sorted(r.states)]


def build(strong: dict[str, Any], mm: dict[str, Any], *, index: int = 42, term: int = 3,
          cluster_id: str | None = CLUSTER_ID, chunk_rows: int = 500
          ) -> tuple[bytes, archive.Manifest]:
    """An archive's bytes and its embedded manifest."""
    conf = rmsg.ClusterConfig(frozenset({"node-1", "node-2", "node-3"}), frozenset(),
                              {"node-1": "10.0.0.1:7000"})
    snap = rmsg.Snapshot(index, term, conf, rnode.pack_snapshot(
        strong_state(strong, cluster_id), [["req-1", 7]]))
    w = archive.ArchiveWriter()
    out = bytearray(w.header() + w.start_part("strong"))
    for rec in w.data(raft_storage.pack_snapshot_row(snap), items=1):
        out += rec
    out += w.start_part("multimaster")
    rows = multimaster_rows(mm)
    for i in range(0, len(rows), chunk_rows):
        batch = rows[i:i + chunk_rows]
        packed = b"".join(msgpack.packb([k, v], use_bin_type=True) for k, v in batch)
        for rec in w.data(packed, items=len(batch)):
            out += rec
    manifest, closing = w.finish({
        "backup_id": f"id-{index}-{len(strong)}-{len(mm)}", "cluster_name": "src",
        "cluster_id": cluster_id, "node_id": "node-2", "created_at": "2026-12-01T10:00:00.0Z",
        "raft_index": index, "raft_term": term, "members": ("node-1", "node-2", "node-3"),
        "software_version": "test"})
    return bytes(out + closing), manifest


async def store(root: Path, name: str, strong: dict[str, Any], mm: dict[str, Any],
                **kw: Any) -> archive.Manifest:
    """A complete backup ``name`` in the directory target ``root``."""
    data, embedded = build(strong, mm, **kw)
    target = targets.DirectoryTarget(root)
    stored = await target.write_bytes(f"{name}/{targets.ARCHIVE}", data)
    m = embedded.stored(name, stored.size, stored.sha256)
    await target.write_bytes(f"{name}/{targets.MANIFEST}", m.to_json())
    return m
