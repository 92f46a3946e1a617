"""A GossipMesh member as a real process, and the parent-side handles that drive a cluster.

Child: ``python mesh_proc.py --node-id n --bind 127.0.2.5:0 --tls-dir D --storage S``
starts a ``GossipMesh`` over mutual TLS, prints ``{"ev": "ready", "address": ...}``,
then one JSON line per membership change (``{"ev": "member", "node", "status",
"t"}``) and per state value learned (``{"ev": "state", "node", "key", "value",
"t"}``), ``t`` being the wall clock when the callback ran. It obeys JSON
commands on stdin: ``join``, ``update``, ``stats``, ``leave``.

Parent: ``MeshProc`` starts, commands, kills (SIGKILL by pid) and stops one
child; ``MeshCluster`` starts N of them on 127.0.2.x and joins them through the
first. Used by the integration tests and by ``bench/gossip.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


# -- child -------------------------------------------------------------------------------------


async def child_main(args: argparse.Namespace) -> None:
    from continuum.federation.distributed.mesh import GossipMesh, MeshConfig
    from continuum.federation.distributed.transport import tls

    overrides: dict[str, Any] = json.loads(args.config)
    config = MeshConfig.local(**overrides) if args.preset == "local" else MeshConfig(**overrides)
    files = None if args.insecure else tls.TLSFiles.from_dir(args.tls_dir)
    mesh = GossipMesh(
        args.node_id, config, bind_address=args.bind, storage_path=args.storage,
        tls_cert=files.cert if files else None, tls_key=files.key if files else None,
        tls_ca=files.ca if files else None, insecure=files is None,
    )
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    mesh.register_membership_callback(
        lambda n, s, a: emit({"ev": "member", "node": n, "status": s, "address": a,
                              "t": time.time()}))
    mesh.register_state_update_callback(
        lambda n, k, v: emit({"ev": "state", "node": n, "key": k, "value": v, "t": time.time()}))
    await mesh.start()
    emit({"ev": "ready", "address": mesh.address, "incarnation": mesh.incarnation,
          "pid": os.getpid()})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["cmd"]
        if op == "join":
            await mesh.add_peer(cmd["id"], cmd["address"])
        elif op == "update":
            t = time.time()
            await mesh.update_state(cmd["key"], cmd["value"])
            emit({"ev": "updated", "key": cmd["key"], "t": t})
        elif op == "stats":
            emit({"ev": "stats", "stats": mesh.get_stats(), "members": mesh.members()})
        elif op == "leave":
            await mesh.leave()
            emit({"ev": "left"})
            return
    await mesh.stop()


def _debug_log(storage: str | None) -> None:
    """``MESH_PROC_LOG=debug``: the child logs to ``<storage>/debug.log`` (for diagnosis)."""
    level = os.environ.get("MESH_PROC_LOG")
    if level and storage:
        import logging
        Path(storage).mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=str(Path(storage) / "debug.log"), level=level.upper())


def child_entry() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--node-id", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--tls-dir")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--storage")
    p.add_argument("--preset", default="local", choices=["local", "lan"])
    p.add_argument("--config", default="{}", help="JSON MeshConfig overrides")
    args = p.parse_args()
    _debug_log(args.storage)
    from continuum.federation.distributed import cli

    # MESH_PROC_LOOP=uvloop: the loop a node daemon runs on by default (bench/gossip.py).
    factory = cli.loop_factory(os.environ.get("MESH_PROC_LOOP", "asyncio"))
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(child_main(args))


# -- parent ------------------------------------------------------------------------------------


class MeshProc:
    """One child process; its event stream is folded into plain dicts as it arrives."""

    def __init__(self, node_id: str, bind: str, *, tls_dir: Path | None, storage: Path | None,
                 preset: str = "local", config: dict[str, Any] | None = None) -> None:
        self.node_id = node_id
        self.bind = bind
        self.tls_dir = tls_dir
        self.storage = storage
        self.preset = preset
        self.config = config or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.address: str | None = None
        self.incarnation: int | None = None
        self.status: dict[str, str] = {}  # node -> latest status seen here
        self.first_seen: dict[tuple[str, str], float] = {}  # (node, status) -> first time
        # Every membership change seen here, in order: (time.monotonic() on arrival, node,
        # status); what "nobody else was declared dead after the kill" is checked against.
        self.history: list[tuple[float, str, str]] = []
        self.state: dict[tuple[str, str], tuple[Any, float]] = {}  # (node, key) -> value, t
        self.updated_at: dict[str, float] = {}
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ready: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> None:
        cmd = [sys.executable, str(HERE / "mesh_proc.py"), "--node-id", self.node_id,
               "--bind", self.bind, "--preset", self.preset,
               "--config", json.dumps(self.config)]
        cmd += ["--tls-dir", str(self.tls_dir)] if self.tls_dir else ["--insecure"]
        if self.storage is not None:
            cmd += ["--storage", str(self.storage)]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "node_image"))
        self._ready = asyncio.get_running_loop().create_future()
        self.status.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._ready, 60)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(RuntimeError(f"{self.node_id} exited early"))
                return
            ev = json.loads(line)
            kind = ev.get("ev")
            if kind == "ready":
                self.address = ev["address"]
                self.incarnation = ev["incarnation"]
                assert self._ready is not None
                self._ready.set_result(None)
            elif kind == "member":
                self.status[ev["node"]] = ev["status"]
                self.first_seen.setdefault((ev["node"], ev["status"]), ev["t"])
                self.history.append((time.monotonic(), ev["node"], ev["status"]))
            elif kind == "state":
                self.state[(ev["node"], ev["key"])] = (ev["value"], ev["t"])
            elif kind == "updated":
                self.updated_at[ev["key"]] = ev["t"]
            else:
                self._replies.put_nowait(ev)
            self.changed.set()

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    def join(self, node_id: str, address: str) -> None:
        self._send({"cmd": "join", "id": node_id, "address": address})

    def update(self, key: str, value: Any) -> None:
        self._send({"cmd": "update", "key": key, "value": value})

    async def stats(self) -> dict[str, Any]:
        self._send({"cmd": "stats"})
        return await asyncio.wait_for(self._replies.get(), 30)

    def alive_view(self) -> set[str]:
        return {n for n, s in self.status.items() if s in ("alive", "suspect")}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """kill -9, by pid."""
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


class MeshCluster:
    """N members on 127.0.2.x (ephemeral ports), each with its own node certificate."""

    def __init__(self, root: Path, n: int, *, pki: Any | None, preset: str = "local",
                 config: dict[str, Any] | None = None, ip_base: int = 1) -> None:
        self.root = root
        self.pki = pki
        self.preset = preset
        self.config = config or {}
        self.procs: list[MeshProc] = []
        for i in range(n):
            self.procs.append(self.new_proc(f"g{i}", i + ip_base))

    def new_proc(self, node_id: str, ip_last: int) -> MeshProc:
        ip = f"127.0.2.{ip_last}"
        tls_dir = None
        if self.pki is not None:
            tls_dir = Path(self.pki.node(node_id, ips=(ip,)).cert).parent
        return MeshProc(node_id, f"{ip}:0", tls_dir=tls_dir, storage=self.root / node_id,
                        preset=self.preset, config=self.config)

    async def start(self, *, concurrency: int = 4) -> None:
        """Start everyone (a few at a time: imports are CPU-heavy), then join through g0."""
        sem = asyncio.Semaphore(concurrency)

        async def one(p: MeshProc) -> None:
            async with sem:
                await p.start()

        await asyncio.gather(*(one(p) for p in self.procs))
        seed = self.procs[0]
        assert seed.address is not None
        for p in self.procs[1:]:
            p.join(seed.node_id, seed.address)

    @property
    def ids(self) -> set[str]:
        return {p.node_id for p in self.procs}

    def live(self) -> list[MeshProc]:
        return [p for p in self.procs if p.proc is not None and p.proc.returncode is None]

    async def wait(self, cond: Any, timeout: float, what: str) -> float:
        """Poll ``cond()`` on every child event, until ``timeout``; returns the time taken."""
        t0 = time.monotonic()
        while True:
            for p in self.procs:
                p.changed.clear()
            if cond():
                break
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            waiters = [asyncio.ensure_future(p.changed.wait()) for p in self.procs]
            await asyncio.wait(waiters, timeout=min(left, 0.5),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        return time.monotonic() - t0

    def converged(self, expected: set[str]) -> bool:
        """Every live member sees exactly ``expected`` (itself aside) as alive."""
        return all(p.alive_view() == expected - {p.node_id} for p in self.live())

    def settled(self, quiet_for: float) -> bool:
        """Every live member sees every other one alive (none suspect), and no membership
        change has arrived from anyone for ``quiet_for`` seconds."""
        live = self.live()
        ids = {p.node_id for p in live}
        if not all({n for n, s in p.status.items() if s == "alive"} == ids - {p.node_id}
                   for p in live):
            return False
        last = max((p.history[-1][0] for p in live if p.history), default=0.0)
        return time.monotonic() - last >= quiet_for

    def declared_dead_since(self, since: float) -> set[str]:
        """Members that any live member declared dead after ``since`` (monotonic)."""
        return {node for p in self.live() for t, node, status in p.history
                if t > since and status == "dead"}

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)


if __name__ == "__main__":
    child_entry()
