"""Real node processes for a chaos run, each one a group of its own for the network rules.

Nodes are ``continuum-federation node run`` daemons configured as ``local up``
configures them (``local.plan``, ``local.prepare_pki``, ``local.node_env``), on
127.0.60.11 and up inside the run's private network namespace. Each runs under
its own group id (``setpriv --regid``), the handle by which ``network.Network``
tells one node's packets from another's. Each loads ``faults.c`` through
LD_PRELOAD and maps a control page, through which the nemesis skews its wall
clock or slows its fsync while it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from continuum.federation.distributed import local
from continuum.federation.distributed.transport import tls

from . import api

FIRST_IP = "127.0.60.11"
FIRST_GID = 61001
SHIM_SOURCE = Path(__file__).with_name("faults.c")
# struct control in faults.c: clock offset (ns), fsync delay (us), two counters.
CONTROL = struct.Struct("<qqQQ")
STOP_GRACE = 10.0

# Short timings, as the end-to-end tests use, so failover and repair finish quickly.
NODE_ENV = {
    "CONTINUUM_LOAD_BALANCE__HEALTH_CHECK_INTERVAL": "0.5",
    "CONTINUUM_LOAD_BALANCE__UNHEALTHY_THRESHOLD": "2",
    "CONTINUUM_MESH__GOSSIP_INTERVAL_MS": "100",
    "CONTINUUM_MESH__SYNC_INTERVAL_SECONDS": "2",
}


def build_shim(out_dir: Path) -> Path:
    """Compile faults.c once per source version; the library's path."""
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes()).hexdigest()[:12]
    lib = out_dir / f"faults-{digest}.so"
    if lib.exists():
        return lib
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the fault library: "
                           "apt-get install gcc libc6-dev")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(".tmp")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(tmp),
                    str(SHIM_SOURCE), "-ldl"], check=True)
    tmp.replace(lib)
    return lib


