"""Every node's coordinator is load-aware: loads travel through the gossip mesh, so
``/v1/route`` on a follower filters and balances on live figures, like the leader's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import client
from e2e.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "routing", 3, "127.0.115.11")
    c.start()
    yield c
    c.stop()


async def test_a_followers_route_uses_every_nodes_load(cluster: Cluster) -> None:
    c = cluster
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    follower = next(i for i in ids if i != leader)
    for i in range(3):
        await c.call(leader, lambda cl, i=i: cl.put(f"cap-{i}", {"i": i}))

    async def follower_view() -> dict[str, dict[str, Any]] | None:
        got = await c.call(follower, lambda cl: cl.call("GET", "/v1/nodes"))
        nodes = {n["node_id"]: n for n in got["nodes"]}
        fresh = time.time() - 5
        if sorted(nodes) == ids and all(
                n["status"] == "healthy" and n["load_score"] is not None
                and n["latency_ms"] is not None and n["capacity"].get("concepts", 0) >= 3
                and (n["last_heartbeat"] or 0) > fresh for n in nodes.values()):
            return nodes
        return None

    view = await c.wait_for(follower_view, 30, f"every node's load on {follower}")
    assert all(0.0 <= n["load_score"] <= 1.0 for n in view.values())

    async def route(**query: str) -> Any:
        return await c.call(follower, lambda cl: cl.call("GET", "/v1/route", params=query))

    chosen = await route(max_load="1", max_latency_ms="100000")
    assert chosen["node_id"] in ids
    assert (await route(**{"min_capacity.concepts": "3"}))["node_id"] in ids
    only = ids[2]
    picks = {(await route(exclude=f"{ids[0]},{ids[1]}", max_load="1.0"))["node_id"]
             for _ in range(5)}
    assert picks == {only}
    for query, status in (({"min_capacity.concepts": "1000000"}, 503),
                          ({"max_load": "0.5x"}, 400), ({"colour": "red"}, 400)):
        with pytest.raises(client.ApiError) as err:
            await route(**query)
        assert err.value.status == status, query
