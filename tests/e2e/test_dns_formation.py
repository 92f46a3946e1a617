"""The Kubernetes shape without Kubernetes: pods find each other through a headless
Service's DNS SRV records, each with a certificate of its own (or, opted in, one shared
wildcard), and form exactly one cluster (ordinal 0 founds it, the others join); a new
pod joins, a removed member leaves (its certificate revoked), and comes back as a new
member onto its old volume with a new certificate."""

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
def ca() -> pki.KeyPair:
    return pki.create_ca()


def pod_certificate(ca: pki.KeyPair, root: Path, pod: str, *, wildcard: bool = False) -> Path:
    """The pod's own certificate, as cert-manager's CSI driver issues one per pod; or, opted
    in, the one wildcard every pod shares."""
    if wildcard:
        pair = pki.issue(ca, "demo", dns_names=[f"*.{DOMAIN}"], uris=[tls.NODE_ROLE_URI])
        return pki.write_secret_dir(root / "tls-shared", pair, ca.cert_pem)
    pair = pki.issue_node(ca, f"{pod}.{DOMAIN}")
    return pki.write_secret_dir(root / f"tls-{pod}-{pair.certificate.serial_number}", pair,
                                ca.cert_pem)


def admin_files(ca: pki.KeyPair, root: Path) -> tls.TLSFiles:
    admin = pki.issue_client(ca, "admin", role="admin")
    return tls.TLSFiles.from_dir(pki.write_secret_dir(root / "admin", admin, ca.cert_pem))


async def _status(files: tls.TLSFiles, node: NodeProcess) -> dict[str, object]:
    async with client.ApiClient(node.api_url, files, timeout=5) as c:
        return await c.status()


@pytest.mark.parametrize("wildcard", [False, True], ids=["per-pod", "wildcard-opt-in"])
async def test_srv_discovery_forms_one_cluster_then_grows_and_shrinks(
    tmp_path: Path, dns: DNSServer, ca: pki.KeyPair, wildcard: bool
) -> None:
    from e2e.cluster import Cluster

    admin = admin_files(ca, tmp_path)
    pods = {f"demo-{i}": f"127.0.8.{i + 1}" for i in range(4)}
    srv = dns.headless_service("demo-peers", "ns", "peer",
                               {p: (ip, 7000) for p, ip in list(pods.items())[:3]}, ttl=1)
    env = {"CONTINUUM_DISCOVERY_SRV": srv, "CONTINUUM_DNS_NAMESERVERS": dns.nameserver,
           "CONTINUUM_PEER_DOMAIN": DOMAIN, "CONTINUUM_CLUSTER_NAME": "demo",
           "CONTINUUM_FORMATION_STABLE_SECONDS": "1"}
    if wildcard:
        env["CONTINUUM_WILDCARD_CERTIFICATES"] = "true"
    procs = {p: NodeProcess(p, ip, tmp_path / p, pod_certificate(ca, tmp_path, p,
                                                                 wildcard=wildcard), env)
             for p, ip in pods.items()}
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
        if wildcard:
            return  # the rest is the same with either kind of certificate

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
            removed = await c.call("DELETE", "/v1/members/demo-3")
        procs["demo-3"].stop()
        old_cert = tls.file_fingerprints(procs["demo-3"].tls_dir / "tls.crt")[0]
        assert removed["revoked_certificates"] == [old_cert]

        async def three() -> bool:
            st = await _status(admin, procs["demo-1"])
            return sorted(m["id"] for m in st["members"]) == ["demo-0", "demo-1", "demo-2"]  # type: ignore[attr-defined]

        await waiter.wait_for(three, 60, "demo-3 removed everywhere")

        # scale up again onto the old volume, as a new pod with a new certificate (the old
        # one is revoked): demo-3 finds data of a removed member, wipes it and joins as new
        # instead of haunting the cluster with its old configuration
        procs["demo-3"].tls_dir = pod_certificate(ca, tmp_path, "demo-3")
        procs["demo-3"].start()
        await waiter.wait_for(four, 90, "demo-3 to rejoin as a new voter")
        log = (tmp_path / "demo-3" / "node.log").read_text()
        assert "no longer a member" in log
    finally:
        for proc in procs.values():
            proc.stop()
