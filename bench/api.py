"""Writes through the node's HTTP API vs etcd's JSON gateway, same load generator, same run.

A 3-node local cluster (real processes, mutual TLS, fsync on) takes closed-loop
``PUT /v1/concepts/{id}?consistency=strong`` (through Raft) and default
(multi-master) writes of 100-byte values at concurrency 1, 16 and 64; where
etcd is installed (``apt-get install -y etcd-server``), a 3-member etcd takes
``POST /v3/kv/put`` to its leader the same way (plain HTTP, as the anchor was
measured). Prints ops/s and p50/p99 and the ratios. Never fails on a timing.

Run: .venv/bin/python bench/api.py [--seconds 5] [--skip-etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node_image"))

from continuum.federation.distributed import client, local  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402

VALUE = {"v": "x" * 92}  # 100 bytes of JSON
CONCURRENCY = (1, 16, 64)
ANCHOR = {1: (768, 2.54), 16: (2410, 14.2), 64: (3591, 35.1)}  # etcd ops/s, p99 ms


async def closed_loop(op: Callable[[int], Awaitable[None]], concurrency: int, seconds: float
                      ) -> tuple[float, float, float]:
    """ops/s, p50 ms, p99 ms of ``op`` run back to back by ``concurrency`` workers."""
    for i in range(min(50, concurrency * 4)):  # warm connections
        await op(i)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await op(next(counter))
            latencies.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000


async def ours(seconds: float) -> dict[str, dict[int, tuple[float, float, float]]]:
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    nodes = local.plan(3, "127.0.10.1", 7000, 8080)
    cluster = local.LocalCluster(work, nodes)
    cluster.start()
    results: dict[str, dict[int, tuple[float, float, float]]] = {"strong": {}, "default": {}}
    try:
        await local.wait_ready(work, 60, None, cluster)
        _, files = client.local_cluster(work)
        rows = await local.poll_status(work)
        leader = next(r["leader_id"] for r in rows if r.get("leader_id"))
        url = next(n.api_url for n in nodes if n.node_id == leader)
        ctx = tls.client_context(files)
        conn = aiohttp.TCPConnector(ssl=ctx, limit=0)
        leaders = {"changes": 0}
        async with aiohttp.ClientSession(connector=conn) as http:
            for mode in ("strong", "default"):
                params = {"consistency": "strong"} if mode == "strong" else {}

                # Each mode writes its own keys: a concept lives in one consistency domain.
                async def put(i: int, params: dict[str, str] = params, mode: str = mode) -> None:
                    nonlocal url
                    async with http.put(f"{url}/v1/concepts/bench-{mode}-{i % 10000}", json=VALUE,
                                        params=params) as r:
                        if r.status == 421:  # leadership moved: follow it, as clients do
                            leaders["changes"] += 1
                            url = f"https://{(await r.json())['leader_address']}"
                        elif r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")

                for c in CONCURRENCY:
                    results[mode][c] = await closed_loop(put, c, seconds)
                    print(f"  ours {mode:<7} c={c:<3} {results[mode][c][0]:>7.0f} ops/s  "
                          f"p50 {results[mode][c][1]:.2f} ms  p99 {results[mode][c][2]:.2f} ms",
                          flush=True)
        if leaders["changes"]:
            print(f"  (leadership moved {leaders['changes']} times during the run)")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _spawn_etcd(binary: str, i: int, work: Path, peer: str, client_url: str, initial: str
                ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, "--name", f"e{i}", "--data-dir", str(work / f"e{i}"),
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--initial-cluster", initial, "--initial-cluster-state", "new"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def etcd(seconds: float) -> dict[int, tuple[float, float, float]] | None:
    binary = shutil.which("etcd")
    if binary is None:
        print("  etcd not installed (apt-get install -y etcd-server): skipped")
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
    hosts = [f"127.0.10.{101 + i}" for i in range(3)]
    peers = [f"http://{h}:{_free_port(h)}" for h in hosts]
    clients = [f"http://{h}:{_free_port(h)}" for h in hosts]
    initial = ",".join(f"e{i}={p}" for i, p in enumerate(peers))
    procs = [_spawn_etcd(binary, i, work, peers[i], clients[i], initial) for i in range(3)]
    results: dict[int, tuple[float, float, float]] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            leader_url = None
            deadline = time.monotonic() + 30
            while leader_url is None and time.monotonic() < deadline:
                for url in clients:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.post(f"{url}/v3/maintenance/status", json={}) as r:
                            st = await r.json()
                            if st.get("leader") == st["header"]["member_id"]:
                                leader_url = url
                if leader_url is None:
                    await asyncio.sleep(0.1)
            if leader_url is None:
                raise TimeoutError("etcd elected no leader")
            value = base64.b64encode(b"v" * 100).decode()

            async def put(i: int) -> None:
                key = base64.b64encode(f"bench/{i % 10000}".encode()).decode()
                async with http.post(f"{leader_url}/v3/kv/put",
                                     json={"key": key, "value": value}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"etcd HTTP {r.status}")
                    await r.read()

            for c in CONCURRENCY:
                results[c] = await closed_loop(put, c, seconds)
                print(f"  etcd          c={c:<3} {results[c][0]:>7.0f} ops/s  "
                      f"p50 {results[c][1]:.2f} ms  p99 {results[c][2]:.2f} ms", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return results


async def main(args: argparse.Namespace) -> None:
    print("3-node local cluster, HTTP API over mutual TLS, fsync on, 100-byte values")
    mine = await ours(args.seconds)
    theirs = None if args.skip_etcd else await etcd(args.seconds)
    print("\nsummary")
    for c in CONCURRENCY:
        strong, default = mine["strong"][c], mine["default"][c]
        line = (f"  c={c:<3} strong {strong[0]:>6.0f}/s p99 {strong[2]:>6.2f} ms | default "
                f"{default[0]:>6.0f}/s | default/strong {default[0] / strong[0]:.2f}x")
        if theirs:
            e = theirs[c]
            line += (f" | strong/etcd throughput {strong[0] / e[0]:.2f}x, "
                     f"p99 ours/etcd {strong[2] / e[2]:.2f}x")
        anchor = ANCHOR[c]
        line += f" | (etcd anchor on this machine: {anchor[0]}/s, p99 {anchor[1]} ms)"
        print(line)
    print("like for like: both fsync every commit; ours adds mutual TLS, etcd's gateway is "
          "plain HTTP")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--skip-etcd", action="store_true")
    asyncio.run(main(ap.parse_args()))
