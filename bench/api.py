"""Writes through the node's HTTP API vs etcd's JSON gateway, same load generator, same run.

A 3-node local cluster (real processes, mutual TLS, fsync on, the node's default
settings) takes closed-loop ``PUT /v1/concepts/{id}?consistency=strong`` (through
Raft) and default (multi-master) writes of 100-byte JSON values at concurrency 1,
16 and 64; where etcd is installed (``apt-get install -y etcd-server``), a 3-member
etcd (its defaults: 100 ms heartbeat, 1,000 ms election) takes ``POST /v3/kv/put``
to its leader the same way (plain HTTP, as the anchor was measured; ``--etcd-tls``
gives it mutual TLS 1.3 to clients and peers, as our nodes always have). Clients run
on the same machine as the members, in ``--client-procs`` processes of their own (on
uvloop, for both systems), and follow a 421 to the leader as any client does.

Each run prints ops/s, p50/p99, the errors by kind, the elections during the run
(the Raft term's increase, read from every member before and after), the CPU each
side spent per request (members summed, clients summed) and the load average. With
``--repeat N`` the two systems are measured N times, alternating which goes first,
and the median and spread (min-max) of every ratio is printed. ``--profile DIR``
records py-spy on every node during the first mode's run at the highest concurrency
and prints each one's top entries. Never fails on a timing.

Run: .venv/bin/python bench/api.py [--seconds 5] [--repeat N] [--concurrency 1,16,64]
         [--modes strong,default] [--default-to leader|all] [--client-procs 1]
         [--client-loop uvloop|asyncio] [--skip-etcd | --etcd-tls]
         [--profile DIR [--profile-native]] [--pipeline] [--logs DIR] [--node-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node_image"))

import aiohttp  # noqa: E402

from continuum.federation.distributed import cli, client, local, pki  # noqa: E402
from continuum.federation.distributed.transport import tls  # noqa: E402

VALUE = {"v": "x" * 92}  # 100 bytes of JSON
ETCD_VALUE = base64.b64encode(b"v" * 100).decode()
ANCHOR = {1: (768, 2.54), 16: (2410, 14.2), 64: (3591, 35.1)}  # etcd ops/s, p99 ms
WARM_UP = 1.0  # seconds of load before each measured run
Run = dict[str, Any]


# -- the load generator (one process per --client-procs) ---------------------------------------

def _client_process(conn: Connection, loop: str) -> None:
    """Serve run requests from the parent until it sends None."""
    factory = cli.loop_factory(loop)
    while (job := conn.recv()) is not None:
        with asyncio.Runner(loop_factory=factory) as runner:
            conn.send(runner.run(_client_run(job)))


async def _client_run(job: dict[str, Any]) -> dict[str, Any]:
    ctx = tls.client_context(tls.TLSFiles(*job["tls"])) if job["tls"] else None
    url: str = job["url"]
    spread: list[str] = job.get("spread") or []  # default writes over every node
    mode: str = job["mode"]
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    follows = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=ctx if ctx is not None else False, limit=0)) as http:

        async def put(i: int) -> bool:
            nonlocal url, follows
            try:
                if mode == "etcd":
                    key = base64.b64encode(f"bench/{i % 10000}".encode()).decode()
                    async with http.post(f"{url}/v3/kv/put",
                                         json={"key": key, "value": ETCD_VALUE}) as r:
                        await r.read()
                        if r.status == 200:
                            return True
                        errors[f"HTTP {r.status}"] += 1
                        return False
                params = {"consistency": "strong"} if mode == "strong" else {}
                # Each mode writes its own keys: a concept lives in one consistency domain.
                base = spread[i % len(spread)] if spread else url
                # "read": a local read of a key the strong run wrote, the cost of a request
                # through the API with no write behind it (the floor under every write).
                request = (http.get(f"{base}/v1/concepts/bench-strong-{i % 10000}")
                           if mode == "read" else
                           http.put(f"{base}/v1/concepts/bench-{mode}-{i % 10000}",
                                    json=VALUE, params=params))
                async with request as r:
                    body = await r.read()
                    if r.status == 200:
                        return True
                    errors[f"HTTP {r.status}"] += 1
                    if r.status == 421:  # leadership moved: follow it, as clients do
                        follows += 1
                        url = f"https://{json.loads(body)['leader_address']}"
                    return False
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                return False

        counter = iter(range(job["offset"], 10**9))
        warm_until = time.time() + WARM_UP
        while time.time() < warm_until and time.time() < job["start_at"] - 0.2:
            await asyncio.gather(*(put(next(counter)) for _ in range(job["workers"])))
        errors.clear()
        await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
        deadline = job["start_at"] + job["seconds"]
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()

        async def worker() -> None:
            while time.time() < deadline:
                start = time.perf_counter()
                if await put(next(counter)):
                    latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(job["workers"])))
        elapsed = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return {"latencies": latencies, "errors": dict(errors), "elapsed": elapsed, "cpu": cpu,
            "follows": follows}


class Clients:
    """The load-generator processes, kept for the whole benchmark."""

    def __init__(self, procs: int, loop: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_client_process, args=(child, loop), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    async def run(self, url: str, tls_files: tuple[str, str, str] | None, mode: str,
                  concurrency: int, seconds: float, server_pids: list[int],
                  spread: list[str] | None = None) -> Run:
        n = min(len(self.conns), concurrency)
        start_at = time.time() + WARM_UP + 0.5
        for k in range(n):
            share = concurrency // n + (1 if k < concurrency % n else 0)
            self.conns[k].send({"url": url, "spread": spread, "tls": tls_files, "mode": mode,
                                "workers": share,
                                "seconds": seconds, "start_at": start_at, "offset": k * 10**7})
        await asyncio.sleep(max(0.0, start_at - time.time()))
        load = os.getloadavg()[0]
        cpu0 = {p: _cpu_seconds(p) for p in server_pids}
        sys0 = {p: _cpu_seconds(p, user=False) for p in server_pids}
        preempted0 = {p: _preemptions(p) for p in server_pids}
        outs = [await asyncio.to_thread(self.conns[k].recv) for k in range(n)]
        per_member = [_cpu_seconds(p) - cpu0[p] for p in server_pids]
        per_member_sys = [_cpu_seconds(p, user=False) - sys0[p] for p in server_pids]
        preempted = [_preemptions(p) - preempted0[p] for p in server_pids]
        server_cpu = sum(per_member)
        latencies = sorted(x for o in outs for x in o["latencies"])
        elapsed = max(o["elapsed"] for o in outs)
        errors: collections.Counter[str] = collections.Counter()
        for o in outs:
            errors.update(o["errors"])
        ok = len(latencies)
        q = statistics.quantiles(latencies, n=100) if ok >= 2 else [float("nan")] * 99
        return {"ops": ok / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000,
                "errors": dict(errors), "follows": sum(o["follows"] for o in outs),
                "server_us": 1e6 * server_cpu / max(ok, 1),
                "member_us": [1e6 * x / max(ok, 1) for x in per_member],
                "member_sys_us": [1e6 * x / max(ok, 1) for x in per_member_sys],
                "preempted": [x / max(ok, 1) for x in preempted],
                "client_us": 1e6 * sum(o["cpu"] for o in outs) / max(ok, 1),
                "load": load, "url": url}

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=5)


def _preemptions(pid: int) -> int:
    """Times the kernel took the CPU from the process while it could run (summed over
    its threads): a sampling profiler counts that time to the line that was running."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def _cpu_seconds(pid: int, *, user: bool = True) -> float:
    """The process's CPU time: user and system, or (``user=False``) system time alone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[12]) + (int(fields[11]) if user else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _line(who: str, c: int, r: Run) -> str:
    errs = ", ".join(f"{k} x{v}" for k, v in sorted(r["errors"].items())) or "none"
    elections = r.get("elections")
    return (f"  {who:<14} c={c:<3} {r['ops']:>7.0f} ops/s  p50 {r['p50']:6.2f} ms  "
            f"p99 {r['p99']:6.2f} ms | CPU/req: members {r['server_us']:4.0f} us, "
            f"clients {r['client_us']:4.0f} us | elections "
            f"{'-' if elections is None else elections} | errors: {errs} | "
            f"load {r['load']:.1f}")


# -- ours --------------------------------------------------------------------------------------

async def _status(work: Path) -> tuple[int, str | None, dict[str, dict[str, float]]]:
    """The highest term, the leader, and each node's pipeline counters."""
    rows = await local.poll_status(work)
    term = max((r.get("term", 0) for r in rows if "error" not in r), default=0)
    leader = next((r["leader_id"] for r in rows if r.get("role") == "leader"), None)
    counters = {r["id"]: {**{f"raft.{k}": r.get("raft", {}).get(k, 0) for k in _RAFT_COUNTERS},
                          **{f"transport.{k}": r.get("transport", {}).get(k, 0)
                             for k in _TRANSPORT_COUNTERS}}
                for r in rows if "error" not in r}
    return term, leader, counters


