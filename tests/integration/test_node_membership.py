"""Real node processes on 127.0.12.x: what membership changes do to the other components.

A member removed from the cluster for good no longer holds back tombstone
collection on the replicas that remain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import client
from e2e.cluster import Cluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c3", 3, "127.0.12.1", env={
        "CONTINUUM_REPLICATION__TOMBSTONE_GRACE_SECONDS": "0.5",
        "CONTINUUM_MESH__SYNC_INTERVAL_SECONDS": "1",  # also the anti-entropy interval
    })
    c.start()
    yield c
    c.stop()


async def _replication(c: Cluster, node_id: str) -> dict[str, Any]:
    st = await c.call(node_id, lambda cl: cl.status())
    stats: dict[str, Any] = st["replication"]
    return stats


async def test_tombstones_are_collected_once_a_removed_member_is_gone(cluster3: Cluster) -> None:
    c = cluster3
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    ids = [n.node_id for n in c.nodes]
    victim = next(i for i in ids if i != leader)
    survivors = [i for i in ids if i != victim]
    await c.call(survivors[0], lambda cl: cl.put("doomed", {"v": 1}))
    await c.call(survivors[0], lambda cl: cl.put("kept", {"v": 2}))

    async def everywhere() -> bool:
        for nid in ids:
            try:
                await c.call(nid, lambda cl: cl.get("doomed"))
            except client.ApiError:
                return False
        return True

    await c.wait_for(everywhere, 30, "the value on every node")

    # The victim dies without a word: it may come back, so its vote is still awaited.
    c.local.kill(victim)
    await c.call(survivors[0], lambda cl: cl.delete("doomed"))
    rounds = {nid: (await _replication(c, nid))["anti_entropy_rounds"] for nid in survivors}

    async def held_back() -> bool:
        for nid in survivors:
            r = await _replication(c, nid)
            if r["tombstones"] != 1 or r["anti_entropy_rounds"] < rounds[nid] + 3:
                return False
        return True

    await c.wait_for(held_back, 60, "anti-entropy rounds among the survivors")
    for nid in survivors:
        assert (await _replication(c, nid))["tombstones_collected"] == 0

    # The operator's scale-down: the member leaves the Raft configuration for good.
    async with client.ApiClient(c.url(leader), c.files, timeout=30) as admin:  # type: ignore[arg-type]
        await admin.call("DELETE", f"/v1/members/{victim}")

    async def collected() -> bool:
        for nid in survivors:
            r = await _replication(c, nid)
            if r["tombstones"] != 0 or r["tombstones_collected"] < 1:
                return False
        return True

    await c.wait_for(collected, 60, "the tombstone collected on every survivor")
    for nid in survivors:
        with pytest.raises(client.ApiError):
            await c.call(nid, lambda cl: cl.get("doomed"))
        assert (await c.call(nid, lambda cl: cl.get("kept")))["value"] == {"v": 2}
