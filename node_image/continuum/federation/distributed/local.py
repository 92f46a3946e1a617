"""The embedded default: a federation of N node processes on 127.0.0.x, on one machine.

``local up`` creates the PKI under ``<data-dir>/pki`` (``ca.crt``, ``client.crt``,
``client.key`` for the admin, one certificate per node), starts one process per
node with its own address, storage and certificate, writes
``<data-dir>/nodes.json`` and shows a live status table until Ctrl-C or
SIGTERM, when it stops every node cleanly (SIGTERM, then SIGKILL after a grace
period).

Running ``local up`` again on the same directory resumes that cluster. With more
``--nodes`` than it has members, the members start first and each new node then
joins through them, one at a time, as a new member (the way a scaled-up
StatefulSet grows). Fewer nodes than members is refused: a cluster shrinks by
removing members, not by leaving them down. ``<data-dir>/members.json`` records
the members; a directory from before that record existed counts the nodes that
have Raft state.
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

from cryptography import x509

from . import client, pki
from .core import formation
from .transport import tls

STOP_GRACE_SECONDS = 10.0
JOIN_TIMEOUT_SECONDS = 120.0
MEMBERS_FILE = "members.json"


class Interrupted(Exception):
    """A signal asked ``local up`` to stop while it was still waiting."""


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
    if not _holds_admin_role(pki_dir / "client.crt"):  # new, or made before roles existed
        admin = pki.issue_client(ca, "admin", role="admin")
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


def _holds_admin_role(cert: Path) -> bool:
    try:
        pem = cert.read_bytes()
    except OSError:
        return False
    identity = tls.identity_of_certificate(x509.load_pem_x509_certificate(pem))
    return identity.api_role == "admin"


def node_env(data_dir: Path, node: LocalNode, nodes: list[LocalNode], extra: dict[str, str],
             *, join_through: list[LocalNode] | None = None) -> dict[str, str]:
    """A member's environment; with ``join_through``, a new node's that joins through them.

    Members get the whole static list (it founds a new cluster; a member with Raft state
    resumes its own configuration and only learns addresses from it). A joiner gets no
    static list, which would make it found a cluster of its own, but bootstrap peers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update({
        "CONTINUUM_NODE_ID": node.node_id,
        "CONTINUUM_CLUSTER_NAME": "local",
        "CONTINUUM_BIND_ADDRESS": node.peer_address,
        "CONTINUUM_HEALTH_ADDRESS": f"{node.ip}:{node.health_port}",
        "CONTINUUM_DATA_DIR": str(data_dir / node.node_id / "data"),
        "CONTINUUM_TLS_DIR": str(data_dir / node.node_id / "tls"),
    })
    if join_through is None:
        env["CONTINUUM_INITIAL_MEMBERS"] = json.dumps({n.node_id: n.peer_address for n in nodes})
    else:
        env["CONTINUUM_BOOTSTRAP"] = ",".join(n.peer_address for n in join_through)
        # More than will ever be fresh together: the joiner only joins, it never founds.
        env["CONTINUUM_BOOTSTRAP_EXPECT"] = str(len(nodes))
    env.update(extra)
    return env


def recorded_members(data_dir: Path) -> list[str]:
    """The members of the cluster in ``data_dir`` as earlier runs left it ([] if none)."""
    record = data_dir / MEMBERS_FILE
    if record.is_file():
        members = json.loads(record.read_text()).get("members", [])
        return [str(m) for m in members]
    # Before members.json: every node that has Raft state took part.
    found = [p.parent.parent.parent.name for p in data_dir.glob("*/data/raft/raft.db")]
    return sorted(found, key=formation.id_key)


def record_sole_member(data_dir: Path, node_id: str) -> None:
    """After a forced new cluster: only ``node_id`` is a member, so ``local up`` starts the
    other nodes as joiners. Started with the static member list instead, two fresh nodes
    would found a second, empty cluster of the old configuration between them."""
    tmp = data_dir / (MEMBERS_FILE + ".tmp")
    tmp.write_text(json.dumps({"members": [node_id]}) + "\n")
    tmp.replace(data_dir / MEMBERS_FILE)


