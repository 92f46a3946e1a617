"""The node's backup call over HTTP, on a node of fakes: what it streams, and each refusal
(answered before any byte of an archive, as a JSON error)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from continuum.federation.distributed import api, replication, statemachine, storage
from continuum.federation.distributed.backup import archive, source
from continuum.federation.distributed.core.raft import messages as rmsg
from continuum.federation.distributed.core.raft import raft_node as rnode
from continuum.federation.distributed.transport import tls
from unit.backup import archives


class _Raft:
    def __init__(self, *, leader: bool = False, leader_id: str | None = "n1",
                 lag: bool = False, empty: bool = False, running: bool = True) -> None:
        self.is_leader, self.leader_id, self.lag, self.empty = leader, leader_id, lag, empty
        self.running = running
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.waited: list[tuple[int, float]] = []

    def leader_address(self) -> str | None:
        return "127.0.0.1:1" if self.leader_id else None

    async def read_index(self) -> int:
        return 9

    async def wait_applied(self, index: int, timeout: float) -> None:
        self.waited.append((index, timeout))
        self.waiting.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.lag:
            raise TimeoutError

    def get_stats(self) -> dict[str, Any]:
        return {"last_applied": 4}

    async def capture_snapshot(self, freeze: Any = None) -> rmsg.Snapshot | None:
        if self.empty:
            return None
        conf = rmsg.ClusterConfig(frozenset({"n1", "n2"}), frozenset({"n3"}), {})
        return rmsg.Snapshot(9, 2, conf, rnode.pack_snapshot(
            archives.strong_state({"s": 1}), []))


class _Transport:
    def __init__(self, index: int | None) -> None:
        self.index = index
        self.handlers: dict[str, Any] = {}

    def on(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    async def request(self, address: str, kind: str, body: dict[str, Any], *,
                      timeout: float, expect: str) -> dict[str, Any]:
        assert kind == source.READ_INDEX_KIND and expect == "n1"
        return {"ok": self.index is not None, "index": self.index}


class _Membership:
    formation_state = "member"


class _Metrics:
    def observe_request(self, name: str, status: int, seconds: float) -> None:
        pass


class _Node:
    """What the backup source is handed, and the source itself."""

    def __init__(self, raft: _Raft, repl: replication.MultiMasterReplicator,
                 leader_index: int | None = 9) -> None:
        self.state = statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)
        self.state.identity = {"id": archives.CLUSTER_ID, "name": "demo"}
        self.transport = _Transport(leader_index)
        self.backup = source.BackupSource(
            "n2", "demo", raft, self.state, repl, _Membership(),  # type: ignore[arg-type]
            self.transport)  # type: ignore[arg-type]


ADMIN = tls.Identity(uris=frozenset({tls.role_uri("admin")}))


@contextlib.asynccontextmanager
async def _serving(tmp: Path, raft: _Raft, leader_index: int | None = 9
                   ) -> AsyncIterator[tuple[TestClient[Any, Any], _Node]]:
    repl = replication.MultiMasterReplicator("n2", storage_path=tmp, fsync=False)
    # More than one fetch of rows; written together, so they share commits.
    await asyncio.gather(*(repl.write(f"k{i:05d}", {"i": i}) for i in range(2500)))
    node = _Node(raft, repl, leader_index)
    app = web.Application()
    api.mount(app, api.Services("n2", None, None, None, node.backup, dict,  # type: ignore[arg-type]
                                _Metrics(), is_revoked=lambda i: False,
                                identity_of=lambda r: ADMIN))
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client, node
    finally:
        await repl.stop()


async def test_a_caught_up_follower_streams_both_stores_with_their_manifest(
        tmp_path: Path) -> None:
    raft = _Raft()
    async with _serving(tmp_path, raft) as (client, node):
        resp = await client.post("/v1/backup?wait=2")
        assert resp.status == 200 and resp.headers["Continuum-Backup-Raft-Index"] == "9"
        reader = archive.ArchiveReader()
        sizes: dict[str, int] = {}
        async for chunk in resp.content.iter_chunked(65536):
            for ev in reader.feed(chunk):
                if isinstance(ev, archive.PartData):
                    sizes[ev.name] = sizes.get(ev.name, 0) + len(ev.data)
        m = reader.finish()
    assert raft.waited == [(9, 2.0)]  # the leader's read index, the caller's patience
    assert (m.raft_index, m.raft_term, m.members) == (9, 2, ("n1", "n2", "n3"))
    assert (m.cluster_name, m.cluster_id, m.node_id) == ("demo", archives.CLUSTER_ID, "n2")
    assert m.part("multimaster").items == 2500 and sizes == {p.name: p.size for p in m.parts}
    assert node.backup.stats["backups_streamed"] == 1


async def test_refusals_come_before_the_stream_as_json(tmp_path: Path) -> None:
    cases = [
        (_Raft(lag=True), 9, 409, "not_caught_up", "applied 4 of the 9"),
        (_Raft(leader_id=None), 9, 503, "no_leader", "knows no leader"),
        (_Raft(), None, 503, "no_leader", "no longer the leader"),
        (_Raft(empty=True), 9, 409, "empty", "nothing is committed"),
        (_Raft(running=False), 9, 409, "not_a_member", "not a member"),
    ]
    for n, (raft, leader_index, status, code, text) in enumerate(cases):
        async with _serving(tmp_path / str(n), raft, leader_index) as (client, node):
            resp = await client.post("/v1/backup?wait=0.1")
            body = await resp.json()
            assert (resp.status, body["error"]) == (status, code), body
            assert text in body["message"]
            assert node.backup.stats["backups_refused"] == 1
    async with _serving(tmp_path / "bad", _Raft()) as (client, _):
        resp = await client.post("/v1/backup?wait=-1")
        assert resp.status == 400


async def test_one_backup_at_a_time_per_node(tmp_path: Path) -> None:
    raft = _Raft()
    raft.gate = asyncio.Event()
    async with _serving(tmp_path, raft) as (client, _):
        first = asyncio.create_task(client.post("/v1/backup"))
        await raft.waiting.wait()
        second = await client.post("/v1/backup")
        assert second.status == 409 and (await second.json())["error"] == "busy"
        raft.gate.set()
        resp = await first
        assert resp.status == 200
        await resp.read()


async def test_the_leader_answers_a_followers_read_index_only_while_it_leads(
        tmp_path: Path) -> None:
    raft = _Raft(leader=True)
    async with _serving(tmp_path, raft) as (_, node):
        handler = node.transport.handlers[source.READ_INDEX_KIND]
        assert await handler("n3", {}) == {"ok": True, "index": 9}
        raft.is_leader = False
        assert await handler("n3", {}) == {"ok": False}


def test_a_consistent_read_does_not_see_later_writes(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "db")
    store.commit_sync([storage.Put("ns", f"k{i}", b"v") for i in range(5)])
    reader = storage.ConsistentReader(tmp_path / "db", "ns")
    try:
        store.commit_sync([storage.Put("ns", "k9", b"later"), storage.Delete("ns", "k0")])
        assert [k for k, _ in reader.fetch(100)] == [f"k{i}" for i in range(5)]
    finally:
        reader.close()
        store.close()


async def test_a_captured_snapshot_is_the_state_at_its_index_packed_as_compaction_packs_it(
        ) -> None:
    from continuum.federation.distributed import consensus

    sm = statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)
    raft = consensus.RaftConsensus("solo", ["solo"], election_timeout_ms=(50, 100),
                                   heartbeat_interval_ms=10)
    raft.register_apply_callback(sm.apply)
    raft.register_snapshot_callbacks(sm.snapshot, sm.restore)
    await raft.start()
    try:
        for i in range(50):
            assert await raft.append_entry({"type": "concept.put", "id": f"c{i}", "value": i},
                                           request_id=f"r{i}")
        plain = await raft.capture_snapshot()
        frozen = await raft.capture_snapshot(sm.frozen)
        assert plain is not None and plain == frozen
        assert plain.index == raft.get_stats()["last_applied"]
        assert await raft.append_entry({"type": "concept.put", "id": "later", "value": 1})
        app, requests = rnode.unpack_snapshot(plain.data)
        back = statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)
        back.restore(app)
        assert len(back.concepts) == 50 and "later" not in back.concepts
        assert ["r49", plain.index] in requests.rows()
    finally:
        await raft.stop()


async def test_a_paced_backup_streams_no_faster_than_asked(tmp_path: Path) -> None:
    async with _serving(tmp_path, _Raft()) as (client, _):
        assert (await client.post("/v1/backup?max_rate=0")).status == 400
        started = asyncio.get_running_loop().time()
        resp = await client.post("/v1/backup?max_rate=0.5")
        body = await resp.read()
        took = asyncio.get_running_loop().time() - started
    assert resp.status == 200 and len(body) > 100_000
    assert took >= len(body) / (0.5 * 1024 * 1024) * 0.9
