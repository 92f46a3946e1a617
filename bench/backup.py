"""Backup and restore throughput, and what taking a backup costs the cluster's writes.

A 3-node local cluster (real processes, mutual TLS, fsync on) is loaded with 100,000
concepts of 100-byte values, half strong (through Raft) and half default (multi-master).
Then, against a directory target:

* backup: ``backup create`` as the CLI runs it (from a caught-up follower: capture, stream
  over mutual TLS, check, fsync), MiB/s of archive;
* verify and restore: the archive read back and checked; restored into a new data
  directory (every state decoded and written, fsynced), MiB/s;
* writes during a backup: closed-loop writes (strong to the leader, then default to every
  node; concurrency 16) for ``--seconds``, first alone, then while backups run back to
  back, at full speed and paced (``--max-rate``, ``--paced`` MiB/s); the ratio is what the
  cluster keeps (target: >= 80%).

Where etcd is installed (``apt-get install -y etcd-server etcd-client``), the same run
loads 100,000 keys into a 3-member etcd and measures ``etcdctl snapshot save``,
``etcdutl snapshot restore`` and etcd's puts with and without a snapshot running.
Prints figures and ratios; never fails on a timing.

Run: .venv/bin/python bench/backup.py [--concepts 100000] [--seconds 10] [--paced 4]
     [--skip-etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import shutil
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

from api import _free_port, _spawn_etcd  # noqa: E402  (bench/api.py: etcd as it measures it)
from continuum.federation.distributed import client, local  # noqa: E402
from continuum.federation.distributed.backup import commands, restore, targets  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402

VALUE = {"v": "x" * 92}  # 100 bytes of JSON
MIB = 1024 * 1024
LOAD_CONCURRENCY = 64
WRITE_CONCURRENCY = 16


async def run_count(op: Callable[[int], Awaitable[None]], n: int, concurrency: int) -> float:
    """Seconds to run ``op(0..n-1)`` with ``concurrency`` workers."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await op(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def closed_loop(op: Callable[[int], Awaitable[None]], seconds: float) -> float:
    """ops/s of ``op`` run back to back by WRITE_CONCURRENCY workers for ``seconds``."""
    count = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await op(next(counter))
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WRITE_CONCURRENCY)))
    return count / (time.perf_counter() - t0)


class BackgroundBackups:
    """Backups back to back from one long-lived process (as a Job running ``backup create``
    would take them, without counting each Python start-up) until stopped."""

    def __init__(self, work: Path, target: Path, prefix: str, rate: float | None) -> None:
        self.work, self.target, self.prefix, self.rate = work, target, prefix, rate
        self.done = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BackgroundBackups:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--backup-loop", str(self.work), str(self.target),
            self.prefix, str(self.rate or 0), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        await self._proc.stdout.readline()  # "ready": imports done, about to start
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()  # the loop ends after the backup under way
        out, _ = await self._proc.communicate()
        if self._proc.returncode != 0:
            raise RuntimeError("the backup loop failed")
        self.done = int(out.decode().split()[-1])


async def backup_loop(work: str, target_dir: str, prefix: str, rate: str) -> None:
    """The child of ``BackgroundBackups``: backups until its stdin closes; prints the count."""
    urls, files = await commands._candidates(argparse.Namespace(
        api=None, tls_dir=None, data_dir=work, node=None))
    target = targets.DirectoryTarget(Path(target_dir))
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)
    print("ready", flush=True)
    n = 0
    while not closed.done():
        await commands.create(urls, files, target, f"{prefix}-{n}",
                              max_rate=float(rate) or None)
        n += 1
    print(n, flush=True)