_RAFT_COUNTERS = ("proposals", "writes", "messages_sent")
_TRANSPORT_COUNTERS = ("frames_sent", "messages_sent")


def _pipeline(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
              leader: str | None, run: Run) -> str:
    """Per proposal on the leader: its disk writes and frames out; followers' writes."""
    if leader is None or leader not in before or leader not in after:
        return ""
    d = {n: {k: after[n][k] - before[n].get(k, 0) for k in after[n]} for n in after
         if n in before}
    props = d[leader]["raft.proposals"] or 1
    follower_writes = [v["raft.writes"] for n, v in d.items() if n != leader]
    per_write = props / max(d[leader]["raft.writes"], 1)
    frames = d[leader]["transport.frames_sent"] / props
    cpu = _node_cpu(run)
    preempted = ", ".join(f"{x:.2f}" for x in run["preempted"])
    return (f"    pipeline: {props:.0f} proposals; leader {per_write:.1f} per disk write, "
            f"{frames:.2f} frames out per "
            f"proposal; followers' disk writes per proposal "
            + ", ".join(f"{w / props:.2f}" for w in follower_writes)
            + f"; CPU us per request by node (leader {leader}): {cpu}; preempted "
            f"per request: {preempted}")


def _node_cpu(run: Run) -> str:
    """Each node's CPU per request, with the kernel's part of it: '280 (sys 60)'."""
    return ", ".join(f"{us:.0f} (sys {sys_us:.0f})"
                     for us, sys_us in zip(run["member_us"], run["member_sys_us"], strict=True))


