"""Two coordinators sharing a registry through a (fake) replicated log, probing real mTLS nodes.

The log stands in for Raft: a command is "committed" when ``append`` returns
True and is applied, as msgpack bytes, on every replica, the way the node
daemon calls ``apply_command`` from Raft's apply callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest

from conftest import TestPKI
from continuum.federation.distributed.coordinator import (
    FederationCoordinator,
    LoadBalance,
    NodeInfo,
    NodeStatus,
)
from continuum.federation.distributed.transport import peer

LB = LoadBalance(health_check_interval=0.2, unhealthy_threshold=3, healthy_threshold=2, seed=3)


class FakeLog:
    def __init__(self) -> None:
        self.replicas: list[FederationCoordinator] = []
        self.entries: list[dict[str, Any]] = []

    def replicate(self, proposer: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        """The ``replicate`` of coordinator ``proposer``: its replica's apply result."""
        async def append(command: dict[str, Any]) -> Any:
            entry = msgpack.unpackb(msgpack.packb(command, use_bin_type=True), raw=False)
            self.entries.append(entry)
            results = {r.node_id: r.apply_command(entry) for r in self.replicas}
            return results[proposer]
        return append


async def reach(co: FederationCoordinator, node_id: str, status: NodeStatus,
                timeout: float = 30.0) -> None:
    done = asyncio.Event()

    def listener(info: NodeInfo, old: NodeStatus) -> None:
        if info.node_id == node_id and info.status is status:
            done.set()

    co.register_status_callback(listener)
    try:
        node = await co.get_node(node_id)
        if node is None or node.status is not status:
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        co._listeners.remove(listener)


@pytest.fixture
async def cluster(cluster_pki: TestPKI) -> AsyncIterator[dict[str, Any]]:
    log = FakeLog()
    leader = {"id": "coord-a"}
    coords = []
    for i, cid in enumerate(("coord-a", "coord-b"), start=31):
        files = cluster_pki.node(cid, ips=(f"127.0.6.{i}",))
        coords.append(FederationCoordinator(
            cid, f"127.0.6.{i}:0", files.cert, files.key, files.ca, load_balance=LB,
            replicate=log.replicate(cid), is_active=lambda cid=cid: leader["id"] == cid))
    log.replicas = coords
    nodes: dict[str, peer.PeerTransport] = {}
    for i, nid in enumerate(("node-1", "node-2", "node-3"), start=41):
        t = peer.PeerTransport(nid, f"127.0.6.{i}:0", cluster_pki.node(nid))
        await t.start()
        nodes[nid] = t
    for c in coords:
        await c.start()
    yield {"log": log, "leader": leader, "a": coords[0], "b": coords[1], "nodes": nodes,
           "pki": cluster_pki}
    for c in coords:
        await c.stop()
    for t in nodes.values():
        await t.stop()


async def test_new_leader_carries_on_from_the_replicated_registry(cluster: dict[str, Any]) -> None:
    a: FederationCoordinator = cluster["a"]
    b: FederationCoordinator = cluster["b"]
    nodes: dict[str, peer.PeerTransport] = cluster["nodes"]
    for nid, t in nodes.items():
        assert t.address is not None
        await a.register_node(nid, t.address, {"rack": nid[-1]})
    for nid in nodes:
        await reach(b, nid, NodeStatus.HEALTHY)  # decided by a's probes, applied on b
    assert a.snapshot() == b.snapshot()
    assert b.get_stats()["health_checks"] == 0  # b is not active: it never probed

    address_2 = nodes["node-2"].address
    assert address_2 is not None
    await nodes.pop("node-2").stop()
    await reach(b, "node-2", NodeStatus.UNHEALTHY)
    assert a.snapshot() == b.snapshot()

    # Leadership moves to b. It carries on from the registry it already holds.
    cluster["leader"]["id"] = "coord-b"
    checks_a = a.get_stats()["health_checks"]
    restarted = peer.PeerTransport("node-2", address_2, cluster["pki"].node("node-2"))
    await restarted.start()
    nodes["node-2"] = restarted
    await reach(a, "node-2", NodeStatus.HEALTHY)  # decided by b's probes, applied on a
    assert b.get_stats()["health_checks"] > 0 and b.get_stats()["recoveries"] == 1
    assert a.get_stats()["health_checks"] - checks_a <= 3  # at most one round in flight

    await b.deregister_node("node-3")
    assert await a.get_node("node-3") is None
    assert a.snapshot() == b.snapshot()
    assert {e["type"] for e in cluster["log"].entries} == {
        "coord.register", "coord.status", "coord.deregister"}
    picked = {(await a.select_node()).node_id for _ in range(30)}  # type: ignore[union-attr]
    assert picked == {"node-1", "node-2"}
