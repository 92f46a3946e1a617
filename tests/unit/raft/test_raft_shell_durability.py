"""RaftConsensus persists before it vouches: with real SQLite stores, a node's votes and
append acknowledgements leave only once what they depend on is on disk, and a node
whose write failed sends nothing more.

``Disk`` sits in the store's writer thread (the one place a batch becomes durable), so
a test can hold a write there or make it fail. ``Witness`` checks every message a node
sends against that node's disk at the moment it leaves.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
from test_raft_consensus import FAST, wait_for

from continuum.federation.distributed import consensus, storage
from continuum.federation.distributed.core.raft import messages as rmsg


class Disk:
    """Hooks one started node's ``DurableStore`` at its writer thread."""

    def __init__(self, node: consensus.RaftConsensus) -> None:
        store = node._store
        assert store is not None
        self._apply_many = store._apply_many
        self._commit = store.commit
        store._apply_many = self._apply  # type: ignore[method-assign]
        store.commit = self._count  # type: ignore[method-assign]
        self.opened = threading.Event()
        self.opened.set()
        self.held = threading.Event()  # a write is waiting for ``release``
        self.calls = 0  # commit() calls made by the shell
        self._fail_when_behind: int | None = None  # fail this many-th call once another queues
        self._behind = threading.Event()
        self.failed = threading.Event()

    def hold(self) -> None:
        self.opened.clear()

    def release(self) -> None:
        self.opened.set()

    def fail_next_once_another_is_queued(self) -> None:
        self._fail_when_behind = self.calls + 1

    async def _count(self, ops: Sequence[storage.Op]) -> None:
        self.calls += 1
        if self._fail_when_behind is not None and self.calls > self._fail_when_behind:
            self._behind.set()
        await self._commit(ops)

    def _apply(self, batches: Any) -> None:
        if not self.opened.is_set():
            self.held.set()
            assert self.opened.wait(10), "a held write was never released"
        if self._fail_when_behind is not None and not self.failed.is_set():
            # Fail while a later write is already queued behind this one, so that a
            # node could be tempted to send that later write's acknowledgements.
            assert self._behind.wait(10), "no later write was queued"
            self.failed.set()
            raise OSError("simulated disk failure")
        self._apply_many(batches)


class Witness:
    """Records what a node sends, and whether its disk backed each vote and ack."""

    def __init__(self, node: consensus.RaftConsensus) -> None:
        self.node = node
        self.sent: list[rmsg.Message] = []
        self.unbacked: list[rmsg.Message] = []
        self.after_failure: list[rmsg.Message] = []
        self._send = node._send
        node._send = self._check  # type: ignore[method-assign]

    def _check(self, msg: rmsg.Message) -> None:
        n = self.node
        if n._failed is not None:
            self.after_failure.append(msg)
        if not self._backed(msg):
            self.unbacked.append(msg)
        self.sent.append(msg)
        self._send(msg)

    def _backed(self, msg: rmsg.Message) -> bool:
        store, core = self.node._store, self.node._node
        assert store is not None and core is not None
        if isinstance(msg, rmsg.VoteResponse) and msg.granted and not msg.pre:
            raw = store.get("raft", "hard_state")
            term, vote, _ = msgpack.unpackb(raw, raw=False) if raw else (0, None, 0)
            return bool(term == msg.term and vote == msg.to)
        if isinstance(msg, rmsg.AppendResponse) and msg.success:
            on_disk = {k: msgpack.unpackb(v, raw=False)[0] for k, v in store.scan("raft.log")}
            return all(on_disk.get(i) == core.log.term(i)
                       for i in range(core.log.snapshot_index + 1, msg.index + 1))
        return True

    def of(self, kind: type) -> list[rmsg.Message]:
        return [m for m in self.sent if isinstance(m, kind)]


def _durable_commands(path: Path) -> list[Any]:
    store = storage.DurableStore(path / "raft.db")
    try:
        out = []
        for _, v in store.scan("raft.log"):
            _, kind, data, _ = msgpack.unpackb(v, raw=False)
            if kind == rmsg.NORMAL:
                out.append(msgpack.unpackb(data, raw=False))
        return out
    finally:
        store.close()


async def _cluster(tmp: Path, ids: list[str]) -> dict[str, consensus.RaftConsensus]:
    nodes = {i: consensus.RaftConsensus(i, ids, storage_path=tmp / i, **FAST) for i in ids}
    await asyncio.gather(*(n.start() for n in nodes.values()))
    await wait_for(lambda: sum(n.is_leader for n in nodes.values()) == 1)
    return nodes


