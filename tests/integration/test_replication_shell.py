"""MultiMasterReplicator in one process: the spec's API, durability, and replication over mTLS."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import waiting
from conftest import TestPKI
from continuum.federation.distributed import replication
from continuum.federation.distributed.core.crdt import clock, resolver, values

S = resolver.ConflictResolutionStrategy


def view(replicas: tuple[replication.MultiMasterReplicator, ...]) -> dict[str, Any]:
    """What a failed wait shows: each replica's keys, Merkle root and unsent pushes."""
    out = {}
    for r in replicas:
        st = r.get_stats()
        out[r.node_id] = {k: st.get(k) for k in ("keys_stored", "tombstones", "merkle_root",
                                                  "pending_pushes")}
    return out


async def until(cond: Callable[[], bool | Awaitable[bool]],
                *replicas: replication.MultiMasterReplicator, timeout: float = 60.0) -> None:
    async def observe() -> tuple[bool, dict[str, Any]]:
        out = cond()
        done = out if isinstance(out, bool) else await out
        return done, view(replicas)

    await waiting.until(observe, lambda seen: seen[0], timeout=timeout, interval=0.02,
                        what="the condition (each replica's state)")


async def test_spec_snippet_in_process() -> None:
    r = replication.MultiMasterReplicator(
        node_id="node-1", resolver=resolver.ConflictResolver(S.LAST_WRITE_WINS))
    value = await r.write("concept_123", {"name": "Distributed Systems",
                                          "description": "Study of coordination in networks"})
    assert value.verify() and value.node_id == "node-1"
    assert (await r.read("concept_123"))["name"] == "Distributed Systems"
    assert await r.read("nope") is None

    other = replication.MultiMasterReplicator(node_id="node-2")
    remote_value = await other.write("concept_456", {"name": "CRDTs"})
    assert await r.replicate_from("node-2", "concept_456", remote_value)
    assert not await r.replicate_from("node-2", "concept_456", remote_value.to_dict())
    assert await r.read("concept_456") == {"name": "CRDTs"}

    remote_clock = other.vector_clock
    updates = await r.get_updates_since(remote_clock)
    assert set(updates["updates"]) == {"concept_123"}
    assert await other.merge_state(updates) == 1
    assert await other.read("concept_123") == await r.read("concept_123")

    stats = r.get_stats()
    assert stats["keys_stored"] == 2 and stats["writes_local"] == 1
    assert stats["conflicts_resolved"] == 0
    assert r.keys() == ["concept_123", "concept_456"]
    assert await r.delete("concept_123") and await r.read("concept_123") is None
    assert r.get_stats()["keys_stored"] == 1


async def test_concurrent_writes_count_a_resolved_conflict() -> None:
    a = replication.MultiMasterReplicator("a")
    b = replication.MultiMasterReplicator("b")
    await a.write("k", "from-a")
    await b.write("k", "from-b")
    await a.merge_state(await b.get_updates_since({}))
    await b.merge_state(await a.get_updates_since({}))
    assert await a.read("k") == await b.read("k")
    assert a.get_stats()["conflicts_resolved"] == 1


async def test_corrupt_value_is_rejected_and_changes_nothing() -> None:
    a = replication.MultiMasterReplicator("a")
    b = replication.MultiMasterReplicator("b")
    await a.write("k", {"v": 1})
    good = await b.write("k", {"v": 2})
    forged = {**good.to_wire(), "data": values.encode({"v": 666})}
    root = a.merkle_root
    with pytest.raises(replication.ReplicationError, match="checksum"):
        await a.replicate_from("b", "k", forged)
    with pytest.raises(ValueError):
        await a.replicate_from("b", "k", {**good.to_dict(), "checksum": "0" * 64})
    bad_obj = values.ReplicatedValue({"v": 3}, good.timestamp, "b", good.version, good.checksum)
    with pytest.raises(replication.ReplicationError):
        await a.replicate_from("b", "k", bad_obj)
    with pytest.raises(replication.ReplicationError):  # one bad entry rejects the whole batch
        await a.merge_state({"x": good.to_wire(), "k": forged})
    assert await a.read("k") == {"v": 1} and await a.read("x") is None
    assert a.merkle_root == root
    assert a.get_stats()["rejected_values"] == 4
    with pytest.raises(replication.ReplicationError):
        await a.write("k", float("nan"))


