"""Discovery costs on loopback: verifying peers over mutual TLS, and DNS SRV lookups.

Prints how long one ``discover_now()`` takes to verify N fresh peers (ping,
hello and a certificate handshake each, 16 in parallel), one re-verification,
and SRV lookup latency against the test DNS server for a small service (UDP)
and a large one (truncated, retried over TCP). Reports numbers, asserts nothing.

Run: .venv/bin/python bench/discovery.py [--peers 20] [--lookups 50]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "node_image"), str(ROOT / "tests")]

from continuum.federation.distributed import discovery, pki  # noqa: E402
from continuum.federation.distributed.transport import dns  # noqa: E402
from integration.discovery_helpers import make_node  # noqa: E402
from integration.dns_server import DNSServer  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def verification(n: int) -> None:
    ca = pki.create_ca()
    tmp = Path(tempfile.mkdtemp(prefix="bench-discovery-"))
    cfg = discovery.DiscoveryConfig(cluster_name="bench")
    peers = [make_node(tmp, ca, f"n-{i}", cfg) for i in range(n)]
    for p in peers:
        assert p.transport is not None
        await p.transport.start()
    addrs = [p.transport.address or "" for p in peers if p.transport is not None]
    me = make_node(tmp, ca, "me", discovery.DiscoveryConfig(cluster_name="bench",
                                                            bootstrap_nodes=addrs))
    assert me.transport is not None
    await me.transport.start()
    try:
        t = time.perf_counter()
        found = await me.discover_now()
        took = time.perf_counter() - t
        print(f"verify {n} fresh peers in one discover_now(): {ms(took)} "
              f"({sum(f.verified for f in found)} verified)")
        one = []
        for i, addr in enumerate(addrs[:10]):
            await me.remove_node(addr)
            await me.register_node(f"n-{i}", addr)
            t = time.perf_counter()
            await me.discover_now()
            one.append(time.perf_counter() - t)
        print(f"re-verify one known peer (hello + certificate handshake): "
              f"median {ms(statistics.median(one))}")
    finally:
        for p in (me, *peers):
            await p.stop()
            if p.transport is not None:
                await p.transport.stop()


async def lookups(count: int) -> None:
    with DNSServer() as server:
        for pods in (3, 60):
            name = server.headless_service(
                "bench-peers", "ns", "peer",
                {f"p-{i}": (f"127.0.9.{i + 1}", 7000) for i in range(pods)})
            resolver = dns.SrvResolver([server.nameserver])
            lat = []
            for _ in range(count):
                t = time.perf_counter()
                await resolver.lookup(name)
                lat.append(time.perf_counter() - t)
            lat.sort()
            print(f"SRV lookup, {pods} pods: median {ms(statistics.median(lat))}, "
                  f"p95 {ms(lat[int(0.95 * (len(lat) - 1))])} "
                  f"(udp {server.queries['udp']}, tcp {server.queries['tcp']} so far)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--lookups", type=int, default=50)
    args = ap.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    await verification(args.peers)
    await lookups(args.lookups)


if __name__ == "__main__":
    asyncio.run(main())
