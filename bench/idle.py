"""An idle node: CPU and memory of a settled 3-node local cluster vs an idle 3-member etcd.

Both run at the same time on the same cores, each with its defaults (ours: the node's
settings; etcd 3.4: 100 ms heartbeat, 1,000 ms election), and nobody writes. After
``--settle`` seconds, the CPU each member uses over ``--seconds`` (% of one core, from
/proc/<pid>/stat) and its memory (RSS, PSS, and the anonymous part of RSS, from
/proc/<pid>/smaps_rollup) are printed per member, with the ratio of the means. With
``--repeat N`` the measurement window is taken N times from the same clusters and
the median and spread of the CPU ratio printed. ``--profile DIR`` records py-spy on
our leader during the first window (samples holding the GIL), to show where an idle
node's Python time goes. Never fails on a figure.

Run: .venv/bin/python bench/idle.py [--seconds 20] [--settle 5] [--repeat 3] [--skip-etcd]
         [--profile DIR] [--node-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node_image"))

from continuum.federation.distributed import local  # noqa: E402

ANCHOR = "idle etcd 3.4 member on this machine: 1.15-1.3% of a core, 26-28 MiB RSS"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """RSS, PSS and anonymous memory of ``pid`` in MiB (smaps_rollup)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss", "Anonymous"):
            out[name.lower()] = int(rest.split()[0]) / 1024
    return out


async def measure(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    return {name: {"cpu": 100 * (cpu_seconds(pid) - before[name]) / dt, **memory_mib(pid)}
            for name, pid in pids.items()}


def start_etcd(work: Path) -> list[subprocess.Popen[bytes]]:
    binary = shutil.which("etcd")
    if binary is None:
        print("etcd not installed (apt-get install -y etcd-server): skipped")
        return []
    hosts = [f"127.0.10.{111 + i}" for i in range(3)]
    peers = [f"http://{h}:{_free_port(h)}" for h in hosts]
    clients = [f"http://{h}:{_free_port(h)}" for h in hosts]
    initial = ",".join(f"e{i}={p}" for i, p in enumerate(peers))
    return [subprocess.Popen(
        [binary, "--name", f"e{i}", "--data-dir", str(work / f"e{i}"),
         "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
         "--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
         "--initial-cluster", initial, "--initial-cluster-state", "new"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(3)]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def profile_idle(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", "200",
         "--format", "raw", "--nonblocking", "--gil", "--output", str(out / "idle-node.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_profile(path: Path, top: int = 25) -> None:
    """Where the idle node's active samples are: the innermost frame of our own code."""
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not n.isdigit() or frames[-1].startswith(("select (", "Runner.run (", "get (queue")):
            continue  # waiting for something to do
        mine = [f for f in frames if "continuum/" in f]
        ours[mine[-1] if mine else frames[-1]] += int(n)
        total += int(n)
    print(f"\nidle profile ({total} active samples at 200/s): innermost frame of our code")
    for f, n in ours.most_common(top):
        print(f"  {100 * n / max(total, 1):5.1f}% {f}")


def summary(name: str, rows: dict[str, dict[str, float]]) -> dict[str, float]:
    mean = {k: statistics.mean(r[k] for r in rows.values()) for k in ("cpu", "rss", "pss",
                                                                       "anonymous")}
    per = ", ".join(f"{n} {r['cpu']:.2f}%/{r['rss']:.0f}" for n, r in rows.items())
    print(f"  {name:<5} mean {mean['cpu']:.2f}% of a core, RSS {mean['rss']:.1f} MiB "
          f"(PSS {mean['pss']:.1f}, anonymous {mean['anonymous']:.1f}) | {per}")
    return mean


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    nodes = local.plan(3, "127.0.10.21", 7000, 8080)
    env = dict(kv.split("=", 1) for kv in args.node_env)
    cluster = local.LocalCluster(work / "ours", nodes, env=env)
    etcd: list[subprocess.Popen[bytes]] = []
    ratios: list[float] = []
    try:
        cluster.start()
        if not args.skip_etcd:
            (work / "etcd").mkdir()
            etcd = start_etcd(work / "etcd")
        await local.wait_ready(work / "ours", 60, None, cluster)
        await asyncio.sleep(args.settle)
        pids = {n: p.pid for n, p in cluster.procs.items()}
        pids.update({f"etcd{i}": p.pid for i, p in enumerate(etcd)})
        print(f"3-node local cluster (node defaults) and 3-member etcd, idle, same run; "
              f"{args.seconds:g} s windows")
        for rep in range(args.repeat):
            spy = None
            if args.profile is not None and rep == 0:
                rows = await local.poll_status(work / "ours")
                leader = next((r["id"] for r in rows if r.get("role") == "leader"), "node-1")
                spy = profile_idle(cluster.procs[leader].pid, args.seconds, args.profile)
            load = os.getloadavg()[0]
            rows = await measure(pids, args.seconds)
            if spy is not None:
                spy.wait()
            print(f"window {rep + 1} (load average {load:.1f})")
            mine = summary("ours", {k: v for k, v in rows.items() if k.startswith("node")})
            if etcd:
                theirs = summary("etcd", {k: v for k, v in rows.items() if k.startswith("etcd")})
                ratios.append(mine["cpu"] / theirs["cpu"])
                print(f"  ours/etcd: CPU {mine['cpu'] / theirs['cpu']:.2f}x, "
                      f"RSS {mine['rss'] / theirs['rss']:.2f}x")
        if ratios:
            print(f"idle CPU ours/etcd: median {statistics.median(ratios):.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f}, n={len(ratios)})")
        print(f"({ANCHOR})")
        if args.profile is not None:
            print_profile(args.profile / "idle-node.txt")
    finally:
        cluster.stop()
        for p in etcd:
            p.send_signal(signal.SIGTERM)
        for p in etcd:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--node-env", action="append", default=[])
    asyncio.run(main(ap.parse_args()))
