"""The embedded default: a federation of N node processes on 127.0.0.x, on one machine.

``local up`` creates the PKI under ``<data-dir>/pki`` (``ca.crt``, ``client.crt``,
``client.key`` for the admin, one certificate per node), starts one process per
node with its own address, storage and certificate, writes
``<data-dir>/nodes.json`` and shows a live status table until Ctrl-C or
SIGTERM, when it stops every node cleanly (SIGTERM, then SIGKILL after a grace
period).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import client, pki

STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class LocalNode:
    node_id: str
    ip: str
    port: int
    health_port: int

    @property
    def peer_address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"https://{self.ip}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.ip}:{self.health_port}"


def plan(n: int, first_ip: str, port: int, health_port: int) -> list[LocalNode]:
    if not 1 <= n <= 200:
        raise ValueError("--nodes must be between 1 and 200")
    start = ipaddress.ip_address(first_ip)
    if not start.is_loopback:
        raise ValueError(f"local clusters live on loopback; {first_ip} is not")
    return [LocalNode(f"node-{i + 1}", str(start + i), port, health_port) for i in range(n)]


def prepare_pki(data_dir: Path, nodes: list[LocalNode]) -> None:
    pki_dir = data_dir / "pki"
    ca = pki.init_ca(pki_dir / "ca-key", common_name="continuum-local-ca")
    # The admin's files, named as the user expects them.
    (pki_dir).mkdir(parents=True, exist_ok=True)
    (pki_dir / "ca.crt").write_bytes(ca.cert_pem)
    if not (pki_dir / "client.key").exists():
        admin = pki.issue_client(ca, "admin")
        pki.write_secret_dir(pki_dir / "admin", admin, ca.cert_pem)
        (pki_dir / "client.crt").write_bytes(admin.cert_pem)
        key_path = pki_dir / "client.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(admin.key_pem)
    for node in nodes:
        tls_dir = data_dir / node.node_id / "tls"
        if not (tls_dir / "tls.crt").exists():
            pair = pki.issue_node(ca, node.node_id, dns_names=["localhost"],
                                  ip_addresses=[node.ip])
            pki.write_secret_dir(tls_dir, pair, ca.cert_pem)


def node_env(data_dir: Path, node: LocalNode, nodes: list[LocalNode], extra: dict[str, str]
             ) -> dict[str, str]:
    members = {n.node_id: n.peer_address for n in nodes}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update({
        "CONTINUUM_NODE_ID": node.node_id,
        "CONTINUUM_CLUSTER_NAME": "local",
        "CONTINUUM_BIND_ADDRESS": node.peer_address,
        "CONTINUUM_HEALTH_ADDRESS": f"{node.ip}:{node.health_port}",
        "CONTINUUM_DATA_DIR": str(data_dir / node.node_id / "data"),
        "CONTINUUM_TLS_DIR": str(data_dir / node.node_id / "tls"),
        "CONTINUUM_INITIAL_MEMBERS": json.dumps(members),
    })
    env.update(extra)
    return env


class LocalCluster:
    """Starts, watches and stops the node processes of a local cluster."""

    def __init__(self, data_dir: Path, nodes: list[LocalNode], *, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.nodes = nodes
        self.extra_env = env or {}
        self.log_dir = log_dir or data_dir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def write_nodes_file(self) -> None:
        entries = [{"id": n.node_id, "api": n.api_url, "health": n.health_url} for n in self.nodes]
        (self.data_dir / "nodes.json").write_text(json.dumps(entries, indent=2) + "\n")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prepare_pki(self.data_dir, self.nodes)
        self.write_nodes_file()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.start_node(node.node_id)

    def start_node(self, node_id: str) -> None:
        node = next(n for n in self.nodes if n.node_id == node_id)
        logf = (self.log_dir / f"{node_id}.log").open("ab")
        self.procs[node_id] = subprocess.Popen(
            [sys.executable, "-m", "continuum.federation.distributed.cli", "node", "run"],
            env=node_env(self.data_dir, node, self.nodes, self.extra_env),
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(timeout=STOP_GRACE_SECONDS * 2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def exited(self) -> dict[str, int]:
        return {nid: p.returncode for nid, p in self.procs.items() if p.poll() is not None}


async def poll_status(data_dir: Path) -> list[dict[str, Any]]:
    """One status row per node; unreachable nodes get an ``error``."""
    nodes, files = client.local_cluster(data_dir)

    async def one(entry: dict[str, str]) -> dict[str, Any]:
        try:
            async with client.ApiClient(entry["api"], files, timeout=2.0) as c:
                return {"id": entry["id"], **(await c.status())}
        except Exception as exc:
            return {"id": entry["id"], "error": f"{type(exc).__name__}: {exc}"[:80]}

    return list(await asyncio.gather(*(one(e) for e in nodes)))


def render_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'NODE':<10} {'ROLE':<10} {'TERM':>5} {'LEADER':<10} {'COMMIT':>7} {'KEYS':>6} " \
             f"{'PEERS UP':>9}  READY"
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['id']:<10} {'down':<10} {'-':>5} {'-':<10} {'-':>7} {'-':>6} "
                         f"{'-':>9}  {r['error']}")
            continue
        members = r.get("members", [])
        up = sum(1 for m in members if m.get("healthy"))
        keys = r.get("replication", {}).get("keys_stored", "-")
        lines.append(
            f"{r['id']:<10} {r.get('role', '-'):<10} {r.get('term', '-')!s:>5} "
            f"{r.get('leader_id') or '-':<10} {r.get('commit_index', '-')!s:>7} {keys!s:>6} "
            f"{f'{up}/{len(members)}':>9}  {'yes' if r.get('ready') else 'no'}"
        )
    return "\n".join(lines)


async def wait_ready(data_dir: Path, timeout: float, out: TextIO | None = None,
                     cluster: LocalCluster | None = None) -> float:
    """Seconds until every node reports ready; raises TimeoutError (or RuntimeError when
    every node process has exited)."""
    start = time.monotonic()
    while True:
        if cluster is not None and len(cluster.exited()) == len(cluster.nodes):
            raise RuntimeError(f"every node exited; see the logs in {cluster.log_dir}")
        rows = await poll_status(data_dir)
        ready = sum(1 for r in rows if r.get("ready"))
        if out is not None:
            out.write(f"\r  waiting for the cluster: {ready}/{len(rows)} nodes ready ")
            out.flush()
        if ready == len(rows):
            if out is not None:
                out.write("\n")
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"cluster not ready after {timeout:.0f}s: "
                               + render_table(rows).replace("\n", " | "))
        await asyncio.sleep(0.1)