async def test_copying_a_merged_read_elsewhere_keeps_every_concurrent_write() -> None:
    """A MERGE_UNION read is built from concurrent writes and borrows the latest one's
    dot: merged on its own it would replace that write and hide the other. Replicators
    merge the writes it was built from, so copies agree with the source."""
    def make(node_id: str) -> replication.MultiMasterReplicator:
        return replication.MultiMasterReplicator(
            node_id, resolver=resolver.ConflictResolver(S.MERGE_UNION))

    a, b, copy_by_state, copy_by_value = make("a"), make("b"), make("c"), make("d")
    await a.write("tags", {"from-a"})
    await b.write("tags", {"from-b"})
    await a.merge_state(await b.get_updates_since({}))
    merged = await a.read_value("tags")
    assert merged is not None and merged.value == {"from-a", "from-b"}
    await copy_by_state.merge_state(await a.get_replication_state())
    await copy_by_value.replicate_from("a", "tags", merged)
    for copy in (copy_by_state, copy_by_value):
        await copy.merge_state(await b.get_updates_since({}))  # anti-entropy with a writer
        assert await copy.read("tags") == {"from-a", "from-b"}
        assert copy.merkle_root == a.merkle_root


async def test_merge_state_takes_pairs_and_a_bad_pair_changes_nothing() -> None:
    a, b = replication.MultiMasterReplicator("a"), replication.MultiMasterReplicator("b")
    await a.write("k1", 1)
    await a.write("k2", 2)
    pairs = list(await a.get_updates_since({}))
    assert await b.merge_state(pairs) == 2 and await b.read("k2") == 2
    c = replication.MultiMasterReplicator("c")
    for bad in ([("k1", "not a value")], [("k1",)], [("", pairs[0][1])]):
        with pytest.raises(replication.ReplicationError):
            await c.merge_state(pairs + bad)  # type: ignore[operator]
    assert c.keys() == [] and c.get_stats()["rejected_values"] == 3


def _signed_without_dot(value: Any) -> values.ReplicatedValue:
    """A value object with a matching checksum but no entry of its writer in its version."""
    ts, version = clock.HLCTimestamp(int(time.time() * 1000), 0), clock.VectorClock({"z": 1})
    checksum = values.compute_checksum(value, ts, "b", version)
    return values.ReplicatedValue(value, ts, "b", version, checksum)


async def test_invalid_value_objects_are_refused_on_every_path(tmp_path: Path) -> None:
    a = replication.MultiMasterReplicator("a", storage_path=tmp_path)
    await a.write("k", {"v": 1})
    good = await replication.MultiMasterReplicator("b").write("k2", {"v": 2})
    no_dot = _signed_without_dot({"v": 3})
    assert no_dot.verify()  # the checksum alone would let it through
    bad_ts = dataclasses.replace(good, timestamp=clock.HLCTimestamp(-1, 0))
    bad_ts = dataclasses.replace(bad_ts, checksum=values.compute_checksum(
        good.value, (-1, 0), "b", good.version))  # type: ignore[arg-type]
    root, before = a.merkle_root, a.get_stats()["rejected_values"]
    for bad, why in ((no_dot, "own entry"), (bad_ts, "HLC timestamp")):
        with pytest.raises(replication.ReplicationError, match=why):
            await a.replicate_from("b", "k2", bad)
        with pytest.raises(replication.ReplicationError, match=why):
            await a.merge_state({"k2": good, "k3": bad})
    assert a.merkle_root == root and await a.read("k2") is None and await a.read("k3") is None
    assert a.get_stats()["rejected_values"] == before + 4
    # A valid object is taken as a copy: the caller changing it later changes nothing here.
    assert await a.replicate_from("b", "k2", good)
    good.value["v"] = 666
    assert await a.read("k2") == {"v": 2}
    await a.stop()
    again = replication.MultiMasterReplicator("a", storage_path=tmp_path)
    assert await again.read("k2") == {"v": 2} and await again.read("k") == {"v": 1}
    assert await again.read("k3") is None
    await again.stop()


async def test_durable_across_restart(tmp_path: Path) -> None:
    r = replication.MultiMasterReplicator("n", storage_path=tmp_path)
    for i in range(50):
        await r.write(f"k{i}", {"i": i, "tags": {i, i + 1}})
    await r.delete("k7")
    seq = r._replica.seq
    await r.stop()
    again = replication.MultiMasterReplicator("n", storage_path=tmp_path)
    assert await again.read("k3") == {"i": 3, "tags": {3, 4}}
    assert await again.read("k7") is None
    assert again.get_stats()["keys_stored"] == 49
    v = await again.write("k3", "new")
    assert v.dot[1] > seq
    await again.stop()


