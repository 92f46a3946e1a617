"""Forcing a new cluster through the shell: online (a running survivor) and offline (a
stopped node's storage), durable across a restart, with members added back after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import consensus, raft_storage
from unit.raft.test_raft_consensus import FAST, wait_for

IDS = ["r-1", "r-2", "r-3"]


async def _cluster(tmp: Path) -> tuple[dict[str, consensus.RaftConsensus], dict[str, list[Any]]]:
    applied: dict[str, list[Any]] = {i: [] for i in IDS}
    nodes = {i: consensus.RaftConsensus(i, IDS, storage_path=tmp / i, **FAST) for i in IDS}
    for i, n in nodes.items():
        n.register_apply_callback(applied[i].append)
    await asyncio.gather(*(n.start() for n in nodes.values()))
    await wait_for(lambda: sum(n.is_leader for n in nodes.values()) == 1)
    return nodes, applied


async def _write(nodes: dict[str, consensus.RaftConsensus], n: int) -> list[Any]:
    leader = next(x for x in nodes.values() if x.is_leader)
    cmds = [{"k": k} for k in range(n)]
    for c in cmds:
        assert await leader.append_entry(c)
    return cmds


async def test_a_running_survivor_becomes_the_sole_voter_and_keeps_committed_commands(
        tmp_path: Path) -> None:
    nodes, applied = await _cluster(tmp_path)
    cmds = await _write(nodes, 5)
    survivor = next(x for x in nodes.values() if not x.is_leader)
    with pytest.raises(consensus.MembershipError) as exc:  # quorum is not lost
        await survivor.force_new_cluster()
    assert exc.value.code == "has_leader"
    await wait_for(lambda: len(applied[survivor.node_id]) == len(cmds))
    for x in nodes.values():
        if x is not survivor:
            await x.stop()
    await wait_for(lambda: survivor.leader_id is None)
    r = await survivor.force_new_cluster()
    assert sorted(r.old_config.voters) == IDS
    assert survivor.is_leader
    assert [m["id"] for m in survivor.members()] == [survivor.node_id]
    assert survivor.membership_committed()
    await survivor.read_index()
    assert await survivor.append_entry({"k": "after"})
    assert applied[survivor.node_id] == [*cmds, {"k": "after"}]  # nothing applied twice
    # Durable: a restart from disk is the same one-voter cluster, with everything.
    await survivor.stop()
    again: list[Any] = []
    back = consensus.RaftConsensus(survivor.node_id, [], storage_path=tmp_path /
                                   survivor.node_id, join=True, **FAST)
    back.register_apply_callback(again.append)
    await back.start()
    try:
        await wait_for(lambda: back.is_leader and len(again) == len(cmds) + 1)
        assert again == [*cmds, {"k": "after"}]
        # A fresh node joins through the ordinary path and receives the data.
        fresh_applied: list[Any] = []
        fresh = consensus.RaftConsensus("r-9", [], join=True, storage_path=tmp_path / "r-9",
                                        **FAST)
        fresh.register_apply_callback(fresh_applied.append)
        await fresh.start()
        try:
            await back.add_member("r-9", "r-9:1", timeout=20)
            await wait_for(lambda: fresh_applied == again)
            assert {m["id"]: m["voter"] for m in back.members()} == {survivor.node_id: True,
                                                                     "r-9": True}
        finally:
            await fresh.stop()
    finally:
        await back.stop()


async def test_a_stopped_node_is_rewritten_offline_and_starts_as_the_sole_leader(
        tmp_path: Path) -> None:
    nodes, _ = await _cluster(tmp_path)
    cmds = await _write(nodes, 3)
    follower = next(x for x in nodes.values() if not x.is_leader)
    await wait_for(lambda: follower.get_stats()["last_applied"]
                   >= next(x for x in nodes.values() if x.is_leader).get_stats()["commit_index"])
    await asyncio.gather(*(x.stop() for x in nodes.values()))
    r = await asyncio.to_thread(raft_storage.force_new_cluster_offline, tmp_path /
                                follower.node_id, follower.node_id, "127.0.0.9:7000")
    assert r.config.voters == {follower.node_id}
    assert r.config.addresses == {follower.node_id: "127.0.0.9:7000"}
    got: list[Any] = []
    alone = consensus.RaftConsensus(follower.node_id, [], join=True,
                                    storage_path=tmp_path / follower.node_id, **FAST)
    alone.register_apply_callback(got.append)
    await alone.start()
    try:
        await wait_for(lambda: alone.is_leader)
        await alone.read_index()
        assert got == cmds
        assert await alone.append_entry({"k": "new"})
    finally:
        await alone.stop()


def test_offline_recovery_refuses_a_node_without_state(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Raft state"):
        raft_storage.force_new_cluster_offline(tmp_path / "nothing", "x")
