"""Raft: commits/s and latency on a 3-process mTLS cluster, and leader failover time.

Ours: 3 real processes (tests/integration/raft_proc.py) over mutual TLS on
127.0.1.x with durable storage (fsync on). Proposals are made in-process on
the leader with 1, 16 and 64 concurrent ``append_entry`` calls (100-byte
values); each returns once committed by a majority and applied on the leader.
Failover: kill -9 of the leader, then the time until a proposal commits on a
survivor, over 5 trials (timeouts 150-300 ms, heartbeat 50 ms).

Where installed, in the same run: a 3-process PySyncObj cluster driven the
same way (no batching, 150-300 ms timeouts; it neither fsyncs nor uses TLS),
and a 3-member etcd (election 300 ms, heartbeat 50 ms) for failover. Ours is
also run once with fsync off: that is the like-for-like comparison with
PySyncObj (which never fsyncs); fsync on is the one a database needs.

Run: .venv/bin/python bench/raft.py [--duration 4] [--trials 5] [--skip-pysyncobj] [--skip-etcd]

Measured 2026-12-02 on the 2-core machine, three runs (ranges over the runs):
ours fsync on c=1/16/64: 622-750 / 7,587-9,736 / 19,740-23,415 commits/s (p99
2.2-5.0 / 3.2-5.3 / 6.0-6.3 ms); fsync off c=64: 20,652-27,388/s; PySyncObj
c=64: 10,114-16,874/s. Ratios at c=64: fsync on 1.39-1.95x PySyncObj, fsync off
1.62-2.05x (like for like; target 2x, met in two runs of three). Failover: ours
median 177-214 ms (max 465), etcd 333-403 ms (ours/etcd 0.53-0.57x); PySyncObj
216 ms in one run, 3.1-3.3 s in two (its elections stall, with hundreds of its
own "truncating already-applied" alarms). What bounds c=64 without fsync: a
latency-bound pipeline (64 in flight / ~2.3 ms per round), whose round is asyncio
loop hops, TLS records and handoffs to the disk thread, with three processes and
the client on two cores; uvloop moved it by 5%, so it is not used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "node_image"), str(ROOT / "tests"), str(ROOT / "tests/integration")]

# Anchors measured on this machine when the issue was written (see issue 3).
ANCHOR = {"etcd_c1": 768, "etcd_c64": 3591, "pysyncobj_c64": 7824,
          "etcd_failover_ms": 409, "pysyncobj_failover_ms": 193}
CONCURRENCY = (1, 16, 64)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "max": max(samples), "min": min(samples)}


# -- ours ----------------------------------------------------------------------------------------


async def ours(work: Path, args: argparse.Namespace, *, fsync: bool, failover: bool,
               concurrency: tuple[int, ...]) -> dict[str, Any]:
    from raft_proc import RaftProc, find_leader, restart, start_cluster

    from conftest import TestPKI

    pki = TestPKI(work / f"pki-{fsync}")
    procs = []
    for i in range(3):
        nid, host = f"bench-{i}", f"127.0.1.{100 + i + (0 if fsync else 10)}"
        files = pki.node(nid, ips=(host,))
        procs.append(RaftProc(nid, host, Path(files.cert).parent, work / f"{nid}-{fsync}",
                              fsync=fsync, bench=True))
    out: dict[str, Any] = {"throughput": {}, "failover_ms": []}
    try:
        await start_cluster(procs)
        leader = await find_leader(procs)
        await leader.call("bench", concurrency=8, duration=1.0)  # warm up connections
        for c in concurrency:
            r = await leader.call("bench", concurrency=c, duration=args.duration, timeout=120)
            out["throughput"][c] = r
            print(f"  ours fsync={'on' if fsync else 'off'} c={c:>2}: {r['rate']:8.0f} commits/s"
                  f"  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms", flush=True)
        for trial in range(args.trials if failover else 0):
            leader = await find_leader(procs)
            survivors = [p for p in procs if p is not leader]
            t0 = time.perf_counter()
            await leader.kill()
            ms = await _first_commit(survivors, t0, f"fo{trial}")
            out["failover_ms"].append(ms)
            print(f"  ours failover trial {trial}: {ms:.0f} ms", flush=True)
            await restart(leader, procs)
            await _caught_up(leader)
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    return out


async def _first_commit(survivors: list[Any], t0: float, tag: str) -> float:
    """Propose on every survivor in turn until one commits; ms since ``t0``."""
    done = asyncio.Event()
    result: list[float] = []

    async def probe(p: Any) -> None:
        n = 0
        while not done.is_set():
            n += 1
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                r = await p.call("propose", cmd=f"{tag}-{p.node_id}-{n}", timeout=2.0)
                if r["ok"] and not done.is_set():
                    result.append((time.perf_counter() - t0) * 1000)
                    done.set()
                    return
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(probe(p)) for p in survivors]
    await asyncio.wait_for(done.wait(), 30)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result[0]


async def _caught_up(p: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (await p.call("status"))["stats"]
        if st["leader_id"] and st["last_applied"] >= st["commit_index"] > 0:
            return
        await asyncio.sleep(0.05)


# -- PySyncObj -----------------------------------------------------------------------------------


def pysyncobj_node(data_dir: str, self_addr: str, partners: list[str]) -> None:
    """Child process: a replicated counter; JSON commands on stdin, like raft_proc.

    Journal and dump file on, as in the anchor figures (PySyncObj writes them without fsync).
    """
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            base = Path(data_dir) / self_addr.replace(":", "_")
            conf = SyncObjConf(appendEntriesUseBatch=False, raftMinTimeout=0.15,
                               raftMaxTimeout=0.3, appendEntriesPeriod=0.04,
                               dynamicMembershipChange=False,
                               journalFile=f"{base}.journal", fullDumpFile=f"{base}.dump")
            super().__init__(self_addr, partners, conf)
            self.value = 0

        @replicated  # type: ignore[misc]
        def add(self, payload: str) -> int:
            self.value += 1
            return self.value

    obj = Counter()
    lock = threading.Lock()

    def emit(o: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(o) + "\n")
            sys.stdout.flush()

    def bench(c: int, duration: float) -> dict[str, Any]:
        lat: list[float] = []
        fails = [0]
        stop_at = time.perf_counter() + duration
        finished = threading.Event()
        active = [c]

        def issue() -> None:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                with lock:
                    active[0] -= 1
                    if active[0] == 0:
                        finished.set()
                return

            def cb(res: Any, err: Any) -> None:
                if err == 0:  # FAIL_REASON.SUCCESS
                    lat.append(time.perf_counter() - t0)
                else:
                    fails[0] += 1
                issue()
            obj.add("x" * 100, callback=cb)

        t0 = time.perf_counter()
        for _ in range(c):
            issue()
        finished.wait(duration + 30)
        elapsed = time.perf_counter() - t0
        lat.sort()
        n = len(lat)
        return {"count": n, "failed": fails[0], "elapsed": elapsed, "rate": n / elapsed,
                "p50_ms": lat[n // 2] * 1000 if n else None,
                "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else None}

    emit({"ready": True, "address": self_addr})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "stop":
            break
        try:
            if op == "status":
                leader = obj._getLeader()
                reply: dict[str, Any] = {"leader": str(leader) if leader else None,
                                         "is_leader": obj._isLeader()}
            elif op == "propose":
                try:
                    obj.add("p", sync=True, timeout=cmd.get("timeout", 2.0))
                    reply = {"ok": True}
                except Exception:
                    reply = {"ok": False}
            elif op == "bench":
                reply = bench(cmd["concurrency"], cmd["duration"])
            else:
                reply = {"error": f"unknown op {op}"}
        except Exception as exc:
            reply = {"error": repr(exc)}
        emit({"id": cmd.get("id"), **reply})
    obj.destroy()


class PyProc:
    """Parent handle on a PySyncObj child (same line protocol as raft_proc.RaftProc)."""

    def __init__(self, work: Path, addr: str, partners: list[str]) -> None:
        self.node_id = addr
        self.work, self.addr, self.partners = work, addr, partners
        # PySyncObj logs to stderr; keep it out of the report (alarms are counted instead).
        self.log_path = work / f"{addr.replace(':', '_')}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = 0
        self.reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--pysyncobj-node", str(self.work), self.addr,
                *self.partners, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log)
        assert self.proc.stdout is not None
        if not await self.proc.stdout.readline():  # {"ready": true}
            raise RuntimeError("PySyncObj node failed to start")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self.waiting.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("exited"))

    async def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise ConnectionError("not running")
        self.ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.ids] = fut
        self.proc.stdin.write((json.dumps({"id": self.ids, "op": op, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self.reader is not None:
            await self.reader

    async def stop(self) -> None:
        if self.alive and self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b'{"op": "stop"}\n')
                await self.proc.stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        await self.kill()


async def pysyncobj(work: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        import pysyncobj as _  # noqa: F401
    except ImportError:
        print("  PySyncObj not installed (.venv/bin/pip install pysyncobj): skipped")
        return None
    hosts = [f"127.0.1.{120 + i}" for i in range(3)]
    addrs = [f"{h}:{free_port(h)}" for h in hosts]
    pywork = work / "pysyncobj"
    pywork.mkdir(parents=True, exist_ok=True)
    procs = [PyProc(pywork, a, [b for b in addrs if b != a]) for a in addrs]
    out: dict[str, Any] = {"throughput": {}, "failover_ms": []}

    async def leader() -> PyProc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for p in procs:
                if p.alive and (await p.call("status"))["is_leader"]:
                    return p
            await asyncio.sleep(0.05)
        raise TimeoutError("PySyncObj elected no leader")

    try:
        await asyncio.gather(*(p.spawn() for p in procs))
        ld = await leader()
        await ld.call("bench", concurrency=8, duration=1.0)
        for c in CONCURRENCY:
            r = await ld.call("bench", concurrency=c, duration=args.duration, timeout=120)
            out["throughput"][c] = r
            print(f"  PySyncObj c={c:>2}: {r['rate']:8.0f} commits/s  p50 {r['p50_ms']:.2f} ms"
                  f"  p99 {r['p99_ms']:.2f} ms", flush=True)
        for trial in range(args.trials):
            ld = await leader()
            survivors = [p for p in procs if p is not ld]
            t0 = time.perf_counter()
            await ld.kill()
            ms = await _first_commit(survivors, t0, f"py{trial}")
            out["failover_ms"].append(ms)
            print(f"  PySyncObj failover trial {trial}: {ms:.0f} ms", flush=True)
            await ld.spawn()
            await asyncio.sleep(1.0)  # let it rejoin (PySyncObj has no catch-up signal)
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    # PySyncObj's own alarm when a follower deletes entries it had already applied.
    out["divergence_alarms"] = sum(
        p.log_path.read_text(errors="replace").count("truncating already-applied")
        for p in procs if p.log_path.exists())
    print(f"  PySyncObj logged {out['divergence_alarms']} 'truncating already-applied log "
          f"entries' alarms (its own divergence warning)", flush=True)
    return out


# -- etcd ----------------------------------------------------------------------------------------


async def etcd(work: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    binary = shutil.which("etcd")
    if binary is None:
        print("  etcd not installed (apt-get install -y etcd-server): skipped")
        return None
    import aiohttp

    hosts = [f"127.0.1.{130 + i}" for i in range(3)]
    names = [f"e{i}" for i in range(3)]
    peer = [f"http://{h}:{free_port(h)}" for h in hosts]
    client = [f"http://{h}:{free_port(h)}" for h in hosts]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peer, strict=True))
    procs: dict[str, asyncio.subprocess.Process] = {}

    async def spawn(i: int) -> None:
        procs[names[i]] = await asyncio.create_subprocess_exec(
            binary, "--name", names[i], "--data-dir", str(work / f"etcd-{i}"),
            "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
            "--listen-client-urls", client[i], "--advertise-client-urls", client[i],
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "300",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    out: dict[str, Any] = {"failover_ms": []}
    timeout = aiohttp.ClientTimeout(total=3.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def status(i: int) -> dict[str, Any] | None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(f"{client[i]}/v3/maintenance/status", json={}) as r:
                    if r.status == 200:
                        data: dict[str, Any] = await r.json()
                        return data
            return None

        async def leader_index() -> int:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for i in range(3):
                    st = await status(i)
                    if st and st.get("leader") == st["header"]["member_id"]:
                        return i
                await asyncio.sleep(0.05)
            raise TimeoutError("etcd elected no leader")

        async def put(i: int, key: str) -> bool:
            body = {"key": base64.b64encode(key.encode()).decode(),
                    "value": base64.b64encode(b"v" * 100).decode()}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(f"{client[i]}/v3/kv/put", json=body) as r:
                    return r.status == 200
            return False

        try:
            await asyncio.gather(*(spawn(i) for i in range(3)))
            await leader_index()
            for trial in range(args.trials):
                li = await leader_index()
                t0 = time.perf_counter()
                proc = procs[names[li]]
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
                got = await _etcd_first_put([i for i in range(3) if i != li], put, t0, trial)
                out["failover_ms"].append(got)
                print(f"  etcd failover trial {trial}: {got:.0f} ms", flush=True)
                await spawn(li)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # etcd offers no event to await here
                    if await status(li) is not None:
                        break
                    await asyncio.sleep(0.05)
        finally:
            for p in procs.values():
                if p.returncode is None:
                    os.kill(p.pid, signal.SIGKILL)
                    await p.wait()
    return out


async def _etcd_first_put(survivors: list[int], put: Any, t0: float, trial: int) -> float:
    """Start a put on each survivor every 10 ms (a put sent to a dead leader hangs until
    etcd's own request timeout, so one in flight at a time would measure that timeout)."""
    done = asyncio.Event()
    got: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, n: int) -> None:
        if await put(i, f"fo-{trial}-{i}-{n}") and not done.is_set():
            got.append((time.perf_counter() - t0) * 1000)
            done.set()

    n = 0
    while not done.is_set():
        for i in survivors:
            n += 1
            t = asyncio.create_task(one(i, n))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.01)
        if time.perf_counter() - t0 > 30:
            raise TimeoutError("etcd did not recover")
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got[0]