async def test_change_callbacks() -> None:
    seen: list[tuple[str, Any]] = []
    r = replication.MultiMasterReplicator("n")
    r.register_change_callback(lambda k, v: seen.append((k, v)))

    async def acb(k: str, v: Any) -> None:
        seen.append(("async:" + k, v))

    r.register_change_callback(acb)
    await r.write("k", 1)
    await r.delete("k")
    await waiting.until(lambda: list(seen), lambda got: len(got) == 4, timeout=10,
                        what="four change callbacks (those seen)")
    assert sorted(seen, key=str) == sorted([("k", 1), ("k", None), ("async:k", 1),
                                            ("async:k", None)], key=str)


Factory = Callable[..., Awaitable[replication.MultiMasterReplicator]]


@pytest.fixture
async def make_node(cluster_pki: TestPKI, tmp_path: Path) -> AsyncIterator[Factory]:
    nodes: list[replication.MultiMasterReplicator] = []

    async def make(i: int, **kw: Any) -> replication.MultiMasterReplicator:
        nid = f"shell-{i}"
        files = cluster_pki.node(nid, ips=(f"127.0.3.{i + 1}",))
        kw.setdefault("storage_path", tmp_path / nid)
        r = replication.MultiMasterReplicator(
            nid, bind_address=f"127.0.3.{i + 1}:0", tls_cert=files.cert, tls_key=files.key,
            tls_ca=files.ca, seed=i, **kw)
        await r.start()
        nodes.append(r)
        return r

    yield make
    for r in nodes:
        await r.stop()


@pytest.fixture
async def cluster(make_node: Factory) -> list[replication.MultiMasterReplicator]:
    return [await make_node(i, anti_entropy_interval=0.3) for i in range(3)]


def connect(nodes: list[replication.MultiMasterReplicator]) -> None:
    for r in nodes:
        r.set_peers({o.node_id: o.address for o in nodes if o is not r and o.address})


async def converged(nodes: list[replication.MultiMasterReplicator]) -> bool:
    return len({r.merkle_root for r in nodes}) == 1


async def test_pushes_and_anti_entropy_over_mtls(
        cluster: list[replication.MultiMasterReplicator]) -> None:
    a, b, c = cluster
    # Writes before anyone knows a peer: only anti-entropy can carry them.
    for i in range(30):
        await a.write(f"early-{i}", i)
    await c.write("early-0", "c wins? only if later")
    connect(cluster)

    async def repaired() -> bool:
        # Written before anyone knew a peer: no push carried them, anti-entropy did. A
        # round counts itself once its last merge is on disk, a moment after the replicas
        # agree, so the two are awaited together.
        rounds = sum(r.get_stats()["anti_entropy_rounds"] for r in cluster)
        return await converged(cluster) and rounds > 0
    await until(repaired, *cluster)
    assert await b.read("early-29") == 29
    # Live writes travel by push.
    await asyncio.gather(*(r.write(f"live-{r.node_id}-{i}", i) for r in cluster
                           for i in range(20)))
    await until(lambda: converged(cluster), *cluster)
    assert await c.read("live-shell-0-19") == 19
    assert sum(r.get_stats()["push_messages_received"] for r in cluster) > 0
    assert {await r.read("early-0") for r in cluster} == {await a.read("early-0")}


async def test_anti_entropy_ships_only_differences(make_node: Factory) -> None:
    # No background rounds and no disk: this test drives one round by hand.
    a, b = [await make_node(i, anti_entropy_interval=3600, sync_new_peers=False,
                                 storage_path=None) for i in (0, 1)]
    for i in range(3000):
        await a.write(f"key-{i:05d}", {"v": i})
    await b.merge_state(await a.get_updates_since({}))
    assert a.merkle_root == b.merkle_root
    for i in range(5):
        await a.write(f"key-{i * 500:05d}", "changed")
    await until(lambda: a.get_stats()["pending_pushes"] == 0, a)  # pushed to nobody
    a.add_peer(b.node_id, b.address or "")
    out = await a.sync_with(b.node_id)
    assert out["differing_keys"] == 5 and out["repaired"] == 0
    assert a.merkle_root == b.merkle_root
    assert await b.read("key-00500") == "changed"
    full = len(replication._pack((await a.get_updates_since({}))["updates"]))
    assert out["bytes"] < full / 20, (out, full)
    again = await a.sync_with(b.node_id)
    assert again["differing_keys"] == 0 and again["calls"] == 1