def _cpu_by_node(leader: str | None, run: Run) -> str:
    """Where a mode's CPU went: each node's share per request (node order, leader named)."""
    cpu = _node_cpu(run)
    preempted = ", ".join(f"{x:.2f}" for x in run["preempted"])
    return (f"    CPU us per request by node (leader {leader}): {cpu}; preempted per request: "
            f"{preempted}")


async def ours(args: argparse.Namespace, clients: Clients, profile: Path | None
               ) -> dict[str, dict[int, Run]]:
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    nodes = local.plan(3, "127.0.10.1", 7000, 8080)
    env = dict(kv.split("=", 1) for kv in args.node_env)
    cluster = local.LocalCluster(work, nodes, env=env)
    cluster.start()
    results: dict[str, dict[int, Run]] = {m: {} for m in args.modes}
    try:
        await local.wait_ready(work, 60, None, cluster)
        _, files = client.local_cluster(work)
        tls_files = (str(files.cert), str(files.key), str(files.ca))
        pids = [p.pid for p in cluster.procs.values()]
        _, leader, _ = await _status(work)
        url = next(n.api_url for n in nodes if n.node_id == leader)
        for mode in args.modes:
            for c in args.concurrency:
                term0, _, counters0 = await _status(work)
                spies = []
                if profile is not None and mode == args.modes[0] and c == max(args.concurrency):
                    spies = _start_py_spy(cluster, leader, profile, args.seconds + WARM_UP,
                                          args.profile_native)
                spread = ([n.api_url for n in nodes]
                          if mode == "default" and args.default_to == "all" else None)
                r = await clients.run(url, tls_files, mode, c, args.seconds, pids, spread)
                for spy in spies:
                    spy.wait()
                term1, leader, counters1 = await _status(work)
                r["elections"] = term1 - term0
                url = next(n.api_url for n in nodes if n.node_id == leader) if leader else url
                results[mode][c] = r
                print(_line(f"ours {mode}", c, r), flush=True)
                if mode == "strong" and args.pipeline:
                    print(_pipeline(counters0, counters1, leader, r), flush=True)
                elif args.pipeline:
                    print(_cpu_by_node(leader, r), flush=True)
        if profile is not None:
            _print_profiles(profile)
    finally:
        cluster.stop()
        if args.logs is not None:
            shutil.copytree(cluster.log_dir, args.logs, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return results


def _start_py_spy(cluster: local.LocalCluster, leader: str | None, out: Path,
                  seconds: float, native: bool) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for node_id, proc in cluster.procs.items():
        role = "leader" if node_id == leader else "follower"
        spies.append(subprocess.Popen(
            [spy, "record", "--pid", str(proc.pid), "--duration", str(round(seconds)),
             "--rate", "250", "--format", "raw", "--gil",
             # --native walks C frames too (libc's write, getpid, the GC); it must pause
             # the process to do so, so it costs the node more than the default.
             *(["--native"] if native else ["--nonblocking"]),
             "--output", str(out / f"{node_id}-{role}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def _print_profiles(out: Path, top: int = 15) -> None:
    """Each node's functions by share of its samples: own time and time inclusive."""
    for path in sorted(out.glob("node-*.txt")):
        own: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            total += int(n)
            own[frames[-1]] += int(n)
            for f in set(frames):
                incl[f] += int(n)
        print(f"\nprofile {path.name} ({total} samples): own time")
        for f, samples in own.most_common(top):
            print(f"  {100 * samples / total:5.1f}% {f}")
        print("  inclusive")
        for f, samples in incl.most_common(top + 12)[12:]:  # past the loop's own frames
            print(f"  {100 * samples / total:5.1f}% {f}")


# -- etcd --------------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _spawn_etcd(binary: str, i: int, work: Path, peer: str, client_url: str, initial: str,
                tls_dir: Path | None) -> subprocess.Popen[bytes]:
    argv = [binary, "--name", f"e{i}", "--data-dir", str(work / f"e{i}"),
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new"]
    if tls_dir is not None:  # mutual TLS on both sides, as our nodes always have
        cert, key, ca = (str(tls_dir / f"e{i}" / f) for f in ("tls.crt", "tls.key", "ca.crt"))
        argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                 "--client-cert-auth",
                 "--peer-cert-file", cert, "--peer-key-file", key,
                 "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _etcd_certificates(work: Path, hosts: list[str]) -> tuple[str, str, str]:
    """A CA, a certificate per member (its IP as the name) and a client certificate. etcd
    checks a peer's certificate against the address it dials from: 127.0.0.1 here."""
    ca = pki.create_ca("bench-etcd-ca")
    for i, host in enumerate(hosts):
        member = pki.issue(ca, f"e{i}", ip_addresses=[host, "127.0.0.1"])
        pki.write_secret_dir(work / "tls" / f"e{i}", member, ca.cert_pem)
    d = pki.write_secret_dir(work / "tls" / "client", pki.issue(ca, "bench", server=False),
                             ca.cert_pem)
    return str(d / "tls.crt"), str(d / "tls.key"), str(d / "ca.crt")


async def _etcd_status(http: aiohttp.ClientSession, urls: list[str]
                       ) -> tuple[int, str | None]:
    term, leader = 0, None
    for url in urls:
        with contextlib.suppress(aiohttp.ClientError, OSError, KeyError):
            async with http.post(f"{url}/v3/maintenance/status", json={}) as r:
                st = await r.json()
                term = max(term, int(st.get("raftTerm", 0)))
                if st.get("leader") == st["header"]["member_id"]:
                    leader = url
    return term, leader


async def etcd(args: argparse.Namespace, clients: Clients) -> dict[int, Run] | None:
    binary = shutil.which("etcd")
    if binary is None:
        print("  etcd not installed (apt-get install -y etcd-server): skipped")
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
    hosts = [f"127.0.10.{101 + i}" for i in range(3)]
    scheme = "https" if args.etcd_tls else "http"
    peers = [f"{scheme}://{h}:{_free_port(h)}" for h in hosts]
    urls = [f"{scheme}://{h}:{_free_port(h)}" for h in hosts]
    initial = ",".join(f"e{i}={p}" for i, p in enumerate(peers))
    tls_files = _etcd_certificates(work, hosts) if args.etcd_tls else None
    tls_dir = work / "tls" if args.etcd_tls else None
    procs = [_spawn_etcd(binary, i, work, peers[i], urls[i], initial, tls_dir) for i in range(3)]
    results: dict[int, Run] = {}
    ctx = tls.client_context(tls.TLSFiles(*tls_files)) if tls_files else False
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ctx)) as http:
            deadline = time.monotonic() + 30
            leader = None
            while leader is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("etcd elected no leader")
                _, leader = await _etcd_status(http, urls)
                await asyncio.sleep(0.1)
            for c in args.concurrency:
                term0, _ = await _etcd_status(http, urls)
                r = await clients.run(leader, tls_files, "etcd", c, args.seconds,
                                      [p.pid for p in procs])
                term1, leader = await _etcd_status(http, urls)
                r["elections"] = term1 - term0
                leader = leader or urls[0]
                results[c] = r
                print(_line("etcd", c, r), flush=True)
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


# -- the report --------------------------------------------------------------------------------

def _ratios(mine: dict[str, dict[int, Run]], theirs: dict[int, Run] | None,
            concurrency: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in concurrency:
        strong, default = mine.get("strong", {}).get(c), mine.get("default", {}).get(c)
        if strong and default:
            out[f"c={c} default/strong throughput"] = default["ops"] / strong["ops"]
        if theirs and strong:
            out[f"c={c} strong/etcd throughput"] = strong["ops"] / theirs[c]["ops"]
            out[f"c={c} strong/etcd p99"] = strong["p99"] / theirs[c]["p99"]
    return out


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:6.2f}x  ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


async def main(args: argparse.Namespace) -> None:
    print("3-node local cluster (node defaults), HTTP API over mutual TLS, fsync on, "
          f"100-byte values; {args.client_procs} client process(es) on the same "
          f"{os.cpu_count()} cores, on {args.client_loop}")
    clients = Clients(args.client_procs, args.client_loop)
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    elections: dict[str, list[int]] = collections.defaultdict(list)
    try:
        for rep in range(args.repeat):
            print(f"\nrun {rep + 1} of {args.repeat}")
            etcd_first = rep % 2 == 1  # alternate, so a drifting machine load evens out
            theirs = None
            if etcd_first and not args.skip_etcd:
                theirs = await etcd(args, clients)
            profile = args.profile if rep == 0 else None
            mine = await ours(args, clients, profile)
            if not etcd_first and not args.skip_etcd:
                theirs = await etcd(args, clients)
            for name, value in _ratios(mine, theirs, args.concurrency).items():
                ratios[name].append(value)
            for mode, runs in mine.items():
                for c, r in runs.items():
                    elections[f"ours {mode} c={c}"].append(r["elections"])
            for c, r in (theirs or {}).items():
                elections[f"etcd c={c}"].append(r["elections"])
    finally:
        clients.close()
    print("\nratios: median (min-max) over runs")
    for name, values in ratios.items():
        print(f"  {name:<34} {_spread(values)}")
    print("elections per run (term increases; 0 = the leader held)")
    for name, counts in elections.items():
        print(f"  {name:<22} {counts}")
    print("etcd anchors on this machine (issue figures): "
          + ", ".join(f"c={c} {a[0]}/s p99 {a[1]} ms" for c, a in ANCHOR.items()))
    print("like for like: both fsync every commit; " + (
        "both speak mutual TLS 1.3 to clients and peers" if args.etcd_tls else
        "ours adds mutual TLS, etcd's gateway is plain HTTP (--etcd-tls: mutual TLS for both)"))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--concurrency", default="1,16,64",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--modes", default="strong,default", type=lambda s: s.split(","),
                    help="strong, default, read (a local GET of a key strong wrote: the "
                         "floor of a request through the API with no write behind it)")
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the load generator's event loop, the same for both systems: on the "
                         "same cores as the members, a cheaper client leaves them more CPU")
    ap.add_argument("--default-to", choices=("leader", "all"), default="leader",
                    help="where default (multi-master) writes go: the leader, as strong ones "
                         "do, or every node in turn (any node takes them)")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--etcd-tls", action="store_true",
                    help="etcd with mutual TLS for clients and peers (TLS 1.3), like our nodes; "
                         "by default its gateway is plain HTTP, as the issue's anchor was measured")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record py-spy on every node during the first mode's run at the "
                         "highest concurrency (first run only) into this directory")
    ap.add_argument("--profile-native", action="store_true",
                    help="with --profile: C frames as well (py-spy --native; slows the nodes)")
    ap.add_argument("--pipeline", action="store_true",
                    help="print how strong writes were batched: proposals per disk write and "
                         "frames per proposal on the leader, the followers' writes")
    ap.add_argument("--logs", type=Path, default=None, help="keep the nodes' logs here")
    ap.add_argument("--node-env", action="append", default=[],
                    help="KEY=VALUE for the nodes' environment, e.g. "
                         "CONTINUUM_RAFT__HEARTBEAT_INTERVAL_MS=50")
    args = ap.parse_args()
    if not set(args.modes) <= {"strong", "default", "read"}:
        ap.error("--modes takes strong, default and read")
    if "read" in args.modes and ("strong" not in args.modes
                                 or args.modes.index("read") < args.modes.index("strong")):
        ap.error("--modes: read reads the keys the strong run wrote: put strong before it")
    if args.repeat < 1 or args.client_procs < 1:
        ap.error("--repeat and --client-procs must be positive")
    return args


if __name__ == "__main__":
    asyncio.run(main(_parse()))
