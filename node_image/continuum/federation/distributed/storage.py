"""Crash-safe state under ``storage_path``: SQLite in WAL mode, group commit.

Every component keeps its durable state here as namespaced key/value rows
(Raft: hard state, log, snapshot; replication: the concept store; discovery:
the peer cache). Writes go through ``await commit(ops)``, which returns only
once the operations are on disk. A single writer thread takes every batch
queued while the previous one was being written and commits them in one
transaction, so many concurrent writers share one fsync (group commit).

Files are created readable by their owner alone (0600, directories 0700): concept
data is nobody else's business on a shared machine.

With ``fsync=True`` (the default) SQLite runs ``synchronous=FULL``: a commit
that returned survives ``kill -9`` and power loss. ``fsync=False`` exists
only to compare against systems that never fsync; never use it for data you
care about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

Key = int | str | bytes


@dataclass(frozen=True, slots=True)
class Put:
    ns: str
    key: Key
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    ns: str
    key: Key


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Delete keys ``lo <= key < hi`` (``hi=None``: to the end) in ``ns``."""

    ns: str
    lo: Key
    hi: Key | None = None


Op = Put | Delete | DeleteRange

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    k  ANY NOT NULL,
    v  BLOB NOT NULL,
    PRIMARY KEY (ns, k)
) WITHOUT ROWID, STRICT;
"""


class StorageError(RuntimeError):
    """The store is closed or a write failed; nothing of the failed batch was applied."""


class DurableStore:
    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Readable by this user alone; SQLite gives its -wal and -shm files the same mode.
        # (Files of older versions were 0644: tightened too.)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self._writer_db = self._connect(check_same_thread=False)
        self._writer_db.executescript(_SCHEMA)
        self._reader = self._connect(check_same_thread=False)
        self._queue: queue.SimpleQueue[
            tuple[Sequence[Op], asyncio.Future[None], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0  # transactions (fsyncs) done
        self.batches = 0  # commit() calls served
        self._thread = threading.Thread(target=self._writer, name=f"store:{self.path.name}",
                                        daemon=True)
        self._thread.start()

    def _connect(self, *, check_same_thread: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    # -- writes ----------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` atomically; return once they are durable."""
        if self._closed:
            raise StorageError(f"store {self.path} is closed")
        if not ops:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((ops, fut, loop))
        await fut

    def commit_sync(self, ops: Sequence[Op]) -> None:
        """Blocking variant for code outside the event loop (tools, tests)."""
        if self._closed:
            raise StorageError(f"store {self.path} is closed")
        self._apply_many([ops])

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while True:  # take everything that queued while we waited: one fsync for all
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
            error: BaseException | None = None
            try:
                self._apply_many([ops for ops, _, _ in group])
            except BaseException as exc:
                error = exc
            # One wake-up per event loop for the whole group, not one per commit: each
            # call_soon_threadsafe is a write to the loop's wake-up pipe.
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, fut, loop in group:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: none waits
                    loop.call_soon_threadsafe(_settle, futs, error)

    def _apply_many(self, batches: Iterable[Sequence[Op]]) -> None:
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = 0
            for ops in batches:
                n += 1
                for op in ops:
                    if isinstance(op, Put):
                        db.execute("INSERT OR REPLACE INTO kv (ns, k, v) VALUES (?, ?, ?)",
                                   (op.ns, op.key, op.value))
                    elif isinstance(op, Delete):
                        db.execute("DELETE FROM kv WHERE ns = ? AND k = ?", (op.ns, op.key))
                    elif op.hi is None:
                        db.execute("DELETE FROM kv WHERE ns = ? AND k >= ?", (op.ns, op.lo))
                    else:
                        db.execute("DELETE FROM kv WHERE ns = ? AND k >= ? AND k < ?",
                                   (op.ns, op.lo, op.hi))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.commits += 1
        self.batches += n

    # -- reads -----------------------------------------------------------------------------

    def get(self, ns: str, key: Key) -> bytes | None:
        row = self._reader.execute("SELECT v FROM kv WHERE ns = ? AND k = ?", (ns, key)).fetchone()
        return None if row is None else bytes(row[0])

    def scan(self, ns: str, lo: Key | None = None, hi: Key | None = None,
             ) -> list[tuple[Key, bytes]]:
        """Rows of ``ns`` with ``lo <= key < hi``, in key order."""
        sql = "SELECT k, v FROM kv WHERE ns = ?"
        args: list[Key] = [ns]
        if lo is not None:
            sql += " AND k >= ?"
            args.append(lo)
        if hi is not None:
            sql += " AND k < ?"
            args.append(hi)
        sql += " ORDER BY k"
        return [(k, bytes(v)) for k, v in self._reader.execute(sql, args)]

    def count(self, ns: str) -> int:
        row = self._reader.execute("SELECT COUNT(*) FROM kv WHERE ns = ?", (ns,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Finish queued writes, then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._writer_db.close()
        self._reader.close()


class ConsistentReader:
    """The rows of one namespace as they were at one moment, read on a connection of its
    own while writers go on: in WAL mode a read transaction sees the database as of its
    first read. For a backup's copy. Blocking: use it from one thread at a time, and
    ``close`` it (the WAL cannot be checkpointed past an open read transaction)."""

    def __init__(self, path: str | os.PathLike[str], ns: str) -> None:
        self._db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("BEGIN")
        self._rows = self._db.execute("SELECT k, v FROM kv WHERE ns = ? ORDER BY k", (ns,))

    def fetch(self, n: int) -> list[tuple[Key, bytes]]:
        """Up to ``n`` more rows, in key order; [] at the end."""
        return [(k, bytes(v)) for k, v in self._rows.fetchmany(n)]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("COMMIT")
        self._db.close()


def _settle(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
        if fut.done():  # its waiter was cancelled
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StorageError(f"write failed: {error}"))
