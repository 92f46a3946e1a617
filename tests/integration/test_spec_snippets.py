"""Every usage snippet of the spec, imported from the public path and run as written.

Adapted only where the spec's snippet needs something a test machine does not
have: certificates (a throwaway CA), addresses (loopback instead of
192.168.x), and for Raft the two other members the snippet's cluster names
(started in the same process, so ``append_entry`` has a majority to commit).
"""

from __future__ import annotations

from pathlib import Path

import waiting
from conftest import TestPKI
from continuum.federation.distributed import (
    ConflictResolutionStrategy,
    ConflictResolver,
    DiscoveryConfig,
    DiscoveryMethod,
    FederationCoordinator,
    GossipMesh,
    LoadBalance,
    MeshConfig,
    MultiMasterReplicator,
    NodeDiscovery,
    RaftConsensus,
)
from integration.dns_server import DNSServer


async def test_coordinator_snippet_and_monitoring(cluster_pki: TestPKI) -> None:
    files = cluster_pki.node("coordinator-1")
    node_files = cluster_pki.node("node-1")
    from continuum.federation.distributed.transport import peer

    node1 = peer.PeerTransport("node-1", "127.0.0.1:0", node_files)
    await node1.start()
    coordinator = FederationCoordinator(
        node_id="coordinator-1",
        bind_address="127.0.0.1:0",
        tls_cert=files.cert,
        tls_key=files.key,
        load_balance=LoadBalance(algorithm="least_loaded", health_check_interval=10.0),
    )
    await coordinator.start()
    try:
        await coordinator.register_node("node-1", node1.address or "")
        await coordinator.heartbeat("node-1", {
            "load_score": 0.3, "latency_ms": 5.0, "capacity": {"concepts": 10000}})
        node = await coordinator.select_node()
        assert node is not None and node["node_id"] == "node-1"
        stats = coordinator.get_stats()
        assert stats["nodes_by_status"]["healthy"] == 1
        assert 0.0 <= stats["success_rate"] <= 1.0
        assert stats["total_nodes"] == 1
    finally:
        await coordinator.stop()
        await node1.stop()


async def test_raft_snippet_and_monitoring() -> None:
    applied: dict[str, list[object]] = {"node-1": [], "node-2": [], "node-3": []}
    nodes = []
    for nid in ("node-1", "node-2", "node-3"):
        raft = RaftConsensus(
            node_id=nid,
            cluster_nodes=["node-1", "node-2", "node-3"],
            election_timeout_ms=(150, 300),
            heartbeat_interval_ms=50,
        )
        await raft.start()

        async def apply_to_state_machine(command: object, nid: str = nid) -> None:
            applied[nid].append(command)

        raft.register_apply_callback(apply_to_state_machine)
        nodes.append(raft)
    try:
        command = {"type": "add_concept",
                   "concept": {"name": "AI Consciousness", "description": "..."}}
        async def committed_by_a_leader() -> tuple[str | None, bool]:
            leader = next((r for r in nodes if r.is_leader), None)
            ok = leader is not None and await leader.append_entry(command)
            return (leader.node_id if leader else None), ok

        await waiting.until(committed_by_a_leader, lambda got: got[1], timeout=10,
                            what="a leader to commit the command (leader, committed)")
        leader = next(r for r in nodes if r.is_leader)
        follower = next(r for r in nodes if not r.is_leader)
        assert await follower.append_entry(command) is False  # leader only
        stats = leader.get_stats()
        assert stats["role"] == "leader"
        assert stats["current_term"] >= 1
        assert stats["log_size"] >= 1
        await waiting.until(lambda: {n: command in a for n, a in applied.items()},
                            lambda got: all(got.values()), timeout=5,
                            what="every node to apply the command (node: applied)")
    finally:
        for raft in nodes:
            await raft.stop()


async def test_replication_snippet_and_monitoring(tmp_path: Path) -> None:
    replicator = MultiMasterReplicator(
        node_id="node-1",
        resolver=ConflictResolver(ConflictResolutionStrategy.LAST_WRITE_WINS),
    )
    other = MultiMasterReplicator(node_id="node-2", storage_path=tmp_path)
    value = await replicator.write("concept_123", {
        "name": "Distributed Systems", "description": "Study of coordination in networks"})
    assert value.verify()
    data = await replicator.read("concept_123")
    assert data == {"name": "Distributed Systems",
                    "description": "Study of coordination in networks"}
    remote_value = await other.write("concept_456", {"name": "Gossip"})
    await replicator.replicate_from("node-2", "concept_456", remote_value)
    assert await replicator.read("concept_456") == {"name": "Gossip"}
    remote_clock = other.vector_clock
    updates = await replicator.get_updates_since(remote_clock)
    assert updates
    stats = replicator.get_stats()
    assert stats["keys_stored"] == 2
    assert stats["conflicts_resolved"] == 0


async def test_discovery_snippet(cluster_pki: TestPKI) -> None:
    with DNSServer("127.0.4.9") as dns:
        srv = dns.headless_service("peers", "ns", "continuum", {})
        dns.set_srv("_continuum._tcp.example.com", [(0, 100, 7000, "node2.example.com")])
        dns.set_address("node2.example.com", ["127.0.4.20"])
        discovery = NodeDiscovery(
            node_id="node-1",
            config=DiscoveryConfig(
                enabled_methods={DiscoveryMethod.DNS, DiscoveryMethod.BOOTSTRAP},
                dns_domain="_continuum._tcp.example.com",
                bootstrap_nodes=["127.0.4.21:7000", "127.0.4.22:7000"],
                discovery_interval_seconds=60.0,
                dns_nameservers=[dns.nameserver],
            ),
        )
        assert srv
        await discovery.start()
        try:
            nodes = await discovery.discover_now()
            addresses = {n.address for n in nodes}
            assert {"127.0.4.20:7000", "127.0.4.21:7000", "127.0.4.22:7000"} <= addresses
            verified_nodes = await discovery.get_nodes(verified_only=True)
            assert verified_nodes == []  # nobody answered an mTLS handshake
            await discovery.verify_node("127.0.4.20:7000", verified=True)
            assert [n.address for n in await discovery.get_nodes(verified_only=True)] == [
                "127.0.4.20:7000"]
        finally:
            await discovery.stop()


async def test_mesh_snippet_and_monitoring(cluster_pki: TestPKI) -> None:
    meshes = []
    got: list[tuple[str, object]] = []
    for i in (1, 2, 3):
        files = cluster_pki.node(f"node-{i}")
        mesh = GossipMesh(
            node_id=f"node-{i}",
            config=MeshConfig(fanout=3, gossip_interval_ms=100, sync_interval_seconds=30.0),
            bind_address=f"127.0.2.{200 + i}:0", tls_cert=files.cert, tls_key=files.key,
            tls_ca=files.ca,
        )
        await mesh.start()
        meshes.append(mesh)
    mesh = meshes[0]
    try:
        await mesh.add_peer("node-2", meshes[1].address or "")
        await mesh.add_peer("node-3", meshes[2].address or "")

        async def on_state_update(key: str, value: object) -> None:
            got.append((key, value))

        meshes[2].register_state_update_callback(on_state_update)
        await mesh.update_state("concepts_count", 1000)
        await waiting.until(lambda: list(got), lambda seen: ("concepts_count", 1000) in seen,
                            timeout=10, what="the state update at node-3 (updates seen)")
        state = await mesh.get_state()
        assert state["node-1"]["concepts_count"] == 1000
        stats = mesh.get_stats()
        assert stats["active_peers"] == 2
        assert stats["messages_sent"] > 0
    finally:
        for m in meshes:
            await m.stop()
