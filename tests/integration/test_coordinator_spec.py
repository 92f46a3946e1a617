"""The spec's coordinator snippets, run as written (only addresses and certificates adapted)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import TestPKI
from continuum.federation.distributed.coordinator import NodeStatus
from continuum.federation.distributed.transport import peer, tls

try:  # the spec's import line
    from continuum.federation.distributed import FederationCoordinator, LoadBalance
except ImportError:  # until distributed/__init__.py re-exports the names
    from continuum.federation.distributed.coordinator import FederationCoordinator, LoadBalance


@pytest.fixture
async def node_1(cluster_pki: TestPKI) -> AsyncIterator[str]:
    t = peer.PeerTransport("node-1", "127.0.6.20:0", cluster_pki.node("node-1"))
    await t.start()
    assert t.address is not None
    yield t.address
    await t.stop()


async def test_usage_snippet(cluster_pki: TestPKI, node_1: str) -> None:
    certs = cluster_pki.node("coordinator-1")

    # --- from the spec (bind address, node address and certificate paths adapted; the CA
    # is the ca.crt beside the certificate, as in a cert-manager Secret) ---
    coordinator = FederationCoordinator(
        node_id="coordinator-1",
        bind_address="127.0.6.19:0",
        tls_cert=certs.cert,
        tls_key=certs.key,
        load_balance=LoadBalance(
            algorithm="least_loaded",
            health_check_interval=10.0
        )
    )

    await coordinator.start()

    # Register a node
    await coordinator.register_node("node-1", node_1)

    # Record heartbeat
    await coordinator.heartbeat("node-1", {
        "load_score": 0.3,
        "latency_ms": 5.0,
        "capacity": {"concepts": 10000}
    })

    # Select node for routing
    node = await coordinator.select_node()
    # --- end of snippet ---

    try:
        assert node is not None and node.node_id == "node-1" and node.address == node_1
        assert node.load_score == 0.3 and node.latency_ms == 5.0

        # Monitoring snippet
        stats = coordinator.get_stats()
        print(f"Healthy nodes: {stats['nodes_by_status']['healthy']}")
        print(f"Success rate: {stats['success_rate']}")
        assert stats["nodes_by_status"]["healthy"] == 1
        assert stats["total_nodes"] == 1
    finally:
        await coordinator.stop()


def test_configuration_presets() -> None:
    # Small Cluster (3-5 nodes)
    small = LoadBalance(
        algorithm="least_loaded",
        health_check_interval=10.0,
        unhealthy_threshold=3
    )
    # Large Cluster (100+ nodes)
    large = LoadBalance(
        algorithm="latency",
        health_check_interval=30.0,
        unhealthy_threshold=5
    )
    assert small.policy.unhealthy_threshold == 3 and large.algorithm == "latency"


async def test_security_snippet_refuses_a_node_of_another_ca(
    cluster_pki: TestPKI, foreign_pki: TestPKI
) -> None:
    ours = cluster_pki.node("node-1")
    coordinator = FederationCoordinator(
        node_id="node-1",
        bind_address="127.0.6.21:0",
        tls_cert=ours.cert,
        tls_key=ours.key,
        tls_ca=ours.ca,
        load_balance=LoadBalance(health_check_interval=0.2, unhealthy_threshold=2),
    )
    good = peer.PeerTransport("node-2", "127.0.6.22:0", cluster_pki.node("node-2"))
    rogue = peer.PeerTransport("node-3", "127.0.6.23:0", foreign_pki.node("node-3"))
    await coordinator.start()
    await good.start()
    await rogue.start()
    try:
        assert coordinator.transport is not None and not coordinator.transport.insecure
        assert good.address and rogue.address
        await coordinator.register_node("node-2", good.address)
        await coordinator.register_node("node-3", rogue.address)
        evicted = asyncio.Event()
        coordinator.register_status_callback(
            lambda info, old: evicted.set()
            if info.node_id == "node-3" and info.status is NodeStatus.UNHEALTHY else None)
        await asyncio.wait_for(evicted.wait(), 30.0)
        assert (await coordinator.get_node("node-2")).status is NodeStatus.HEALTHY  # type: ignore[union-attr]
        assert (await coordinator.select_node()).node_id == "node-2"  # type: ignore[union-attr]
    finally:
        await rogue.stop()
        await good.stop()
        await coordinator.stop()


def test_without_tls_ca_the_ca_beside_the_certificate_verifies_peers(
    cluster_pki: TestPKI, tmp_path: Path
) -> None:
    certs = cluster_pki.node("coordinator-2")
    coordinator = FederationCoordinator(node_id="coordinator-2", bind_address="127.0.6.19:0",
                                        tls_cert=certs.cert, tls_key=certs.key)
    assert coordinator.transport is not None and not coordinator.transport.insecure
    assert coordinator.transport.tls_files is not None
    assert coordinator.transport.tls_files.ca == str(Path(certs.cert).parent / "ca.crt")

    # the spec's file names, with no CA beside them: mutual TLS cannot start without one
    lone = tmp_path / "etc"
    lone.mkdir()
    shutil.copy(certs.cert, lone / "cert.pem")
    shutil.copy(certs.key, lone / "key.pem")
    with pytest.raises(tls.TLSConfigError, match=r"needs a CA to verify peers: pass tls_ca"):
        FederationCoordinator(node_id="coordinator-2", bind_address="127.0.6.19:0",
                              tls_cert=str(lone / "cert.pem"), tls_key=str(lone / "key.pem"))
    # and with the spec's security snippet's explicit CA file it does
    shutil.copy(certs.ca, lone / "ca-cert.pem")
    explicit = FederationCoordinator(node_id="coordinator-2", bind_address="127.0.6.19:0",
                                     tls_cert=str(lone / "cert.pem"),
                                     tls_key=str(lone / "key.pem"),
                                     tls_ca=str(lone / "ca-cert.pem"))
    assert explicit.transport is not None and explicit.transport.tls_files is not None
    assert explicit.transport.tls_files.ca == str(lone / "ca-cert.pem")
