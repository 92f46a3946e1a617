"""Backup and restore with real processes: a 3-node cluster keeps taking strong and default
writes while a backup is taken through the CLI; the backup restores into a new cluster (the
restored node founds it, two empty nodes join) that holds every write acknowledged before
the backup, and whose strong store is the source's at the backup's Raft index."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from continuum.federation.distributed import cli, client, raft_storage
from continuum.federation.distributed.backup import archive, targets
from continuum.federation.distributed.core.raft import raft_node as rnode
from e2e.cluster import Cluster

STRONG_WRITERS = 2
DEFAULT_WRITERS = 3


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "src", 3, "127.0.58.11")
    c.start()
    yield c
    c.stop()


class Writers:
    """Closed-loop writers; each records what was acknowledged, and when."""

    def __init__(self, c: Cluster, leader: str) -> None:
        self.c, self.leader = c, leader
        self.strong: dict[str, tuple[float, int, Any]] = {}  # id -> (acked at, commit, value)
        self.default: dict[str, tuple[float, Any]] = {}
        self.stop = asyncio.Event()

    async def strong_writer(self, w: int) -> None:
        async with client.ApiClient(self.c.url(self.leader), self.c.files, timeout=10) as cl:
            n = 0
            while not self.stop.is_set():
                cid, value = f"s{w}-{n:05d}", {"w": w, "n": n}
                r = await cl.put(cid, value, strong=True, idempotency_key=cid)
                self.strong[cid] = (time.monotonic(), int(r["commit_index"]), value)
                n += 1

    async def default_writer(self, w: int) -> None:
        node = self.c.nodes[w % len(self.c.nodes)].node_id  # every node takes some
        async with client.ApiClient(self.c.url(node), self.c.files, timeout=10) as cl:
            n = 0
            while not self.stop.is_set():
                cid, value = f"d{w}-{n:05d}", {"w": w, "n": n, "on": node}
                await cl.put(cid, value)
                self.default[cid] = (time.monotonic(), value)
                n += 1

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.strong_writer(w)) for w in range(STRONG_WRITERS)] + [
            asyncio.create_task(self.default_writer(w)) for w in range(DEFAULT_WRITERS)]


async def _all_concepts(c: Cluster, node: str) -> dict[str, Any]:
    """Every concept a node serves, by id, with its consistency."""
    out: dict[str, Any] = {}
    async with client.ApiClient(c.url(node), c.files, timeout=10) as cl:
        after: str | None = None
        while True:
            page = await cl.call("GET", "/v1/concepts",
                                 params={"limit": "1000", **({"after": after} if after else {})})
            for cid in page["items"]:
                got = await cl.get(cid)
                out[cid] = (got["consistency"], got["value"])
            after = page["next"]
            if after is None:
                return out


def _strong_part(bk: Path, name: str) -> tuple[int, dict[str, Any]]:
    """The strong store the archive carries: the source's at the backup's index."""
    reader = archive.ArchiveReader()
    strong = bytearray()
    for ev in reader.feed((bk / name / targets.ARCHIVE).read_bytes()):
        if isinstance(ev, archive.PartData) and ev.name == "strong":
            strong += ev.data
    reader.finish()
    snap = raft_storage.unpack_snapshot_row(bytes(strong))
    state = msgpack.unpackb(rnode.unpack_snapshot(snap.data)[0], raw=False)
    return snap.index, state["concepts"]


async def test_an_online_backup_restores_into_a_new_cluster_with_every_acknowledged_write(
        source: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = source
    loop = asyncio.get_running_loop()
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")

    async def named() -> str | None:  # the first leader names the cluster once
        return (await c.call(leader, lambda cl: cl.status()))["cluster_id"]  # type: ignore[no-any-return]
    await c.wait_for(named, 30, "the cluster's id committed")
    writers = Writers(c, leader)
    tasks = writers.start()

    async def enough() -> bool:
        return len(writers.strong) >= 100 and len(writers.default) >= 150
    await c.wait_for(enough, 60, "writes before the backup")

    bk = tmp_path / "backups"
    began = time.monotonic()
    rc = await loop.run_in_executor(None, cli.main, [
        "backup", "create", "--data-dir", str(c.data_dir), "--to", str(bk), "--name", "online",
        "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    stored = json.loads(out.out)
    index = stored["raft"]["index"]
    took = time.monotonic() - began
    before = len(writers.strong)
    await c.wait_for(lambda: _async(len(writers.strong) > before + 20), 30, "writes after")
    writers.stop.set()
    await asyncio.gather(*tasks)  # every writer ran without an error throughout

    assert stored["node_id"] != leader  # a caught-up follower served it
    assert stored["cluster"]["id"] == (await c.call(leader, lambda cl: cl.status()))["cluster_id"]
    assert stored["extra"]["multimaster_unreachable"] == []
    acked_during = [k for k, (t, _, _) in writers.strong.items() if began <= t <= began + took]
    assert acked_during, "the cluster took strong writes while the backup ran"
    rc = await loop.run_in_executor(None, cli.main, ["backup", "verify", f"{bk}/online"])
    assert rc == 0, capsys.readouterr().err

    # The restored node founds a new cluster on other addresses; two empty nodes join it.
    dst = Cluster(tmp_path / "dst", 3, "127.0.59.11")
    rc = await loop.run_in_executor(None, cli.main, [
        "restore", "--from", f"{bk}/online", "--data-dir", str(dst.data_dir / "node-1" / "data"),
        "--node-id", "node-1", "--address", dst.node("node-1").peer_address])
    assert rc == 0, capsys.readouterr().err
    try:
        dst.start()
        assert dst.local.joining == ["node-2", "node-3"]
        await dst.wait_for(lambda: dst.agreed_leader(["node-1"]), 60, "the restored leader")
        await dst.local.grow()
        await dst.wait_for(lambda: dst.agreed_leader(), 60, "a 3-node restored cluster")

        snap_index, at_index = _strong_part(bk, "online")
        assert snap_index == index
        restored = await _all_concepts(dst, "node-1")
        strong = {k: v for k, (kind, v) in restored.items() if kind == "strong"}
        # The strong store is the source's at the backup's index, exactly ...
        assert strong == at_index
        # ... which holds every strong write acknowledged before the backup was asked for,
        # and every one whose commit index (at acknowledgement) was within the backup's.
        for cid, (t, commit, value) in writers.strong.items():
            if t < began or commit <= index:
                assert strong.get(cid) == value, cid
        # One index, one moment: each sequential writer's writes form a prefix.
        for w in range(STRONG_WRITERS):
            ns = sorted(int(k.split("-")[1]) for k in strong if k.startswith(f"s{w}-"))
            assert ns == list(range(len(ns))), f"writer {w}: not a prefix"
        # Every default write acknowledged by any node before the backup was asked for.
        for cid, (t, value) in writers.default.items():
            if t < began:
                assert restored.get(cid) == ("eventual", value), cid

        async def joiner_has_all() -> bool:
            return await _all_concepts(dst, "node-3") == restored
        await dst.wait_for(joiner_has_all, 60, "a joined node to hold the restored data")
        # The restored cluster is a cluster: it takes writes of both kinds.
        await dst.call("node-1", lambda cl: cl.put("after", {"ok": 1}, strong=True))
        await dst.call("node-2", lambda cl: cl.put("after-mm", {"ok": 2}))
        st = await dst.call("node-1", lambda cl: cl.status())
        assert st["cluster_id"] == stored["cluster"]["id"]  # the same lineage
    finally:
        dst.stop()

    # Damage found later is refused, and the restore of it changes nothing.
    path = bk / "online" / targets.ARCHIVE
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    capsys.readouterr()
    rc = await loop.run_in_executor(None, cli.main, ["backup", "verify", f"{bk}/online"])
    assert rc == 1 and "corrupt" in capsys.readouterr().err
    rc = await loop.run_in_executor(None, cli.main, [
        "restore", "--from", f"{bk}/online", "--data-dir", str(tmp_path / "again"),
        "--node-id", "node-1", "--address", "127.0.59.11:7000"])
    assert rc == 1 and not (tmp_path / "again").exists()


async def _async(value: bool) -> bool:
    return value
