"""GossipMesh in one process over real mutual-TLS sockets on 127.0.0.1: the spec's API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import waiting
from conftest import TestPKI
from continuum.federation.distributed import mesh as mesh_mod
from continuum.federation.distributed.mesh import GossipMesh, MeshConfig
from continuum.federation.distributed.transport import peer

FAST = MeshConfig.local(seed=3)


def view(meshes: tuple[GossipMesh, ...]) -> dict[str, dict[str, str]]:
    """Who each mesh sees, and how: what a failed wait shows."""
    return {m.node_id: {p["id"]: p["status"] for p in m.members()} for m in meshes}


async def until(cond: Callable[[], Any], *meshes: GossipMesh, timeout: float = 20.0,
                what: str = "") -> None:
    """Wait for ``cond``; on timeout, show what ``meshes`` saw (or what ``cond`` gave)."""
    await waiting.until(lambda: (cond(), view(meshes)) if meshes else cond(),
                        lambda seen: seen[0] if meshes else seen, timeout=timeout,
                        what=what or "the condition", interval=0.02)


def tls_args(pki: TestPKI, node_id: str) -> dict[str, str]:
    files = pki.node(node_id)
    return {"tls_cert": files.cert, "tls_key": files.key, "tls_ca": files.ca}


@pytest.fixture
async def trio(cluster_pki: TestPKI, tmp_path: Path) -> AsyncIterator[list[GossipMesh]]:
    meshes = [GossipMesh(f"m{i}", FAST, bind_address="127.0.0.1:0",
                         storage_path=str(tmp_path / f"m{i}"), **tls_args(cluster_pki, f"m{i}"))
              for i in range(3)]
    for m in meshes:
        await m.start()
    for m in meshes[1:]:
        assert meshes[0].address is not None
        await m.add_peer("m0", meshes[0].address)
    yield meshes
    for m in meshes:
        await m.stop()


async def test_join_disseminate_and_callbacks(trio: list[GossipMesh]) -> None:
    await until(lambda: all(m.get_stats()["active_peers"] == 2 for m in trio), *trio,
                what="join")
    seen: dict[str, list[tuple[Any, ...]]] = {m.node_id: [] for m in trio}
    for m in trio:
        async def on_update(key: str, value: Any, _n: str = m.node_id) -> None:
            seen[_n].append((key, value))
        m.register_state_update_callback(on_update)
    three_arg: list[tuple[str, str, Any]] = []
    trio[2].register_state_update_callback(lambda n, k, v: three_arg.append((n, k, v)))

    await trio[0].update_state("concepts_count", 1000)
    await until(lambda: all(("concepts_count", 1000) in s for s in seen.values()), *trio,
                what="gossip")
    for m in trio:
        assert (await m.get_state())["m0"] == {"concepts_count": 1000}
    assert three_arg == [("m0", "concepts_count", 1000)]
    stats = trio[0].get_stats()
    assert stats["active_peers"] == 2 and stats["messages_sent"] > 0
    assert stats["members"]["alive"] == 3
    # Once per new value: nothing was delivered twice.
    assert all(s.count(("concepts_count", 1000)) == 1 for s in seen.values())


async def test_probes_answered_one_way_still_measure_each_members_clock(
        trio: list[GossipMesh]) -> None:
    samples: dict[str, list[Any]] = {m.node_id: [] for m in trio}
    for m in trio:
        m.register_clock_sample_callback(
            lambda node, sample, _me=m.node_id: samples[_me].append((node, sample)))
    # Each member probes the others in turn; every ack carries the acker's wall clock.
    await until(lambda: all({n for n, _ in got} == {"m0", "m1", "m2"} - {me}
                            for me, got in samples.items()), *trio, timeout=30,
                what="a clock sample of every other member")
    for got in samples.values():
        for _, sample in got:  # one clock on one machine: no offset beyond the round trip
            assert abs(sample.offset) <= sample.error + 0.05 and sample.error < 1.0


async def test_leave_is_seen_as_left_and_stop_as_dead(trio: list[GossipMesh]) -> None:
    await until(lambda: all(m.get_stats()["active_peers"] == 2 for m in trio), *trio,
                what="join")
    changes: list[tuple[str, str, str]] = []
    trio[0].register_membership_callback(lambda n, s, a: changes.append((n, s, a)))
    await trio[2].leave()
    await until(lambda: ("m2", "left", trio[2].address) in changes, trio[0], what="left")
    await until(lambda: "m2" not in trio[1].alive_peers(), trio[1], what="left at m1")
    await trio[1].stop()
    await until(lambda: any(c[:2] == ("m1", "dead") for c in changes), trio[0], timeout=30,
                what="dead")
    statuses = {m["id"]: m["status"] for m in trio[0].members()}
    assert statuses == {"m0": "alive", "m1": "dead", "m2": "left"}


async def _black_hole() -> tuple[asyncio.Server, str]:
    """A TCP server that accepts and never answers: a link that cannot take a message."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


