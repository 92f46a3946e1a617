"""A local cluster of real node processes for end-to-end tests, driven through the CLI code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import waiting
from continuum.federation.distributed import client, local

T = TypeVar("T")

# Short timings so failover and health checks finish quickly under test.
FAST_ENV = {
    "CONTINUUM_LOAD_BALANCE__HEALTH_CHECK_INTERVAL": "0.5",
    "CONTINUUM_LOAD_BALANCE__UNHEALTHY_THRESHOLD": "2",
    "CONTINUUM_MESH__GOSSIP_INTERVAL_MS": "100",
    "CONTINUUM_MESH__SYNC_INTERVAL_SECONDS": "2",
}


class Cluster:
    def __init__(self, data_dir: Path, n: int, first_ip: str, env: dict[str, str] | None = None
                 ) -> None:
        self.data_dir = data_dir
        self.nodes = local.plan(n, first_ip, 7000, 8080)
        self.local = local.LocalCluster(data_dir, self.nodes, env={**FAST_ENV, **(env or {})})
        _, self.files = None, None

    def start(self, only: list[str] | None = None) -> None:
        """Start every node, or only the given ones (``start_node`` adds the others)."""
        if only is None:
            self.local.start()
        else:
            self.local.prepare()
            for node_id in only:
                self.local.start_node(node_id)
        _, self.files = client.local_cluster(self.data_dir)

    def node(self, node_id: str) -> local.LocalNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def stop(self) -> None:
        self.local.stop()

    def url(self, node_id: str) -> str:
        return next(n.api_url for n in self.nodes if n.node_id == node_id)

    async def call(self, node_id: str, fn: Callable[[client.ApiClient], Awaitable[T]]) -> T:
        assert self.files is not None
        async with client.ApiClient(self.url(node_id), self.files, timeout=10) as c:
            return await fn(c)

    async def statuses(self, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        ids = ids or [n.node_id for n in self.nodes]

        async def one(nid: str) -> tuple[str, dict[str, Any]]:
            try:
                return nid, await self.call(nid, lambda c: c.status())
            except Exception as exc:
                return nid, {"error": str(exc)}

        return dict(await asyncio.gather(*(one(i) for i in ids)))

    async def wait_for(self, predicate: Callable[[], Awaitable[T | None]], timeout: float,
                       what: str) -> T:
        """Poll ``predicate`` until it returns a truthy value; fail with ``what`` on timeout.
        Errors count as "not yet" (a node still starting, a 404). A predicate that answers
        only yes or no says little when it times out, so the failure also shows what each
        node said of itself then."""
        try:
            result: T = await waiting.until(predicate, timeout=timeout, what=what, interval=0.1,
                                            errors=(Exception,))  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the nodes then: {await self.summary()}") from None
        return result

    async def summary(self) -> dict[str, Any]:
        """Each node's role, leader and readiness, or why it did not answer."""
        if self.files is None:
            return {}
        keys = ("role", "term", "leader_id", "commit_index", "ready")
        return {nid: st.get("error") or {k: st.get(k) for k in keys if k in st}
                for nid, st in (await self.statuses()).items()}

    async def agreed_leader(self, ids: list[str] | None = None) -> str | None:
        """The leader every given node reports, if they all report the same one."""
        st = await self.statuses(ids)
        leaders = {s.get("leader_id") for s in st.values()}
        if len(leaders) == 1 and None not in leaders and all(s.get("ready") for s in st.values()):
            return leaders.pop()
        return None


class NodeProcess:
    """One node process with explicit settings (no static member list): the Kubernetes shape."""

    def __init__(self, node_id: str, ip: str, data_dir: Path, tls_dir: Path,
                 env: dict[str, str]) -> None:
        self.node_id = node_id
        self.ip = ip
        self.data_dir = data_dir
        self.tls_dir = tls_dir
        self.env = env
        self.proc: Any = None

    @property
    def address(self) -> str:
        return f"{self.ip}:7000"

    @property
    def api_url(self) -> str:
        return f"https://{self.address}"

    def start(self) -> None:
        import os
        import subprocess
        import sys

        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
        env.update(FAST_ENV)
        env.update({
            "CONTINUUM_NODE_ID": self.node_id,
            "CONTINUUM_BIND_ADDRESS": self.address,
            "CONTINUUM_ADVERTISE_ADDRESS": self.address,
            "CONTINUUM_HEALTH_ADDRESS": f"{self.ip}:8080",
            "CONTINUUM_DATA_DIR": str(self.data_dir / "data"),
            "CONTINUUM_TLS_DIR": str(self.tls_dir),
        })
        env.update(self.env)
        log = (self.data_dir / "node.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "continuum.federation.distributed.cli", "node", "run"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