async def test_a_peer_met_later_gets_the_data_at_once(make_node: Factory) -> None:
    """No interval to wait (it is an hour here): a peer new to us gets a round at once, so a
    node that joins holds what was written before it came."""
    a, b = [await make_node(i, anti_entropy_interval=3600, storage_path=None) for i in (0, 1)]
    for i in range(200):
        await a.write(f"before-{i}", i)
    await until(lambda: a.get_stats()["pending_pushes"] == 0, a)  # pushed to nobody
    b.add_peer(a.node_id, a.address or "")  # only b meets a: the round is b's
    await until(lambda: converged([a, b]), a, b, timeout=10)
    assert await b.read("before-199") == 199
    assert b.get_stats()["anti_entropy_rounds"] == 1 and a.get_stats()["anti_entropy_rounds"] == 0
    b.add_peer(a.node_id, a.address or "")  # met already: no second round
    await asyncio.sleep(0)
    assert b.get_stats()["anti_entropy_rounds"] == 1


async def test_wrong_peer_identity_fails_the_round(
        cluster: list[replication.MultiMasterReplicator]) -> None:
    a, b, c = cluster
    a.add_peer(b.node_id, c.address or "")  # b's id, c's address: the certificate says c
    with pytest.raises(ConnectionError):
        await a.sync_with(b.node_id)
    assert a.get_stats()["anti_entropy_failures"] >= 1


def test_clock_and_strategy_types_exported() -> None:
    assert clock.VectorClock({"a": 1}).compare(clock.VectorClock({"a": 2})) == "before"


async def test_tombstones_collected_once_every_replica_has_them(make_node: Factory) -> None:
    a, b = [await make_node(i, anti_entropy_interval=0.2, tombstone_grace=0.0) for i in (0, 1)]
    connect([a, b])
    await a.write("gone", {"v": 1})
    await a.write("kept", {"v": 2})
    await until(lambda: converged([a, b]), a, b)
    assert await b.delete("gone")
    await until(lambda: all(r.get_stats()["tombstones_collected"] >= 1 for r in (a, b)), a, b)
    await until(lambda: converged([a, b]), a, b)
    assert all(r.get_stats()["tombstones"] == 0 for r in (a, b))
    assert await a.read("gone") is None and await a.read("kept") == {"v": 2}
    assert a.keys() == ["kept"]


async def test_a_known_replica_holds_back_collection_until_forgotten(tmp_path: Path) -> None:
    r = replication.MultiMasterReplicator("solo", storage_path=tmp_path, tombstone_grace=0.0,
                                          peers={"ghost": "127.0.3.99:1"})
    await r.write("k", 1)
    await r.delete("k")
    await r._collect_garbage()
    assert r.get_stats()["tombstones"] == 1  # ghost never confirmed
    await r.stop()
    r = replication.MultiMasterReplicator("solo", storage_path=tmp_path, tombstone_grace=0.0)
    assert r.get_stats()["known_replicas"] == ["ghost"]  # survived restart
    r.forget_replica("ghost")
    await r._collect_garbage()
    assert r.get_stats()["tombstones"] == 0 and r.get_stats()["tombstones_collected"] == 1
    await r.stop()
    r = replication.MultiMasterReplicator("solo", storage_path=tmp_path)
    assert r.get_stats()["tombstones"] == 0 and await r.read("k") is None
    await r.stop()


async def test_large_values_travel_in_messages_under_the_budget(make_node: Factory) -> None:
    a, b = [await make_node(i, anti_entropy_interval=3600, sync_new_peers=False,
                                 storage_path=None) for i in (0, 1)]
    big = "x" * (replication.MESSAGE_BUDGET // 3)
    for i in range(8):  # ~2.7 budgets on each side, none of it pushed
        await a.write(f"a-{i}", big + str(i))
        await b.write(f"b-{i}", big + str(i))
    await until(lambda: a.get_stats()["pending_pushes"] == 0 == b.get_stats()["pending_pushes"],
                a, b)
    a.add_peer(b.node_id, b.address or "")
    out = await a.sync_with(b.node_id)
    assert out["differing_keys"] == 16 and out["calls"] > 6  # split across several fetches
    assert a.merkle_root == b.merkle_root
    assert await a.read("b-7") == big + "7" and await b.read("a-0") == big + "0"
