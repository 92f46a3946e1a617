"""DNS SRV discovery against a real authoritative DNS server on loopback."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from continuum.federation.distributed import discovery, pki
from continuum.federation.distributed.core import formation
from continuum.federation.distributed.discovery import DiscoveryConfig, DiscoveryMethod
from integration.discovery_helpers import eventually, make_node, verified_ids
from integration.dns_server import DNSServer

SVC, NS, PORT_NAME, CLUSTER = "demo-peers", "team-a", "peer", "demo"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer("127.0.4.1") as server:
        yield server


@pytest.fixture
def ca() -> pki.KeyPair:
    return pki.create_ca()


def dns_config(server: DNSServer, **kw: object) -> DiscoveryConfig:
    name = f"_{PORT_NAME}._tcp.{SVC}.{NS}.svc.cluster.local"
    base: dict[str, object] = dict(enabled_methods={DiscoveryMethod.DNS}, dns_domain=name,
                                   dns_nameservers=[server.nameserver], cluster_name=CLUSTER,
                                   dns_timeout_seconds=2.0)
    base.update(kw)
    return DiscoveryConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def pods(tmp: Path, ca: pki.KeyPair, names: list[str], config: DiscoveryConfig,
               ) -> AsyncIterator[dict[str, discovery.NodeDiscovery]]:
    """Discovery nodes with their own mTLS servers on 127.0.6.x, not yet discovering."""
    out: dict[str, discovery.NodeDiscovery] = {}
    try:
        for i, name in enumerate(names):
            node = make_node(tmp, ca, name, config, host=f"127.0.6.{i + 1}")
            assert node.transport is not None
            await node.transport.start()
            out[name] = node
        yield out
    finally:
        for node in out.values():
            await node.stop()
            if node.transport is not None:
                await node.transport.stop()


def publish(server: DNSServer, nodes: dict[str, discovery.NodeDiscovery]) -> str:
    records = {}
    for name, node in nodes.items():
        assert node.transport is not None and node.transport.address
        host, _, port = node.transport.address.rpartition(":")
        records[name] = (host, int(port))
    return server.headless_service(SVC, NS, PORT_NAME, records, ttl=30)


async def test_headless_service_pods_are_found_verified_and_tracked(
        tmp_path: Path, ca: pki.KeyPair, dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server)
    async with pods(tmp_path, ca, ["demo-0", "demo-1", "demo-2", "demo-3"], cfg) as nodes:
        three = {k: v for k, v in nodes.items() if k != "demo-3"}
        publish(dns_server, three)
        me = nodes["demo-0"]
        events: list[tuple[str, str | None]] = []
        me.register_discovery_callback(lambda kind, node: events.append((kind, node.node_id)))
        found = await me.discover_now()
        # DNS lists us too: our own address is recognised and never reported
        assert {n.node_id for n in found if n.verified} == {"demo-1", "demo-2"}
        assert all(n.sources == {"dns"} and n.cluster == CLUSTER for n in found)
        assert sorted(events) == [("up", "demo-1"), ("up", "demo-2")]
        assert dns_server.queries[f"SRV {(cfg.dns_domain or '').lower()}"] >= 1

        # a pod is added and another removed: the next answer is the truth
        publish(dns_server, {k: v for k, v in nodes.items() if k != "demo-1"})
        events.clear()
        await me.discover_now()
        assert await verified_ids(me) == {"demo-2", "demo-3"}
        assert sorted(events) == [("down", "demo-1"), ("up", "demo-3")]
        stats = me.get_stats()
        assert stats["verified_nodes"] == 2 and stats["dns_nodes"] == 3


async def test_nxdomain_means_no_dns_peers_and_says_so(
        dns_server: DNSServer, caplog: pytest.LogCaptureFixture) -> None:
    node = discovery.NodeDiscovery("solo", dns_config(dns_server))  # no transport: hints only
    caplog.set_level(logging.INFO)
    assert await node.discover_now() == []
    assert any("NXDOMAIN" in r.getMessage() and "svc.cluster.local" in r.getMessage()
               for r in caplog.records)
    assert node.get_stats()["dns_failures"] == 0


async def test_a_service_whose_pods_all_left_withdraws_them(dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server, verify=False)
    dns_server.headless_service(SVC, NS, PORT_NAME, {"demo-0": ("127.0.9.1", 7000)})
    node = discovery.NodeDiscovery("demo-5", cfg)
    assert [n.address for n in await node.discover_now()] == ["127.0.9.1:7000"]
    dns_server.delete(cfg.dns_domain or "")
    assert await node.discover_now() == []


async def test_answers_outlive_a_dns_outage_only_until_their_ttl(dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server, verify=False, dns_min_ttl_seconds=0.0, dns_timeout_seconds=0.5)
    # a TTL generous enough for a loaded machine to query twice within it
    dns_server.headless_service(SVC, NS, PORT_NAME, {"demo-0": ("127.0.9.1", 7000)}, ttl=6)
    node = discovery.NodeDiscovery("demo-5", cfg)
    assert len(await node.discover_now()) == 1
    dns_server.mode = "drop"
    assert len(await node.discover_now()) == 1  # the answer is still within its TTL
    assert node.get_stats()["dns_failures"] == 1

    async def gone() -> bool:
        return await node.get_nodes() == []

    await eventually(gone, timeout=30)


async def test_srv_priority_and_weight_order_the_nodes(dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server, verify=False)
    pods_ = {f"p{i}": (f"127.0.9.{i}", 7000) for i in range(1, 5)}
    dns_server.headless_service(SVC, NS, PORT_NAME, pods_, priorities={
        "p1": (20, 10), "p2": (10, 5), "p3": (10, 60), "p4": (0, 0)})
    node = discovery.NodeDiscovery("x", cfg)
    found = await node.discover_now()
    assert [n.address for n in found] == ["127.0.9.4:7000", "127.0.9.3:7000", "127.0.9.2:7000",
                                          "127.0.9.1:7000"]
    assert [(n.priority, n.weight) for n in found] == [(0, 0), (10, 60), (10, 5), (20, 10)]


async def test_join_targets_follow_srv_priority_and_weight(
        tmp_path: Path, ca: pki.KeyPair, dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server)
    names = ["demo-0", "demo-1", "demo-2", "demo-3"]
    async with pods(tmp_path, ca, names, cfg) as nodes:
        for name in names[1:]:
            nodes[name].set_formed(True)  # a formed cluster: demo-0 joins it
        address = {n: d.transport.address for n, d in nodes.items() if d.transport}
        records = {n: (h, int(p)) for n, (h, _, p) in
                   ((n, a.rpartition(":")) for n, a in address.items() if a)}
        dns_server.headless_service(SVC, NS, PORT_NAME, records, ttl=30, priorities={
            "demo-1": (1, 50), "demo-2": (0, 90), "demo-3": (0, 10)})
        me = nodes["demo-0"]
        await me.discover_now()
        firsts: Counter[str] = Counter()
        for _ in range(400):
            decision = me.formation_decision()
            assert isinstance(decision, formation.Join)
            assert set(decision.targets) == {address["demo-1"], address["demo-2"],
                                             address["demo-3"]}
            assert decision.targets[-1] == address["demo-1"]  # the higher priority: last
            firsts[decision.targets[0]] += 1
        # Within priority 0, drawn in proportion to weight (90:10), not always the same one.
        assert 320 <= firsts[address["demo-2"]] <= 390, firsts
        assert firsts[address["demo-3"]] == 400 - firsts[address["demo-2"]]


async def test_a_large_service_answer_falls_back_to_tcp(dns_server: DNSServer) -> None:
    cfg = dns_config(dns_server, verify=False)
    dns_server.headless_service(SVC, NS, PORT_NAME,
                                {f"demo-{i}": (f"127.0.9.{i + 1}", 7000) for i in range(60)})
    node = discovery.NodeDiscovery("demo-99", cfg)
    assert len(await node.discover_now()) == 60
    assert dns_server.queries["tcp"] >= 1


def test_bad_config_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="dns_domain"):
        DiscoveryConfig(enabled_methods={DiscoveryMethod.DNS})
    with pytest.raises(ValueError, match="host:port"):
        DiscoveryConfig(dns_nameservers=["127.0.0.1:notaport"])
    with pytest.raises(ValueError, match="unknown discovery method"):
        DiscoveryConfig(enabled_methods={"carrier-pigeon"})
    with pytest.raises(ValueError, match="host:port"):
        DiscoveryConfig(bootstrap_nodes=["node1"])
    with pytest.raises(ValueError, match="discovery_interval_seconds"):
        DiscoveryConfig(discovery_interval_seconds=0)
