"""Gossip mesh benchmark: real GossipMesh processes against real Serf agents, same run.

    .venv/bin/python bench/gossip.py [--sizes 10,30] [--repeats 5] [--profile serf-lan|daemon]
                                     [--config JSON] [--event-loop uvloop|asyncio]
                                     [--no-serf] [--no-sim]

For each N: N members on 127.0.2.x (GossipMesh, mutual TLS) and, where the
``serf`` binary is installed, N Serf agents on 127.0.3.x (``-profile=lan``),
driven through Serf's RPC (member lists polled every 100 ms, user events
streamed). Our members run, by default, the timings of Serf's LAN profile
(memberlist's DefaultLANConfig: probe 1 s, probe timeout 500 ms, gossip 200 ms
to 3 members, suspicion x4 up to x6, retransmit x4, push-pull 30 s), so the
ratios compare the implementations, not their settings. ``--profile daemon``
runs what the node daemon runs instead (NodeSettings defaults); ``--config``
overrides either. Both sides' settings are printed. Measured alike:

* join: the last member joins through the first; until every member lists it alive;
* dissemination: one state update (Serf: one user event, coalescing off) until it
  reached every member, p50 and max over members and repeats;
* failure detection: kill -9 of one member until every survivor lists it dead/failed;
* idle CPU (% of one core) and RSS per member, over ``--idle`` seconds.

Then the simulator's rounds to full dissemination (fanout 3, 0% loss) for N up to
10,000 against log3(N) + 3. Prints numbers and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "node_image")]

import msgpack  # noqa: E402

from conftest import TestPKI  # noqa: E402
from continuum.federation.distributed import config as node_config  # noqa: E402
from continuum.federation.distributed import mesh  # noqa: E402
from integration.mesh_proc import MeshCluster, MeshProc  # noqa: E402
from sim.swim import simnet  # noqa: E402

# memberlist's DefaultLANConfig, which `serf agent -profile=lan` runs, in MeshConfig's terms.
SERF_LAN = {"probe_interval_ms": 1000, "probe_timeout_ms": 500, "gossip_interval_ms": 200,
            "fanout": 3, "indirect_checks": 3, "suspicion_mult": 4,
            "suspicion_max_timeout_mult": 6, "retransmit_mult": 4,
            "sync_interval_seconds": 30.0, "awareness_max_multiplier": 8}
SERF_LAN_TEXT = ("probe 1000 ms, probe timeout 500 ms, gossip 200 ms to 3, indirect checks 3, "
                 "suspicion x4 (max x6), retransmit x4, push-pull 30 s, awareness max x8")


def daemon_profile() -> dict[str, Any]:
    """What the node daemon passes to MeshConfig with default NodeSettings."""
    m = node_config.MeshSettings()
    return {"fanout": m.fanout, "gossip_interval_ms": m.gossip_interval_ms,
            "sync_interval_seconds": m.sync_interval_seconds,
            "message_buffer_size": m.message_buffer_size}


def describe(overrides: dict[str, Any]) -> str:
    c = mesh.MeshConfig(**overrides)
    return (f"probe {c.probe_interval_ms:g} ms, probe timeout {c.probe_timeout_ms:g} ms, "
            f"gossip {c.gossip_interval_ms:g} ms to {c.fanout}, indirect checks "
            f"{c.indirect_checks}, suspicion x{c.suspicion_mult} (max "
            f"x{c.suspicion_max_timeout_mult}), retransmit x{c.retransmit_mult}, push-pull "
            f"{c.sync_interval_seconds:g} s, awareness max x{c.awareness_max_multiplier}")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        await asyncio.sleep(0.01)
    return True


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def idle_usage(pids: list[int], seconds: float) -> tuple[float, float]:
    a = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    b = [cpu_seconds(p) for p in pids]
    dt = time.monotonic() - t0
    cpu = statistics.mean(100 * (y - x) / dt for x, y in zip(a, b, strict=True))
    return cpu, statistics.mean(rss_mib(p) for p in pids)


# -- GossipMesh -----------------------------------------------------------------------------


async def bench_mesh(n: int, repeats: int, idle: float, config: dict[str, Any],
                     pki: TestPKI, root: Path, settle: float) -> dict[str, Any]:
    cluster = MeshCluster(root / f"mesh{n}", n - 1, pki=pki, preset="lan", config=config,
                          ip_base=1)
    res: dict[str, Any] = {}
    try:
        await cluster.start()
        ids = cluster.ids
        await cluster.wait(lambda: cluster.converged(ids), 120, "N-1 converged")
        # join of the last member
        last = cluster.new_proc(f"g{n - 1}", n)
        cluster.procs.append(last)
        await last.start()
        seed = cluster.procs[0]
        assert seed.address is not None
        t0 = time.time()
        last.join(seed.node_id, seed.address)
        await cluster.wait(lambda: cluster.converged(cluster.ids), 120, "join")
        seen = [p.first_seen[(last.node_id, "alive")] for p in cluster.procs[:-1]]
        res["join_s"] = max(seen) - t0
        # dissemination, once connections are warm (ours are TLS over TCP; Serf's UDP is not)
        await asyncio.sleep(settle)
        lat: list[float] = []
        maxes: list[float] = []
        for r in range(repeats):
            origin = cluster.procs[(r * 7) % n]
            key = f"bench{r}"
            origin.update(key, r)
            await cluster.wait(lambda k=key, o=origin: all(  # type: ignore[misc]
                (o.node_id, k) in p.state for p in cluster.procs if p is not o), 60, "update")
            t_up = origin.updated_at[key]
            one = [p.state[(origin.node_id, key)][1] - t_up for p in cluster.procs
                   if p is not origin]
            lat += one
            maxes.append(max(one))
        res["dissem_p50_ms"] = 1000 * pct(lat, 0.5)
        res["dissem_max_ms"] = 1000 * max(maxes)
        # idle
        await asyncio.sleep(2.0)
        res["idle_cpu_pct"], res["rss_mib"] = await idle_usage([p.pid for p in cluster.procs],
                                                                idle)
        # kill -9
        victim = cluster.procs[n // 2]
        t0 = time.time()
        victim.kill()
        live = [p for p in cluster.procs if p is not victim]
        await cluster.wait(lambda: all(p.status.get(victim.node_id) == "dead" for p in live),
                           120, "detection")
        res["detect_s"] = max(p.first_seen[(victim.node_id, "dead")] for p in live) - t0
        res["false_dead"] = sum(1 for p in live for node, s in p.status.items()
                                if s == "dead" and node != victim.node_id)
    finally:
        await cluster.stop()
    return res


# -- Serf -----------------------------------------------------------------------------------


class SerfRPC:
    """The few commands of Serf's msgpack RPC (handshake, join, event, stream) we need."""

    def __init__(self) -> None:
        self.unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self.seq = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        await self.call("handshake", {"Version": 1})

    async def _next(self) -> Any:
        assert self.reader is not None
        while True:
            with contextlib.suppress(StopIteration):
                return next(self.unpacker)
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("serf rpc closed")
            self.unpacker.feed(data)

    async def call(self, cmd: str, body: dict[str, Any] | None = None, *,
                   reply_body: bool = False) -> Any:
        assert self.writer is not None
        self.seq += 1
        data = msgpack.packb({"Command": cmd, "Seq": self.seq}, use_bin_type=False)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=False)
        self.writer.write(data)
        await self.writer.drain()
        header = await self._next()
        if header.get("Error"):
            raise RuntimeError(f"serf {cmd}: {header['Error']}")
        return await self._next() if reply_body else None

    async def stream(self, types: str, on_event: Callable[[dict[str, Any], float], None]) -> None:
        await self.call("stream", {"Type": types})
        while True:
            await self._next()  # header
            on_event(await self._next(), time.time())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class SerfAgent:
    def __init__(self, name: str, ip: str) -> None:
        self.name = name
        self.ip = ip
        self.proc: asyncio.subprocess.Process | None = None
        self.rpc = SerfRPC()
        self.events = SerfRPC()
        self.poll = SerfRPC()
        self.stream_task: asyncio.Task[None] | None = None
        self.poll_task: asyncio.Task[None] | None = None
        self.paused = False
        # (member, status) from member lists polled every 100 ms, as the anchor figures were
        # taken (streamed member events are coalesced by the agent); (name, "user") streamed.
        self.first: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "serf", "agent", "-profile=lan", f"-node={self.name}", f"-bind={self.ip}:7946",
            f"-rpc-addr={self.ip}:7373", "-log-level=err",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((self.ip, 7373), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await self.rpc.connect(self.ip, 7373)
        await self.events.connect(self.ip, 7373)
        await self.poll.connect(self.ip, 7373)
        self.stream_task = asyncio.create_task(self.events.stream("user", self._on_event))
        self.poll_task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            if self.paused:  # not while idle CPU is measured
                await asyncio.sleep(0.1)
                continue
            reply = await self.poll.call("members", reply_body=True)
            t = time.time()
            for m in reply.get("Members") or []:
                self.first.setdefault((m.get("Name", ""), m.get("Status", "")), t)
            await asyncio.sleep(0.1)

    def _on_event(self, ev: dict[str, Any], t: float) -> None:
        if ev.get("Event") == "user":
            self.first.setdefault((ev.get("Name", ""), "user"), t)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        for task in (self.stream_task, self.poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.rpc.close()
        self.events.close()
        self.poll.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.proc.wait()


async def bench_serf(n: int, repeats: int, idle: float, settle: float) -> dict[str, Any]:
    agents = [SerfAgent(f"s{i}", f"127.0.3.{i + 1}") for i in range(n)]
    res: dict[str, Any] = {}
    try:
        for a in agents[:-1]:
            await a.start()
        seed = f"{agents[0].ip}:7946"
        for a in agents[1:-1]:
            await a.rpc.call("join", {"Existing": [seed], "Replay": False}, reply_body=True)
        early = agents[:-1]
        names = [a.name for a in early]
        await until(lambda: all((m, "alive") in a.first for a in early for m in names), 120)
        last = agents[-1]
        await last.start()
        t0 = time.time()
        await last.rpc.call("join", {"Existing": [seed], "Replay": False}, reply_body=True)
        await until(lambda: all((last.name, "alive") in a.first for a in agents), 120)
        res["join_s"] = max(a.first[(last.name, "alive")] for a in early) - t0
        await asyncio.sleep(settle)
        lat: list[float] = []
        maxes: list[float] = []
        for r in range(repeats):
            origin = agents[(r * 7) % n]
            name = f"bench{r}"
            t0 = time.time()
            await origin.rpc.call("event", {"Name": name, "Payload": b"x", "Coalesce": False})
            others = [a for a in agents if a is not origin]
            await until(lambda nm=name, os_=others: all(  # type: ignore[misc]
                (nm, "user") in a.first for a in os_), 60)
            one = [a.first[(name, "user")] - t0 for a in others if (name, "user") in a.first]
            lat += one
            maxes.append(max(one))
        res["dissem_p50_ms"] = 1000 * pct(lat, 0.5)
        res["dissem_max_ms"] = 1000 * max(maxes)
        await asyncio.sleep(2.0)
        for a in agents:
            a.paused = True
        res["idle_cpu_pct"], res["rss_mib"] = await idle_usage([a.pid for a in agents], idle)
        for a in agents:
            a.paused = False
        victim = agents[n // 2]
        t0 = time.time()
        victim.kill()
        live = [a for a in agents if a is not victim]
        ok = await until(lambda: all((victim.name, "failed") in a.first for a in live), 120)
        res["detect_s"] = (max(a.first[(victim.name, "failed")] for a in live) - t0
                           if ok else float("nan"))
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
    return res


# -- report ---------------------------------------------------------------------------------


FIELDS = [("join_s", "join (s)"), ("dissem_p50_ms", "update p50 (ms)"),
          ("dissem_max_ms", "update max (ms)"), ("detect_s", "kill -9 detect (s)"),
          ("idle_cpu_pct", "idle CPU (%core)"), ("rss_mib", "RSS (MiB)")]


def report(n: int, ours: dict[str, Any], serf: dict[str, Any] | None) -> None:
    print(f"\nN = {n}   (false deaths in our run: {ours.get('false_dead')})")
    print(f"  {'metric':22} {'GossipMesh':>12} {'Serf':>10} {'ours/serf':>10}")
    for key, label in FIELDS:
        a = ours.get(key, float("nan"))
        b = serf.get(key, float("nan")) if serf else float("nan")
        ratio = a / b if serf and b and b == b else float("nan")
        print(f"  {label:22} {a:12.2f} {b:10.2f} {ratio:10.2f}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,30")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    ap.add_argument("--profile", choices=["serf-lan", "daemon"], default="serf-lan",
                    help="our side's timings: Serf's LAN profile (like for like, the default) "
                         "or the node daemon's own defaults")
    ap.add_argument("--config", default="{}",
                    help="JSON MeshConfig overrides for our side, on top of --profile")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between the join and the dissemination runs")
    ap.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="our members' event loop; uvloop is the node daemon's default")
    ap.add_argument("--no-serf", action="store_true")
    ap.add_argument("--no-sim", action="store_true")
    args = ap.parse_args()
    os.environ["MESH_PROC_LOOP"] = args.event_loop  # the member processes inherit it
    base = dict(SERF_LAN) if args.profile == "serf-lan" else daemon_profile()
    config = {**base, **json.loads(args.config)}
    have_serf = shutil.which("serf") is not None and not args.no_serf
    print(f"GossipMesh ({args.profile} profile{' + --config' if args.config != '{}' else ''}), "
          f"mutual TLS on 127.0.2.x, {args.event_loop}: {describe(config)}")
    print(f"Serf (-profile=lan), on 127.0.3.x: "
          f"{SERF_LAN_TEXT if have_serf else 'not installed, not run'}")
    root = Path(tempfile.mkdtemp(prefix="gossip-bench-"))
    pki = TestPKI(root / "pki")
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            ours = await bench_mesh(n, args.repeats, args.idle, config, pki, root, args.settle)
            serf = (await bench_serf(n, args.repeats, args.idle, args.settle)
                    if have_serf else None)
            report(n, ours, serf)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not args.no_sim:
        print("\nSimulator: synchronous gossip rounds until one update reaches all N "
              "(fanout 3, retransmit mult 4, 0% loss; 5 seeds)")
        for n in (100, 1000, 10_000):
            rounds = [simnet.epidemic_rounds(n, fanout=3, retransmit_mult=4, seed=s)
                      for s in range(5)]
            print(f"  N={n:>6}: rounds {rounds}  bound log3(N)+3 = "
                  f"{simnet.epidemic_bound(n, 3):.2f}")


if __name__ == "__main__":
    _ = MeshProc  # re-exported helper, kept for interactive use
    asyncio.run(main())