async def test_transport_drain_waits_for_writes_and_keeps_its_deadline(
        cluster_pki: TestPKI) -> None:
    a_files, b_files = cluster_pki.node("drain-a"), cluster_pki.node("drain-b")
    a = peer.PeerTransport("drain-a", "127.0.0.1:0", a_files)
    b = peer.PeerTransport("drain-b", "127.0.0.1:0", b_files)
    got: list[int] = []
    b.on("t.msg", lambda sender, body: got.append(body["i"]))
    server, hole = await _black_hole()
    await a.start()
    await b.start()
    try:
        assert b.address is not None
        assert await a.drain(0.1)  # nothing queued
        for i in range(50):
            a.send(b.address, "t.msg", {"i": i})
        assert await a.drain(10.0)
        assert a.stats["messages_sent"] == 50  # all written when drain returns
        await until(lambda: len(got) == 50 and got, what="delivery of 50 in order")
        assert got == list(range(50))
        a.send(hole, "t.msg", {"i": -1})
        t0 = time.monotonic()
        assert not await a.drain(0.5)  # the handshake never completes: the deadline holds
        assert time.monotonic() - t0 < 2.0
    finally:
        await a.stop()
        await b.stop()
        server.close()


async def test_leave_waits_for_its_announcement_up_to_the_deadline(
        trio: list[GossipMesh]) -> None:
    await until(lambda: all(m.get_stats()["active_peers"] == 2 for m in trio), *trio,
                what="join")
    leaver = trio[2]
    transport = leaver._transport
    assert transport is not None
    sent = transport.stats["messages_sent"]
    server, hole = await _black_hole()
    try:
        # A member behind a link that cannot take the announcement.
        core = leaver._core
        assert core is not None
        core.adopt(asyncio.get_running_loop().time(), "ghost", hole)
        t0 = time.monotonic()
        await leaver.leave(timeout=1.0)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    # It waited for the stuck link until the deadline, and no longer...
    assert 0.9 <= elapsed < 3.0, elapsed
    # ...while the announcement to the live members was written before it stopped.
    assert transport.stats["messages_sent"] >= sent + 2
    for m in trio[:2]:
        await until(lambda m=m: m.get_stats()["members"]["left"] == 1,  # type: ignore[misc]
                    *trio, what=f"left at {m.node_id}")


async def test_restart_with_storage_raises_incarnation_and_rejoins(
        cluster_pki: TestPKI, tmp_path: Path) -> None:
    a = GossipMesh("r0", FAST, bind_address="127.0.0.1:0", storage_path=str(tmp_path / "r0"),
                   **tls_args(cluster_pki, "r0"))
    b = GossipMesh("r1", FAST, bind_address="127.0.0.1:0", storage_path=str(tmp_path / "r1"),
                   **tls_args(cluster_pki, "r1"))
    await a.start()
    await b.start()
    try:
        assert a.address is not None
        await b.add_peer("r0", a.address)
        # Both ways: r1 must know r0 (and so have stored it) before it stops.
        await until(lambda: "r1" in a.alive_peers() and "r0" in b.alive_peers(), a, b,
                    what="join")
        first = b.incarnation
        await b.stop()
        await until(lambda: "r1" not in a.alive_peers(), a, timeout=30, what="death")
        # Restart from the same storage: a higher incarnation, and peers from disk.
        b2 = GossipMesh("r1", FAST, bind_address="127.0.0.1:0", storage_path=str(tmp_path / "r1"),
                        **tls_args(cluster_pki, "r1"))
        await b2.start()
        try:
            assert b2.incarnation > first
            await until(lambda: "r1" in a.alive_peers(), a, b2, what="rejoin from stored peers")
            assert a.alive_peers()["r1"] == b2.address
        finally:
            await b2.stop()
    finally:
        await a.stop()


async def test_bad_input_is_refused_and_changes_nothing() -> None:
    m = GossipMesh("solo", MeshConfig())
    with pytest.raises(RuntimeError):
        await m.update_state("k", 1)
    await m.start()
    try:
        with pytest.raises(ValueError):
            await m.update_state("k", object())
        with pytest.raises(ValueError):
            await m.add_peer("x", "no-port")
        assert await m.get_state() == {}
        await m.update_state("k", [1, "two"])
        assert await m.get_state() == {"solo": {"k": [1, "two"]}}
    finally:
        await m.stop()
    with pytest.raises(ValueError):
        MeshConfig(fanout=0)
    with pytest.raises(ValueError):
        MeshConfig(probe_timeout_ms=900, probe_interval_ms=500)


def test_presets() -> None:
    assert MeshConfig.lan() == MeshConfig()
    local = MeshConfig.local(fanout=4)
    assert local.fanout == 4 and local.probe_interval_ms < MeshConfig().probe_interval_ms
    spec = MeshConfig(fanout=3, gossip_interval_ms=200, sync_interval_seconds=60.0,
                      message_buffer_size=5000)
    assert spec.swim().message_buffer_size == 5000
    assert mesh_mod.GossipMesh is GossipMesh
