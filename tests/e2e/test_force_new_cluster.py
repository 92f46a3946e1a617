"""Disaster recovery with real processes: two of three nodes are killed -9 and their data
is destroyed; the survivor is forced into a new cluster, keeps every acknowledged strong
write, takes new ones, and a fresh node joins it and receives the data."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from continuum.federation.distributed import cli, client
from e2e.cluster import Cluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "fnc", 3, "127.0.17.11")
    c.start()
    yield c
    c.stop()


async def test_survivor_forced_into_a_new_cluster_keeps_acknowledged_writes(
        cluster3: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster3
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    survivor = next(i for i in ids if i != leader)
    lost = [i for i in ids if i != survivor]
    strong = {f"s{k}": {"k": k} for k in range(10)}
    for cid, value in strong.items():  # each acknowledged: committed on a majority
        await c.call(leader, lambda cl, cid=cid, value=value: cl.put(cid, value, strong=True))
    await c.call(lost[1], lambda cl: cl.put("e1", {"mm": 1}))

    async def survivor_has_all() -> bool:
        for cid, value in {**strong, "e1": {"mm": 1}}.items():
            got = await c.call(survivor, lambda cl, cid=cid: cl.get(cid))
            if got["value"] != value:
                return False
        return True

    await c.wait_for(survivor_has_all, 30, f"every write to reach {survivor}")
    # Quorum is intact: the call is refused and nothing changes.
    with pytest.raises(client.ApiError) as refused:
        await c.call(survivor, lambda cl: cl.force_new_cluster(survivor))
    assert refused.value.status == 409 and refused.value.code == "has_leader"

    for nid in lost:  # gone for good: kill -9 and destroy the data
        c.local.kill(nid)
        shutil.rmtree(c.data_dir / nid / "data")

    async def no_leader() -> bool:
        return (await c.call(survivor, lambda cl: cl.status()))["leader_id"] is None

    await c.wait_for(no_leader, 30, f"{survivor} to notice it has no leader")
    loop = asyncio.get_running_loop()
    rc = await loop.run_in_executor(None, cli.main, ["recover", "--force-new-cluster", "--node",
                                                     survivor, "--data-dir", str(c.data_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"{survivor} is now the sole voter" in out.out

    st = await c.call(survivor, lambda cl: cl.status())
    assert st["leader_id"] == survivor and [m["id"] for m in st["members"]] == [survivor]
    for cid, value in strong.items():  # linearizable reads: ReadIndex works alone
        got = await c.call(survivor, lambda cl, cid=cid: cl.get(cid, strong=True))
        assert got["value"] == value
    assert (await c.call(survivor, lambda cl: cl.get("e1")))["value"] == {"mm": 1}
    await c.call(survivor, lambda cl: cl.put("after", {"new": True}, strong=True))

    # A fresh node (its data was destroyed) joins as a new member and receives the data.
    fresh = lost[0]
    c.local.prepare()  # the recovery recorded the survivor as the only member: others join
    assert c.local.joining == lost
    c.local.start_node(fresh)

    async def fresh_is_voter() -> bool:
        members = (await c.call(survivor, lambda cl: cl.status()))["members"]
        return any(m["id"] == fresh and m["voter"] for m in members)

    await c.wait_for(fresh_is_voter, 90, f"{fresh} to be added back as a voter")

    async def fresh_has_data() -> bool:
        for cid, value in {**strong, "after": {"new": True}}.items():
            got = await c.call(fresh, lambda cl, cid=cid: cl.get(cid))
            if got["value"] != value:
                return False
        return True

    await c.wait_for(fresh_has_data, 60, f"the strong concepts to reach {fresh}")
    # With two voters, strong writes need both: the new member takes part.
    await c.call(survivor, lambda cl: cl.put("after2", {"n": 2}, strong=True))