class LocalCluster:
    """Starts, grows, watches and stops the node processes of a local cluster."""

    def __init__(self, data_dir: Path, nodes: list[LocalNode], *, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.nodes = nodes
        self.extra_env = env or {}
        self.log_dir = log_dir or data_dir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.joining: list[str] = []  # planned nodes that are not members yet, in join order

    def write_nodes_file(self) -> None:
        entries = [{"id": n.node_id, "api": n.api_url, "health": n.health_url} for n in self.nodes]
        (self.data_dir / "nodes.json").write_text(json.dumps(entries, indent=2) + "\n")

    def members(self) -> list[LocalNode]:
        return [n for n in self.nodes if n.node_id not in self.joining]

    def record_members(self) -> None:
        ids = [n.node_id for n in self.members()]
        tmp = self.data_dir / (MEMBERS_FILE + ".tmp")
        tmp.write_text(json.dumps({"members": ids}) + "\n")
        tmp.replace(self.data_dir / MEMBERS_FILE)

    def _plan_membership(self) -> None:
        recorded = recorded_members(self.data_dir)
        planned = [n.node_id for n in self.nodes]
        missing = [m for m in recorded if m not in planned]
        if missing:
            raise ValueError(
                f"{self.data_dir} holds a cluster of {len(recorded)} nodes "
                f"({', '.join(recorded)}); run it with --nodes {len(recorded)} or more, or start "
                f"fresh: remove {self.data_dir} or use another --data-dir")
        self.joining = [nid for nid in planned if recorded and nid not in recorded]

    def prepare(self) -> None:
        """Everything but the processes: membership plan, PKI, nodes.json, the log dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._plan_membership()
        prepare_pki(self.data_dir, self.nodes)
        self.write_nodes_file()
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start the members; nodes new to an existing cluster wait for ``grow``."""
        self.prepare()
        for node in self.members():
            self.start_node(node.node_id)

    def start_node(self, node_id: str) -> None:
        node = next(n for n in self.nodes if n.node_id == node_id)
        joiner = node_id in self.joining
        env = node_env(self.data_dir, node, self.nodes, self.extra_env,
                       join_through=self.members() if joiner else None)
        logf = (self.log_dir / f"{node_id}.log").open("ab")
        self.procs[node_id] = subprocess.Popen(
            [sys.executable, "-m", "continuum.federation.distributed.cli", "node", "run"],
            env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()

    async def up(self, timeout: float, progress: TextIO | None = None,
                 stop: asyncio.Event | None = None, notes: TextIO | None = None) -> float:
        """Start, wait until the members are ready, add the new nodes; seconds it took.

        ``progress`` gets a live counter (a terminal), ``notes`` one line per step."""
        started = time.monotonic()
        self.start()
        await wait_ready(self.data_dir, timeout, progress, self, stop=stop,
                         only=[n.node_id for n in self.members()])
        self.record_members()
        await self.grow(notes, stop)
        return time.monotonic() - started

    async def grow(self, notes: TextIO | None = None, stop: asyncio.Event | None = None) -> None:
        """Start each node that is not a member yet and wait until it is a ready voter."""
        for node_id in list(self.joining):
            if notes is not None:
                notes.write(f"  adding {node_id} to the cluster ...\n")
                notes.flush()
            self.start_node(node_id)
            await _wait_voter(self, node_id, stop)
            self.joining.remove(node_id)
            self.record_members()

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


async def _wait_voter(cluster: LocalCluster, node_id: str, stop: asyncio.Event | None) -> None:
    """Until the leader lists ``node_id`` as a voter and the node itself is ready."""
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    while True:
        if node_id in cluster.exited():
            raise RuntimeError(f"{node_id} exited while joining; see "
                               f"{cluster.log_dir / (node_id + '.log')}")
        rows = {r["id"]: r for r in await poll_status(cluster.data_dir)}
        leader = next((r for r in rows.values() if r.get("role") == "leader"), None)
        voter = leader is not None and any(m.get("id") == node_id and m.get("voter")
                                           for m in leader.get("members", []))
        if voter and rows.get(node_id, {}).get("ready"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node_id} did not join within {JOIN_TIMEOUT_SECONDS:.0f}s; see "
                               f"{cluster.log_dir / (node_id + '.log')}")
        await _pause(0.2, stop)


async def _pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, or raise ``Interrupted`` as soon as ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    if stop.is_set():
        raise Interrupted("interrupted")


async def poll_status(data_dir: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    """One status row per node (of ``only``, if given); unreachable nodes get an ``error``."""
    nodes, files = client.local_cluster(data_dir)
    if only is not None:
        nodes = [e for e in nodes if e["id"] in only]

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
                     cluster: LocalCluster | None = None, *, stop: asyncio.Event | None = None,
                     only: list[str] | None = None) -> float:
    """Seconds until every node (of ``only``) reports ready; raises TimeoutError,
    RuntimeError when every node process has exited, ``Interrupted`` once ``stop`` is set."""
    start = time.monotonic()
    while True:
        if cluster is not None and cluster.procs and len(cluster.exited()) == len(cluster.procs):
            raise RuntimeError(f"every node exited; see the logs in {cluster.log_dir}")
        rows = await poll_status(data_dir, only)
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
        await _pause(0.1, stop)