class Control:
    """A node's fault control page (see faults.c)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.write_bytes(bytes(4096))
        fd = os.open(path, os.O_RDWR)
        try:
            self._page = mmap.mmap(fd, 4096)
        finally:
            os.close(fd)

    def set(self, *, clock_offset: float | None = None, fsync_delay: float | None = None) -> None:
        offset_ns, delay_us, _, _ = CONTROL.unpack_from(self._page)
        if clock_offset is not None:
            offset_ns = round(clock_offset * 1e9)
        if fsync_delay is not None:
            delay_us = round(fsync_delay * 1e6)
        struct.pack_into("<qq", self._page, 0, offset_ns, delay_us)

    def counters(self) -> dict[str, int]:
        _, _, fsyncs, reads = CONTROL.unpack_from(self._page)
        return {"fsyncs_delayed": fsyncs, "clock_reads_skewed": reads}

    def close(self) -> None:
        self._page.close()


@dataclass
class Node:
    spec: local.LocalNode
    gid: int
    control: Control
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.spec.node_id

    @property
    def ip(self) -> str:
        return self.spec.ip

    @property
    def url(self) -> str:
        return self.spec.api_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, root: Path, size: int, shim: Path) -> None:
        self.root = root
        self.shim = shim
        specs = local.plan(size, FIRST_IP, 7000, 8080)
        local.prepare_pki(root, specs)
        self.specs = specs
        self.nodes = {s.node_id: Node(s, FIRST_GID + i, Control(root / f"{s.node_id}.control"))
                      for i, s in enumerate(specs)}
        pki_dir = root / "pki"
        self.client_files = tls.TLSFiles(str(pki_dir / "client.crt"),
                                         str(pki_dir / "client.key"), str(pki_dir / "ca.crt"))
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._http: aiohttp.ClientSession | None = None

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    # -- processes ---------------------------------------------------------------------------

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"{node_id} is already running")
        env = local.node_env(self.root, node.spec, self.specs, NODE_ENV)
        env["LD_PRELOAD"] = str(self.shim)
        env["CHAOS_CONTROL"] = str(node.control.path)
        argv = ["setpriv", f"--regid={node.gid}", "--clear-groups", "--",
                sys.executable, "-m", "continuum.federation.distributed.cli", "node", "run"]
        with (self.log_dir / f"{node_id}.log").open("ab") as log:
            node.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        node.paused = False
        node.starts += 1

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """kill -9: no goodbye, no flush."""
        node = self.nodes[node_id]
        if node.proc is not None and node.running:
            node.proc.send_signal(signal.SIGKILL)
            node.exit_codes.append(node.proc.wait(timeout=STOP_GRACE))
        node.paused = False

    def pause(self, node_id: str) -> None:
        """SIGSTOP, and wait (bounded) until the kernel has stopped the process."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True
        deadline = time.monotonic() + 2.0
        while self.stopped_state(node_id) != "T" and time.monotonic() < deadline:
            time.sleep(0.001)  # the signal is delivered when the process is next scheduled

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.proc is not None and node.running:
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def stopped_state(self, node_id: str) -> str:
        """The process state letter from /proc ('T' while SIGSTOPped)."""
        node = self.nodes[node_id]
        assert node.proc is not None
        stat = Path(f"/proc/{node.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM every node, then SIGKILL whatever is left after the grace."""
        running = [n for n in self.nodes.values() if n.proc is not None and n.running]
        for n in running:
            assert n.proc is not None
            n.proc.send_signal(signal.SIGCONT)
            n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for n in running:
            assert n.proc is not None
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        for n in self.nodes.values():
            n.control.close()

    def exited(self) -> dict[str, int]:
        """Nodes whose process ended without the nemesis killing it."""
        return {n.id: n.proc.returncode for n in self.nodes.values()
                if n.proc is not None and n.proc.poll() is not None}

    # -- the API -----------------------------------------------------------------------------

    def client_context(self) -> Any:
        return tls.client_context(self.client_files)

    async def open(self) -> None:
        self._http = api.session(self.client_context(), limit=32)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def call(self, node_id: str, method: str, path: str, *, timeout: float = 2.0,
                   **kw: Any) -> api.Answer:
        assert self._http is not None
        return await api.call(self._http, self.nodes[node_id].url, method, path,
                              timeout=timeout, **kw)

    async def statuses(self, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
        """Each answering node's /v1/status (paused, killed or cut-off nodes are missing)."""
        async def one(node_id: str) -> tuple[str, Any]:
            if not self.nodes[node_id].running or self.nodes[node_id].paused:
                return node_id, None
            answer = await self.call(node_id, "GET", "/v1/status", timeout=timeout)
            return node_id, answer.body if answer.ok else None
        found = await asyncio.gather(*(one(i) for i in self.nodes))
        return {i: s for i, s in found if isinstance(s, dict)}

    async def roles(self) -> dict[str, tuple[str, int]]:
        """Each answering node's (role, term)."""
        return {n: (s.get("role", "?"), int(s.get("term", 0)))
                for n, s in (await self.statuses()).items()}

    async def leader(self, timeout: float = 1.0) -> str | None:
        """The node that says it leads in the highest term, if any answers so."""
        claims = [(s.get("term", 0), i) for i, s in (await self.statuses(timeout)).items()
                  if s.get("role") == "leader"]
        return max(claims)[1] if claims else None

    async def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        """Poll ``await check()`` until truthy; on timeout fail with what it last saw."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await check()
            except Exception as exc:  # a node still starting
                last = exc
            if last and not isinstance(last, Exception):
                return last
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {what} within {timeout:.0f}s; last seen: {last!r}"[:2000])

    async def wait_healthy(self, timeout: float) -> str:
        """Until every node answers, ready, agreeing on one leader that has applied its
        commits; that leader's id."""
        async def agreed() -> str | None:
            st = await self.statuses()
            if len(st) < len(self.nodes) or not all(s.get("ready") for s in st.values()):
                return None
            leaders = {s.get("leader_id") for s in st.values()}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = leaders.pop()
            return str(leader) if st[leader]["role"] == "leader" else None
        result: str = await self.wait_for("healthy cluster with one leader", agreed, timeout)
        return result
