"""Three containers of the node image, each configured only as the operator's StatefulSet
configures a pod (its environment, the TLS Secret and ConfigMap mounted as files, the PVC and
emptyDir, user 10001, the cluster DNS serving the headless Service's records), form one
cluster over mutual TLS and serve a strong write and read. SIGTERM to the leader's
container process stops it cleanly, handing leadership over first. No container writes
outside its volumes (the pod's root filesystem is read-only)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

import waiting
from continuum.federation.distributed import client, pki
from continuum.federation.distributed.transport import tls
from continuum_operator import certificates, manifests
from continuum_operator import spec as crd
from image.containers import Container, Images
from image.pods import PodSources, container_ports, pod_container
from integration.dns_server import DNSServer

NS = "prod"
NAME = "img"
IP_PREFIX = "127.0.190."
DNS_IP = "127.0.190.53"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(900)  # the first test may build the images


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something; errors count as a node still starting."""
    got: T = await waiting.until(check, timeout=timeout, what=what, interval=0.2,
                                 errors=(Exception,))  # type: ignore[arg-type]
    return got


async def test_three_containers_form_a_cluster_and_hand_over_on_sigterm(
        images: Images, tmp_path: Path) -> None:
    cluster = manifests.Cluster(NAME, NS, "uid-img", crd.parse_spec({"replicas": 3}))
    template = manifests.statefulset(cluster)["spec"]["template"]
    # The Secrets the operator writes in SelfSigned mode: its CA, the node certificate.
    plan = certificates.plan(cluster, {}, dt.datetime.now(dt.UTC))
    secrets = {s["metadata"]["name"]: certificates.decode(s) or {} for s in plan.secrets}
    sources = PodSources(secrets={cluster.tls_secret: secrets[cluster.tls_secret]},
                         config_maps={cluster.config_map: manifests.config_map(cluster)["data"]})
    ca_data = secrets[cluster.ca_secret]
    admin = tls.TLSFiles.from_dir(pki.write_secret_dir(
        tmp_path / "admin", pki.issue_client(pki.KeyPair(ca_data["tls.crt"], ca_data["tls.key"]),
                                             "admin"), ca_data["ca.crt"]))
    ports = container_ports(template)
    pods = [cluster.pod(i) for i in range(3)]
    ip = {pod: f"{IP_PREFIX}{i + 1}" for i, pod in enumerate(pods)}
    dns = DNSServer(DNS_IP, port=53)
    containers: dict[str, Container] = {}

    async def status(pod: str) -> dict[str, Any]:
        async with client.ApiClient(f"https://{ip[pod]}:{ports['peer']}", admin, timeout=5) as c:
            return await c.status()

    async def agreed(among: list[str]) -> tuple[str, int] | None:
        """(leader, term) if every pod in ``among`` is ready and names the same leader of
        exactly these voters."""
        views = [await status(p) for p in among]
        leaders = {(v.get("leader_id"), v.get("term")) for v in views}
        if len(leaders) == 1 and all(v.get("ready") for v in views) and all(
                sorted(m["id"] for m in v["members"] if m["voter"]) == pods for v in views):
            leader, term = leaders.pop()
            return (leader, int(term)) if leader in among and term is not None else None
        return None

    try:
        dns.start()
        dns.headless_service(cluster.peers_service, NS, "peer",
                             {p: (ip[p], ports["peer"]) for p in pods}, ttl=1)
        for pod in pods:  # podManagementPolicy Parallel: all at once
            containers[pod] = pod_container(
                images.node, template, pod, NS, ip=ip[pod], sources=sources,
                root=tmp_path / pod, dns_server=DNS_IP, claims=tmp_path / "claims").start()

        async def all_ready() -> bool:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                for pod in pods:
                    assert containers[pod].running, containers[pod].output()
                    async with http.get(f"http://{ip[pod]}:{ports['health']}/readyz") as r:
                        if r.status != 200:
                            return False
            return True

        await eventually(all_ready, 120, "every pod's /readyz")
        leader, term = await eventually(lambda: agreed(pods), 60, "one leader of 3 voters")

        url = f"https://{ip[leader]}:{ports['peer']}"
        async with client.ApiClient(url, admin, timeout=10) as c:
            put = await c.put("image-check", {"built": "here"}, strong=True)
            got = await c.get("image-check", strong=True)
        assert put and got["value"] == {"built": "here"} and got["consistency"] == "strong"

        # SIGTERM, as the kubelet sends it to the container's process.
        survivors = [p for p in pods if p != leader]
        code = await asyncio.to_thread(containers[leader].stop, 30)
        log = containers[leader].output()
        assert code == 0, log
        assert "leadership handed over to" in log, log
        assert log.rstrip().endswith(f"node {leader} stopped"), log[-2000:]
        chosen = log.split("leadership handed over to ", 1)[1].split()[0]

        async def survivors_agree() -> tuple[str, int] | None:
            views = [await status(p) for p in survivors]
            got = {(v.get("leader_id"), v.get("term")) for v in views}
            return next(iter(got)) if len(got) == 1 else None  # type: ignore[return-value]

        new_leader, new_term = await eventually(survivors_agree, 30, "the survivors' leader")
        assert (new_leader, new_term) == (chosen, term + 1)
        async with client.ApiClient(f"https://{ip[chosen]}:{ports['peer']}", admin) as c:
            assert (await c.get("image-check", strong=True))["value"] == {"built": "here"}
        for pod in pods:
            assert containers[pod].writes() == [], f"{pod} wrote outside its volumes"
    finally:
        for ctr in containers.values():
            await asyncio.to_thread(ctr.stop, 30)
            ctr.remove()
        dns.stop()
