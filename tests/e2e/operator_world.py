"""Real node processes behind the operator harness's mock StatefulSet controller.

``RealFederation`` has the shape ``harness.MockStatefulSetController`` drives (``start_node``,
``stop_node``, ``ready``, ``ip``, ``runners``), but each pod is a real node process
(``e2e.cluster.NodeProcess``) on 127.0.11.<ordinal+1>:7000/8080, run on the environment the
operator rendered into the StatefulSet's pod template, with the TLS Secret the operator
wrote, finding its peers through the headless Service's SRV records served by a
real DNS server on 127.0.11.53 (updated as pods come and go). Pod readiness is the node's
real ``/readyz``; a watcher polls every node's ``/v1/status`` with an admin client certificate
and keeps a timestamped history of who leads and who the members are.

The operator hands the leader ``<pod>.demo-peers.<ns>.svc.cluster.local:7000`` addresses (what
a pod's cluster DNS resolves). The node processes get the same resolution here through a
``sitecustomize`` that sends ``*.svc.cluster.local`` lookups to the test DNS server, as a
pod's /etc/resolv.conf would send them to the cluster DNS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

# The operator harness lives beside its tests (tests/operator is not a package).
_HARNESS = str(Path(__file__).resolve().parents[1] / "operator")
if _HARNESS not in sys.path:
    sys.path.append(_HARNESS)

import harness  # noqa: E402, F401  (re-exported for the test)
from harness import NS, Api  # noqa: E402

from continuum.federation.distributed import client, pki  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402
from continuum_operator import manifests  # noqa: E402
from e2e.cluster import NodeProcess  # noqa: E402
from integration.dns_server import DNSServer  # noqa: E402

IP_PREFIX = "127.0.11."
DNS_IP = "127.0.11.53"

# Loaded by every node process (PYTHONPATH): cluster DNS for *.svc.cluster.local names.
SITECUSTOMIZE = '''
import os
import socket

_getaddrinfo = socket.getaddrinfo
_servers = [s for s in os.environ.get("CONTINUUM_DNS_NAMESERVERS", "").split(",") if s]


def _cluster_name(host):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.rstrip(".").endswith(".svc.cluster.local") and _servers:
        return name
    return None


def _resolve(name):
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    ip, _, port = _servers[0].rpartition(":")
    resolver.nameservers = [ip]
    resolver.port = int(port)
    try:
        return resolver.resolve(name, "A", lifetime=3)[0].address
    except dns.exception.DNSException as exc:
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: {exc}") from None


def _cluster_getaddrinfo(host, *args, **kwargs):
    name = _cluster_name(host)
    return _getaddrinfo(_resolve(name) if name else host, *args, **kwargs)


socket.getaddrinfo = _cluster_getaddrinfo

# uvloop (the node's default loop) resolves names in libuv, not through socket.getaddrinfo.
try:
    import uvloop
except ImportError:
    uvloop = None
if uvloop is not None:
    _uv_getaddrinfo = uvloop.Loop.getaddrinfo

    async def _cluster_uv_getaddrinfo(self, host, *args, **kwargs):
        name = _cluster_name(host)
        if name:
            host = await self.run_in_executor(None, _resolve, name)
        return await _uv_getaddrinfo(self, host, *args, **kwargs)

    uvloop.Loop.getaddrinfo = _cluster_uv_getaddrinfo
'''


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_env(template: dict[str, Any], pod: str, namespace: str) -> dict[str, str]:
    """The node container's environment as the kubelet builds it for ``pod``: downward-API
    fields filled in, ``$(VAR)`` expanded from variables defined earlier, ``$$`` kept as ``$``,
    references to unknown variables left as written."""
    container = next(c for c in template["spec"]["containers"] if c["name"] == "node")
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            def expand(m: re.Match[str]) -> str:
                return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))
            env[var["name"]] = _VAR_REF.sub(expand, var["value"])
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


class RealFederation:
    def __init__(self, api: Api, name: str, root: Path) -> None:
        self.api = api
        self.name = name
        self.root = root
        self.port = 7000
        self.peer_domain = f"{name}-peers.{NS}.svc.cluster.local"
        self.dns = DNSServer(DNS_IP)
        self.runners: dict[str, NodeProcess] = {}
        self.procs: list[NodeProcess] = []  # every process ever started, to stop them all
        self.pod_log: list[tuple[float, str, str]] = []  # (monotonic, "started"|"deleted", pod)
        self.views: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, pod, /v1/status)
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self._ready: dict[str, bool] = {}
        # pod -> the surviving nodes' /v1/status, asked the moment the pod was deleted
        self.at_deletion: dict[str, dict[str, dict[str, Any]]] = {}
        self.admin: tls.TLSFiles | None = None
        self._watch: asyncio.Task[None] | None = None
        self._shim = root / "shim"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.dns.start()
        self._shim.mkdir(parents=True, exist_ok=True)
        (self._shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self._publish()
        self._watch = asyncio.create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in self.procs))
        self.runners.clear()
        self.dns.stop()

    # -- what MockStatefulSetController calls ----------------------------------------------

    def ip(self, pod: str) -> str:
        ordinal = manifests.ordinal(self.name, pod)
        assert ordinal is not None
        return f"{IP_PREFIX}{ordinal + 1}"

    def alive(self, pod: str) -> bool:
        return pod in self.runners

    def ready(self, pod: str) -> bool:
        return self.alive(pod) and self._ready.get(pod, False)

    async def start_node(self, pod: str, secret: dict[str, bytes]) -> None:
        if pod in self.runners:
            return
        tls_dir = self.root / pod / "tls"  # the Secret's volume mount
        tls_dir.mkdir(parents=True, exist_ok=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (tls_dir / key).write_bytes(secret[key])
        sts = await self.api.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{self.name}")
        assert sts is not None, "a pod is only made from its StatefulSet"
        # The node runs on the environment the operator rendered for the pod; only what one
        # shared host forces differs: loopback IPs instead of 0.0.0.0, paths for the mounts.
        env = pod_env(sts["spec"]["template"], pod, NS)
        assert env["CONTINUUM_ADVERTISE_ADDRESS"] == f"{pod}.{self.peer_domain}:{self.port}"
        ip = self.ip(pod)
        env.update({
            "CONTINUUM_BIND_ADDRESS": f"{ip}:7000",
            "CONTINUUM_HEALTH_ADDRESS": f"{ip}:8080",
            "CONTINUUM_DATA_DIR": str(self.root / pod / "data"),
            "CONTINUUM_TLS_DIR": str(tls_dir),
            "CONTINUUM_DNS_NAMESERVERS": self.dns.nameserver,  # the pod's resolv.conf
            "CONTINUUM_FORMATION_STABLE_SECONDS": "1",
            "PYTHONPATH": str(self._shim),
        })
        config = await self.api.get(f"/api/v1/namespaces/{NS}/configmaps/{self.name}-config")
        env.pop("CONTINUUM_CONFIG_FILE", None)
        if config and "node.yaml" in (config.get("data") or {}):  # the ConfigMap mount
            path = self.root / pod / "node.yaml"
            path.write_text(config["data"]["node.yaml"])
            env["CONTINUUM_CONFIG_FILE"] = str(path)
        proc = NodeProcess(pod, ip, self.root / pod, tls_dir, env)
        self.runners[pod] = proc
        self._publish()  # publishNotReadyAddresses: the pod is in DNS as soon as it exists
        self.pod_log.append((time.monotonic(), "started", pod))
        proc.start()
        self.procs.append(proc)

    async def stop_node(self, pod: str) -> None:
        proc = self.runners.pop(pod, None)
        if proc is None:
            return
        self.pod_log.append((time.monotonic(), "deleted", pod))
        self._ready.pop(pod, None)
        self.at_deletion[pod] = await self._statuses(list(self.runners.values()))
        self._publish()
        await asyncio.to_thread(proc.stop)  # SIGTERM, as the kubelet does

    async def _statuses(self, procs: list[NodeProcess]) -> dict[str, dict[str, Any]]:
        admin = await self._admin()
        if admin is None:
            return {}

        async def one(proc: NodeProcess) -> tuple[str, dict[str, Any] | None]:
            try:
                async with client.ApiClient(proc.api_url, admin, timeout=5) as c:
                    return proc.node_id, await c.status()
            except Exception:
                return proc.node_id, None

        answers = await asyncio.gather(*(one(p) for p in procs))
        return {pod: st for pod, st in answers if st is not None}

    def _publish(self) -> None:
        self.dns.headless_service(
            f"{self.name}-peers", NS, "peer",
            {p: (self.ip(p), 7000) for p in self.runners}, ttl=1)

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
                pods = list(self.runners.items())
                await asyncio.gather(*(self._observe(http, admin, pod, proc)
                                       for pod, proc in pods))
                await asyncio.sleep(0.2)

    async def _observe(self, http: aiohttp.ClientSession, admin: tls.TLSFiles | None,
                       pod: str, proc: NodeProcess) -> None:
        try:
            async with http.get(f"http://{proc.ip}:8080/readyz") as r:
                ready = r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ready = False
        if pod in self.runners:
            self._ready[pod] = ready
        if admin is None:
            return
        try:
            async with client.ApiClient(proc.api_url, admin, timeout=3) as c:
                st = await c.status()
        except Exception:  # not up yet, or shutting down
            return
        now = time.monotonic()
        self.views.append((now, pod, st))
        self.latest[pod] = (now, st)

    # -- questions the test asks -----------------------------------------------------------

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
