"""Raft across real processes over mTLS on 127.0.1.x, with kill -9 under load.

Workers in the test process send proposals (each with a unique command id,
reused as its request id on every retry) to whichever node leads; a proposal
counts as acknowledged only when ``append_entry`` returned True there. While
they run, leaders and followers are killed with SIGKILL and restarted from
their data directories. At the end every node must hold the same applied
sequence, with no id applied twice, each worker's ids in order and without
gaps, and every acknowledged id present (nothing acknowledged was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import waiting
from conftest import TestPKI
from integration.raft_proc import RaftProc, find_leader, restart, start_cluster

Factory = Callable[[int, int], list[RaftProc]]


@pytest.fixture
async def cluster(cluster_pki: TestPKI, tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[RaftProc] = []

    def make(n: int, subnet: int) -> list[RaftProc]:
        for i in range(n):
            nid = f"raft-{subnet}-{i}"
            host = f"127.0.1.{subnet + i}"
            files = cluster_pki.node(nid, ips=(host,))
            made.append(RaftProc(nid, host, Path(files.cert).parent, tmp_path / nid))
        return made[-n:]

    yield make
    await asyncio.gather(*(p.stop() for p in made), return_exceptions=True)


class Load:
    """Workers proposing ``w<k>-<i>`` in order, retrying each id until acknowledged."""

    def __init__(self, procs: list[RaftProc], workers: int) -> None:
        self.procs = procs
        self.acked: set[str] = set()
        self.next: dict[int, int] = dict.fromkeys(range(workers), 0)
        self.leader: RaftProc | None = None
        self.stopping = False
        self.tasks = [asyncio.get_running_loop().create_task(self._worker(w))
                      for w in range(workers)]

    async def _worker(self, w: int) -> None:
        while not self.stopping:
            cid = f"w{w}-{self.next[w]}"
            ok = False
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                ld = self.leader
                if ld is None or not ld.alive:
                    ld = self.leader = await find_leader(self.procs, timeout=20)
                ok = (await ld.call("propose", cmd=cid, rid=cid, timeout=5))["ok"]
            if ok:
                self.acked.add(cid)
                self.next[w] += 1
            else:
                self.leader = None
                await asyncio.sleep(0.02)  # paced: a client backing off while the cluster elects

    async def until(self, count: int, timeout: float = 60.0) -> None:
        await waiting.until(lambda: len(self.acked), lambda n: n >= count, timeout=timeout,
                            what=f"{count} acknowledged commands (count)")

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)


async def converged(procs: list[RaftProc], timeout: float = 60.0) -> list[str]:
    """Wait until every node applied the same sequence; return it."""
    async def observe() -> tuple[set[int], list[list[str]]]:
        st = await asyncio.gather(*(p.call("status", seen=True) for p in procs))
        return {s["stats"]["last_applied"] for s in st}, [s["seen"] for s in st]

    def same(got: tuple[set[int], list[list[str]]]) -> bool:
        applied, seqs = got
        return len(applied) == 1 and all(s == seqs[0] for s in seqs)

    _, seqs = await waiting.until(observe, same, timeout=timeout, interval=0.1,
                                  what="every node to apply the same sequence "
                                       "(last applied indexes, sequences)")
    return list(seqs[0])


def check_history(seen: list[str], load: Load) -> None:
    assert len(seen) == len(set(seen)), "a command was applied twice"
    by_worker: dict[int, list[int]] = {}
    for cid in seen:
        w, i = cid[1:].split("-")
        by_worker.setdefault(int(w), []).append(int(i))
    for w, idx in by_worker.items():
        assert idx == list(range(len(idx))), f"worker {w}: out of order or gaps: {idx[:20]}"
    missing = load.acked - set(seen)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"


async def status(p: RaftProc) -> dict[str, Any]:
    return (await p.call("status"))["stats"]


async def test_three_nodes_kill_leader_and_follower_under_load(cluster: Factory) -> None:
    procs = cluster(3, 20)
    await start_cluster(procs, snapshot_threshold=300)
    load = Load(procs, workers=8)
    await load.until(200)
    leader = await find_leader(procs)
    await leader.kill()
    await load.until(len(load.acked) + 200)  # the other two elect a leader and go on
    await restart(leader, procs, snapshot_threshold=300)
    await load.until(len(load.acked) + 200)
    new_leader = await find_leader(procs)
    follower = next(p for p in procs if p is not new_leader)
    await follower.kill()
    await load.until(len(load.acked) + 200)
    await restart(follower, procs, snapshot_threshold=300)
    await load.until(len(load.acked) + 200)
    await load.stop()
    seen = await converged(procs)
    check_history(seen, load)
    stats = await asyncio.gather(*(status(p) for p in procs))
    assert sum(s["snapshots_taken"] for s in stats) > 0  # compaction ran under load
    assert {s["cluster_size"] for s in stats} == {3}


async def test_five_nodes_lose_two_then_the_leader(cluster: Factory) -> None:
    procs = cluster(5, 30)
    await start_cluster(procs)
    load = Load(procs, workers=8)
    await load.until(150)
    leader = await find_leader(procs)
    followers = [p for p in procs if p is not leader][:2]
    await asyncio.gather(*(f.kill() for f in followers))
    await load.until(len(load.acked) + 150)  # 3 of 5 remain: still a quorum
    await leader.kill()  # 2 of 5 left: no quorum until someone comes back
    await restart(followers[0], procs)
    await load.until(len(load.acked) + 150)
    await restart(followers[1], procs)
    await restart(leader, procs)
    await load.until(len(load.acked) + 150)
    await load.stop()
    check_history(await converged(procs), load)


async def test_membership_change_and_transfer_over_mtls(cluster: Factory) -> None:
    procs = cluster(3, 40)
    await start_cluster(procs)
    load = Load(procs, workers=4)
    await load.until(100)
    # A fourth node joins with no configuration and is added by the leader (made by the
    # fixture, which stops it at the end like the others).
    newcomer = cluster(1, 43)[0]
    nid = newcomer.node_id
    procs.append(newcomer)
    await newcomer.spawn()
    # It knows no peer at all: it learns addresses from the leader's messages.
    await newcomer.call("start", cluster=[], peers={}, join=True)
    leader = await find_leader(procs)
    await leader.call("add_member", node=nid, address=newcomer.address)
    members = (await leader.call("status"))["members"]
    assert {m["id"]: m["voter"] for m in members}[nid] is True
    moved = (await leader.call("transfer", to=nid))["leader"]
    assert moved == nid
    load.leader = None
    await load.until(len(load.acked) + 100)
    old = next(p for p in procs if p.node_id == leader.node_id)
    await newcomer.call("remove_member", node=old.node_id)
    await load.until(len(load.acked) + 50)
    await load.stop()
    rest = [p for p in procs if p is not old]
    seen = await converged(rest)
    check_history(seen, load)
    assert {s["cluster_size"] for s in await asyncio.gather(*(status(p) for p in rest))} == {3}


async def test_a_restarted_node_left_behind_the_snapshot_gets_one_over_mtls(
        cluster: Factory) -> None:
    procs = cluster(3, 50)
    await start_cluster(procs, snapshot_threshold=50)
    load = Load(procs, workers=4)
    await load.until(20)
    leader = await find_leader(procs)
    lagger = next(p for p in procs if p is not leader)
    behind = (await status(lagger))["last_log_index"]
    await lagger.kill()
    await load.until(len(load.acked) + 200)  # several compactions on the survivors
    survivors = [p for p in procs if p is not lagger]
    snaps = [s["snapshot_index"] for s in await asyncio.gather(*(status(p) for p in survivors))]
    assert min(snaps) > behind  # neither survivor still holds the entries the lagger lacks
    await restart(lagger, procs, snapshot_threshold=50)
    await load.until(len(load.acked) + 50)
    await load.stop()
    seen = await converged(procs)  # its state machine, restored from the snapshot, matches
    check_history(seen, load)
    st = await status(lagger)
    assert st["snapshots_installed"] >= 1
    assert st["snapshot_index"] > behind
