"""One concept id, one consistency: strong and default writes never hide each other.

Real node processes of a local cluster, driven through the HTTP API.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import client, replication
from e2e.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "domains", 3, "127.0.114.11")
    c.start()
    yield c
    c.stop()


async def _error(c: Cluster, node_id: str, method: str, concept: str, body: Any = None,
                 strong: bool = False) -> client.ApiError:
    params = {"consistency": "strong"} if strong else None
    try:
        await c.call(node_id, lambda cl: cl.call(method, f"/v1/concepts/{concept}", body, params))
    except client.ApiError as exc:
        return exc
    raise AssertionError(f"{method} {concept} (strong={strong}) on {node_id} succeeded")


async def _reads(c: Cluster, node_id: str, concept: str) -> dict[str, Any] | None:
    try:
        return await c.call(node_id, lambda cl: cl.get(concept))
    except client.ApiError as exc:
        if exc.status == 404:
            return None
        raise


async def _everywhere(c: Cluster, concept: str, want: dict[str, Any] | None,
                      timeout: float = 30) -> None:
    ids = [n.node_id for n in c.nodes]

    async def agreed() -> bool:
        for nid in ids:
            got = await _reads(c, nid, concept)
            if want is None and got is not None:
                return False
            if want is not None and (got is None or any(got.get(k) != v
                                                        for k, v in want.items())):
                return False
        return True

    await c.wait_for(agreed, timeout, f"{concept} to read {want} on every node")


async def test_a_strong_concept_refuses_default_writes(cluster: Cluster) -> None:
    c = cluster
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    follower = next(n.node_id for n in c.nodes if n.node_id != leader)
    await c.call(leader, lambda cl: cl.put("s1", {"v": "strong"}, strong=True))
    await _everywhere(c, "s1", {"value": {"v": "strong"}, "consistency": "strong"})

    put = await _error(c, follower, "PUT", "s1", {"v": "default"})
    assert (put.status, put.code, put.body["consistency"]) == (409, "wrong_consistency", "strong")
    assert "?consistency=strong" in str(put)
    delete = await _error(c, follower, "DELETE", "s1")
    assert (delete.status, delete.body["consistency"]) == (409, "strong")
    # nothing changed: the strong value is still what every node reads
    await _everywhere(c, "s1", {"value": {"v": "strong"}, "consistency": "strong"}, timeout=5)

    # a strong delete frees the id, and then a default write may claim it
    await c.call(leader, lambda cl: cl.call("DELETE", "/v1/concepts/s1", None,
                                            {"consistency": "strong"}))
    await _everywhere(c, "s1", None)
    await c.call(follower, lambda cl: cl.put("s1", {"v": "default now"}))
    await _everywhere(c, "s1", {"value": {"v": "default now"}, "consistency": "eventual"})


async def test_a_default_concept_refuses_strong_calls(cluster: Cluster) -> None:
    c = cluster
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    follower = next(n.node_id for n in c.nodes if n.node_id != leader)
    await c.call(follower, lambda cl: cl.put("e1", {"v": "default"}))
    await _everywhere(c, "e1", {"value": {"v": "default"}, "consistency": "eventual"})

    for method, body in (("PUT", {"v": "strong"}), ("DELETE", None), ("GET", None)):
        err = await _error(c, leader, method, "e1", body, strong=True)
        assert (err.status, err.code, err.body["consistency"]) == (
            409, "wrong_consistency", "eventual"), method
    status = await c.call(leader, lambda cl: cl.status())
    assert status["strong_concepts"] == 0  # the refused strong PUT committed nothing
    await _everywhere(c, "e1", {"value": {"v": "default"}, "consistency": "eventual"}, timeout=5)

    # a default update is read over nothing older, and a default delete works (no 404)
    await c.call(follower, lambda cl: cl.put("e1", {"v": "newer"}))
    await _everywhere(c, "e1", {"value": {"v": "newer"}, "consistency": "eventual"})
    assert (await c.call(leader, lambda cl: cl.delete("e1")))["deleted"] is True
    await _everywhere(c, "e1", None)
    # once the tombstone is on the leader the id is free for a strong write
    await c.call(leader, lambda cl: cl.put("e1", {"v": "strong now"}, strong=True))
    await _everywhere(c, "e1", {"value": {"v": "strong now"}, "consistency": "strong"})


async def test_both_first_writes_at_once_strong_wins_everywhere(cluster: Cluster) -> None:
    """The residual race, made certain: a node that was cut off (here: stopped, its own
    store written as it would have been while partitioned) accepted a default write of an
    id that the rest of the cluster meanwhile wrote strongly."""
    c = cluster
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    cut_off = next(n.node_id for n in c.nodes if n.node_id != leader)
    c.local.kill(cut_off, signal.SIGTERM)
    await c.call(leader, lambda cl: cl.put("both", {"v": "strong"}, strong=True))
    offline = replication.MultiMasterReplicator(
        cut_off, storage_path=c.data_dir / cut_off / "data" / "replication")
    await offline.write("both", {"v": "default"})
    await offline.stop()
    c.local.start_node(cut_off)

    await _everywhere(c, "both", {"value": {"v": "strong"}, "consistency": "strong"}, timeout=60)
    err = await _error(c, cut_off, "PUT", "both", {"v": "again"})
    assert err.body["consistency"] == "strong"

    # the leader retired the default copy: a strong delete leaves the id free everywhere,
    # the default value does not come back
    async def retired() -> bool:
        st = await c.call(cut_off, lambda cl: cl.status())
        return bool(st["replication"]["keys_stored"] == 0)

    await c.wait_for(retired, 30, "the default copy tombstoned on the cut-off node")
    await c.call(leader, lambda cl: cl.call("DELETE", "/v1/concepts/both", None,
                                            {"consistency": "strong"}))
    await _everywhere(c, "both", None)
