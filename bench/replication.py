"""Multi-master replication: local write rate, propagation latency, anti-entropy cost.

Run: .venv/bin/python bench/replication.py [--quick]

1. Local writes/s of one ``MultiMasterReplicator``: in memory, durable one at a
   time, durable with 64 writes in flight (group commit shares fsyncs); and what a
   peer spends on each pushed state that supersedes its copy (parsed and checked from
   the wire form, then joined), in memory.
2. Time for a write to reach every node of 3 and of 5 real node processes over
   mTLS under a steady 1,000 writes/s spread over the nodes (fsync on). Each
   value carries its origin time; each node records when it saw it; the figure
   per write is the latest arrival. Reported in ms and in gossip intervals
   (the mesh's default ``gossip_interval_ms=100``).
3. Anti-entropy for 100,000 keys of which 10 differ, over mTLS, against shipping
   the full state (an empty replica syncing from scratch through the same
   protocol, and the raw size of every key state). Also the message bytes the
   same comparison would cost at 1,000,000 keys (hash trees only, no network).
4. Catching up a replica from ``get_updates_since``: the whole ``Updates`` to
   ``merge_state`` (one step, one durable write) against its pairs fed to
   ``replicate_from`` one by one (the original module's loop), and against its
   wire form (what a peer would receive: parsed and checksummed again), in
   memory and durable.

Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "node_image"), str(ROOT / "tests")]

from continuum.federation.distributed import pki, replication  # noqa: E402
from continuum.federation.distributed.core.crdt import merkle  # noqa: E402
from integration.repl_proc import NodeProc  # noqa: E402

GOSSIP_INTERVAL_MS = 100.0


def tls_dir(ca: pki.KeyPair, root: Path, node_id: str, ip: str) -> Path:
    pair = pki.issue_node(ca, node_id, ip_addresses=[ip])
    return pki.write_secret_dir(root / "tls" / node_id, pair, ca.cert_pem)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# -- 1. local writes -----------------------------------------------------------------------------


async def local_writes(root: Path, n: int) -> None:
    print("\n## Local writes")
    mem = replication.MultiMasterReplicator("bench-mem")
    t = time.perf_counter()
    for i in range(n):
        await mem.write(f"k{i}", {"name": f"concept {i}", "tags": ["a", "b"]})
    print(f"in memory:                 {n / (time.perf_counter() - t):10,.0f} writes/s")
    # What a peer does with each pushed state, without the network: parse and check it
    # from its wire form and join it into the copy it holds, which it supersedes.
    peer = replication.MultiMasterReplicator("bench-peer")
    await peer.merge_state((await mem.get_updates_since({})).to_wire())
    for i in range(n):
        await mem.write(f"k{i}", {"name": f"concept {i}", "tags": ["a", "c"]})
    newer = (await mem.get_updates_since(peer.vector_clock)).to_wire()
    t = time.perf_counter()
    await peer.merge_state(newer)
    took = time.perf_counter() - t
    assert peer.merkle_root == mem.merkle_root
    print(f"a peer joining newer states of keys it holds, from their wire form: "
          f"{took / n * 1e6:.1f} us per state")

    r = replication.MultiMasterReplicator("bench-disk", storage_path=root / "local")
    m = max(200, n // 20)
    t = time.perf_counter()
    for i in range(m):
        await r.write(f"k{i}", {"name": f"concept {i}"})
    print(f"durable, one at a time:    {m / (time.perf_counter() - t):10,.0f} writes/s "
          "(one fsync each)")
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await r.write(f"c{i}", {"name": f"concept {i}"})

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    print(f"durable, 64 in flight:     {n / (time.perf_counter() - t):10,.0f} writes/s "
          "(group commit)")
    await r.stop()


# -- 2. propagation --------------------------------------------------------------------------------


async def propagation(root: Path, ca: pki.KeyPair, n_nodes: int, total_rate: float,
                      duration: float) -> None:
    nodes = []
    for i in range(n_nodes):
        nid, host = f"prop{n_nodes}-{i}", f"127.0.3.{100 + 10 * n_nodes + i}"
        nodes.append(NodeProc(nid, host, tls_dir(ca, root, nid, host),
                              root / f"prop{n_nodes}" / nid, ae_interval=5.0))
    try:
        await asyncio.gather(*(p.start() for p in nodes))
        for p in nodes:
            await p.call("peers", peers={o.node_id: o.address for o in nodes if o is not p})
        rate = total_rate / n_nodes
        cpu0, started = [cpu_seconds(p.pid) for p in nodes], time.monotonic()
        written = await asyncio.gather(*(p.call("load", rate=rate, duration=duration,
                                                timeout=duration + 120) for p in nodes))
        # Let the tail arrive (pushes are immediate; this is generous), then collect.
        deadline = time.monotonic() + 10
        latest: dict[str, float] = {}
        counts: dict[str, int] = {}
        expected = sum(w["written"] for w in written)
        while True:
            for p in nodes:
                for key, sent, seen in (await p.call("arrivals"))["arrivals"]:
                    latest[key] = max(latest.get(key, 0.0), seen - sent)
                    counts[key] = counts.get(key, 0) + 1
            complete = [k for k, c in counts.items() if c == n_nodes - 1]
            if len(complete) >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        busy = [(cpu_seconds(p.pid) - c) / elapsed for p, c in zip(nodes, cpu0, strict=True)]
        lat = [latest[k] * 1000 for k in complete]
        stats = [(await p.call("stats"))["stats"] for p in nodes]
        p50, p99, mx = pct(lat, 50), pct(lat, 99), max(lat)
        pushes = statistics.mean(s["push_messages_received"] for s in stats)
        print(f"{n_nodes} nodes, {total_rate:.0f} writes/s for {duration:.0f}s: "
              f"{len(complete)}/{expected} writes reached every node; "
              f"p50 {p50:.1f} ms ({p50 / GOSSIP_INTERVAL_MS:.2f} intervals), "
              f"p99 {p99:.1f} ms ({p99 / GOSSIP_INTERVAL_MS:.2f} intervals), max {mx:.1f} ms; "
              f"~{pushes:.0f} push batches received per node; "
              f"CPU per node {statistics.mean(busy):.2f} cores")
    finally:
        await asyncio.gather(*(p.stop() for p in nodes), return_exceptions=True)


# -- 3. anti-entropy -------------------------------------------------------------------------------


async def anti_entropy(root: Path, ca: pki.KeyPair, n_keys: int, n_diff: int) -> None:
    print(f"\n## Anti-entropy: {n_keys:,} keys, {n_diff} differing")
    made = []

    def make(nid: str, ip: str) -> replication.MultiMasterReplicator:
        d = tls_dir(ca, root, nid, ip)
        r = replication.MultiMasterReplicator(
            nid, bind_address=f"{ip}:0", tls_cert=str(d / "tls.crt"), tls_key=str(d / "tls.key"),
            tls_ca=str(d / "ca.crt"), anti_entropy_interval=3600,
            sync_new_peers=False)
        made.append(r)
        return r

    a, b = make("ae-a", "127.0.3.200"), make("ae-b", "127.0.3.201")
    fresh = make("ae-c", "127.0.3.202")
    try:
        for r in made:
            await r.start()
        t = time.perf_counter()
        for i in range(n_keys):
            await a.write(f"concept-{i:07d}", {"name": f"concept {i}", "tags": ["x", "y"],
                                                "weight": i / 7})
        full_state = (await a.get_updates_since({}))["updates"]
        await b.merge_state(full_state)
        print(f"(setup: {n_keys:,} keys written and copied in {time.perf_counter() - t:.1f}s)")
        raw_full = len(replication._pack(full_state))
        for i in range(n_diff):
            await a.write(f"concept-{i * (n_keys // n_diff):07d}", {"name": "changed", "i": i})
        await asyncio.sleep(0.1)  # let the (peerless) push loop drain
        a.add_peer(b.node_id, b.address or "")
        t = time.perf_counter()
        out = await a.sync_with(b.node_id)
        dt_diff = time.perf_counter() - t
        assert a.merkle_root == b.merkle_root
        fresh.add_peer(a.node_id, a.address or "")
        t = time.perf_counter()
        full = await fresh.sync_with(a.node_id)
        dt_full = time.perf_counter() - t
        print(f"differing keys found: {out['differing_keys']} in {out['calls']} calls, "
              f"{out['bytes']:,} bytes, {dt_diff * 1000:.0f} ms")
        print(f"full sync (empty replica, same protocol): {full['bytes']:,} bytes, "
              f"{dt_full:.1f} s; raw size of every key state: {raw_full:,} bytes")
        print(f"ratio: {out['bytes'] / full['bytes'] * 100:.3f}% of a full sync "
              f"({out['bytes'] / raw_full * 100:.3f}% of the raw state); target < 1%")
    finally:
        for r in made:
            await r.stop()


async def catch_up(root: Path, n_keys: int) -> None:
    print(f"\n## Catching up {n_keys:,} keys from get_updates_since")
    source = replication.MultiMasterReplicator("cu-src")
    for i in range(n_keys):
        await source.write(f"concept-{i:07d}", {"name": f"concept {i}", "weight": i / 7})
    t = time.perf_counter()
    updates = await source.get_updates_since({})
    built = time.perf_counter() - t
    print(f"get_updates_since: {built * 1000:.1f} ms ({len(updates):,} pairs)")
    for durable in (False, True):
        times = {}
        for way in ("merge_state", "wire form", "replicate_from"):
            path = root / f"cu-{way.replace(' ', '-')}-{durable}" if durable else None
            target = replication.MultiMasterReplicator(f"cu-{way}", storage_path=path)
            t = time.perf_counter()
            if way == "merge_state":
                await target.merge_state(updates)
            elif way == "wire form":
                await target.merge_state(updates.to_wire())
            else:
                for key, value in updates:
                    await target.replicate_from(source.node_id, key, value)
            times[way] = time.perf_counter() - t
            assert target.merkle_root == source.merkle_root
            await target.stop()
        base = times["merge_state"]
        print(f"{'durable' if durable else 'in memory'}: merge_state {base * 1000:.0f} ms; "
              f"its wire form {times['wire form'] * 1000:.0f} ms "
              f"(x{times['wire form'] / base:.1f}); replicate_from one by one "
              f"{times['replicate_from'] * 1000:.0f} ms (x{times['replicate_from'] / base:.1f})")


def tree_only(n_keys: int, n_diff: int) -> None:
    """The digest exchange at a larger scale, bytes only: two trees, no replicas, no network."""
    a, b = merkle.MerkleTree(), merkle.MerkleTree()
    for i in range(n_keys):
        k = f"concept-{i:07d}"
        d = merkle.key_digest(k, b"state")
        a.set(k, d)
        b.set(k, d)
    for i in range(n_diff):
        k = f"concept-{i * (n_keys // n_diff):07d}"
        b.set(k, merkle.key_digest(k, b"other"))
    pack = replication._pack
    sent = 0
    level, nodes = 1, list(range(a.fanout))
    while True:
        reply = b.hashes(level, nodes)
        sent += len(pack({"level": level, "nodes": nodes})) + len(pack({"hashes": reply}))
        diff = merkle.differing(nodes, a.hashes(level, nodes), reply)
        if level == a.depth:
            break
        nodes, level = a.children(level, diff), level + 1
    nodes = diff
    entries = b.entries(nodes)
    sent += len(pack({"level": level, "nodes": nodes, "entries": True}))
    sent += len(pack({"entries": entries}))
    keys: set[str] = set()
    for mine, theirs in zip(a.entries(nodes), entries, strict=True):
        keys |= merkle.differing_keys(mine, theirs)
    print(f"\n## Digest exchange at {n_keys:,} keys (trees only): {len(keys)} differing keys "
          f"found with {sent:,} bytes of digests (plus the differing states themselves)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    ap.add_argument("--only", choices=["local", "propagation", "anti-entropy", "catch-up"],
                    help="run one part")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="total writes/s for the propagation runs")
    args = ap.parse_args()
    q = args.quick

    def part(name: str) -> bool:
        return args.only in (None, name)

    with tempfile.TemporaryDirectory(prefix="bench-repl-") as tmp:
        root = Path(tmp)
        ca = pki.create_ca()
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} CPUs (shared machine: latency includes waiting for a CPU)")
        if part("local"):
            await local_writes(root, 2_000 if q else 20_000)
        if part("propagation"):
            print("\n## Propagation (real processes, mTLS, fsync)")
            for n in (3, 5):
                await propagation(root, ca, n, args.rate, 3.0 if q else 10.0)
        if part("anti-entropy"):
            await anti_entropy(root, ca, 10_000 if q else 100_000, 10)
            tree_only(100_000 if q else 1_000_000, 10)
        if part("catch-up"):
            await catch_up(root, 1_000 if q else 10_000)


if __name__ == "__main__":
    asyncio.run(main())
