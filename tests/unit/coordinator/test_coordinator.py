"""The coordinator shell in-process (no network): API, validation, stats, replication, storage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from continuum.federation.distributed import errors
from continuum.federation.distributed.coordinator import (
    CoordinatorError,
    FederationCoordinator,
    LoadBalance,
    NodeStatus,
)


@pytest.fixture
async def co() -> AsyncIterator[FederationCoordinator]:
    c = FederationCoordinator("coordinator-1", load_balance=LoadBalance(seed=1))
    await c.start()
    yield c
    await c.stop()


async def test_spec_snippet_in_process(co: FederationCoordinator) -> None:
    await co.register_node("node-1", "192.168.1.100:7000")
    await co.heartbeat("node-1", {"load_score": 0.3, "latency_ms": 5.0,
                                  "capacity": {"concepts": 10000}})
    node = await co.select_node()
    assert node is not None and node.node_id == "node-1" and node["address"] == "192.168.1.100:7000"
    assert node.load_score == 0.3 and node.capacity == {"concepts": 10000}
    stats = co.get_stats()
    assert stats["nodes_by_status"] == {"unknown": 0, "healthy": 1, "degraded": 0,
                                        "unhealthy": 0}
    assert stats["total_nodes"] == 1 and stats["success_rate"] == 1.0
    assert node.to_dict()["status"] == "healthy"


async def test_only_nodes_with_a_sign_of_life_are_selected(co: FederationCoordinator) -> None:
    await co.register_node("silent", "127.0.0.1:7001")
    assert await co.select_node() is None
    assert co.get_stats()["selections_empty"] == 1


async def test_heartbeat_ttl_mode_evicts_and_recovers(co: FederationCoordinator) -> None:
    lb = co.load_balance
    await co.register_node("a", "127.0.0.1:7001")
    await co.register_node("b", "127.0.0.1:7002")
    await co.register_node("c", "127.0.0.1:7003")
    for nid in "abc":
        await co.heartbeat(nid, {"load_score": 0.1})
    for _ in range(lb.unhealthy_threshold):
        await co.heartbeat("a", {"load_score": 0.1})
        await co.heartbeat("b", {"load_score": 0.1})
        # c's heartbeat is fresh too (same instant), so make it look silent:
        co._entries["c"].heartbeat_mono = None
        await co.check_health()
    assert (await co.get_node("c")).status is NodeStatus.UNHEALTHY  # type: ignore[union-attr]
    picks = {(await co.select_node()).node_id for _ in range(50)}  # type: ignore[union-attr]
    assert picks == {"a", "b"}
    for _ in range(lb.healthy_threshold):
        await co.heartbeat("c", {"load_score": 0.0})
        await co.check_health()
    assert (await co.get_node("c")).status is NodeStatus.HEALTHY  # type: ignore[union-attr]
    stats = co.get_stats()
    assert stats["failovers"] == 1 and stats["recoveries"] == 1


async def test_get_all_nodes_filters(co: FederationCoordinator) -> None:
    for nid in ("b", "a", "c"):
        await co.register_node(nid, "127.0.0.1:7000", {"n": nid})
    await co.heartbeat("a")
    assert [n.node_id for n in await co.get_all_nodes()] == ["a", "b", "c"]
    assert [n.node_id for n in await co.get_all_nodes("healthy")] == ["a"]
    assert [n.node_id for n in await co.get_all_nodes(NodeStatus.UNKNOWN)] == ["b", "c"]
    assert len(await co.get_all_nodes(["healthy", NodeStatus.UNKNOWN])) == 3
    with pytest.raises(ValueError, match="unknown status 'sick'"):
        await co.get_all_nodes("sick")


@pytest.mark.parametrize("algorithm", ["least_loaded", "latency", "round_robin", "random"])
async def test_each_algorithm_with_criteria(algorithm: str) -> None:
    co = FederationCoordinator("c", load_balance=LoadBalance(algorithm=algorithm, seed=4))
    await co.start()
    try:
        figures = {"x": (0.9, 90.0), "y": (0.1, 1.0), "z": (0.5, 20.0)}
        for nid, (load, lat) in figures.items():
            await co.register_node(nid, "127.0.0.1:7000", {"zone": "z1" if nid != "z" else "z2"})
            await co.heartbeat(nid, {"load_score": load, "latency_ms": lat,
                                     "capacity": {"concepts": 100 if nid == "y" else 5000}})
        picks = [(await co.select_node()).node_id for _ in range(300)]  # type: ignore[union-attr]
        if algorithm in ("least_loaded", "latency"):
            assert "x" not in picks and picks.count("y") > picks.count("z")
        elif algorithm == "round_robin":
            assert picks[:6] == ["x", "y", "z", "x", "y", "z"]
        else:
            assert set(picks) == {"x", "y", "z"}
        crit = {"min_capacity": {"concepts": 1000}, "metadata": {"zone": "z1"}}
        assert {(await co.select_node(crit)).node_id for _ in range(20)} == {"x"}  # type: ignore[union-attr]
        assert await co.select_node({"exclude": ["x", "y", "z"]}) is None
    finally:
        await co.stop()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.register_node("", "h:1"), "node id"),
        (lambda c: c.register_node("n", "h"), "host:port"),
        (lambda c: c.register_node("n", "h:1", {"k": {1, 2}}), "plain data"),
        (lambda c: c.heartbeat("known", {"load_score": -1}), ">= 0"),
        (lambda c: c.heartbeat("known", {"load_score": "high"}), "finite number"),
        (lambda c: c.heartbeat("known", {"cpu": 1}), "unknown heartbeat fields"),
        (lambda c: c.heartbeat("known", {"capacity": 5}), "capacity"),
        (lambda c: c.select_node({"colour": "red"}), "unknown criteria"),
    ],
)
async def test_bad_input_is_a_clear_error_and_changes_nothing(
    co: FederationCoordinator, call: Any, message: str
) -> None:
    await co.register_node("known", "127.0.0.1:7000")
    before = (co.snapshot(), (await co.get_node("known")))
    with pytest.raises(ValueError, match=message):
        await call(co)
    assert (co.snapshot(), (await co.get_node("known"))) == before


async def test_heartbeat_from_unknown_node(co: FederationCoordinator) -> None:
    before = co.get_stats()["heartbeats"]
    assert await co.heartbeat("ghost", {"load_score": 0.1}) is False
    assert await co.get_node("ghost") is None and co.get_stats()["heartbeats"] == before
    assert await co.deregister_node("ghost") is False
    await co.register_node("ghost", "127.0.0.1:7000")
    assert await co.heartbeat("ghost", {"load_score": 0.1, "uptime_seconds": 12.5}) is True
    assert (await co.get_node("ghost")).uptime_seconds == 12.5  # type: ignore[union-attr]


def test_load_balance_validation() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
        LoadBalance(algorithm="fastest")
    with pytest.raises(ValueError, match="health_check_interval"):
        LoadBalance(health_check_interval=0)
    with pytest.raises(ValueError, match="threshold"):
        LoadBalance(unhealthy_threshold=0)
    with pytest.raises(ValueError, match="together"):
        FederationCoordinator("c", tls_cert="/x.pem", tls_ca="/ca.pem")
    with pytest.raises(ValueError, match="needs a CA to verify peers"):  # none beside /x.pem
        FederationCoordinator("c", tls_cert="/x.pem", tls_key="/y.pem")


# -- replication through a fake log ---------------------------------------------------------


class FakeLog:
    """Commits every command at once and applies it, as bytes through msgpack, on every replica."""

    def __init__(self) -> None:
        self.replicas: list[FederationCoordinator] = []
        self.entries: list[dict[str, Any]] = []
        self.up = True

    def replicate(self, proposer: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        """The ``replicate`` of the coordinator ``proposer``: what its replica's apply
        returned, as Raft hands it back, or ``NotLeader`` while the log is down."""
        async def append(command: dict[str, Any]) -> Any:
            if not self.up:
                raise errors.NotLeader(None)
            wire = msgpack.unpackb(msgpack.packb(command, use_bin_type=True), raw=False)
            self.entries.append(wire)
            results = {r.node_id: r.apply_command(wire) for r in self.replicas}
            return results[proposer]
        return append


async def test_replicated_coordinators_stay_identical_and_fail_over() -> None:
    log = FakeLog()
    leader = {"id": "c1"}
    c1 = FederationCoordinator("c1", load_balance=LoadBalance(seed=1),
                               replicate=log.replicate("c1"),
                               is_active=lambda: leader["id"] == "c1")
    c2 = FederationCoordinator("c2", load_balance=LoadBalance(seed=2),
                               replicate=log.replicate("c2"),
                               is_active=lambda: leader["id"] == "c2")
    log.replicas = [c1, c2]
    await c1.start()
    await c2.start()
    try:
        for nid in ("a", "b", "c"):
            await c1.register_node(nid, f"127.0.0.1:70{nid.encode()[0] - 90:02d}", {"r": nid})
            await c1.heartbeat(nid, {"load_score": 0.5})  # first sign of life: HEALTHY
            await c2.heartbeat(nid, {"load_score": 0.5})  # loads are local on each replica
        assert c1.snapshot() == c2.snapshot()
        assert c2.get_stats()["nodes_by_status"]["healthy"] == 3
        assert all(e["type"].startswith("coord.") for e in log.entries)
        # c2 is not active: its rounds do nothing
        c2._entries["a"].heartbeat_mono = None
        await c2.check_health()
        assert c2.get_stats()["health_rounds"] == 0
        # leadership moves to c2, which carries on from the replicated registry
        leader["id"] = "c2"
        for _ in range(3):
            for nid in ("b", "c"):
                await c2.heartbeat(nid)
            c2._entries["a"].heartbeat_mono = None
            await c2.check_health()
        assert (await c1.get_node("a")).status is NodeStatus.UNHEALTHY  # type: ignore[union-attr]
        assert c1.snapshot() == c2.snapshot()
        assert await c2.deregister_node("b")
        assert await c1.get_node("b") is None and c1.snapshot() == c2.snapshot()
    finally:
        await c1.stop()
        await c2.stop()


async def test_uncommitted_change_raises_and_changes_nothing() -> None:
    log = FakeLog()
    c = FederationCoordinator("c1", replicate=log.replicate("c1"))
    log.replicas = [c]
    await c.start()
    try:
        await c.register_node("a", "127.0.0.1:7001")
        log.up = False
        with pytest.raises(CoordinatorError, match="not committed"):
            await c.register_node("b", "127.0.0.1:7002")
        assert await c.get_node("b") is None
        # a health verdict that cannot commit is retried by the next round, not lost
        await c.heartbeat("a")
        assert (await c.get_node("a")).status is NodeStatus.UNKNOWN  # type: ignore[union-attr]
        assert c.get_stats()["proposals_failed"] == 1
        log.up = True
        await c.check_health()
        assert (await c.get_node("a")).status is NodeStatus.HEALTHY  # type: ignore[union-attr]
    finally:
        await c.stop()


async def test_registry_persists_under_storage_path(tmp_path: Path) -> None:
    c = FederationCoordinator("c1", storage_path=tmp_path)
    await c.start()
    await c.register_node("a", "127.0.0.1:7001", {"zone": "z1"})
    await c.register_node("b", "127.0.0.1:7002")
    await c.heartbeat("a")
    await c.deregister_node("b")
    snap = c.snapshot()
    await c.stop()
    again = FederationCoordinator("c1", storage_path=tmp_path)
    await again.start()
    try:
        assert again.snapshot() == snap
        node = await again.get_node("a")
        assert node is not None and node.status is NodeStatus.HEALTHY
        assert node.metadata == {"zone": "z1"} and node.load_score is None  # loads are not kept
    finally:
        await again.stop()


async def test_criteria_mutated_between_calls_are_read_afresh(co: FederationCoordinator) -> None:
    for nid in ("a", "b"):
        await co.register_node(nid, "127.0.0.1:7000")
        await co.heartbeat(nid, {"load_score": 0.5})
    crit: dict[str, Any] = {"exclude": ["a"]}
    assert (await co.select_node(crit)).node_id == "b"  # type: ignore[union-attr]
    crit["exclude"][0] = "b"  # same dict object, new content
    assert (await co.select_node(crit)).node_id == "a"  # type: ignore[union-attr]


async def test_a_log_that_raises_does_not_break_heartbeats_or_rounds() -> None:
    log = FakeLog()
    calls = {"n": 0}

    async def flaky(command: dict[str, Any]) -> Any:
        calls["n"] += 1
        if command["type"] == "coord.status" and calls["n"] < 4:
            raise RuntimeError("not the leader")
        return await log.replicate("c1")(command)

    c = FederationCoordinator("c1", replicate=flaky)
    log.replicas = [c]
    await c.start()
    try:
        await c.register_node("a", "127.0.0.1:7001")
        await c.heartbeat("a")  # the status proposal raises; the heartbeat still counts
        assert (await c.get_node("a")).load_score is None  # type: ignore[union-attr]
        assert c.get_stats()["heartbeats"] == 1 and c.get_stats()["proposals_failed"] == 1
        await c.heartbeat("a")
        await c.heartbeat("a")  # third status proposal goes through
        assert (await c.get_node("a")).status is NodeStatus.HEALTHY  # type: ignore[union-attr]
    finally:
        await c.stop()


@pytest.mark.parametrize("garbage", ["coord.register", {"type": "coord.nope"}, {"type": None},
                                     {"type": "coord.register", "node_id": "x"}])
async def test_apply_command_rejects_garbage_without_raising(
    co: FederationCoordinator, garbage: Any
) -> None:
    await co.register_node("a", "127.0.0.1:7001")
    before = co.snapshot()["nodes"]
    applied = co.apply_command(garbage)
    assert not applied.ok and applied.error
    assert co.snapshot()["nodes"] == before