# -- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="raft-bench-"))
    t_start = time.perf_counter()
    try:
        print("ours: 3 processes, mTLS, durable storage (fsync on)", flush=True)
        on = await ours(work, args, fsync=True, failover=True, concurrency=CONCURRENCY)
        print("ours: fsync off (like for like with PySyncObj, which never fsyncs)", flush=True)
        off = await ours(work, args, fsync=False, failover=False, concurrency=(64,))
        py = None if args.skip_pysyncobj else await pysyncobj(work, args)
        print("etcd 3-member failover (election 300 ms, heartbeat 50 ms)", flush=True)
        et = None if args.skip_etcd else await etcd(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n== summary ==")
    for c in CONCURRENCY:
        r = on["throughput"][c]
        print(f"ours fsync on  c={c:>2}: {r['rate']:8.0f}/s p50 {r['p50_ms']:.2f} ms "
              f"p99 {r['p99_ms']:.2f} ms")
    r64off = off["throughput"][64]
    print(f"ours fsync off c=64: {r64off['rate']:8.0f}/s p50 {r64off['p50_ms']:.2f} ms "
          f"p99 {r64off['p99_ms']:.2f} ms")
    fo = summary(on["failover_ms"])
    print(f"ours failover (150-300 ms): median {fo['median']:.0f} ms, max {fo['max']:.0f} ms")
    our64 = on["throughput"][64]["rate"]
    if py:
        py64 = py["throughput"][64]["rate"]
        pfo = summary(py["failover_ms"])
        print(f"PySyncObj c=64 no batch: {py64:.0f}/s; failover median {pfo['median']:.0f} ms, "
              f"max {pfo['max']:.0f} ms")
        print(f"ratio c=64, ours fsync ON / PySyncObj (no fsync): {ratio(our64, py64)} "
              "(target >= 1.0; not like for like: we fsync)")
        print(f"ratio c=64, ours fsync OFF / PySyncObj: {ratio(r64off['rate'], py64)} "
              "(like for like; target >= 2.0)")
        print(f"ratio failover median, ours / PySyncObj: {ratio(fo['median'], pfo['median'])} "
              "(target <= 1.25)")
    if et:
        efo = summary(et["failover_ms"])
        print(f"etcd failover (300/50 ms): median {efo['median']:.0f} ms, max {efo['max']:.0f} ms")
        print(f"ratio failover median, ours / etcd: {ratio(fo['median'], efo['median'])} "
              "(target <= 1.0)")
    print(f"anchors from the issue (same machine, earlier): {ANCHOR}")
    print(f"bench took {time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--pysyncobj-node":
        pysyncobj_node(sys.argv[2], sys.argv[3], sys.argv[4:])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per throughput point")
    ap.add_argument("--trials", type=int, default=5, help="failover trials")
    ap.add_argument("--skip-pysyncobj", action="store_true")
    ap.add_argument("--skip-etcd", action="store_true")
    asyncio.run(main(ap.parse_args()))
