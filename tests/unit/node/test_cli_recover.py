"""``node recover --force-new-cluster`` on a stopped node's data directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from continuum.federation.distributed import cli, consensus
from unit.raft.test_raft_consensus import FAST, wait_for


async def _three_node_history(data: Path) -> str:
    """Voters x, y, z commit a command; the leader (which knows it committed) is returned."""
    ids = ["x", "y", "z"]
    nodes = [consensus.RaftConsensus(i, ids, storage_path=data / i / "raft", **FAST)
             for i in ids]
    await asyncio.gather(*(n.start() for n in nodes))
    await wait_for(lambda: any(n.is_leader for n in nodes))
    leader = next(n for n in nodes if n.is_leader)
    assert await leader.append_entry({"v": 1})
    await asyncio.gather(*(n.stop() for n in nodes))
    return leader.node_id


def test_offline_recovery_rewrites_a_stopped_node(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    me = asyncio.run(_three_node_history(tmp_path))
    leader_dir = tmp_path / me
    assert cli.main(["node", "recover", "--force-new-cluster", "--data-dir", str(leader_dir),
                     "--node-id", me]) == 0
    out = capsys.readouterr().out
    others = ", ".join(i for i in "xyz" if i != me)
    assert f"{me} is now the sole voter" in out and f"former members ({others})" in out

    async def restarted() -> list[object]:
        got: list[object] = []
        n = consensus.RaftConsensus(me, [], join=True, storage_path=leader_dir / "raft", **FAST)
        n.register_apply_callback(got.append)
        await n.start()
        try:
            assert n.is_leader and [m["id"] for m in n.members()] == [me]
            await n.read_index()
            return got
        finally:
            await n.stop()

    assert asyncio.run(restarted()) == [{"v": 1}]


def test_offline_recovery_of_a_directory_without_state_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["node", "recover", "--force-new-cluster", "--data-dir", str(tmp_path),
                     "--node-id", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Raft state at") and err.count("\n") == 1
