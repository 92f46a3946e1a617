"""A Raft node as a real process, and the parent-side handle that drives it.

Child: ``python raft_proc.py --node-id n --bind 127.0.1.5:0 --tls-dir D --storage S``
opens its mTLS peer transport, prints ``{"ready": true, "address": ...}``, then
obeys JSON commands, one per line on stdin, answering each on stdout
(``{"id": n, ...}``). ``start`` builds the ``RaftConsensus`` (so every node's
bootstrap configuration carries every address, ports being ephemeral). The
state machine records applied command ids in order (``seen``), with snapshot
callbacks, so the parent can check order, duplicates and loss. ``bench`` runs
concurrent proposals in-process on this node and reports throughput and
latency percentiles.

Parent: ``RaftProc`` starts, calls, kills (SIGKILL by pid) and stops a child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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
    import msgpack

    from continuum.federation.distributed import consensus
    from continuum.federation.distributed.transport import peer, tls

    files = None if args.insecure else tls.TLSFiles.from_dir(args.tls_dir)
    transport = peer.PeerTransport(args.node_id, args.bind, files, insecure=args.insecure)
    await transport.start()
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    emit({"ready": True, "address": transport.address, "node_id": args.node_id})
    raft: consensus.RaftConsensus | None = None
    seen: list[str] = []
    applied = 0

    def apply(cmd: Any) -> None:
        nonlocal applied
        applied += 1
        if not args.bench:
            seen.append(cmd["id"])

    def take() -> bytes:
        data: bytes = msgpack.packb([applied, seen])
        return data

    def restore(data: bytes) -> None:
        nonlocal applied, seen
        applied, seen = msgpack.unpackb(data)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[Any]] = set()

    async def bench(concurrency: int, duration: float, size: int) -> dict[str, Any]:
        assert raft is not None
        payload = "x" * size
        lat: list[float] = []
        fails = 0
        stop_at = time.perf_counter() + duration

        async def worker(w: int) -> None:
            nonlocal fails
            for i in itertools.count():
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                ok = await raft.append_entry({"id": f"b{w}-{i}", "v": payload})
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    fails += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
        lat.sort()

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None

        return {"count": len(lat), "failed": fails, "elapsed": elapsed,
                "rate": len(lat) / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        nonlocal raft
        op = cmd["op"]
        if op == "start":
            raft = consensus.RaftConsensus(
                args.node_id, cmd["cluster"], tuple(cmd.get("election", (150, 300))),
                cmd.get("heartbeat", 50), peers=cmd["peers"], storage_path=args.storage,
                transport=transport, join=cmd.get("join", False), fsync=not args.no_fsync,
                snapshot_threshold=cmd.get("snapshot_threshold", 20_000),
                advertise_address=transport.address)
            raft.register_apply_callback(apply)
            raft.register_snapshot_callbacks(take, restore)
            await raft.start()
            return {}
        assert raft is not None
        if op == "propose":
            ok = await raft.append_entry({"id": cmd["cmd"]}, request_id=cmd.get("rid"),
                                         timeout=cmd.get("timeout", 10.0))
            return {"ok": ok, "leader": raft.leader_id}
        if op == "status":
            return {"stats": raft.get_stats(), "members": raft.members(),
                    "seen": seen if cmd.get("seen") else None}
        if op == "read":
            return {"index": await raft.read_index()}
        if op == "add_member":
            await raft.add_member(cmd["node"], cmd["address"])
            return {}
        if op == "remove_member":
            await raft.remove_member(cmd["node"])
            return {}
        if op == "transfer":
            return {"leader": await raft.transfer_leadership(cmd.get("to"))}
        if op == "bench":
            return await bench(cmd["concurrency"], cmd["duration"], cmd.get("size", 100))
        raise ValueError(f"unknown op {op!r}")

    async def run(cmd: dict[str, Any]) -> None:
        try:
            reply = await handle(cmd)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        emit({"id": cmd.get("id"), **reply})

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd.get("op") == "stop":
            break
        t = loop.create_task(run(cmd))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    for t in list(tasks):
        t.cancel()
    if raft is not None:
        await raft.stop()
    await transport.stop()
    emit({"stopped": True})


# -- parent ------------------------------------------------------------------------------------


class RaftProc:
    """Handle on one child process; ``address`` is kept across restarts."""

    def __init__(self, node_id: str, host: str, tls_dir: Path | None, storage: Path, *,
                 fsync: bool = True, bench: bool = False) -> None:
        self.node_id = node_id
        self.host = host
        self.tls_dir = tls_dir
        self.storage = storage
        self.fsync = fsync
        self.bench = bench
        self.address: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, Any]] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def spawn(self, timeout: float = 60.0) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "node_image"), env.get("PYTHONPATH", "")])
        bind = self.address or f"{self.host}:0"
        argv = [sys.executable, str(HERE / "raft_proc.py"), "--node-id", self.node_id,
                "--bind", bind, "--storage", str(self.storage)]
        argv += ["--tls-dir", str(self.tls_dir)] if self.tls_dir else ["--insecure"]
        if not self.fsync:
            argv.append("--no-fsync")
        if self.bench:
            argv.append("--bench")
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=64 * 1024 * 1024)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._reader = loop.create_task(self._read())
        hello = await asyncio.wait_for(self._ready, timeout)
        self.address = hello["address"]
        assert self.address is not None
        return self.address

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "ready" in msg and self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
            elif "id" in msg and msg["id"] in self._waiting:
                fut = self._waiting.pop(msg["id"])
                if not fut.done():
                    fut.set_result(msg)
        err = ConnectionError(f"{self.node_id} exited")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)

    async def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        if self._proc is None or self._proc.stdin is None or not self.alive:
            raise ConnectionError(f"{self.node_id} is not running")
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        self._proc.stdin.write((json.dumps({"id": i, "op": op, **kw}) + "\n").encode())
        await self._proc.stdin.drain()
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{self.node_id}: {reply['error']}")
        return reply

    async def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self._proc is not None and self._proc.returncode is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self, timeout: float = 20.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            await self.kill()
            return
        with contextlib.suppress(ConnectionError, BrokenPipeError, OSError):
            assert proc.stdin is not None
            proc.stdin.write(b'{"op": "stop"}\n')
            await proc.stdin.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout)
        await self.kill()


async def start_cluster(procs: list[RaftProc], **opts: Any) -> None:
    """Spawn every process, then start Raft on each with everyone's address."""
    await asyncio.gather(*(p.spawn() for p in procs))
    peers = {p.node_id: p.address for p in procs}
    cluster = [p.node_id for p in procs]
    await asyncio.gather(*(p.call("start", cluster=cluster, peers=peers, **opts)
                           for p in procs))


