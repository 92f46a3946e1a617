"""The Kubernetes shape without Kubernetes: pods find each other through a headless
Service's DNS SRV records, share one wildcard certificate, and form exactly one cluster
(ordinal 0 founds it, the others join); a new pod joins, a removed member leaves, and
comes back as a new member onto its old volume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from continuum.federation.distributed import client, pki
from continuum.federation.distributed.transport import tls
from e2e.cluster import NodeProcess
from integration.dns_server import DNSServer

DOMAIN = "demo-peers.ns.svc.cluster.local"


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer("127.0.8.53").start()
    yield server
    server.stop()


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, tls.TLSFiles]:
    ca = pki.create_ca()
    # One certificate for every pod, as cert-manager issues it: scaling never re-issues.
    wildcard = pki.issue(ca, "demo", dns_names=[f"*.{DOMAIN}"], uris=[tls.NODE_ROLE_URI])
    node_dir = pki.write_secret_dir(tmp_path / "tls", wildcard, ca.cert_pem)
    admin = pki.write_secret_dir(tmp_path / "admin", pki.issue_client(ca, "admin", role="admin"),
                                 ca.cert_pem)
    return node_dir, tls.TLSFiles.from_dir(admin)


async def _status(files: tls.TLSFiles, node: NodeProcess) -> dict[str, object]:
    async with client.ApiClient(node.api_url, files, timeout=5) as c:
        return await c.status()


async def test_srv_discovery_forms_one_cluster_then_grows_and_shrinks(
    tmp_path: Path, dns: DNSServer, certs: tuple[Path, tls.TLSFiles]
) -> None:
    from e2e.cluster import Cluster

    node_tls, admin = certs
    pods = {f"demo-{i}": f"127.0.8.{i + 1}" for i in range(4)}
    srv = dns.headless_service("demo-peers", "ns", "peer",
                               {p: (ip, 7000) for p, ip in list(pods.items())[:3]}, ttl=1)
    env = {"CONTINUUM_DISCOVERY_SRV": srv, "CONTINUUM_DNS_NAMESERVERS": dns.nameserver,
           "CONTINUUM_PEER_DOMAIN": DOMAIN, "CONTINUUM_CLUSTER_NAME": "demo",
           "CONTINUUM_FORMATION_STABLE_SECONDS": "1"}
    procs = {p: NodeProcess(p, ip, tmp_path / p, node_tls, env) for p, ip in pods.items()}
    waiter = Cluster(tmp_path / "unused", 1, "127.0.8.200")
    try:
        for p in ("demo-2", "demo-1", "demo-0"):  # any start order
            procs[p].start()
        first3 = [procs[p] for p in ("demo-0", "demo-1", "demo-2")]

        async def formed() -> bool:
            st = [await _status(admin, n) for n in first3]
            leaders = {s["leader_id"] for s in st}
            members = [sorted(m["id"] for m in s["members"]) for s in st]  # type: ignore[attr-defined]
            voters = [all(m["voter"] for m in s["members"]) for s in st]  # type: ignore[attr-defined]
            return (len(leaders) == 1 and None not in leaders and all(voters)
                    and all(m == ["demo-0", "demo-1", "demo-2"] for m in members))

        await waiter.wait_for(formed, 90, "one cluster of demo-0..2")
        st0 = await _status(admin, procs["demo-0"])
        assert st0["raft"]["current_term"] >= 1  # type: ignore[index]

        # scale up: a fourth pod appears in DNS and joins by itself
        dns.headless_service("demo-peers", "ns", "peer",
                             {p: (ip, 7000) for p, ip in pods.items()}, ttl=1)
        procs["demo-3"].start()

        async def four() -> bool:
            st = await _status(admin, procs["demo-0"])
            return sorted(m["id"] for m in st["members"] if m["voter"]) == sorted(pods)  # type: ignore[attr-defined]

        await waiter.wait_for(four, 90, "demo-3 to join as a voter")

        # scale down: the operator's order, remove from Raft first, then stop the pod
        async with client.ApiClient(procs["demo-0"].api_url, admin, timeout=30) as c:
            await c.call("DELETE", "/v1/members/demo-3")
        procs["demo-3"].stop()

        async def three() -> bool:
            st = await _status(admin, procs["demo-1"])
            return sorted(m["id"] for m in st["members"]) == ["demo-0", "demo-1", "demo-2"]  # type: ignore[attr-defined]

        await waiter.wait_for(three, 60, "demo-3 removed everywhere")

        # scale up again onto the old volume: demo-3 finds data of a removed member, wipes
        # it and joins as new instead of haunting the cluster with its old configuration
        procs["demo-3"].start()
        await waiter.wait_for(four, 90, "demo-3 to rejoin as a new voter")
        log = (tmp_path / "demo-3" / "node.log").read_text()
        assert "no longer a member" in log
    finally:
        for proc in procs.values():
            proc.stop()
