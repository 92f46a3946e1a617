from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from continuum.federation.distributed import raft_storage, storage
from continuum.federation.distributed.core.raft import messages as rmsg
from continuum.federation.distributed.core.raft import raft_node as rnode


async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db")
    try:
        await asyncio.gather(*(store.commit([storage.Put("log", i, b"x")]) for i in range(500)))
        assert store.count("log") == 500
        assert store.batches == 500
        assert store.commits < 500  # many writes, fewer transactions
    finally:
        store.close()


def test_commits_from_two_event_loops_are_each_answered_on_their_own(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db")

    async def writes(prefix: str) -> None:
        # Bounded: a commit answered on the wrong loop would otherwise hang the thread.
        await asyncio.wait_for(asyncio.gather(
            *(store.commit([storage.Put("log", f"{prefix}{i}", b"x")]) for i in range(200))), 30)

    try:
        threads = [threading.Thread(target=asyncio.run, args=(writes(p),)) for p in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert store.count("log") == 400
    finally:
        store.close()


async def test_a_waiter_on_a_closed_event_loop_does_not_stop_the_writer(tmp_path: Path) -> None:
    # A commit whose event loop closed before the write landed (a test, a shutdown): the
    # writer thread must go on serving the others.
    store = storage.DurableStore(tmp_path / "s.db")
    try:
        gone = asyncio.new_event_loop()
        orphan: asyncio.Future[None] = gone.create_future()
        gone.close()
        store._queue.put(([storage.Put("a", 1, b"x")], orphan, gone))
        await asyncio.wait_for(store.commit([storage.Put("a", 2, b"y")]), 10)
        assert [k for k, _ in store.scan("a")] == [1, 2]
    finally:
        store.close()


async def test_ops_and_ordering(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db")
    try:
        await store.commit([storage.Put("log", i, str(i).encode()) for i in range(1, 11)])
        await store.commit([storage.DeleteRange("log", 8), storage.Delete("log", 1),
                            storage.Put("meta", "term", b"3")])
        assert [k for k, _ in store.scan("log")] == [2, 3, 4, 5, 6, 7]
        assert [k for k, _ in store.scan("log", 3, 5)] == [3, 4]
        await store.commit([storage.DeleteRange("log", 3, 5)])
        assert [k for k, _ in store.scan("log")] == [2, 5, 6, 7]
        assert store.get("meta", "term") == b"3"
        assert store.get("meta", "vote") is None
    finally:
        store.close()


async def test_later_ops_win_within_a_group_commit(tmp_path: Path) -> None:
    # One transaction carries many commits: a later put of a key must still replace an
    # earlier one, and a delete must fall between the puts around it.
    store = storage.DurableStore(tmp_path / "s.db")
    try:
        ops: list[storage.Op] = [storage.Put("a", i % 7, b"%d" % i) for i in range(300)]
        ops += [storage.Delete("a", 3), storage.Put("a", 3, b"back"), storage.Delete("a", 4)]
        await asyncio.gather(store.commit(ops),
                             store.commit([storage.Put("a", 5, b"second commit")]))
        assert dict(store.scan("a")) == {0: b"294", 1: b"295", 2: b"296", 3: b"back",
                                         5: b"second commit", 6: b"293"}
        assert store.commits <= 2
    finally:
        store.close()


async def test_failed_batch_changes_nothing(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db")
    try:
        await store.commit([storage.Put("a", 1, b"keep")])
        bad = storage.Put("a", 2, "not bytes")  # type: ignore[arg-type]
        with pytest.raises(storage.StorageError):
            await store.commit([storage.Put("a", 3, b"x"), storage.Put("a", 4, None),  # type: ignore[arg-type]
                                bad])
        assert [k for k, _ in store.scan("a")] == [1]
    finally:
        store.close()


async def test_closed_store_refuses(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db")
    store.close()
    store.close()
    with pytest.raises(storage.StorageError):
        await store.commit([storage.Put("a", 1, b"x")])


async def test_reopen_sees_everything(tmp_path: Path) -> None:
    store = storage.DurableStore(tmp_path / "s.db", fsync=False)
    await store.commit([storage.Put("a", "k", b"v")])
    store.close()
    again = storage.DurableStore(tmp_path / "s.db")
    try:
        assert again.get("a", "k") == b"v"
    finally:
        again.close()


def test_a_compaction_deletes_the_log_rows_before_it_writes_the_snapshot() -> None:
    # SQLite deletes a range ~50x slower right after a large row went into the same table
    # (seconds of CPU for a 20,000-entry log), so the order of the ops matters.
    snap = rmsg.Snapshot(20, 2, rmsg.ClusterConfig(frozenset({"a"})), b"x" * 100)
    ops, last = raft_storage.ready_ops(rnode.Ready(snapshot=snap), 20)
    assert [type(op).__name__ for op in ops] == ["DeleteRange", "Put"]
    assert last == 20
