"""RaftConsensus (the asyncio shell) in one process: the spec's API, durability across
restarts, snapshots, membership, transfer and reads. Nodes talk through the in-process
hub; real sockets and TLS are covered by tests/integration/test_raft_processes.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from continuum.federation.distributed import consensus

FAST = {"election_timeout_ms": (60, 120), "heartbeat_interval_ms": 20}


async def wait_for(pred: Any, timeout: float = 10.0) -> None:
    """Poll ``pred`` (state changes here come from another node's loop) with a deadline."""
    async with asyncio.timeout(timeout):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


class Cluster:
    def __init__(self, ids: list[str], tmp: Path | None = None, **kw: Any) -> None:
        self.applied: dict[str, list[Any]] = {i: [] for i in ids}
        self.nodes = {i: consensus.RaftConsensus(
            i, ids, storage_path=(tmp / i) if tmp else None, **{**FAST, **kw}) for i in ids}
        for i, n in self.nodes.items():
            n.register_apply_callback(self.applied[i].append)

    async def start(self) -> None:
        await asyncio.gather(*(n.start() for n in self.nodes.values()))

    async def leader(self) -> consensus.RaftConsensus:
        await wait_for(lambda: sum(n.is_leader for n in self.nodes.values()) == 1)
        return next(n for n in self.nodes.values() if n.is_leader)

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(["node-1", "node-2", "node-3"])
    await c.start()
    yield c
    await c.stop()


async def test_spec_usage_replicates_commands_to_every_state_machine(cluster: Cluster) -> None:
    leader = await cluster.leader()
    got: list[Any] = []

    async def apply_to_state_machine(command: Any) -> None:
        got.append(command)

    leader.register_apply_callback(apply_to_state_machine)
    cmd = {"type": "add_concept", "concept": {"name": "AI Consciousness", "description": "..."}}
    assert await leader.append_entry(cmd) is True
    assert got == [cmd]
    await wait_for(lambda: all(cmd in cluster.applied[i] for i in cluster.nodes
                               if cluster.nodes[i] is not leader))
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    assert await follower.append_entry({"x": 1}) is False
    stats = leader.get_stats()
    for key in ("node_id", "role", "state", "current_term", "leader_id", "log_size",
                "commit_index", "last_applied", "cluster_size"):
        assert key in stats
    assert stats["role"] == "leader" and stats["cluster_size"] == 3
    assert follower.get_stats()["leader_id"] == leader.node_id


async def test_concurrent_proposals_apply_once_each_in_one_order(cluster: Cluster) -> None:
    leader = await cluster.leader()
    results = await asyncio.gather(*(leader.append_entry({"n": k}) for k in range(300)))
    assert all(results)
    await wait_for(lambda: all(len(a) == 300 for a in cluster.applied.values()))
    orders = list(cluster.applied.values())
    assert orders[0] == orders[1] == orders[2]
    assert sorted(c["n"] for c in orders[0]) == list(range(300))


async def test_a_retried_request_id_is_applied_once(cluster: Cluster) -> None:
    leader = await cluster.leader()
    assert await leader.append_entry({"v": 1}, request_id="r-1")
    assert await leader.append_entry({"v": 1}, request_id="r-1")
    assert cluster.applied[leader.node_id].count({"v": 1}) == 1


async def test_bad_commands_and_arguments_are_refused(cluster: Cluster) -> None:
    leader = await cluster.leader()
    before = leader.get_stats()["last_log_index"]
    with pytest.raises(TypeError):
        await leader.append_entry({"f": object()})
    assert leader.get_stats()["last_log_index"] == before
    with pytest.raises(ValueError):
        consensus.RaftConsensus("a", ["b", "c"])
    with pytest.raises(ValueError):
        consensus.RaftConsensus("a", ["a"], election_timeout_ms=(300, 150))
    with pytest.raises(ValueError):
        consensus.RaftConsensus("a", ["a"], heartbeat_interval_ms=500)


async def test_malformed_peer_messages_are_dropped(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    term = follower.get_stats()["current_term"]
    follower._receive("raft.vote", "node-9", {"t": "huge"})
    follower._receive("raft.append", leader.node_id, {"t": 99, "entries": "x"})
    await wait_for(lambda: follower.stats["messages_rejected"] == 2)
    assert follower.get_stats()["current_term"] == term


async def test_read_index_is_a_barrier_on_the_leader_only(cluster: Cluster) -> None:
    leader = await cluster.leader()
    assert await leader.append_entry({"w": 1})
    idx = await leader.read_index()
    assert idx >= leader.get_stats()["commit_index"] - 1
    assert leader.get_stats()["last_applied"] >= idx
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    with pytest.raises(consensus.NotLeaderError) as err:
        await follower.read_index()
    assert err.value.leader_id == leader.node_id


async def test_transfer_leadership(cluster: Cluster) -> None:
    leader = await cluster.leader()
    target = next(i for i in cluster.nodes if i != leader.node_id)
    new = await leader.transfer_leadership(target)
    assert new == target and cluster.nodes[target].is_leader
    assert await cluster.nodes[target].append_entry({"after": "transfer"})


async def test_a_transfer_to_a_stopped_voter_fails_at_once_and_keeps_the_leader(
        cluster: Cluster) -> None:
    leader = await cluster.leader()
    target = next(i for i in cluster.nodes if i != leader.node_id)
    await cluster.nodes[target].stop()
    started = time.monotonic()
    with pytest.raises(consensus.MembershipError) as err:
        await leader.transfer_leadership(target, timeout=30)
    assert err.value.code == "transfer_failed"
    # given up after an election timeout, not at the call's timeout
    assert time.monotonic() - started < 5
    assert leader.is_leader and await leader.append_entry({"after": "failed transfer"})


async def test_a_leaving_leader_returns_once_it_has_stepped_down(cluster: Cluster) -> None:
    leader = await cluster.leader()
    target = next(i for i in cluster.nodes if i != leader.node_id)
    assert await leader.transfer_leadership(target, wait_for_successor=False) == target
    assert not leader.is_leader
    assert (await cluster.leader()).node_id == target


async def test_add_and_remove_members() -> None:
    c = Cluster(["m-1", "m-2", "m-3"])
    await c.start()
    joiner = consensus.RaftConsensus("m-4", [], join=True, **FAST)
    seen: list[Any] = []
    joiner.register_apply_callback(seen.append)
    await joiner.start()
    try:
        leader = await c.leader()
        assert await leader.append_entry({"before": 1})
        assert joiner.role() == "learner" and not joiner.is_leader  # joined nothing yet
        await leader.add_member("m-4", "127.0.0.1:7004")
        members = {m["id"]: m for m in leader.members()}
        assert members["m-4"]["voter"] and members["m-4"]["address"] == "127.0.0.1:7004"
        assert leader.get_stats()["cluster_size"] == 4
        assert {"before": 1} in seen  # it caught up before being promoted
        await leader.add_member("m-4", "127.0.0.1:7004")  # a retried call: nothing changes
        assert leader.get_stats()["cluster_size"] == 4
        victim = next(i for i in c.nodes if i != leader.node_id)
        await leader.remove_member(victim)
        assert leader.get_stats()["cluster_size"] == 3
        with pytest.raises(consensus.MembershipError) as err:
            await leader.remove_member(victim)
        assert err.value.code == "not_member"
        assert await leader.append_entry({"after": 1})
        await wait_for(lambda: {"after": 1} in seen)
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(consensus.NotLeaderError):
            await follower.add_member("m-5", "127.0.0.1:7005")
    finally:
        await joiner.stop()
        await c.stop()


async def test_adding_a_learner_again_resumes_its_catch_up_and_promotes_it() -> None:
    c = Cluster(["m-1", "m-2", "m-3"])
    await c.start()
    joiner = consensus.RaftConsensus("m-4", [], join=True, **FAST)
    try:
        leader = await c.leader()
        assert await leader.append_entry({"before": 1})
        with pytest.raises(consensus.MembershipError) as err:  # m-4 is not running yet
            await leader.add_member("m-4", "127.0.0.1:7004", timeout=0.5)
        assert err.value.code == "not_caught_up"
        assert {m["id"]: m["voter"] for m in leader.members()}["m-4"] is False
        await joiner.start()
        await leader.add_member("m-4", "127.0.0.1:7004")  # no "exists": it carries on
        assert {m["id"]: m["voter"] for m in leader.members()}["m-4"] is True
        assert leader.get_stats()["cluster_size"] == 4
    finally:
        await joiner.stop()
        await c.stop()


async def test_removing_a_learner_that_is_being_added_ends_the_addition(
        cluster: Cluster) -> None:
    leader = await cluster.leader()
    adding = asyncio.create_task(leader.add_member("ghost", "127.0.0.1:7009", timeout=30))
    await wait_for(lambda: "ghost" in {m["id"] for m in leader.members()})
    started = time.monotonic()
    await leader.remove_member("ghost")  # does not queue behind the addition's catch-up
    with pytest.raises(consensus.MembershipError) as err:
        await adding
    assert err.value.code == "removed"
    assert time.monotonic() - started < 5
    assert "ghost" not in {m["id"] for m in leader.members()}


async def test_single_node_restarts_from_disk_and_replays(tmp_path: Path) -> None:
    n = consensus.RaftConsensus("solo", ["solo"], storage_path=tmp_path, **FAST)
    await n.start()
    assert n.is_leader
    for k in range(5):
        assert await n.append_entry({"k": k})
    term = n.get_stats()["current_term"]
    await n.stop()
    again = consensus.RaftConsensus("solo", ["solo"], storage_path=tmp_path, **FAST)
    replayed: list[Any] = []
    again.register_apply_callback(replayed.append)
    await again.start()
    try:
        await wait_for(lambda: len(replayed) == 5)
        assert replayed == [{"k": k} for k in range(5)]
        assert again.get_stats()["current_term"] > term  # a new election, a new term
        assert await again.append_entry({"k": 5})
    finally:
        await again.stop()


@pytest.mark.parametrize("packing", ["in the loop", "on a thread"])
async def test_snapshots_compact_the_log_and_restore_on_restart(tmp_path: Path,
                                                                packing: str) -> None:
    state: dict[str, int] = {}

    def apply(cmd: Any) -> None:
        state[cmd["key"]] = cmd["v"]

    def take() -> bytes:
        out: bytes = msgpack.packb(state)
        return out

    def restore(data: bytes) -> None:
        state.clear()
        state.update(msgpack.unpackb(data))

    def freeze() -> Any:  # a copy now, packed later (on a thread)
        copy = dict(state)
        return lambda: msgpack.packb(copy)

    n = consensus.RaftConsensus("snap", ["snap"], storage_path=tmp_path, snapshot_threshold=10,
                                **FAST)
    n.register_apply_callback(apply)
    n.register_snapshot_callbacks(take, restore, freeze if packing == "on a thread" else None)
    await n.start()
    for k in range(35):
        assert await n.append_entry({"key": f"k{k % 7}", "v": k})
    await wait_for(lambda: n.get_stats()["snapshots_taken"] >= 2)
    assert n.get_stats()["log_size"] < 20
    await n.stop()
    expected = dict(state)
    state.clear()
    again = consensus.RaftConsensus("snap", ["snap"], storage_path=tmp_path, **FAST)
    again.register_apply_callback(apply)
    again.register_snapshot_callbacks(take, restore)
    await again.start()
    try:
        await wait_for(lambda: state == expected)
    finally:
        await again.stop()


async def test_a_follower_left_behind_gets_a_snapshot() -> None:
    states: dict[str, dict[str, int]] = {}

    def machine(nid: str) -> tuple[Any, Any, Any]:
        st = states.setdefault(nid, {})

        def take() -> bytes:
            out: bytes = msgpack.packb(st)
            return out

        def restore(data: bytes) -> None:
            st.clear()
            st.update(msgpack.unpackb(data))
        return (lambda cmd: st.__setitem__(cmd["key"], cmd["v"])), take, restore

    ids = ["s-1", "s-2", "s-3"]
    nodes = {i: consensus.RaftConsensus(i, ids, snapshot_threshold=20, **FAST) for i in ids}
    for i, n in nodes.items():
        apply, take, restore = machine(i)
        n.register_apply_callback(apply)
        n.register_snapshot_callbacks(take, restore)
    await asyncio.gather(*(n.start() for n in nodes.values()))
    try:
        await wait_for(lambda: any(n.is_leader for n in nodes.values()))
        leader = next(n for n in nodes.values() if n.is_leader)
        lagger = next(n for n in nodes.values() if n is not leader)
        await lagger.stop()
        for k in range(60):
            assert await leader.append_entry({"key": f"k{k}", "v": k})
        assert leader.get_stats()["snapshot_index"] > 0
        restarted = consensus.RaftConsensus(lagger.node_id, ids, **FAST)
        apply, take, restore = machine(lagger.node_id + "-new")
        restarted.register_apply_callback(apply)
        restarted.register_snapshot_callbacks(take, restore)
        nodes[lagger.node_id] = restarted
        await restarted.start()
        await wait_for(lambda: states[lagger.node_id + "-new"] == states[leader.node_id])
        assert restarted.get_stats()["snapshots_installed"] >= 1
    finally:
        await asyncio.gather(*(n.stop() for n in nodes.values()))


async def test_a_proposal_without_a_quorum_times_out_false(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for n in cluster.nodes.values():
        if n is not leader:
            await n.stop()
    assert await leader.append_entry({"lonely": 1}, timeout=0.3) is False
    assert {"lonely": 1} not in cluster.applied[leader.node_id]


async def test_a_removed_member_restarts_the_same_object_with_its_state_discarded(
        tmp_path: Path) -> None:
    from continuum.federation.distributed.transport import peer

    t = peer.PeerTransport("shared", insecure=True)
    n = consensus.RaftConsensus("shared", ["shared"], transport=t, storage_path=tmp_path, **FAST)
    with pytest.raises(ValueError, match="already registered"):  # one Raft per transport
        consensus.RaftConsensus("shared", ["shared"], transport=t, **FAST)
    seen: list[Any] = []
    n.register_apply_callback(seen.append)
    await n.start()
    assert await n.append_entry({"old": 1})
    with pytest.raises(RuntimeError, match="stop"):
        n.discard_state()  # running: refused
    await n.stop()
    n.discard_state()
    await n.start(cluster_nodes=[], join=True)  # fresh, waiting to be added
    try:
        assert not n.is_leader and n.members() == [] and seen == [{"old": 1}]
        assert n.get_stats()["last_log_index"] == 0
    finally:
        await n.stop()


async def test_the_same_object_can_stop_and_start_again(tmp_path: Path) -> None:
    n = consensus.RaftConsensus("again", ["again"], storage_path=tmp_path, **FAST)
    seen: list[Any] = []
    n.register_apply_callback(seen.append)
    await n.start()
    assert await n.append_entry({"a": 1})
    await n.stop()
    assert await n.append_entry({"while": "stopped"}) is False
    await n.start()
    try:
        assert await n.append_entry({"a": 2})
        assert seen == [{"a": 1}, {"a": 1}, {"a": 2}]  # replayed once after the restart
    finally:
        await n.stop()


async def test_a_full_inbox_drops_peer_messages_and_refuses_proposals() -> None:
    n = consensus.RaftConsensus("busy", ["busy"], max_inbox=20, **FAST)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_apply(cmd: Any) -> None:
        if cmd == {"block": 1}:
            entered.set()
            await release.wait()  # the loop is stuck here: nothing drains the inbox

    n.register_apply_callback(slow_apply)
    await n.start()
    try:
        blocked = asyncio.create_task(n.append_entry({"block": 1}))
        await entered.wait()
        queued = [asyncio.create_task(n.append_entry({"queued": k})) for k in range(5)]
        await asyncio.sleep(0)  # let them reach the inbox
        for _ in range(40):
            n._receive("raft.heartbeat", "peer", {})
        assert len(n._inbox) == 20
        assert n.stats["messages_dropped"] == 25
        with pytest.raises(consensus.OverloadedError, match="overloaded"):
            await n.append_entry({"refused": 1})
        with pytest.raises(consensus.OverloadedError):
            await n.read_index()
        assert n.stats["proposals_refused"] == 2
        release.set()
        assert await blocked is True
        assert all(await asyncio.gather(*queued))  # accepted before the cap: all committed
        assert await n.append_entry({"after": 1}) is True
        assert n.get_stats()["messages_dropped"] == 25
    finally:
        await n.stop()
    with pytest.raises(ValueError):
        consensus.RaftConsensus("x", ["x"], max_inbox=0)


async def test_membership_is_reported_uncommitted_until_the_change_commits(
        tmp_path: Path) -> None:
    ids = ["c-1", "c-2", "c-3"]
    # Once the removal is appended, the leader's quorum is {leader, needed} while ``needed``
    # is down: it must come back within an election timeout, or the leader steps down.
    # FAST's 60-120 ms was too short for a restart on a loaded machine.
    steady: dict[str, Any] = {"election_timeout_ms": (500, 1000), "heartbeat_interval_ms": 50}
    c = Cluster(ids, tmp_path, **steady)
    await c.start()
    try:
        leader = await c.leader()
        assert leader.membership_committed() and leader.get_stats()["membership_committed"]
        victim, needed = [n for n in c.nodes.values() if n is not leader]
        await needed.stop()  # {leader, needed} must commit the removal: it waits for ``needed``
        removal = asyncio.create_task(leader.remove_member(victim.node_id))
        await wait_for(lambda: victim.node_id not in {m["id"] for m in leader.members()})
        stats = leader.get_stats()
        assert leader.membership_committed() is False
        assert stats["membership_committed"] is False
        assert stats["config_index"] > stats["commit_index"]
        back = consensus.RaftConsensus(needed.node_id, ids, storage_path=tmp_path / needed.node_id,
                                       **steady)
        c.nodes[needed.node_id] = back
        await back.start()
        await removal
        assert leader.membership_committed() is True
        await wait_for(back.membership_committed)  # once it hears of the new commit index
        joiner = consensus.RaftConsensus("c-4", [], join=True, **steady)
        c.nodes["c-4"] = joiner
        await joiner.start()
        assert not joiner.membership_committed()  # no configuration yet
        await leader.add_member("c-4", "127.0.0.1:7004")
        assert leader.membership_committed() is True
        await wait_for(joiner.membership_committed)
        assert {m["id"] for m in joiner.members()} == {leader.node_id, needed.node_id, "c-4"}
    finally:
        await c.stop()