async def test_after_a_failed_write_a_node_sends_nothing_and_nothing_commits_on_it(
        tmp_path: Path) -> None:
    ids = ["d-1", "d-2", "d-3"]
    nodes = await _cluster(tmp_path, ids)
    try:
        leader = next(n for n in nodes.values() if n.is_leader)
        follower, other = [n for n in nodes.values() if n is not leader]
        assert await leader.append_entry({"before": 1})
        await other.stop()  # from now on every commit needs ``follower``'s disk
        disk, witness = Disk(follower), Witness(follower)
        disk.fail_next_once_another_is_queued()
        first = asyncio.create_task(leader.append_entry({"p": 1}, timeout=1.5))
        await wait_for(lambda: disk.calls >= disk._fail_when_behind)  # type: ignore[operator]
        second = asyncio.create_task(leader.append_entry({"p": 2}, timeout=1.5))
        results = await asyncio.gather(first, second)
        assert disk.failed.is_set()
        assert follower.get_stats()["running"] is False
        assert witness.after_failure == [], "a node whose write failed kept sending"
        assert witness.unbacked == []
        assert results == [False, False]  # never True for what one disk alone holds
        assert await leader.append_entry({"later": 1}, timeout=0.3) is False
    finally:
        await asyncio.gather(*(n.stop() for n in nodes.values()))
    assert follower._store is None  # a failed node still closes its disk when stopped
    # The one acknowledged write is on a majority of disks.
    assert sum({"before": 1} in _durable_commands(tmp_path / i) for i in ids) >= 2


async def test_a_log_with_a_hole_loads_up_to_the_hole(tmp_path: Path) -> None:
    """A write that failed while a later one landed leaves a hole; nothing after the hole
    was ever acknowledged, so a restart keeps the prefix and drops the rest for good."""
    store = storage.DurableStore(tmp_path / "raft.db")
    conf = rmsg.ClusterConfig(frozenset({"h"}), frozenset(), {}).encode()
    store.commit_sync([
        storage.Put("raft", "hard_state", msgpack.packb([1, "h", 2])),
        storage.Put("raft", "snapshot", msgpack.packb([0, 0, conf, b""], use_bin_type=True)),
        *(storage.Put("raft.log", i, msgpack.packb(
            [1, rmsg.NORMAL, msgpack.packb({"i": i}), None], use_bin_type=True))
          for i in (1, 2, 4, 5)),
    ])
    store.close()
    n = consensus.RaftConsensus("h", ["h"], storage_path=tmp_path, **FAST)
    seen: list[Any] = []
    n.register_apply_callback(seen.append)
    await n.start()
    try:
        assert n.is_leader
        assert await n.append_entry({"i": "new"})
        assert seen == [{"i": 1}, {"i": 2}, {"i": "new"}]
    finally:
        await n.stop()
    assert _durable_commands(tmp_path) == [{"i": 1}, {"i": 2}, {"i": "new"}]


async def test_a_follower_acknowledges_appends_only_after_its_write_completes(
        tmp_path: Path) -> None:
    nodes = await _cluster(tmp_path, ["a-1", "a-2", "a-3"])
    try:
        leader = next(n for n in nodes.values() if n.is_leader)
        followers = [n for n in nodes.values() if n is not leader]
        disks = [Disk(f) for f in followers]
        witnesses = [Witness(f) for f in followers]
        for d in disks:
            d.hold()
        held_index = leader.get_stats()["last_log_index"] + 1
        proposal = asyncio.create_task(leader.append_entry({"held": 1}, timeout=10))
        await wait_for(lambda: all(d.held.is_set() for d in disks))
        received = [f.stats["messages_received"] for f in followers]

        def acks_of_held(w: Witness) -> list[rmsg.Message]:
            # Acks of earlier entries may still leave under load; none may cover the held one.
            return [m for m in w.of(rmsg.AppendResponse)
                    if isinstance(m, rmsg.AppendResponse) and m.success
                    and m.index >= held_index]
        # Heartbeats keep arriving while the writes wait; none of them may be answered
        # with an acknowledgement of the held entry (or anything queued behind it).
        await wait_for(lambda: all(f.stats["messages_received"] >= r + 5
                                   for f, r in zip(followers, received, strict=True)))
        assert all(acks_of_held(w) == [] for w in witnesses)
        assert not proposal.done()
        for d in disks:
            d.release()
        assert await proposal is True
        assert any(acks_of_held(w) for w in witnesses)
        assert all(w.unbacked == [] for w in witnesses)
    finally:
        await asyncio.gather(*(n.stop() for n in nodes.values()))


async def test_a_vote_is_granted_only_after_it_is_on_disk(tmp_path: Path) -> None:
    nodes = await _cluster(tmp_path, ["v-1", "v-2"])
    try:
        voter = next(n for n in nodes.values() if n.is_leader)
        candidate = next(n for n in nodes.values() if n is not voter)
        disk, witness = Disk(voter), Witness(voter)
        disk.hold()
        # The leader hands over: the candidate needs this voter's vote, whose new
        # term and vote must be on disk before the answer leaves.
        await voter._call(lambda core: core.transfer_leader(candidate.node_id))
        await wait_for(lambda: disk.held.is_set() and voter._node is not None
                       and voter._node.vote == candidate.node_id)
        received = voter.stats["messages_received"]
        await wait_for(lambda: voter.stats["messages_received"] >= received + 3)
        assert witness.of(rmsg.VoteResponse) == []
        assert not candidate.is_leader
        disk.release()

        def granted() -> list[rmsg.Message]:
            return [m for m in witness.of(rmsg.VoteResponse)
                    if isinstance(m, rmsg.VoteResponse) and m.granted and not m.pre]
        await wait_for(lambda: bool(granted()))
        assert witness.unbacked == []
        await wait_for(lambda: sum(n.is_leader for n in nodes.values()) == 1)
    finally:
        await asyncio.gather(*(n.stop() for n in nodes.values()))
