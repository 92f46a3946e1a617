"""Real node processes over mTLS on 127.0.3.x: concurrent writers, a healed partition, kill -9.

After every scenario all replicas must hold the same state (same Merkle root,
same values) and every acknowledged write must be in the causal history of its
key on every replica (its dot is covered: it either is the value or was
superseded by a write that saw it), so nothing acknowledged was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import waiting
from conftest import TestPKI
from integration.repl_proc import NodeProc

Factory = Callable[..., NodeProc]


@pytest.fixture
async def procs(cluster_pki: TestPKI, tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[NodeProc] = []

    def make(i: int, **kw: Any) -> NodeProc:
        nid = f"rp-{i}"
        host = f"127.0.3.{20 + i}"
        files = cluster_pki.node(nid, ips=(host,))
        p = NodeProc(nid, host, Path(files.cert).parent, tmp_path / nid, **kw)
        made.append(p)
        return p

    yield make
    await asyncio.gather(*(p.stop() for p in made), return_exceptions=True)


async def connect(nodes: list[NodeProc], isolated: frozenset[str] = frozenset()) -> None:
    for n in nodes:
        if n.node_id in isolated:
            peers: dict[str, str | None] = {}
        else:
            peers = {o.node_id: o.address for o in nodes
                     if o is not n and o.node_id not in isolated}
        await n.call("peers", peers=peers)


async def wait_converged(nodes: list[NodeProc], timeout: float = 60.0) -> dict[str, Any]:
    async def roots() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(n.call("dump") for n in nodes)))

    dumps = await waiting.until(
        roots, lambda ds: len({d["root"] for d in ds}) == 1, timeout=timeout, interval=0.1,
        what="one Merkle root everywhere")
    first: dict[str, Any] = dumps[0]["keys"]
    assert all(d["keys"] == first for d in dumps)  # same contexts, same values
    return first


def assert_nothing_lost(state: dict[str, Any], acks: list[list[Any]]) -> None:
    assert acks
    for key, node, counter in acks:
        assert key in state, f"acknowledged key {key} missing"
        seen = state[key]["context"].get(node, 0)
        assert seen >= counter, f"write {node}:{counter} to {key} lost"


async def concurrent_overlapping(nodes: list[NodeProc]) -> None:
    await asyncio.gather(*(n.start() for n in nodes))
    await connect(nodes)
    bursts = []
    for i, n in enumerate(nodes):
        writes = [[f"shared-{j % 10}", {"by": n.node_id, "j": j}] for j in range(40)]
        writes += [[f"own-{n.node_id}", {"last": j}] for j in range(5)]
        bursts.append(n.call("burst", writes=writes, concurrency=1 + i))
    replies = await asyncio.gather(*bursts)
    acks = [a for r in replies for a in r["acks"]]
    state = await wait_converged(nodes)
    assert_nothing_lost(state, acks)
    for n in nodes:  # a key only one node wrote ends with that node's last write
        assert state[f"own-{n.node_id}"]["value"] == {"last": 4}
    # Every node reads the same winner for every shared key.
    reads = await asyncio.gather(*(n.call("read", key="shared-3") for n in nodes))
    assert len({str(r["value"]) for r in reads}) == 1


async def test_three_nodes_concurrent_overlapping_writes(procs: Factory) -> None:
    await concurrent_overlapping([procs(i) for i in range(3)])


async def test_five_nodes_concurrent_overlapping_writes(procs: Factory) -> None:
    await concurrent_overlapping([procs(i, strategy="merge_union") for i in range(5)])


async def test_partition_heals(procs: Factory) -> None:
    nodes = [procs(i, ae_interval=0.3) for i in range(3)]
    await asyncio.gather(*(n.start() for n in nodes))
    lone = nodes[2]
    await connect(nodes, isolated=frozenset({lone.node_id}))
    majority = await nodes[0].call("burst", writes=[[f"p-{j}", {"side": "a", "j": j}]
                                                    for j in range(30)])
    minority = await lone.call("burst", writes=[[f"p-{j}", {"side": "b", "j": j}]
                                                for j in range(0, 30, 3)])
    await lone.call("delete", key="p-0")
    dumps = await asyncio.gather(*(n.call("dump") for n in nodes))
    assert dumps[0]["root"] != dumps[2]["root"]  # the partition really separated them
    await connect(nodes)  # heal: anti-entropy must carry what no push did
    state = await wait_converged(nodes)
    assert_nothing_lost(state, majority["acks"] + minority["acks"])
    stats = await asyncio.gather(*(n.call("stats") for n in nodes))
    assert sum(s["stats"]["anti_entropy_keys_repaired"] for s in stats) > 0


async def test_killed_node_restarts_with_every_acknowledged_write(procs: Factory) -> None:
    nodes = [procs(i, ae_interval=0.3) for i in range(3)]
    await asyncio.gather(*(n.start() for n in nodes))
    await connect(nodes)
    victim = nodes[0]
    await victim.call("stream", workers=8)
    await waiting.until(lambda: len(victim.acks), lambda n: n >= 200, timeout=60,
                        what="200 writes acknowledged by the victim (count)")
    await victim.kill()  # SIGKILL mid-stream
    acks = list(victim.acks)
    await nodes[1].call("burst", writes=[["after-kill", {"v": 1}]])
    # Restart on the same data directory, isolated: everything acked must be on its disk.
    await victim.start()
    await victim.call("peers", peers={})
    local = (await victim.call("dump"))["keys"]
    assert_nothing_lost(local, acks)
    await connect(nodes)
    state = await wait_converged(nodes)
    assert_nothing_lost(state, acks)
    assert "after-kill" in state
