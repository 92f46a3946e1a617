"""The original CONTINUUM ``continuum.federation.distributed`` module's public API, as its
users call it: its names, from the modules they lived in; its calls and return values;
its statistics keys; and the five usage snippets of its README.

Written against the original module only, and kept that way: a change here means
code written for the original breaks. What a test machine lacks is all that is
adapted: loopback addresses (127.0.20.x) for the README's 192.168.x and host names,
a throwaway CA for its certificate paths, a loopback DNS server for its SRV domain
(the one argument added: ``dns_nameservers``), and for Raft and the mesh the
members the snippet talks to, started alongside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import TestPKI
from integration.dns_server import DNSServer

HOST = "127.0.20"


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_every_original_name_imports_from_where_it_lived() -> None:
    from continuum.federation.distributed import (  # noqa: F401  the package's own list
        ConflictResolver,
        ConsensusState,
        DiscoveryConfig,
        DiscoveryMethod,
        FederationCoordinator,
        GossipMesh,
        GossipMessage,
        LoadBalance,
        MeshConfig,
        MultiMasterReplicator,
        NodeDiscovery,
        NodeHealth,
        RaftConsensus,
    )
    from continuum.federation.distributed.consensus import (  # noqa: F401
        AppendEntriesRequest,
        AppendEntriesResponse,
        LogEntry,
        NodeRole,
        VoteRequest,
        VoteResponse,
    )
    from continuum.federation.distributed.consensus import ConsensusState as State
    from continuum.federation.distributed.coordinator import NodeHealth as Health  # noqa: F401
    from continuum.federation.distributed.coordinator import NodeStatus
    from continuum.federation.distributed.discovery import DiscoveredNode  # noqa: F401
    from continuum.federation.distributed.mesh import (  # noqa: F401
        GossipMessageType,
        PeerState,
    )
    from continuum.federation.distributed.replication import (  # noqa: F401
        ConflictResolutionStrategy,
        ReplicatedValue,
        ReplicationLog,
        VectorClock,
    )

    # Enums compare equal to their string values, as the original's (str, Enum) did.
    assert ConflictResolutionStrategy.LAST_WRITE_WINS == "last_write_wins"
    assert {s.value for s in ConflictResolutionStrategy} == {
        "last_write_wins", "highest_node_wins", "merge_union", "custom"}
    assert {m.value for m in DiscoveryMethod} == {"dns", "mdns", "bootstrap", "gossip", "static"}
    assert DiscoveryMethod.DNS == "dns"
    assert NodeRole.LEADER == "leader" and NodeRole.CANDIDATE == "candidate"
    assert NodeRole.FOLLOWER == "follower"
    assert [State.INITIALIZING, State.FOLLOWING, State.ELECTING, State.LEADING,
            State.SHUTDOWN] == ["initializing", "following", "electing", "leading", "shutdown"]
    for name in ("UNKNOWN", "JOINING", "HEALTHY", "DEGRADED", "UNHEALTHY", "DEAD"):
        assert isinstance(getattr(NodeStatus, name), NodeStatus)
    assert NodeStatus.HEALTHY == "healthy"
    for name in ("SYNC", "PUSH", "PULL", "PUSH_PULL", "ACK", "PING", "PONG"):
        assert isinstance(getattr(GossipMessageType, name), GossipMessageType)


async def test_coordinator_snippet_calls_and_stats(cluster_pki: TestPKI) -> None:
    from continuum.federation.distributed import FederationCoordinator, LoadBalance
    from continuum.federation.distributed.coordinator import NodeHealth, NodeStatus
    from continuum.federation.distributed.transport import peer

    # node-1 runs somewhere; here a bare peer endpoint answers the health checks.
    node1 = peer.PeerTransport("node-1", f"{HOST}.2:0", cluster_pki.node("node-1"))
    await node1.start()
    certs = cluster_pki.node("coordinator-1")
    coordinator = FederationCoordinator(
        node_id="coordinator-1",
        bind_address=f"{HOST}.1:0",
        tls_cert=certs.cert,
        tls_key=certs.key,
        load_balance=LoadBalance(
            algorithm="least_loaded",
            health_check_interval=10.0
        )
    )
    await coordinator.start()
    try:
        registered = await coordinator.register_node("node-1", node1.address or "")
        assert isinstance(registered, NodeHealth) and registered.address == node1.address

        accepted = await coordinator.heartbeat("node-1", {
            "load_score": 0.3,
            "latency_ms": 5.0,
            "capacity": {"concepts": 10000}
        })
        assert accepted is True
        assert await coordinator.heartbeat("node-404", {"load_score": 0.1}) is False

        node = await coordinator.select_node()
        assert node is not None and node.node_id == "node-1"
        assert node.status == NodeStatus.HEALTHY
        assert (node.load_score, node.latency_ms) == (0.3, 5.0)
        assert node.capacity["concepts"] == 10000
        assert node.consecutive_failures == 0
        assert [n.node_id for n in await coordinator.get_all_nodes(
            status_filter={NodeStatus.HEALTHY, NodeStatus.DEGRADED})] == ["node-1"]
        assert (await coordinator.get_node("node-1")).address == node1.address  # type: ignore[union-attr]

        stats = coordinator.get_stats()
        print(f"Healthy nodes: {stats['nodes_by_status']['healthy']}")
        print(f"Success rate: {stats['success_rate']}")
        assert stats["coordinator_id"] == "coordinator-1"
        assert stats["load_balance_algorithm"] == "least_loaded"
        assert stats["total_nodes"] == 1 and stats["nodes_by_status"]["healthy"] == 1
        assert stats["uptime_seconds"] >= 0
        assert stats["total_requests"] >= stats["total_failures"] >= 0
        assert stats["success_rate"] == pytest.approx(
            1.0 - stats["total_failures"] / max(stats["total_requests"], 1))

        await coordinator.deregister_node("node-1")
        assert await coordinator.select_node() is None
        assert coordinator.get_stats()["total_nodes"] == 0
    finally:
        await coordinator.stop()
        await node1.stop()


async def test_raft_snippet_calls_and_stats() -> None:
    from continuum.federation.distributed import ConsensusState, RaftConsensus
    from continuum.federation.distributed.consensus import NodeRole

    members = ["node-1", "node-2", "node-3"]
    applied: dict[str, list[Any]] = {m: [] for m in members}
    rafts = []
    for node_id in members:
        raft = RaftConsensus(
            node_id=node_id,
            cluster_nodes=["node-1", "node-2", "node-3"],
            election_timeout_ms=(150, 300),
            heartbeat_interval_ms=50
        )
        assert raft.get_stats()["state"] == ConsensusState.INITIALIZING

        await raft.start()
        rafts.append(raft)

        async def apply_to_state_machine(command: Any, node_id: str = node_id) -> None:
            applied[node_id].append(command)

        raft.register_apply_callback(apply_to_state_machine)
    try:
        command = {"type": "add_concept",
                   "concept": {"name": "AI Consciousness", "description": "..."}}
        leader = await eventually(
            lambda: next((r for r in rafts if r.get_stats()["role"] == NodeRole.LEADER), None),
            "a leader")
        success = await leader.append_entry(command)
        assert success is True
        follower = next(r for r in rafts if r is not leader)
        assert await follower.append_entry(command) is False  # leader only
        await eventually(lambda: all(command in a for a in applied.values()), "apply everywhere")

        stats = leader.get_stats()
        print(f"Role: {stats['role']}")
        print(f"Term: {stats['current_term']}")
        print(f"Log size: {stats['log_size']}")
        assert stats["node_id"] == leader.node_id and stats["leader_id"] == leader.node_id
        assert stats["role"] == NodeRole.LEADER and stats["state"] == ConsensusState.LEADING
        assert stats["current_term"] >= 1 and stats["log_size"] >= 1
        assert stats["commit_index"] >= 1 and stats["last_applied"] >= 1
        assert stats["cluster_size"] == 3
        assert stats["votes_received"] is None  # counted only while a candidate
        assert follower.get_stats()["state"] == ConsensusState.FOLLOWING
    finally:
        for raft in rafts:
            await raft.stop()
    assert rafts[0].get_stats()["state"] == ConsensusState.SHUTDOWN


async def test_replication_snippet_round_trips_and_stats(tmp_path: Path) -> None:
    from continuum.federation.distributed import (
        ConflictResolutionStrategy,
        ConflictResolver,
        MultiMasterReplicator,
    )
    from continuum.federation.distributed.replication import ReplicatedValue, VectorClock

    replicator = MultiMasterReplicator(
        node_id="node-1",
        resolver=ConflictResolver(ConflictResolutionStrategy.LAST_WRITE_WINS)
    )
    other = MultiMasterReplicator(node_id="node-2", storage_path=tmp_path / "node-2")

    value = await replicator.write("concept_123", {
        "name": "Distributed Systems",
        "description": "Study of coordination in networks"
    })
    assert isinstance(value, ReplicatedValue) and value.verify()
    assert value.node_id == "node-1" and value.version.compare(VectorClock()) == "after"
    data = await replicator.read("concept_123")
    assert data == {"name": "Distributed Systems",
                    "description": "Study of coordination in networks"}

    remote_value = await other.write("concept_456", {"name": "Gossip"})
    await replicator.replicate_from("node-2", "concept_456", remote_value)
    assert await replicator.read("concept_456") == {"name": "Gossip"}

    # What node-2 lacks, as (key, ReplicatedValue) pairs that replicate_from takes one by one.
    remote_clock = other.vector_clock
    updates = await replicator.get_updates_since(remote_clock)
    assert [key for key, _ in updates] == ["concept_123"]
    for key, update in updates:
        assert isinstance(update, ReplicatedValue)
        await other.replicate_from(replicator.node_id, key, update)
    assert await other.read("concept_123") == data
    assert await replicator.get_updates_since(other.vector_clock) == []

    # A full copy, the original's way.
    third = MultiMasterReplicator(node_id="node-3")
    state = await replicator.get_replication_state()
    assert set(state) == {"concept_123", "concept_456"}
    await third.merge_state(state)
    assert await third.read("concept_456") == {"name": "Gossip"}
    assert (await replicator.get_replication_state(["concept_123"]))["concept_123"] == value

    stats = replicator.get_stats()
    print(f"Keys stored: {stats['keys_stored']}")
    print(f"Conflicts resolved: {stats['conflicts_resolved']}")
    assert stats["node_id"] == "node-1"
    assert stats["keys_stored"] == 2 and stats["writes_local"] == 1
    assert stats["writes_replicated"] == 1
    assert stats["conflicts_resolved"] == stats["total_conflicts"] == 0
    assert stats["resolution_strategy"] == "last_write_wins"
    assert stats["vector_clock"] == replicator.vector_clock.to_dict()
    assert set(stats["vector_clock"]) == {"node-1", "node-2"}

    # storage_path keeps what was written across a restart.
    await other.stop()
    again = MultiMasterReplicator(node_id="node-2", storage_path=tmp_path / "node-2")
    assert await again.read("concept_123") == data
    await again.stop()


async def test_highest_node_wins_orders_numbered_nodes_naturally() -> None:
    from continuum.federation.distributed import (
        ConflictResolutionStrategy,
        ConflictResolver,
        MultiMasterReplicator,
    )

    def make(node_id: str) -> MultiMasterReplicator:
        return MultiMasterReplicator(
            node_id=node_id,
            resolver=ConflictResolver(ConflictResolutionStrategy.HIGHEST_NODE_WINS))

    nine, ten = make("node-9"), make("node-10")
    await ten.write("concept_1", "written on node-10")
    await nine.write("concept_1", "written on node-9, later")  # concurrent: neither saw the other
    for source, target in ((nine, ten), (ten, nine)):
        for key, value in await source.get_updates_since(target.vector_clock):
            await target.replicate_from(source.node_id, key, value)
    assert await nine.read("concept_1") == await ten.read("concept_1") == "written on node-10"
    stats = nine.get_stats()
    assert stats["conflicts_resolved"] == stats["total_conflicts"] == 1
    assert stats["resolution_strategy"] == "highest_node_wins"


async def test_vector_clock_and_resolver_as_the_original_used_them() -> None:
    from continuum.federation.distributed.replication import (
        ConflictResolutionStrategy,
        ConflictResolver,
        ReplicatedValue,
        VectorClock,
    )

    a = VectorClock(clocks={"node-1": 2})
    b = VectorClock.from_dict({"node-1": 1, "node-2": 1})
    assert a.compare(b) == b.compare(a) == "concurrent"
    b.update(a)
    b.increment("node-2")
    assert b.to_dict() == {"node-1": 2, "node-2": 2} and dict(b.clocks) == b.to_dict()
    assert a.compare(b) == "before" and b.compare(a) == "after"

    from continuum.federation.distributed import MultiMasterReplicator

    values: list[ReplicatedValue] = [
        await MultiMasterReplicator(node_id=node_id).write("k", node_id)
        for node_id in ("node-1", "node-2")]
    resolver = ConflictResolver(ConflictResolutionStrategy.HIGHEST_NODE_WINS)
    assert resolver.strategy == ConflictResolutionStrategy.HIGHEST_NODE_WINS
    assert resolver.detect_conflicts(values)
    assert resolver.resolve(values).node_id == "node-2"
    assert not resolver.detect_conflicts(values[:1])


async def test_discovery_snippet_calls_and_stats() -> None:
    from continuum.federation.distributed import DiscoveryConfig, DiscoveryMethod, NodeDiscovery
    from continuum.federation.distributed.discovery import DiscoveredNode

    with DNSServer(f"{HOST}.53") as dns:
        dns.set_srv("_continuum._tcp.example.com", [(0, 100, 7000, "node3.example.com")])
        dns.set_address("node3.example.com", [f"{HOST}.13"])
        discovery = NodeDiscovery(
            node_id="node-1",
            config=DiscoveryConfig(
                enabled_methods={DiscoveryMethod.DNS, DiscoveryMethod.BOOTSTRAP},
                dns_domain="_continuum._tcp.example.com",
                bootstrap_nodes=[f"{HOST}.11:7000", f"{HOST}.12:7000"],
                discovery_interval_seconds=60.0,
                dns_nameservers=[dns.nameserver],
            )
        )
        await discovery.start()
        try:
            nodes = await discovery.discover_now()
            assert all(isinstance(n, DiscoveredNode) for n in nodes)
            found = {n.address: n.discovery_method for n in nodes}
            assert found == {f"{HOST}.11:7000": DiscoveryMethod.BOOTSTRAP,
                             f"{HOST}.12:7000": DiscoveryMethod.BOOTSTRAP,
                             f"{HOST}.13:7000": DiscoveryMethod.DNS}

            verified_nodes = await discovery.get_nodes(verified_only=True)
            assert verified_nodes == []  # nobody has proven who it is

            # node-2 is one of the bootstrap addresses, and has not said which yet.
            await discovery.verify_node("node-2", verified=True)
            await discovery.register_node(DiscoveredNode(
                node_id="node-2", address=f"{HOST}.12:7000",
                discovery_method=DiscoveryMethod.GOSSIP, metadata={"zone": "a"}))
            verified_nodes = await discovery.get_nodes(verified_only=True)
            assert [(n.node_id, n.address) for n in verified_nodes] == [
                ("node-2", f"{HOST}.12:7000")]
            assert verified_nodes[0].discovered_at is not None

            await discovery.verify_node("node-2", verified=False)
            assert await discovery.get_nodes(verified_only=True) == []

            stats = discovery.get_stats()
            assert stats["node_id"] == "node-1"
            assert sorted(stats["enabled_methods"]) == ["bootstrap", "dns"]
            assert stats["discovered_nodes"] == 3 and stats["verified_nodes"] == 0
            assert stats["discovery_attempts"] >= 1 and stats["nodes_discovered"] == 3
            assert stats["methods"] == {"dns": 1, "mdns": 0, "bootstrap": 2, "gossip": 1,
                                        "static": 0}
            await discovery.remove_node("node-2")
            assert discovery.get_stats()["discovered_nodes"] == 2
        finally:
            await discovery.stop()


async def test_mesh_snippet_calls_and_stats(cluster_pki: TestPKI) -> None:
    from continuum.federation.distributed import GossipMesh, MeshConfig

    # The snippet as written runs in-process: the peers are remembered, nothing is sent.
    mesh = GossipMesh(
        node_id="node-1",
        config=MeshConfig(
            fanout=3,
            gossip_interval_ms=100,
            sync_interval_seconds=30.0
        )
    )
    await mesh.start()
    try:
        await mesh.add_peer("node-2", f"{HOST}.22:7000")
        await mesh.add_peer("node-3", f"{HOST}.23:7000")
        await mesh.update_state("concepts_count", 1000)

        async def on_state_update(key: str, value: Any) -> None:
            print(f"State updated: {key}={value}")

        mesh.register_state_update_callback(on_state_update)
        state = await mesh.get_state()
        assert state
        stats = mesh.get_stats()
        assert stats["node_id"] == "node-1" and stats["total_peers"] == 2
        assert stats["state_version"] == 1 and stats["state_keys"] == 1
        for key in ("active_peers", "messages_sent", "messages_received", "messages_dropped",
                    "messages_buffered", "seen_messages", "sync_count"):
            assert isinstance(stats[key], int), key
    finally:
        await mesh.stop()

    # And over the network, where node-3 hears node-1's update.
    meshes = []
    for i in (1, 2, 3):
        certs = cluster_pki.node(f"node-{i}")
        m = GossipMesh(node_id=f"node-{i}", config=MeshConfig(
            fanout=2, gossip_interval_ms=100, sync_interval_seconds=30.0),
            bind_address=f"{HOST}.{30 + i}:0", tls_cert=certs.cert, tls_key=certs.key,
            tls_ca=certs.ca)
        await m.start()
        meshes.append(m)
    heard: list[tuple[str, Any]] = []
    try:
        first = meshes[0]
        await first.add_peer("node-2", meshes[1].address or "")
        await first.add_peer("node-3", meshes[2].address or "")

        async def on_state_update(key: str, value: Any) -> None:
            heard.append((key, value))

        meshes[2].register_state_update_callback(on_state_update)
        await first.update_state("concepts_count", 1000)
        await eventually(lambda: ("concepts_count", 1000) in heard, "node-3 hears the update")
        await eventually(lambda: first.get_stats()["active_peers"] == 2, "two active peers")
        stats = first.get_stats()
        print(f"Active peers: {stats['active_peers']}")
        print(f"Messages sent: {stats['messages_sent']}")
        assert stats["total_peers"] == 2 and stats["messages_sent"] > 0
        assert stats["seen_messages"] >= 0 and stats["messages_buffered"] >= 0
    finally:
        for m in meshes:
            await m.stop()


def test_config_fields_of_the_original_are_accepted() -> None:
    from continuum.federation.distributed import (
        DiscoveryConfig,
        DiscoveryMethod,
        LoadBalance,
        MeshConfig,
    )

    LoadBalance(algorithm="latency", health_check_interval=30.0, unhealthy_threshold=5)
    MeshConfig(fanout=3, gossip_interval_ms=200, sync_interval_seconds=60.0,
               message_buffer_size=5000, peer_timeout_seconds=60.0, max_ttl=5,
               enable_anti_entropy=True)
    config = DiscoveryConfig(enabled_methods={DiscoveryMethod.MDNS},
                             mdns_service_type="_continuum._tcp.local.",
                             mdns_interval_seconds=30.0, max_discovered_nodes=100)
    assert config.max_discovered_nodes == 100