async def restart(p: RaftProc, procs: list[RaftProc], **opts: Any) -> None:
    """Start a killed node again on the same address and data directory."""
    await p.spawn()
    peers = {q.node_id: q.address for q in procs}
    await p.call("start", cluster=[q.node_id for q in procs], peers=peers, **opts)


async def find_leader(procs: list[RaftProc], timeout: float = 30.0) -> RaftProc:
    """The live process that says it leads; ``TimeoutError`` (saying what each said)."""
    import waiting  # the test process's helper; this file also runs as a node process

    async def roles() -> dict[str, str]:
        out = {}
        for p in procs:
            if not p.alive:
                out[p.node_id] = "down"
                continue
            try:
                out[p.node_id] = (await p.call("status", timeout=5))["stats"]["role"]
            except (ConnectionError, RuntimeError, TimeoutError) as exc:
                out[p.node_id] = type(exc).__name__
        return out

    try:
        said = await waiting.until(roles, lambda r: "leader" in r.values(), timeout=timeout,
                                   what="a leader (each process's role)")
    except AssertionError as exc:
        raise TimeoutError(str(exc)) from None
    return next(p for p in procs if said[p.node_id] == "leader")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--node-id", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--tls-dir")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--storage", required=True)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--bench", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    if os.environ.get("RAFT_PROC_PROFILE"):  # a cProfile dump per node, for bench analysis
        import cProfile

        cProfile.run("asyncio.run(child_main(_args))",
                     f"{os.environ['RAFT_PROC_PROFILE']}.{_args.node_id}")
    else:
        asyncio.run(child_main(_args))
