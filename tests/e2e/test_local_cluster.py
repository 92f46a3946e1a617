"""The local cluster, as `local up` runs it: real node processes, real mTLS, kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c3", 3, "127.0.7.11")
    c.start()
    yield c
    c.stop()


@pytest.fixture
def cluster5(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c5", 5, "127.0.7.21")
    c.start()
    yield c
    c.stop()


async def _converged_read(c: Cluster, node_ids: list[str], concept: str, value: Any,
                          timeout: float = 30) -> None:
    async def everywhere() -> bool:
        for nid in node_ids:
            got = await c.call(nid, lambda cl: cl.get(concept))
            if got["value"] != value:
                return False
        return True

    await c.wait_for(everywhere, timeout, f"{concept} to reach {node_ids}")


@pytest.mark.parametrize("size", [3, 5])
async def test_cluster_agrees_and_replicates(size: int, request: pytest.FixtureRequest) -> None:
    c: Cluster = request.getfixturevalue(f"cluster{size}")
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    assert leader in ids
    # a default (multi-master) write on one node is read on every other
    writer = ids[-1]
    await c.call(writer, lambda cl: cl.put("concept-a", {"name": "AI Consciousness"}))
    await _converged_read(c, ids, "concept-a", {"name": "AI Consciousness"})
    # a strong write through a follower is redirected to the leader and read everywhere
    follower = next(i for i in ids if i != leader)
    result = await c.call(follower, lambda cl: cl.put("concept-s", {"n": 1}, strong=True))
    assert result["consistency"] == "strong"
    await _converged_read(c, ids, "concept-s", {"n": 1})
    st = await c.statuses()
    assert all(len(s["members"]) == size for s in st.values())


@pytest.mark.parametrize("size", [3, 5])
async def test_strong_write_survives_leader_kill(size: int,
                                                 request: pytest.FixtureRequest) -> None:
    c: Cluster = request.getfixturevalue(f"cluster{size}")
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    acked = []
    for i in range(20):
        await c.call(leader, lambda cl, i=i: cl.put(f"k{i}", {"i": i}, strong=True))
        acked.append(i)
    c.local.kill(leader)  # SIGKILL
    survivors = [i for i in ids if i != leader]

    async def new_leader() -> str | None:
        got = await c.agreed_leader(survivors)
        return got if got and got != leader else None

    new = await c.wait_for(new_leader, 30, "a new leader among the survivors")
    for i in acked:
        got = await c.call(new, lambda cl, i=i: cl.get(f"k{i}", strong=True))
        assert got["value"] == {"i": i}
    # the cluster keeps committing, and the old leader catches up after a restart
    await c.call(new, lambda cl: cl.put("after", {"ok": True}, strong=True))
    c.local.start_node(leader)
    await _converged_read(c, ids, "after", {"ok": True}, timeout=60)


async def test_unhealthy_node_is_not_selected_and_comes_back(cluster3: Cluster) -> None:
    c = cluster3
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    victim = next(i for i in ids if i != leader)

    async def nodes_by_status() -> dict[str, str]:
        got = await c.call(leader, lambda cl: cl.call("GET", "/v1/nodes"))
        return {n["node_id"]: n["status"] for n in got["nodes"]}

    await c.wait_for(lambda: _all(nodes_by_status, ids, "healthy"), 30, "all healthy")
    c.local.kill(victim)

    async def victim_unhealthy() -> bool:
        return (await nodes_by_status()).get(victim) == "unhealthy"

    await c.wait_for(victim_unhealthy, 30, f"{victim} marked unhealthy")
    for _ in range(30):
        chosen = await c.call(leader, lambda cl: cl.call("GET", "/v1/route"))
        assert chosen["node_id"] != victim
    c.local.start_node(victim)
    await c.wait_for(lambda: _all(nodes_by_status, ids, "healthy"), 60, f"{victim} healthy again")


async def _all(fetch: Any, ids: list[str], status: str) -> bool:
    got = await fetch()
    return all(got.get(i) == status for i in ids)


async def test_cli_status_put_get(cluster3: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    from continuum.federation.distributed import cli

    c = cluster3
    await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    d = str(c.data_dir)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, cli.main, ["put", "x1", '{"a": 1}', "--strong",
                                                       "--data-dir", d]) == 0
    assert await loop.run_in_executor(None, cli.main, ["get", "x1", "--data-dir", d]) == 0
    assert '"a": 1' in capsys.readouterr().out
    assert await loop.run_in_executor(None, cli.main, ["status", "--data-dir", d]) == 0
    table = capsys.readouterr().out
    assert "leader" in table and table.count("yes") == 3
    assert await loop.run_in_executor(None, cli.main, ["get", "missing", "--data-dir", d]) == 1
    assert capsys.readouterr().err.startswith("error: not_found")




async def test_cli_tries_the_next_node_when_the_first_is_down(
        cluster3: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    from continuum.federation.distributed import cli

    c = cluster3
    first = c.nodes[0].node_id  # the first entry of nodes.json
    await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    c.local.kill(first)
    rest = [n.node_id for n in c.nodes[1:]]

    async def new_leader() -> str | None:
        # right after the kill the others may still agree on the dead leader
        leader = await c.agreed_leader(rest)
        return leader if leader in rest else None

    await c.wait_for(new_leader, 30, "a leader among the others")
    d = str(c.data_dir)
    loop = asyncio.get_running_loop()
    for strong in (["--strong"], []):
        name = "down-s" if strong else "down-e"
        assert await loop.run_in_executor(None, cli.main, ["put", name, '{"up": 2}', *strong,
                                                           "--data-dir", d]) == 0
        assert await loop.run_in_executor(None, cli.main, ["get", name, "--data-dir", d]) == 0
        assert '"up": 2' in capsys.readouterr().out
    assert await loop.run_in_executor(None, cli.main, ["status", "--data-dir", d]) == 0
    table = capsys.readouterr().out
    assert f"{first:<10} down" in table and table.count("yes") == 2
    c.local.kill(rest[0])
    c.local.kill(rest[1])
    assert await loop.run_in_executor(
        None, cli.main, ["get", "down-e", "--data-dir", d, "--wait", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no node answered: ")
    assert "Connect call failed" in err  # the reason, not only the exception's name


async def test_a_strong_write_rides_through_the_election_that_follows_a_leader_crash(
        cluster3: Cluster) -> None:
    """Straight after the leader dies the others still name it, then name no one until
    they elect: the client keeps trying (the request's idempotency key keeps it
    exactly-once) instead of failing on the dead leader's address."""
    from continuum.federation.distributed import cli

    c = cluster3
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    c.local.kill(leader)
    loop = asyncio.get_running_loop()
    argv = ["put", "through-election", '{"n": 1}', "--strong", "--data-dir", str(c.data_dir),
            "--wait", "30"]
    assert await loop.run_in_executor(None, cli.main, argv) == 0
    rest = [n.node_id for n in c.nodes if n.node_id != leader]
    for nid in rest:
        got = await c.call(nid, lambda cl: cl.get("through-election", strong=True))
        assert got["value"] == {"n": 1}


