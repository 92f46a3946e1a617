"""Failover at the node's default settings: kill -9 of the leader until a strong write
succeeds on a survivor, for a 3-node local cluster and a 3-member etcd in the same run.

Ours: real node processes (``local.LocalCluster``, mutual TLS, the node's defaults: a
100 ms heartbeat, elections after 1-2 s of silence, and a follower that sees its leader's
connection drop campaigns at once). etcd 3.4 with its defaults (100 ms heartbeat,
1,000 ms election timeout), or ``--etcd-fast`` (50/300 ms, the anchor's other figure).
Each trial: find the leader, SIGKILL it, then from t0 start a write on every survivor
every 10 ms (ours: ``PUT /v1/concepts/{id}?consistency=strong``; etcd: ``/v3/kv/put``)
until one succeeds; the killed member is restarted and the cluster settles before the
next trial. Prints every trial, then median and max per system and their ratio. With
``--load C``, C clients keep writing to the leader through each trial (a loaded cluster).
Never fails on a timing.

Run: .venv/bin/python bench/failover.py [--trials 10] [--skip-etcd] [--etcd-fast]
         [--node-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node_image"))

import aiohttp  # noqa: E402

from continuum.federation.distributed import client, local  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402

VALUE = {"v": "x" * 92}
TARGET_MS = 600  # the ceiling for a failover at the node's defaults


async def first_success(survivors: list[str], put: Callable[[str, int], Awaitable[bool]],
                        t0: float) -> float:
    """ms from ``t0`` until a write on any survivor succeeds; one is started on each every
    10 ms (a write sent into a dead or deposed leader may hang for its whole timeout)."""
    done = asyncio.Event()
    got: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(target: str, n: int) -> None:
        if await put(target, n) and not done.is_set():
            got.append((time.perf_counter() - t0) * 1000)
            done.set()

    n = 0
    while not done.is_set():
        for s in survivors:
            n += 1
            task = asyncio.create_task(one(s, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.01)
    for task in list(tasks):
        task.cancel()
    return got[0]


async def ours(args: argparse.Namespace) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    nodes = local.plan(3, "127.0.10.41", 7000, 8080)
    urls = {n.node_id: n.api_url for n in nodes}
    env = dict(kv.split("=", 1) for kv in args.node_env)
    cluster = local.LocalCluster(work, nodes, env=env)
    cluster.start()
    out: list[float] = []
    try:
        await local.wait_ready(work, 60, None, cluster)
        _, files = client.local_cluster(work)
        ctx = tls.client_context(files)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
                timeout=aiohttp.ClientTimeout(total=3.0)) as http:

            async def put(node_id: str, n: int) -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.put(f"{urls[node_id]}/v1/concepts/fo-{n}", json=VALUE,
                                        params={"consistency": "strong"}) as r:
                        await r.read()
                        return r.status == 200
                return False

            for trial in range(args.trials):
                leader = await _our_leader(work)
                load = _background_load(put, leader, args.load)
                await asyncio.sleep(0.5 if args.load else 0)
                t0 = time.perf_counter()
                cluster.kill(leader)
                ms = await first_success([n for n in urls if n != leader], put, t0)
                for task in load:
                    task.cancel()
                out.append(ms)
                print(f"  ours trial {trial}: {ms:.0f} ms (killed {leader})", flush=True)
                cluster.start_node(leader)
                await local.wait_ready(work, 60, None, cluster)
                await _no_lag(work)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _background_load(put: Callable[[str, int], Awaitable[bool]], leader: str,
                     clients: int) -> list[asyncio.Task[None]]:
    async def writer(k: int) -> None:
        n = 10**6 * (k + 1)
        while True:
            n += 1
            await put(leader, n)
    return [asyncio.create_task(writer(k)) for k in range(clients)]


async def _our_leader(work: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = await local.poll_status(work)
        leaders = [r["id"] for r in rows if r.get("role") == "leader"]
        if len(leaders) == 1 and all("error" not in r for r in rows):
            return leaders[0]
        await asyncio.sleep(0.1)
    raise TimeoutError("no leader")


async def _no_lag(work: Path) -> None:
    """Until every node has applied what the leader committed (the restarted one caught up)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = await local.poll_status(work)
        commits = {r.get("commit_index") for r in rows} | {r.get("last_applied") for r in rows}
        if len(commits) == 1:
            return
        await asyncio.sleep(0.1)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def etcd(args: argparse.Namespace) -> list[float] | None:
    binary = shutil.which("etcd")
    if binary is None:
        print("  etcd not installed (apt-get install -y etcd-server): skipped")
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-failover-etcd-"))
    hosts = [f"127.0.10.{141 + i}" for i in range(3)]
    names = [f"e{i}" for i in range(3)]
    peers = [f"http://{h}:{_free_port(h)}" for h in hosts]
    urls = [f"http://{h}:{_free_port(h)}" for h in hosts]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
    timing = ["--heartbeat-interval", "50", "--election-timeout", "300"] if args.etcd_fast \
        else []
    procs: dict[int, asyncio.subprocess.Process] = {}

    async def spawn(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(
            binary, "--name", names[i], "--data-dir", str(work / names[i]),
            "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
            "--listen-client-urls", urls[i], "--advertise-client-urls", urls[i],
            "--initial-cluster", initial, "--initial-cluster-state", "new", *timing,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    out: list[float] = []
    value = base64.b64encode(b"v" * 100).decode()
    try:
        # No connection limit: writes into the dead leader hang, and must not hold up new ones.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=3.0)) as http:

            async def put(i: str, n: int) -> bool:
                key = base64.b64encode(f"fo-{n}".encode()).decode()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.post(f"{urls[int(i)]}/v3/kv/put",
                                         json={"key": key, "value": value}) as r:
                        await r.read()
                        return r.status == 200
                return False

            async def leader() -> int:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    for i in range(3):
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                            async with http.post(f"{urls[i]}/v3/maintenance/status",
                                                 json={}) as r:
                                st = await r.json()
                                if st.get("leader") == st["header"]["member_id"]:
                                    return i
                    await asyncio.sleep(0.1)
                raise TimeoutError("etcd elected no leader")

            await asyncio.gather(*(spawn(i) for i in range(3)))
            for trial in range(args.trials):
                li = await leader()
                load = _background_load(put, str(li), args.load)
                await asyncio.sleep(0.5 if args.load else 0)
                t0 = time.perf_counter()
                os.kill(procs[li].pid, signal.SIGKILL)
                await procs[li].wait()
                ms = await first_success([str(i) for i in range(3) if i != li], put, t0)
                for task in load:
                    task.cancel()
                out.append(ms)
                print(f"  etcd trial {trial}: {ms:.0f} ms", flush=True)
                await spawn(li)
                await leader()
                await asyncio.sleep(1.0)  # etcd offers nothing to await for a member's catch-up
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.kill()
                await p.wait()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _stats(name: str, ms: list[float]) -> str:
    return (f"  {name:<5} median {statistics.median(ms):5.0f} ms, max {max(ms):5.0f} ms, "
            f"min {min(ms):5.0f} ms (n={len(ms)})")


async def main(args: argparse.Namespace) -> None:
    print(f"failover: kill -9 of the leader until a strong write succeeds; load average "
          f"{os.getloadavg()[0]:.1f}")
    mine = await ours(args)
    theirs = None if args.skip_etcd else await etcd(args)
    print("summary")
    print(_stats("ours", mine) + f" | at most {TARGET_MS} ms: "
          f"{'yes' if max(mine) <= TARGET_MS else 'no'}")
    if theirs:
        label = "etcd 50/300 ms" if args.etcd_fast else "etcd defaults 100/1000 ms"
        print(_stats("etcd", theirs) + f" ({label})")
        print(f"  ours/etcd: median {statistics.median(mine) / statistics.median(theirs):.2f}x, "
              f"max {max(mine) / max(theirs):.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--load", type=int, default=0,
                    help="clients writing to the leader through each trial")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--etcd-fast", action="store_true",
                    help="etcd at 50 ms heartbeat, 300 ms election (default: its defaults)")
    ap.add_argument("--node-env", action="append", default=[])
    asyncio.run(main(ap.parse_args()))