async def ours(args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    nodes = local.plan(3, "127.0.61.1", 7000, 8080)
    cluster = local.LocalCluster(work / "cluster", nodes)
    cluster.start()
    out: dict[str, float] = {}
    try:
        await local.wait_ready(cluster.data_dir, 60, None, cluster)
        _, files = client.local_cluster(cluster.data_dir)
        rows = await local.poll_status(cluster.data_dir)
        leader = next(r["leader_id"] for r in rows if r.get("leader_id"))
        url = {n.node_id: n.api_url for n in nodes}
        conn = aiohttp.TCPConnector(ssl=tls.client_context(files), limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            lead = {"url": url[leader]}

            async def put(base: str | None, cid: str, strong: bool) -> None:
                """A write; strong ones (``base`` None) go to the leader, followed if it moves."""
                params = {"consistency": "strong"} if strong else {}
                while True:
                    async with http.put(f"{base or lead['url']}/v1/concepts/{cid}", json=VALUE,
                                        params=params) as r:
                        if r.status == 421 and base is None:
                            moved = (await r.json()).get("leader_address")
                            if moved:
                                lead["url"] = f"https://{moved}"
                            else:  # between leaders
                                await asyncio.sleep(0.05)
                            continue
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                        return

            half = args.concepts // 2
            took = await run_count(lambda i: put(None, f"s-{i}", True), half,
                                   LOAD_CONCURRENCY)
            print(f"  loaded {half} strong concepts in {took:.1f} s", flush=True)
            spread = [url[n.node_id] for n in nodes]
            took = await run_count(lambda i: put(spread[i % 3], f"d-{i}", False),
                                   args.concepts - half, LOAD_CONCURRENCY)
            print(f"  loaded {args.concepts - half} default concepts in {took:.1f} s", flush=True)

            bk = work / "backups"
            target = targets.DirectoryTarget(bk)
            urls, _ = await commands._candidates(argparse.Namespace(
                api=None, tls_dir=None, data_dir=str(cluster.data_dir), node=None))
            timings = {"backup": [], "verify": [], "restore": []}
            size = 0
            for n in range(3):
                t0 = time.perf_counter()
                m = await commands.create(urls, files, target, f"b{n}")
                timings["backup"].append(time.perf_counter() - t0)
                size = m.size
                t0 = time.perf_counter()
                await restore.verify(target, f"b{n}")
                timings["verify"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await restore.restore(target, f"b{n}", work / f"restored-{n}", "node-1",
                                      "127.0.61.1:7000")
                timings["restore"].append(time.perf_counter() - t0)
            out["size_mib"] = size / MIB
            for what, ts in timings.items():
                med = statistics.median(ts)
                out[what] = size / MIB / med
                print(f"  {what:<8} {size / MIB:6.1f} MiB in {med:.2f} s (median of 3): "
                      f"{out[what]:6.1f} MiB/s", flush=True)

            for mode in ("strong", "default"):
                def op(i: int, mode: str = mode) -> Awaitable[None]:
                    if mode == "strong":
                        return put(None, f"s-w{i % 10000}", True)
                    return put(spread[i % 3], f"d-w{i % 10000}", False)
                alone = await closed_loop(op, args.seconds)
                out[f"{mode}_alone"] = alone
                print(f"  {mode} writes c={WRITE_CONCURRENCY}: {alone:6.0f}/s alone", flush=True)
                for rate in (None, args.paced):
                    async with BackgroundBackups(cluster.data_dir, bk, f"bg-{mode}-{rate}",
                                                 rate) as bg:
                        during = await closed_loop(op, args.seconds)
                    how = f"paced at {rate:g} MiB/s" if rate else "full speed"
                    out[f"{mode}_during_{'paced' if rate else 'full'}"] = during
                    print(f"  {mode} writes c={WRITE_CONCURRENCY}: {during:6.0f}/s during "
                          f"{bg.done} backups back to back ({how}): {during / alone:.0%} kept",
                          flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


async def etcd(args: argparse.Namespace) -> dict[str, float] | None:
    binary, ctl, utl = shutil.which("etcd"), shutil.which("etcdctl"), shutil.which("etcdutl")
    if binary is None or ctl is None:
        print("  etcd not installed (apt-get install -y etcd-server etcd-client): skipped")
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-backup-etcd-"))
    hosts = [f"127.0.61.{101 + i}" for i in range(3)]
    peers = [f"http://{h}:{_free_port(h)}" for h in hosts]
    clients = [f"http://{h}:{_free_port(h)}" for h in hosts]
    initial = ",".join(f"e{i}={p}" for i, p in enumerate(peers))
    procs = [_spawn_etcd(binary, i, work, peers[i], clients[i], initial) for i in range(3)]
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            leader = None
            deadline = time.monotonic() + 30
            while leader is None and time.monotonic() < deadline:
                for u in clients:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.post(f"{u}/v3/maintenance/status", json={}) as r:
                            st = await r.json()
                            if st.get("leader") == st["header"]["member_id"]:
                                leader = u
                if leader is None:
                    await asyncio.sleep(0.1)
            if leader is None:
                raise TimeoutError("etcd elected no leader")
            follower = next(u for u in clients if u != leader)
            value = base64.b64encode(b"v" * 100).decode()

            async def put(i: int) -> None:
                key = base64.b64encode(f"bench/{i}".encode()).decode()
                async with http.post(f"{leader}/v3/kv/put",
                                     json={"key": key, "value": value}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"etcd HTTP {r.status}")
                    await r.read()

            took = await run_count(put, args.concepts, LOAD_CONCURRENCY)
            print(f"  etcd: loaded {args.concepts} keys in {took:.1f} s", flush=True)

            async def snapshot(path: Path) -> float:
                t0 = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    ctl, "--endpoints", follower, "snapshot", "save", str(path),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if await proc.wait() != 0:
                    raise RuntimeError("etcdctl snapshot save failed")
                return time.perf_counter() - t0

            saves, restores = [], []
            for n in range(3):
                snap = work / f"snap-{n}.db"
                saves.append(await snapshot(snap))
                if utl is not None:
                    t0 = time.perf_counter()
                    proc = await asyncio.create_subprocess_exec(
                        utl, "snapshot", "restore", str(snap), "--data-dir",
                        str(work / f"restored-{n}"), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                    if await proc.wait() != 0:
                        raise RuntimeError("etcdutl snapshot restore failed")
                    restores.append(time.perf_counter() - t0)
            size = (work / "snap-0.db").stat().st_size / MIB
            out["size_mib"] = size
            out["backup"] = size / statistics.median(saves)
            print(f"  etcd snapshot save    {size:6.1f} MiB: {out['backup']:6.1f} MiB/s")
            if restores:
                out["restore"] = size / statistics.median(restores)
                print(f"  etcd snapshot restore {size:6.1f} MiB: {out['restore']:6.1f} MiB/s")

            alone = await closed_loop(lambda i: put(i % 10000), args.seconds)
            stop = asyncio.Event()

            async def snapshots() -> int:
                n = 0
                while not stop.is_set():
                    await snapshot(work / "bg.db")
                    n += 1
                return n
            bg = asyncio.create_task(snapshots())
            during = await closed_loop(lambda i: put(i % 10000), args.seconds)
            stop.set()
            count = await bg
            out["strong_alone"], out["strong_during"] = alone, during
            print(f"  etcd puts c={WRITE_CONCURRENCY}: {alone:6.0f}/s alone, {during:6.0f}/s "
                  f"during {count} snapshots: {during / alone:.0%} kept", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return out


async def main(args: argparse.Namespace) -> None:
    print(f"3-node local cluster, mutual TLS, fsync on; {args.concepts} concepts of 100 bytes")
    mine = await ours(args)
    theirs = None if args.skip_etcd else await etcd(args)
    print("\nsummary")
    for what in ("backup", "verify", "restore"):
        line = f"  {what:<8} {mine[what]:6.1f} MiB/s"
        if theirs and what in theirs:
            ratio = mine[what] / theirs[what]
            line += f" | etcd {theirs[what]:6.1f} MiB/s | ours/etcd {ratio:.2f}x"
        print(line)
    for mode in ("strong", "default"):
        full = mine[f"{mode}_during_full"] / mine[f"{mode}_alone"]
        paced = mine[f"{mode}_during_paced"] / mine[f"{mode}_alone"]
        line = (f"  {mode} writes kept during backups: {full:.0%} at full speed, {paced:.0%} "
                f"paced at {args.paced:g} MiB/s (target >= 80%)")
        if theirs and mode == "strong":
            line += f" | etcd puts kept during snapshots: " \
                    f"{theirs['strong_during'] / theirs['strong_alone']:.0%}"
        print(line)
    if theirs:
        print(f"  archive {mine['size_mib']:.1f} MiB vs etcd snapshot {theirs['size_mib']:.1f} MiB "
              "(ours: both stores, every value with its version vector and checksum)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--backup-loop"]:
        asyncio.run(backup_loop(*sys.argv[2:6]))
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--paced", type=float, default=4.0, metavar="MIB_PER_S",
                    help="the backup's --max-rate in the paced runs")
    ap.add_argument("--skip-etcd", action="store_true")
    asyncio.run(main(ap.parse_args()))