async def test_the_registry_carries_over_to_a_new_leader(cluster5: Cluster) -> None:
    """The coordinator's registry lives in the Raft log: a new leader's coordinator starts
    from it, with the health verdicts the old leader reached, instead of rebuilding it."""
    c = cluster5
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    followers = [i for i in ids if i != leader]
    victim, watcher = followers[0], followers[1]

    async def registry(node_id: str) -> dict[str, dict[str, Any]]:
        got = await c.call(node_id, lambda cl: cl.call("GET", "/v1/nodes"))
        return {n["node_id"]: n for n in got["nodes"]}

    # the old leader's verdict: the victim is unhealthy, as every follower's registry says
    await c.wait_for(lambda: _all(lambda: _statuses_of(registry, watcher), ids, "healthy"), 30,
                     "every node healthy in a follower's registry")
    c.local.kill(victim)

    async def victim_unhealthy_everywhere() -> bool:
        views = [await registry(f) for f in followers[1:]]
        return all(v[victim]["status"] == "unhealthy" for v in views)

    await c.wait_for(victim_unhealthy_everywhere, 30, f"{victim} unhealthy in every registry")
    before = await registry(watcher)
    c.local.kill(leader)
    survivors = [i for i in ids if i not in (leader, victim)]

    async def new_leader() -> str | None:
        got = await c.agreed_leader(survivors)
        return got if got and got != leader else None

    new = await c.wait_for(new_leader, 30, "a new leader among the survivors")
    after = await registry(new)
    # the same records, not new registrations: nothing re-registered, the verdict kept
    assert after[victim]["status"] == "unhealthy"
    assert after[victim]["status_changed_at"] == before[victim]["status_changed_at"]
    for nid in survivors:
        assert after[nid]["registered_at"] == before[nid]["registered_at"], nid
    stats = (await c.call(new, lambda cl: cl.call("GET", "/v1/nodes")))["stats"]
    assert stats["registrations"] == 0 and stats["total_nodes"] == 5
    # and the new leader's coordinator carries on: it fails the old leader over ...
    await c.wait_for(lambda: _is(registry, new, leader, "unhealthy"), 30,
                     f"{leader} unhealthy on the new leader")
    for _ in range(20):
        chosen = await c.call(new, lambda cl: cl.call("GET", "/v1/route"))
        assert chosen["node_id"] not in (leader, victim)
    # ... and brings a node back when it answers again
    c.local.start_node(victim)
    await c.wait_for(lambda: _is(registry, new, victim, "healthy"), 60,
                     f"{victim} healthy again on the new leader")


async def _statuses_of(registry: Any, node_id: str) -> dict[str, str]:
    return {nid: n["status"] for nid, n in (await registry(node_id)).items()}


async def _is(registry: Any, viewer: str, node_id: str, status: str) -> bool:
    return bool((await registry(viewer))[node_id]["status"] == status)
