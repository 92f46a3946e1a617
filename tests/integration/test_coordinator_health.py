"""Coordinator health checks against real nodes: PeerTransports on 127.0.6.x over mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from conftest import TestPKI
from continuum.federation.distributed.coordinator import (
    FederationCoordinator,
    LoadBalance,
    NodeInfo,
    NodeStatus,
)
from continuum.federation.distributed.transport import peer

FAST = LoadBalance(algorithm="round_robin", health_check_interval=0.2, unhealthy_threshold=3,
                   healthy_threshold=2, probe_timeout=2.0, seed=1)


@dataclass
class Nodes:
    pki: TestPKI
    running: dict[str, peer.PeerTransport] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    async def start(self, node_id: str, ip: str) -> str:
        port = self.addresses.get(node_id, f"{ip}:0").rpartition(":")[2]
        t = peer.PeerTransport(node_id, f"{ip}:{port}", self.pki.node(node_id, ips=(ip,)))
        await t.start()
        assert t.address is not None
        self.running[node_id] = t
        self.addresses[node_id] = t.address
        return t.address

    async def stop(self, node_id: str) -> None:
        await self.running.pop(node_id).stop()


@pytest.fixture
async def nodes(cluster_pki: TestPKI) -> AsyncIterator[Nodes]:
    n = Nodes(cluster_pki)
    yield n
    for nid in list(n.running):
        await n.stop(nid)


@pytest.fixture
async def co(cluster_pki: TestPKI) -> AsyncIterator[FederationCoordinator]:
    files = cluster_pki.node("coordinator-1", ips=("127.0.6.1",))
    c = FederationCoordinator("coordinator-1", "127.0.6.1:0", files.cert, files.key, files.ca,
                              load_balance=FAST)
    await c.start()
    yield c
    await c.stop()


async def wait_status(co: FederationCoordinator, node_id: str, status: NodeStatus,
                      timeout: float = 30.0) -> NodeInfo:
    """Await the status change event (or return at once if the node is already there)."""
    reached = asyncio.Event()

    def listener(info: NodeInfo, old: NodeStatus) -> None:
        if info.node_id == node_id and info.status is status:
            reached.set()

    co.register_status_callback(listener)
    try:
        current = await co.get_node(node_id)
        if current is None or current.status is not status:
            await asyncio.wait_for(reached.wait(), timeout)
    finally:
        co._listeners.remove(listener)
    info = await co.get_node(node_id)
    assert info is not None
    return info


async def test_unresponsive_node_is_evicted_then_recovers(
    co: FederationCoordinator, nodes: Nodes
) -> None:
    for i, nid in enumerate(("node-1", "node-2", "node-3"), start=2):
        await co.register_node(nid, await nodes.start(nid, f"127.0.6.{i}"))
    for nid in ("node-1", "node-2", "node-3"):
        info = await wait_status(co, nid, NodeStatus.HEALTHY)
        assert info.probe_rtt_ms is not None  # a real probe answered
    await nodes.stop("node-2")
    info = await wait_status(co, "node-2", NodeStatus.UNHEALTHY)
    assert info.consecutive_failures >= FAST.unhealthy_threshold
    picks = [(await co.select_node()) for _ in range(60)]
    assert {p.node_id for p in picks if p is not None} == {"node-1", "node-3"}
    stats = co.get_stats()
    assert stats["failovers"] == 1 and stats["nodes_by_status"]["unhealthy"] == 1
    assert 0.0 < stats["success_rate"] < 1.0
    # The node comes back on the same address: it is selected again after healthy_threshold.
    await nodes.start("node-2", "127.0.6.3")
    info = await wait_status(co, "node-2", NodeStatus.HEALTHY)
    assert info.consecutive_successes >= FAST.healthy_threshold
    picks = [(await co.select_node()) for _ in range(6)]
    assert {p.node_id for p in picks if p is not None} == {"node-1", "node-2", "node-3"}
    assert co.get_stats()["recoveries"] == 1


async def test_a_node_answering_with_another_identity_is_never_healthy(
    co: FederationCoordinator, nodes: Nodes
) -> None:
    a1 = await nodes.start("node-1", "127.0.6.2")
    await co.register_node("node-1", a1)
    await co.register_node("node-2", await nodes.start("node-2", "127.0.6.3"))
    await co.register_node("node-3", await nodes.start("node-3", "127.0.6.4"))
    # node-9 claims node-1's address; the certificate there speaks for node-1 only.
    await co.register_node("node-9", a1)
    info = await wait_status(co, "node-9", NodeStatus.UNHEALTHY)
    assert info.probe_rtt_ms is None
    assert (await co.get_node("node-1")).status is NodeStatus.HEALTHY  # type: ignore[union-attr]


async def test_coordinator_cut_off_from_everyone_evicts_nobody(
    cluster_pki: TestPKI, nodes: Nodes
) -> None:
    # Rounds are driven by hand here so that the restart below is seen all at once.
    files = cluster_pki.node("coordinator-2", ips=("127.0.6.1",))
    manual = LoadBalance(health_check_interval=3600.0, unhealthy_threshold=3, seed=1)
    co = FederationCoordinator("coordinator-2", None, files.cert, files.key, files.ca,
                               load_balance=manual)
    await co.start()
    try:
        ids = ("node-1", "node-2", "node-3")
        for i, nid in enumerate(ids, start=2):
            await co.register_node(nid, await nodes.start(nid, f"127.0.6.{i}"))
        for nid in ids:
            await wait_status(co, nid, NodeStatus.HEALTHY)  # the probe made on registration
        for nid in ids:  # from the coordinator's side this is what a partition looks like
            await nodes.stop(nid)
        for _ in range(manual.unhealthy_threshold + 2):
            await co.check_health()
        stats = co.get_stats()
        assert stats["panic"] and stats["panic_rounds"] == manual.unhealthy_threshold + 2
        assert stats["nodes_by_status"]["unhealthy"] == 0
        assert stats["nodes_by_status"]["degraded"] == 3 and stats["evictions_held"] >= 3
        assert await co.select_node() is not None  # still routes (to the degraded nodes)
        # The partition heals: the nodes were never evicted and are healthy after one round.
        for i, nid in enumerate(ids, start=2):
            await nodes.start(nid, f"127.0.6.{i}")
        await co.check_health()
        assert co.get_stats()["nodes_by_status"]["healthy"] == 3
        assert co.get_stats()["failovers"] == 0 and not co.get_stats()["panic"]
        # A minority failure is not a partition: the dead node goes after the threshold.
        await nodes.stop("node-3")
        for _ in range(manual.unhealthy_threshold):
            await co.check_health()
        assert (await co.get_node("node-3")).status is NodeStatus.UNHEALTHY  # type: ignore[union-attr]
        assert co.get_stats()["failovers"] == 1
    finally:
        await co.stop()


async def test_nodes_report_load_over_mtls(co: FederationCoordinator, nodes: Nodes) -> None:
    await co.register_node("node-1", await nodes.start("node-1", "127.0.6.2"))
    await nodes.start("node-2", "127.0.6.3")  # running but not registered
    assert co.address is not None
    reply = await nodes.running["node-1"].request(
        co.address, "coord.heartbeat", {"load_score": 0.42, "capacity": {"concepts": 7}},
        expect="coordinator-1")
    assert reply == {"ok": True}
    info = await co.get_node("node-1")
    assert info is not None and info.load_score == 0.42 and info.capacity == {"concepts": 7}
    with pytest.raises(peer.PeerError) as err:
        await nodes.running["node-2"].request(co.address, "coord.heartbeat", {"load_score": 0.1})
    assert err.value.status == 400 and "not registered" in str(err.value)
    with pytest.raises(peer.PeerError) as err:
        await nodes.running["node-1"].request(co.address, "coord.heartbeat", {"load_score": -3})
    assert err.value.status == 400
    assert (await co.get_node("node-1")).load_score == 0.42  # type: ignore[union-attr]
