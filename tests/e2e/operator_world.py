"""The operator and its pods run from the images, behind the harness's mock StatefulSet
controller and kmock's Kubernetes emulator.

``RealFederation`` has the shape ``harness.MockStatefulSetController`` drives (``start_node``,
``stop_node``, ``ready``, ``ip``, ``runners``). Each pod is a container of the node image
(``image.pods.pod_container``): the pod template's environment, its volumes filled from the
API (the TLS Secret the operator wrote, the ConfigMap, the PVC, /tmp), user 10001, and a
resolv.conf naming the cluster DNS, a real DNS server on 127.0.191.53:53 that serves the
headless Service's records (updated as pods come and go). Pod <n> has the IP
127.0.191.<n+1>, where it binds the ports the template declares. Readiness is the node's real
``/readyz``; deleting a pod sends SIGTERM to its container's process and waits out the grace
period, as the kubelet does, then records how it exited and whether it wrote outside its
volumes. A watcher polls every node's ``/v1/status`` with an admin client certificate and
keeps a timestamped history of who leads and who the members are.

``operator_container`` runs the operator from the operator image against the emulator, with
its settings in ``CONTINUUM_OPERATOR_*`` variables, as the chart's Deployment does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

# The operator harness lives beside its tests (tests/operator is not a package).
_HARNESS = str(Path(__file__).resolve().parents[1] / "operator")
if _HARNESS not in sys.path:
    sys.path.append(_HARNESS)

import harness  # noqa: E402  (re-exported for the test)
from harness import NS, Api  # noqa: E402

from continuum.federation.distributed import client, pki  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402
from continuum_operator import manifests  # noqa: E402
from image.containers import Container  # noqa: E402
from image.pods import PodSources, container_ports, pod_container  # noqa: E402
from integration.dns_server import DNSServer  # noqa: E402

IP_PREFIX = "127.0.191."
DNS_IP = "127.0.191.53"


class RealFederation:
    def __init__(self, api: Api, name: str, root: Path, image: str) -> None:
        self.api = api
        self.name = name
        self.root = root
        self.image = image
        self.port = manifests.PEER_PORT  # replaced by the template's "peer" port
        self.health_port = manifests.HEALTH_PORT  # and its "health" port
        self.dns = DNSServer(DNS_IP, port=53)
        self.runners: dict[str, Container] = {}
        self.containers: list[Container] = []  # every container ever made, to remove them all
        self.pod_log: list[tuple[float, str, str]] = []  # (monotonic, "started"|"deleted", pod)
        self.views: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, pod, /v1/status)
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        # pod -> (exit code, files written outside its volumes), once its container stopped
        self.exits: dict[str, tuple[int, list[str]]] = {}
        self._ready: dict[str, bool] = {}
        # pod -> the surviving nodes' /v1/status, asked the moment the pod was deleted
        self.at_deletion: dict[str, dict[str, dict[str, Any]]] = {}
        self._grace: dict[str, float] = {}
        # One mTLS session per pod, kept open: a handshake every poll would cost the test
        # process the CPU the controller needs to act on time.
        self._clients: dict[str, client.ApiClient] = {}
        self.admin: tls.TLSFiles | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.dns.start()
        self._publish()
        self._watch = asyncio.create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(self.stop_node(pod) for pod in list(self.runners)))
        await asyncio.gather(*(asyncio.to_thread(c.remove) for c in self.containers))
        for pod in list(self._clients):
            await self.drop_client(pod)
        self.dns.stop()

    async def client(self, pod: str) -> client.ApiClient:
        """The open admin session to ``pod``'s API (``drop_client`` after an error)."""
        c = self._clients.get(pod)
        if c is None:
            admin = await self._admin()
            assert admin is not None, "no admin certificate before the CA Secret exists"
            c = await client.ApiClient(self.api_url(pod), admin, timeout=5).__aenter__()
            self._clients[pod] = c
        return c

    async def drop_client(self, pod: str) -> None:
        c = self._clients.pop(pod, None)
        if c is not None:
            await c.__aexit__(None, None, None)

    # -- what MockStatefulSetController calls ----------------------------------------------

    def ip(self, pod: str) -> str:
        ordinal = manifests.ordinal(self.name, pod)
        assert ordinal is not None
        return f"{IP_PREFIX}{ordinal + 1}"

    def api_url(self, pod: str) -> str:
        return f"https://{self.ip(pod)}:{self.port}"

    def alive(self, pod: str) -> bool:
        return pod in self.runners

    def ready(self, pod: str) -> bool:
        return self.alive(pod) and self._ready.get(pod, False)

    def crashed(self) -> dict[str, str]:
        """Pods whose container exited while the pod exists: the end of each one's log."""
        return {pod: c.output()[-3000:] for pod, c in self.runners.items()
                if c.proc is not None and not c.running}

    async def start_node(self, pod: str, secret: dict[str, bytes]) -> None:
        """Start ``pod``'s container. Its volumes are read from the API, as the kubelet
        does (``secret`` is what the controller saw of the TLS Secret: the same)."""
        if pod in self.runners:
            return
        sts = await self.api.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{self.name}")
        assert sts is not None, "a pod is only made from its StatefulSet"
        template = sts["spec"]["template"]
        ports = container_ports(template)
        self.port, self.health_port = ports["peer"], ports["health"]
        sources = PodSources()
        for volume in template["spec"].get("volumes") or []:
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                got = await self.api.get(f"/api/v1/namespaces/{NS}/secrets/{name}")
                assert got and got.get("data"), f"{pod}: Secret {name} is not there yet"
                sources.secrets[name] = {k: base64.b64decode(v) for k, v in got["data"].items()}
            elif "configMap" in volume:
                name = volume["configMap"]["name"]
                got = await self.api.get(f"/api/v1/namespaces/{NS}/configmaps/{name}")
                assert got is not None, f"{pod}: ConfigMap {name} is not there yet"
                sources.config_maps[name] = dict(got.get("data") or {})
        container = pod_container(self.image, template, pod, NS, ip=self.ip(pod),
                                  sources=sources, root=self.root / pod, dns_server=DNS_IP,
                                  claims=self.root / "claims")
        self._grace[pod] = float(template["spec"].get("terminationGracePeriodSeconds", 30))
        self.runners[pod] = container
        self.containers.append(container)
        self._publish()  # publishNotReadyAddresses: the pod is in DNS as soon as it exists
        self.pod_log.append((time.monotonic(), "started", pod))
        await asyncio.to_thread(container.start)

    async def stop_node(self, pod: str) -> None:
        container = self.runners.pop(pod, None)
        if container is None:
            return
        self.pod_log.append((time.monotonic(), "deleted", pod))
        self._ready.pop(pod, None)
        self._publish()
        # SIGTERM at once, as the kubelet sends it; the survivors are asked meanwhile.
        self.at_deletion[pod], code = await asyncio.gather(
            self._statuses(list(self.runners)),
            asyncio.to_thread(container.stop, self._grace[pod]))
        await self.drop_client(pod)
        self.exits[pod] = (code, await asyncio.to_thread(container.writes))

    async def _statuses(self, pods: list[str]) -> dict[str, dict[str, Any]]:
        admin = await self._admin()
        if admin is None:
            return {}

        async def one(pod: str) -> tuple[str, dict[str, Any] | None]:
            try:
                async with client.ApiClient(self.api_url(pod), admin, timeout=5) as c:
                    return pod, await c.status()
            except Exception:
                return pod, None

        answers = await asyncio.gather(*(one(p) for p in pods))
        return {pod: st for pod, st in answers if st is not None}

    def _publish(self) -> None:
        self.dns.headless_service(
            f"{self.name}-peers", NS, "peer",
            {p: (self.ip(p), self.port) for p in self.runners}, ttl=1)

    # -- watching the real nodes -----------------------------------------------------------

    async def _admin(self) -> tls.TLSFiles | None:
        """An admin client certificate from the operator-managed CA (its Secret)."""
        if self.admin is None:
            secret = await self.api.get(f"/api/v1/namespaces/{NS}/secrets/{self.name}-ca")
            if not secret or not secret.get("data"):
                return None
            data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            ca = pki.KeyPair(data["tls.crt"], data["tls.key"])
            d = pki.write_secret_dir(self.root / "admin", pki.issue_client(ca, "admin"),
                                     data["ca.crt"])
            self.admin = tls.TLSFiles.from_dir(d)
        return self.admin

    async def _watch_loop(self) -> None:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=3)) as http:
            while True:
                admin = await self._admin()
                await asyncio.gather(*(self._observe(http, admin, pod)
                                       for pod in list(self.runners)))
                await asyncio.sleep(0.2)  # paced: a kubelet's probe period

    async def _observe(self, http: aiohttp.ClientSession, admin: tls.TLSFiles | None,
                       pod: str) -> None:
        try:
            async with http.get(f"http://{self.ip(pod)}:{self.health_port}/readyz") as r:
                ready = r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ready = False
        if pod in self.runners:
            self._ready[pod] = ready
        if admin is None or pod not in self.runners:
            return
        try:
            st = await (await self.client(pod)).status()
        except Exception:  # not up yet, or shutting down
            await self.drop_client(pod)
            return
        now = time.monotonic()
        self.views.append((now, pod, st))
        self.latest[pod] = (now, st)

    # -- questions the test asks -----------------------------------------------------------

    def leader(self) -> str | None:
        """The leader named in the newest status any running pod gave."""
        views = [v for p, v in self.latest.items() if p in self.runners]
        newest = max(views, key=lambda v: v[0], default=None)
        return None if newest is None else newest[1].get("leader_id")

    def agreed(self, n: int, since: float) -> str | None:
        """The leader, if demo-0..n-1 all report it and exactly those n voters (and no
        other member) in a status taken after ``since``."""
        want = [f"{self.name}-{i}" for i in range(n)]
        leaders = set()
        for pod in want:
            taken, st = self.latest.get(pod, (0.0, {}))
            if taken < since or not st.get("ready"):
                return None
            members = st.get("members") or []
            if sorted(m["id"] for m in members) != want or not all(m["voter"] for m in members):
                return None
            leaders.add(st.get("leader_id"))
        if len(leaders) != 1 or None in leaders or set(self.runners) != set(want):
            return None
        return leaders.pop()  # type: ignore[no-any-return]

    def listed_at_deletion(self, pod: str) -> list[str] | None:
        """Who still listed ``pod`` as a member when it was deleted, as the node leading then
        saw it (``[]`` or ``[leader]``); without a leader at that instant, the surviving
        nodes that still listed it (fine only if a minority). None: nobody answered."""
        views = self.at_deletion.get(pod) or {}
        if not views:
            return None
        leaders = [(p, st) for p, st in views.items() if st.get("role") == "leader"]
        if leaders:
            views = dict([max(leaders, key=lambda v: int(v[1].get("term") or 0))])
        return sorted(p for p, st in views.items()
                      if pod in {m["id"] for m in st.get("members") or []})

    def committed_at_deletion(self, pod: str) -> bool | None:
        """Whether the node leading when ``pod`` was deleted reported its membership
        configuration committed (None: no leader answered at that instant)."""
        views = self.at_deletion.get(pod) or {}
        leaders = [st for st in views.values() if st.get("role") == "leader"]
        if not leaders:
            return None
        leader = max(leaders, key=lambda st: int(st.get("term") or 0))
        return leader.get("membership_committed") is True

    def deleted_at(self, pod: str, since: float) -> float | None:
        return next((t for t, what, p in self.pod_log
                     if t >= since and what == "deleted" and p == pod), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def operator_container(image: str, api_server: str, root: Path,
                             **settings: Any) -> AsyncIterator[Container]:
    """The operator image's entrypoint against ``api_server``, with ``settings`` as its
    ``CONTINUUM_OPERATOR_*`` variables; ready once kopf's liveness endpoint answers. On exit
    it gets SIGTERM and must stop cleanly (exit code 0)."""
    health = _free_port()
    env = {"CONTINUUM_OPERATOR_API_SERVER": api_server,
           **{f"CONTINUUM_OPERATOR_{k.upper()}": str(v) for k, v in settings.items()}}
    container = Container(image, "operator", env=env, log=root / "operator.log")
    await asyncio.to_thread(container.start, [f"--liveness=http://127.0.0.1:{health}/healthz"])
    try:
        async def live() -> bool:
            assert container.running, f"the operator exited early:\n{container.output()}"
            try:
                async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                            s.get(f"http://127.0.0.1:{health}/healthz") as r):
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        try:
            await harness.wait_until(live, 60, "the operator container's /healthz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{container.output()}") from None
        yield container
        code = await asyncio.to_thread(container.stop, 30)
        assert code == 0, f"the operator exited with {code} on SIGTERM:\n{container.output()}"
    finally:
        await asyncio.to_thread(container.remove)
