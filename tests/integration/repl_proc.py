"""A replication node as a real process, and the parent-side handle that drives it.

Child: ``python repl_proc.py --node-id n --bind 127.0.3.1:0 --tls-dir D --storage S``
runs one ``MultiMasterReplicator`` over mTLS and obeys JSON commands, one per
line on stdin, answering each on stdout (``{"id": n, ...}``). Every write is
answered only after ``write()`` returned, i.e. once it is durable, so an
answer is an acknowledgement. ``stream`` writes until the process dies and
prints one ``{"ack": ...}`` line per acknowledged write (for kill -9 tests).

Parent: ``NodeProc`` starts, calls, kills (SIGKILL by pid) and stops a child.
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
    from continuum.federation.distributed import replication
    from continuum.federation.distributed.core.crdt import resolver

    tls_dir = Path(args.tls_dir)
    r = replication.MultiMasterReplicator(
        args.node_id,
        resolver=resolver.ConflictResolver(resolver.ConflictResolutionStrategy(args.strategy)),
        storage_path=args.storage, bind_address=args.bind,
        tls_cert=str(tls_dir / "tls.crt"), tls_key=str(tls_dir / "tls.key"),
        tls_ca=str(tls_dir / "ca.crt"), anti_entropy_interval=args.ae_interval,
        push_interval=args.push_interval, fsync=not args.no_fsync)
    arrivals: list[tuple[str, float, float]] = []

    def on_change(key: str, value: Any) -> None:
        # Load-test values carry their origin time; record when each reached us.
        if isinstance(value, dict) and "t0" in value and value.get("by") != args.node_id:
            arrivals.append((key, value["t0"], time.time()))

    r.register_change_callback(on_change)
    await r.start()
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    emit({"ready": True, "address": r.address, "node_id": args.node_id})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[Any]] = set()

    async def write_acked(key: str, value: Any) -> list[Any]:
        rv = await r.write(key, value)
        return [key, rv.node_id, rv.dot[1]]

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "write":
            return {"ack": await write_acked(cmd["key"], cmd["value"])}
        if op == "burst":  # many concurrent writes; answer with every acknowledgement
            sem = asyncio.Semaphore(cmd.get("concurrency", 8))

            async def one(kv: list[Any]) -> list[Any]:
                async with sem:
                    return await write_acked(kv[0], kv[1])

            return {"acks": await asyncio.gather(*(one(kv) for kv in cmd["writes"]))}
        if op == "delete":
            return {"deleted": await r.delete(cmd["key"])}
        if op == "read":
            return {"value": await r.read(cmd["key"])}
        if op == "peers":
            r.set_peers(cmd["peers"])
            return {}
        if op == "dump":
            states = r._replica.states
            return {"root": f"{r.merkle_root:016x}",
                    "keys": {k: {"context": s.context.to_dict(), "value": r._replica.read(k)}
                             for k, s in states.items()}}
        if op == "stats":
            return {"stats": r.get_stats()}
        if op == "stream":  # write forever, one ack line each, until killed
            async def forever(worker: int) -> None:
                for i in itertools.count():
                    ack = await write_acked(f"stream-{worker}-{i}", {"w": worker, "i": i})
                    emit({"ack": ack})

            for w in range(cmd.get("workers", 4)):
                t = loop.create_task(forever(w))
                tasks.add(t)
            return {}
        if op == "load":  # steady writes at `rate`/s for `duration` s, values carry t0
            rate, duration = cmd["rate"], cmd["duration"]
            start = time.monotonic()
            n = 0
            pending: set[asyncio.Task[Any]] = set()
            while time.monotonic() - start < duration:
                target = int((time.monotonic() - start) * rate)
                while n < target:
                    key = f"load-{args.node_id}-{n}"
                    wt = loop.create_task(r.write(key, {"t0": time.time(), "by": args.node_id}))
                    pending.add(wt)
                    wt.add_done_callback(pending.discard)
                    n += 1
                # Sleep until the next write is due: fewer wakeups on a busy machine.
                due = (n + 1) / rate - (time.monotonic() - start)
                await asyncio.sleep(max(0.0, due))  # paced: writes at a steady rate
            if pending:
                await asyncio.gather(*pending)
            return {"written": n}
        if op == "arrivals":
            data = list(arrivals)
            arrivals.clear()
            return {"arrivals": data}
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
    await r.stop()
    emit({"stopped": True})


# -- parent ------------------------------------------------------------------------------------


class NodeProc:
    """Handle on one child process."""

    def __init__(self, node_id: str, host: str, tls_dir: Path, storage: Path, *,
                 ae_interval: float = 0.5, strategy: str = "last_write_wins",
                 fsync: bool = True, push_interval: float = 0.02) -> None:
        self.node_id = node_id
        self.host = host
        self.tls_dir = tls_dir
        self.storage = storage
        self.ae_interval = ae_interval
        self.strategy = strategy
        self.fsync = fsync
        self.push_interval = push_interval
        self.address: str | None = None
        self.acks: list[list[Any]] = []  # from ``stream``
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, Any]] | None = None

    async def start(self, timeout: float = 60.0) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "node_image"), env.get("PYTHONPATH", "")])
        argv = [sys.executable, str(HERE / "repl_proc.py"), "--node-id", self.node_id,
                "--bind", f"{self.host}:0", "--tls-dir", str(self.tls_dir),
                "--storage", str(self.storage), "--ae-interval", str(self.ae_interval),
                "--strategy", self.strategy, "--push-interval", str(self.push_interval)]
        if not self.fsync:
            argv.append("--no-fsync")
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=64 * 1024 * 1024)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())
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
            elif "ack" in msg and "id" not in msg:
                self.acks.append(msg["ack"])
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
        assert self._proc is not None and self._proc.stdin is not None
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        self._proc.stdin.write((json.dumps({"id": i, "op": op, **kw}) + "\n").encode())
        await self._proc.stdin.drain()
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{self.node_id}: {reply['error']}")
        return reply

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--node-id", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--tls-dir", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--ae-interval", type=float, default=0.5)
    p.add_argument("--strategy", default="last_write_wins")
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--push-interval", type=float, default=0.02)
    return p.parse_args(argv)


if __name__ == "__main__":
    if os.environ.get("REPL_PROC_PROFILE"):  # a cProfile dump per node, for bench analysis
        import cProfile

        _args = parse_args(sys.argv[1:])
        cProfile.run("asyncio.run(child_main(_args))",
                     f"{os.environ['REPL_PROC_PROFILE']}.{_args.node_id}")
    else:
        asyncio.run(child_main(parse_args(sys.argv[1:])))
