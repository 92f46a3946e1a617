"""select_node over 1,000 registered nodes: microseconds per call for every algorithm.

Target (issue 6): under 50 µs per call for every algorithm. Also shown: the
cost with criteria (a filter pass over every node), the cost of a heartbeat,
and why least_loaded uses two random choices rather than the global minimum
(the share of selections that land on the busiest-picked node while loads are
stale, i.e. between two heartbeats).

Run: .venv/bin/python bench/coordinator.py [--nodes 1000] [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from typing import Any

from continuum.federation.distributed.coordinator import FederationCoordinator, LoadBalance

ALGORITHMS = ("least_loaded", "latency", "round_robin", "random")


async def build(algorithm: str, n: int, choices: int = 2) -> FederationCoordinator:
    co = FederationCoordinator("bench", load_balance=LoadBalance(algorithm=algorithm,
                                                                 choices=choices, seed=1))
    await co.start()
    rng = random.Random(7)
    for i in range(n):
        nid = f"node-{i:04d}"
        await co.register_node(nid, f"127.0.{i // 250}.{i % 250 + 1}:7000",
                               {"region": rng.choice(["eu", "us", "ap"])})
        await co.heartbeat(nid, {"load_score": rng.random(), "latency_ms": rng.uniform(0.5, 50),
                                 "capacity": {"concepts": rng.randrange(0, 20_000)}})
    assert co.get_stats()["nodes_by_status"]["healthy"] == n
    return co


async def per_call_us(co: FederationCoordinator, calls: int,
                      criteria: dict[str, Any] | None = None) -> float:
    for _ in range(200):  # warm up
        await co.select_node(criteria)
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t = time.perf_counter()
        for _ in range(calls):
            await co.select_node(criteria)
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


async def heartbeat_us(co: FederationCoordinator, calls: int) -> float:
    t = time.perf_counter()
    for i in range(calls):
        await co.heartbeat(f"node-{i % 1000:04d}", {"load_score": 0.5, "latency_ms": 3.0})
    return (time.perf_counter() - t) / calls * 1e6


async def herding(n: int, choices: int, picks: int) -> float:
    """Share of ``picks`` selections (no load update in between) taken by the top node."""
    co = await build("least_loaded", n, choices)
    try:
        chosen = [await co.select_node() for _ in range(picks)]
        counts = Counter(c.node_id for c in chosen if c is not None)
        return counts.most_common(1)[0][1] / picks
    finally:
        await co.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    crit = {"min_capacity": {"concepts": 5000}, "metadata": {"region": "eu"}}
    print(f"select_node over {args.nodes} healthy nodes, best of 3 x {args.calls} calls")
    print(f"{'algorithm':<14} {'us/call':>8} {'with criteria':>14} {'exclude 1':>10}  target < 50")
    for algorithm in ALGORITHMS:
        co = await build(algorithm, args.nodes)
        try:
            plain = await per_call_us(co, args.calls)
            filtered = await per_call_us(co, max(1000, args.calls // 20), crit)
            excl = await per_call_us(co, max(1000, args.calls // 20), {"exclude": ["node-0001"]})
            verdict = "ok" if plain < 50 else "MISSED"
            print(f"{algorithm:<14} {plain:>8.2f} {filtered:>14.1f} {excl:>10.1f}  {verdict}")
        finally:
            await co.stop()
    co = await build("least_loaded", args.nodes, choices=0)
    try:
        exact = await per_call_us(co, max(1000, args.calls // 20))
        print(f"{'exact minimum':<14} {exact:>8.2f}  (least_loaded with choices=0, for comparison)")
        print(f"heartbeat: {await heartbeat_us(co, args.calls):.2f} us/call")
    finally:
        await co.stop()
    picks = 1000
    print(f"herding: {picks} selections between two heartbeats, share taken by the top node:")
    print(f"  exact minimum {await herding(args.nodes, 0, picks):6.1%}   "
          f"P2C {await herding(args.nodes, 2, picks):6.1%}")


if __name__ == "__main__":
    asyncio.run(main())
