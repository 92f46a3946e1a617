"""MultiMasterReplicator: the asyncio shell around the CRDT replica (``core.crdt``).

Any node accepts writes. A write is applied to the replica, queued for
pushing, made durable (``<storage_path>/replication.db``) and only then
acknowledged. Pushes (``repl.push``, one-way) go to every peer at most once
per ``push_interval``: an idle node pushes at once, a busy one coalesces.
Pushed states a peer receives are applied at once and written to its disk by
one flusher in batches (the writer already holds them durably). Pushes can
be lost, so every ``anti_entropy_interval`` the replicator picks the next
peer, compares Merkle digests (``repl.digest``) top-down and exchanges only
the keys that differ, both ways (``repl.fetch``). A peer new to us gets such
a round at once, so a node that joins (or returns) holds the others' data
within a round trip, not an interval later. Merging is a CRDT join, so
duplicated, reordered or repeated deliveries are harmless. Messages stay
under ``MESSAGE_BUDGET`` bytes.

Message kinds (all under ``repl.``):

* ``repl.push``   one-way  ``{"states": [[key, state], ...]}``
* ``repl.digest`` call     ``{"level": L, "nodes": [i, ...]}`` -> ``{"hashes": [...]}``;
  with ``"entries": true`` (leaf level) -> ``{"entries": [[[key, digest], ...], ...]}``
* ``repl.fetch``  call     ``{"states": [[key, state], ...], "want": [key, ...]}``
  -> ``{"states": [[key, state], ...], "collected": {key: context}}`` (tombstones
  the peer already garbage-collected count as seen by it)

Without ``bind_address`` or ``transport`` the replicator runs in-process
only, as in the spec's snippets.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgpack

from . import storage
from .core.crdt import clock, merkle, replica, resolver, values
from .transport import peer, tls

log = logging.getLogger(__name__)

KEYS_NS = "repl.keys"
META_NS = "repl.meta"
DB_FILE = "replication.db"

ChangeCallback = Callable[[str, Any], Awaitable[None] | None]


# Pushes and fetch replies stay well under the transport's frame limit (16 MiB).
MESSAGE_BUDGET = 1024 * 1024


def _state_size(state: replica.KeyState) -> int:
    return sum(len(s.encoded_value) + 64 + 16 * len(s.version) for s in state.siblings) + 64


class ReplicationError(ValueError):
    """A value or state that cannot be accepted (corrupt checksum, malformed); nothing changed."""


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class MultiMasterReplicator:
    def __init__(
        self,
        node_id: str,
        resolver: resolver.ConflictResolver | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        *,
        bind_address: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        transport: peer.PeerTransport | None = None,
        peers: Mapping[str, str] | None = None,
        peer_domain: str | None = None,
        anti_entropy_interval: float = 5.0,
        sync_new_peers: bool = True,
        push_interval: float = 0.02,
        tombstone_grace: float = 60.0,
        max_clock_offset: float = 60.0,
        push_batch: int = 256,
        sync_batch: int = 256,
        fsync: bool = True,
        clock_fn: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if anti_entropy_interval <= 0 or push_interval < 0 or push_batch < 1 or sync_batch < 1:
            raise ValueError("intervals and batch sizes must be positive")
        self.node_id = node_id
        self.resolver = resolver or _default_resolver()
        self._replica = replica.Replica(node_id, self.resolver, max_clock_offset=max_clock_offset,
                                        tombstone_grace=tombstone_grace)
        self._now = clock_fn
        self._rng = random.Random(seed)
        self.anti_entropy_interval = anti_entropy_interval
        # Off: only the periodic rounds (tests and benchmarks that drive rounds by hand).
        self.sync_new_peers = sync_new_peers
        self.push_interval = push_interval
        self.push_batch = push_batch
        self.sync_batch = sync_batch
        self._callbacks: list[ChangeCallback] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._peers: dict[str, str] = {}
        self._pending: dict[str, None] = {}
        self._push_event: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ae_cursor = 0
        self._first_contact: dict[str, None] = {}  # peers new to us, awaiting their first sync
        self._ae_event: asyncio.Event | None = None
        self._lag: float | None = None
        self._dirty: set[str] = set()  # pushed changes not yet on disk
        self._flush_event: asyncio.Event | None = None
        self.stats = {"pushes_sent": 0, "push_messages_received": 0, "rejected_values": 0,
                      "anti_entropy_rounds": 0, "anti_entropy_failures": 0,
                      "anti_entropy_bytes": 0, "anti_entropy_keys_repaired": 0}
        self._store: storage.DurableStore | None = None
        if storage_path is not None:
            self._store = storage.DurableStore(Path(storage_path) / DB_FILE, fsync=fsync)
            self._load()
        self._owns_transport = False
        if transport is None and bind_address is not None:
            files = tls.TLSFiles.optional(tls_cert, tls_key, tls_ca)
            transport = peer.PeerTransport(node_id, bind_address, files,
                                           peer_domain=peer_domain, insecure=files is None)
            self._owns_transport = True
        self.transport = transport
        if transport is not None:
            transport.on("repl.push", self._on_push)
            transport.on("repl.digest", self._on_digest)
            transport.on("repl.fetch", self._on_fetch)
        if peers:
            self.set_peers(peers)

    # -- lifecycle -------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._store is not None
        now = self._now()
        raw = self._store.get(META_NS, "seq")
        if raw is not None:
            self._replica.seq = int(_unpack(raw))
        raw = self._store.get(META_NS, "replicas")
        if raw is not None:
            self._replica.known_replicas.update(_unpack(raw))
        for key, data in self._store.scan(KEYS_NS):
            try:
                self._replica.load(str(key), replica.KeyState.from_wire(_unpack(data)), now)
            except (ValueError, TypeError) as exc:  # anti-entropy will fetch it again
                log.warning("replication: skipping unreadable stored key %r: %s", key, exc)

    async def start(self) -> None:
        """Start the network side: the transport (if ours), pushes and anti-entropy."""
        if self.transport is None:
            return
        if self._owns_transport:
            await self.transport.start()
        self._push_event = asyncio.Event()
        if self._pending:
            self._push_event.set()
        self._flush_event = asyncio.Event()
        self._ae_event = asyncio.Event()
        if self._first_contact:
            self._ae_event.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._push_loop(), name=f"repl-push:{self.node_id}"),
                       loop.create_task(self._anti_entropy_loop(), name=f"repl-ae:{self.node_id}"),
                       loop.create_task(self._flush_loop(), name=f"repl-flush:{self.node_id}")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self._flush_event = None
        if self._dirty:
            with contextlib.suppress(storage.StorageError):
                await self._persist(self._dirty)
            self._dirty.clear()
        if self._bg:  # persists of pushed states and async callbacks still running
            await asyncio.wait(list(self._bg), timeout=10.0)
        for t in list(self._bg):
            t.cancel()
        if self.transport is not None and self._owns_transport:
            await self.transport.stop()
        if self._store is not None:
            self._store.close()

    @property
    def address(self) -> str | None:
        return None if self.transport is None else self.transport.address

    # -- peers -------------------------------------------------------------------------------

    def add_peer(self, node_id: str, address: str) -> None:
        if node_id == self.node_id:
            return
        peer.split_address(address)
        if node_id not in self._peers:
            self._met(node_id)
        self._peers[node_id] = address
        self._know(node_id)

    def remove_peer(self, node_id: str) -> None:
        """Stop talking to a peer (it may come back; its tombstone votes are still awaited)."""
        self._peers.pop(node_id, None)

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer list with the peers the mesh reports alive."""
        for address in peers.values():
            peer.split_address(address)
        new = {n: a for n, a in peers.items() if n != self.node_id}
        for n in new.keys() - self._peers.keys():
            self._met(n)
        self._peers = new
        for n in self._peers:
            self._know(n)

    def _met(self, node_id: str) -> None:
        if not self.sync_new_peers:
            return
        self._first_contact[node_id] = None
        if self._ae_event is not None:
            self._ae_event.set()

    def forget_replica(self, node_id: str) -> None:
        """A member left for good: stop waiting for it before collecting tombstones."""
        self._peers.pop(node_id, None)
        if node_id in self._replica.known_replicas:
            self._replica.known_replicas.discard(node_id)
            self._persist_replicas()

    @property
    def known_replicas(self) -> frozenset[str]:
        """The other replicas whose confirmation tombstone collection waits for."""
        return frozenset(self._replica.known_replicas)

    def _know(self, node_id: str) -> None:
        if node_id not in self._replica.known_replicas:
            self._replica.known_replicas.add(node_id)
            self._persist_replicas()

    def _persist_replicas(self) -> None:
        if self._store is not None:
            op = storage.Put(META_NS, "replicas", _pack(sorted(self._replica.known_replicas)))
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # configured before the loop runs (constructor peers=)
                self._store.commit_sync([op])
                return
            self._spawn(self._store.commit([op]))

    @property
    def peers(self) -> dict[str, str]:
        return dict(self._peers)

    def register_change_callback(self, callback: ChangeCallback) -> None:
        """``callback(key, value_or_None)`` after every change a read would see.

        The value is the replica's own object (no copy, this runs on every change):
        callbacks must not mutate it.
        """
        self._callbacks.append(callback)

    # -- the spec's API ----------------------------------------------------------------------

    async def write(self, key: str, value: Any) -> values.ReplicatedValue:
        """Write locally; returns once the write is durable."""
        try:
            rv, _ = self._replica.write(key, value, self._now())
        except values.EncodingError as exc:
            raise ReplicationError(str(exc)) from None
        # Peers may learn of the write before it is durable here: harmless (they merge a
        # value we might lose in a crash) and it takes our fsync off the replication path.
        self._queue_push(key)
        await self._persist([key])
        self._notify(key)
        return rv

    async def delete(self, key: str) -> bool:
        """Delete (a tombstone); False if there was nothing live to delete."""
        out = self._replica.delete(key, self._now())
        if out is None:
            return False
        self._queue_push(key)
        await self._persist([key])
        self._notify(key)
        return True

    async def read(self, key: str) -> Any:
        """The current value (conflicts resolved), or None if absent or deleted."""
        replica.check_key(key)
        return copy.deepcopy(self._replica.read(key))

    async def read_value(self, key: str) -> values.ReplicatedValue | None:
        """The resolved ``ReplicatedValue`` with its metadata, or None."""
        return self._replica.resolved(replica.check_key(key))

    def keys(self, after: str | None = None, limit: int = 100) -> list[str]:
        return self._replica.keys(after, limit)

    async def replicate_from(self, node_id: str, key: str,
                             value: values.ReplicatedValue | Mapping[str, Any]) -> bool:
        """Merge a value written elsewhere; True if it changed our state.

        Raises ``ReplicationError`` (changing nothing) if the checksum does not verify
        or the value is malformed; a value object passes the same checks as a dict.
        """
        replica.check_key(key)
        try:
            rv = _parse_value(value)
        except (ValueError, TypeError) as exc:
            self.stats["rejected_values"] += 1
            raise ReplicationError(f"value for {key!r} from {node_id!r}: {exc}") from None
        return await self._merge({key: replica.KeyState.single(rv)}, node_id) > 0

    async def get_updates_since(self, vector_clock: clock.VectorClock | Mapping[str, int] | None
                                ) -> dict[str, Any]:
        """Every key state holding an event ``vector_clock`` has not seen (wire form).

        The result feeds ``merge_state`` on another replicator.
        """
        since = (vector_clock if isinstance(vector_clock, clock.VectorClock)
                 else clock.VectorClock.from_dict(vector_clock or {}))
        return {"node_id": self.node_id, "vector_clock": self._replica.vclock.to_dict(),
                "updates": {k: s.to_wire() for k, s in self._replica.updates_since(since)}}

    async def merge_state(self, state: Mapping[str, Any], from_node: str | None = None) -> int:
        """Merge ``get_updates_since`` output (or ``{key: state or value}``); returns keys changed.

        Every entry is checked first; one corrupt entry rejects the whole call.
        """
        if "updates" in state and isinstance(state["updates"], Mapping):
            from_node = from_node or state.get("node_id")
            state = state["updates"]
        parsed: dict[str, replica.KeyState] = {}
        for key, raw in state.items():
            replica.check_key(key)
            try:
                if isinstance(raw, Mapping) and "s" in raw:
                    parsed[key] = replica.KeyState.from_wire(raw)
                else:
                    parsed[key] = replica.KeyState.single(_parse_value(raw))
            except (ValueError, TypeError) as exc:
                self.stats["rejected_values"] += 1
                raise ReplicationError(f"state for {key!r}: {exc}") from None
        return await self._merge(parsed, from_node)

    async def get_replication_state(self) -> dict[str, Any]:
        r = self._replica
        return {"node_id": self.node_id, "vector_clock": r.vclock.to_dict(),
                "merkle_root": f"{r.tree.root:016x}", "keys_stored": r.live_keys,
                "tombstones": r.tombstones, "strategy": self.resolver.strategy.value,
                "peers": dict(self._peers), "known_replicas": sorted(r.known_replicas)}

    def get_stats(self) -> dict[str, Any]:
        r = self._replica
        return {"keys_stored": r.live_keys, "tombstones": r.tombstones, **r.stats,
                **self.stats, "peers": len(self._peers), "pending_pushes": len(self._pending),
                "replication_lag_seconds": self._lag}

    @property
    def merkle_root(self) -> int:
        return self._replica.tree.root

    # -- applying changes ----------------------------------------------------------------------

    async def _merge(self, states: Mapping[str, replica.KeyState], sender: str | None,
                     *, durable: bool = True) -> int:
        """Join remote states; with ``durable`` return only once they are on disk.

        Pushes do not wait (``durable=False``): the writer already holds the value
        durably, and what a crash here loses, anti-entropy brings back.
        """
        now = self._now()
        changed: dict[str, replica.KeyState] = {}
        for key, st in states.items():
            result = self._replica.merge(key, st, now, sender)
            if result.changed:
                changed[key] = result.state
                newest = max(result.state.siblings, key=lambda v: v.timestamp)
                if newest.node_id != self.node_id:  # how old the news was when it got here
                    self._lag = max(0.0, now - newest.timestamp.seconds)
        if changed:
            for key in changed:
                self._notify(key)
            if durable:
                await self._persist(changed)
            elif self._flush_event is not None:  # one flusher batches all pushed changes
                self._dirty.update(changed)
                self._flush_event.set()
            else:
                self._spawn(self._persist(changed))
        return len(changed)

    async def _persist(self, keys: Iterable[str]) -> None:
        """Write the *current* states of ``keys``.

        Reading the states and queueing the commit happen in one step of the
        event loop, so the store's FIFO order is the order the states were read
        in: a later commit never carries an older state of a key.
        """
        if self._store is None:
            return
        states = self._replica.states
        ops: list[storage.Op] = [storage.Put(KEYS_NS, k, _pack(states[k].to_wire()))
                                 for k in keys if k in states]
        ops.append(storage.Put(META_NS, "seq", _pack(self._replica.seq)))
        await self._store.commit(ops)

    def _notify(self, key: str) -> None:
        if not self._callbacks:
            return
        value = self._replica.read(key)
        for cb in self._callbacks:
            try:
                out = cb(key, value)
                if inspect.isawaitable(out):
                    self._spawn(out)
            except Exception:
                log.exception("replication change callback failed")

    def _spawn(self, aw: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await aw
            except Exception:
                log.exception("replication background task failed")

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop (constructor called outside one): run it later
            if inspect.iscoroutine(aw):
                aw.close()
            return
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- pushes --------------------------------------------------------------------------------

    def _queue_push(self, key: str) -> None:
        if self.transport is None:
            return
        self._pending[key] = None
        if self._push_event is not None:
            self._push_event.set()

    async def _push_loop(self) -> None:
        assert self._push_event is not None and self.transport is not None
        loop = asyncio.get_running_loop()
        last = -self.push_interval
        while True:
            await self._push_event.wait()
            # At most one batch per push_interval: an idle node pushes at once, a busy
            # one coalesces its writes into fewer, larger frames.
            wait = last + self.push_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            self._push_event.clear()
            keys = list(self._pending)
            self._pending.clear()
            for batch in self._batches(keys, self.push_batch):
                body = {"states": batch}
                for address in self._peers.values():
                    self.transport.send(address, "repl.push", body)
                self.stats["pushes_sent"] += 1

    def _batches(self, keys: list[str], max_keys: int) -> Iterator[list[list[Any]]]:
        """``[[key, state], ...]`` lists of at most ``max_keys`` keys and ~MESSAGE_BUDGET bytes."""
        states = self._replica.states
        batch: list[list[Any]] = []
        size = 0
        for k in keys:
            st = states.get(k)
            if st is None:
                continue
            n = _state_size(st)
            if batch and (len(batch) >= max_keys or size + n > MESSAGE_BUDGET):
                yield batch
                batch, size = [], 0
            batch.append([k, st.to_wire()])
            size += n
        if batch:
            yield batch

    async def _flush_loop(self) -> None:
        assert self._flush_event is not None
        event = self._flush_event
        while True:
            await event.wait()
            event.clear()
            keys, self._dirty = self._dirty, set()
            try:
                await self._persist(keys)
            except storage.StorageError:
                log.exception("replication: could not persist pushed changes")

    async def flush(self) -> None:
        """Return once every change this replica holds is on disk, pushed ones included
        (the flusher writes those in batches): a copy of the store then has them all."""
        keys, self._dirty = self._dirty, set()
        # Always one commit: the store's single writer keeps order, so it lands after
        # every commit queued before it (a flusher batch in flight among them).
        await self._persist(keys)

    @property
    def store_path(self) -> Path | None:
        """The SQLite file holding this replica (``None`` in memory)."""
        return None if self._store is None else self._store.path

    async def _on_push(self, sender: str, body: dict[str, Any]) -> None:
        self.stats["push_messages_received"] += 1
        parsed = self._parse_states(body.get("states"), sender)
        await self._merge(parsed, sender, durable=False)

    def _parse_states(self, raw: Any, sender: str) -> dict[str, replica.KeyState]:
        """Valid entries of a ``[[key, state], ...]`` list; corrupt ones are counted and dropped."""
        if not isinstance(raw, list):
            raise ValueError("'states' must be a list of [key, state]")
        out: dict[str, replica.KeyState] = {}
        for item in raw:
            try:
                key, st = item
                out[replica.check_key(key)] = replica.KeyState.from_wire(st)
            except (ValueError, TypeError) as exc:
                self.stats["rejected_values"] += 1
                log.warning("replication: rejected a state from %s: %s", sender, exc)
        return out

    # -- anti-entropy --------------------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        assert self._ae_event is not None
        while True:
            # Jitter so replicas do not all sync in lockstep; a peer met meanwhile cuts it short.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.anti_entropy_interval
                                           * self._rng.uniform(0.8, 1.2)):
                    await self._ae_event.wait()
            self._ae_event.clear()
            met = [p for p in self._first_contact if p in self._peers]
            self._first_contact.clear()
            peers = sorted(self._peers)
            if not met and peers:
                self._ae_cursor = (self._ae_cursor + 1) % len(peers)
                met = [peers[self._ae_cursor]]
            try:
                for peer_id in met:
                    with contextlib.suppress(peer.PeerError, ValueError):
                        await self.sync_with(peer_id)
                await self._collect_garbage()
            except Exception:  # e.g. a failing disk: log, keep the loop alive, retry later
                log.exception("replication: anti-entropy round failed")

    async def _collect_garbage(self) -> None:
        gone = self._replica.collect_garbage(self._now())
        if gone and self._store is not None:
            await self._store.commit([storage.Delete(KEYS_NS, k) for k in gone])

    async def sync_with(self, peer_id: str) -> dict[str, int]:
        """One anti-entropy round with ``peer_id``: compare digests, swap differing keys."""
        address = self._peers.get(peer_id)
        if address is None or self.transport is None:
            raise ValueError(f"unknown peer {peer_id!r}")
        counter = {"bytes": 0, "calls": 0}
        snapshot = self._replica.tombstone_digests()
        try:
            keys = await self._find_differences(address, peer_id, counter)
            repaired = await self._exchange(address, peer_id, sorted(keys), counter)
        except (peer.PeerError, ValueError, TypeError, KeyError) as exc:
            self.stats["anti_entropy_failures"] += 1
            self.stats["anti_entropy_bytes"] += counter["bytes"]
            log.debug("anti-entropy with %s failed: %s", peer_id, exc)
            raise peer.PeerError(address, f"anti-entropy failed: {exc}") from None
        self._replica.confirm_round(peer_id, snapshot, keys)
        self.stats["anti_entropy_rounds"] += 1
        self.stats["anti_entropy_bytes"] += counter["bytes"]
        self.stats["anti_entropy_keys_repaired"] += repaired
        return {"differing_keys": len(keys), "repaired": repaired, **counter}

    async def _call(self, address: str, peer_id: str, kind: str, body: dict[str, Any],
                    counter: dict[str, int]) -> dict[str, Any]:
        assert self.transport is not None
        reply = await self.transport.request(address, kind, body, expect=peer_id)
        counter["bytes"] += len(_pack(body)) + len(_pack(reply))
        counter["calls"] += 1
        return reply

    async def _find_differences(self, address: str, peer_id: str,
                                counter: dict[str, int]) -> set[str]:
        tree = self._replica.tree
        level, nodes = 1, list(range(tree.fanout))
        while True:  # hashes level by level, down to the leaves, only below differences
            diff: list[int] = []
            for i in range(0, len(nodes), 4096):
                chunk = nodes[i:i + 4096]
                reply = await self._call(address, peer_id, "repl.digest",
                                         {"level": level, "nodes": chunk}, counter)
                diff += merkle.differing(chunk, tree.hashes(level, chunk), reply["hashes"])
            if not diff:
                return set()
            if level == tree.depth:
                break
            nodes, level = tree.children(level, diff), level + 1
        keys: set[str] = set()
        for i in range(0, len(diff), 512):  # then the entries of the differing leaves only
            chunk = diff[i:i + 512]
            reply = await self._call(address, peer_id, "repl.digest",
                                     {"level": tree.depth, "nodes": chunk, "entries": True},
                                     counter)
            theirs = reply["entries"]
            if not isinstance(theirs, list) or len(theirs) != len(chunk):
                raise ValueError("leaf entries do not match the request")
            for mine, other in zip(tree.entries(chunk), theirs, strict=True):
                keys |= merkle.differing_keys(mine, [tuple(e) for e in other])
        return keys

    async def _exchange(self, address: str, peer_id: str, keys: list[str],
                        counter: dict[str, int]) -> int:
        repaired = 0
        todo = list(keys)
        while todo:
            chunk, todo = todo[:self.sync_batch], todo[self.sync_batch:]
            ours = next(self._batches(chunk, len(chunk)), [])
            sent = {k for k, _ in ours}
            # Keys of ours that did not fit in this message go in the next one.
            todo = [k for k in chunk if k in self._replica.states and k not in sent] + todo
            want = [k for k in chunk if k in sent or k not in self._replica.states]
            if not want:
                continue
            body = {"states": ours, "want": want}
            reply = await self._call(address, peer_id, "repl.fetch", body, counter)
            more = reply.get("more", [])
            if isinstance(more, list):  # theirs that did not fit: ask again
                todo += [k for k in more if isinstance(k, str) and k in want]
            repaired += await self._merge(self._parse_states(reply.get("states"), peer_id),
                                          peer_id)
            collected = reply.get("collected", {})
            if isinstance(collected, dict):
                for key, ctx in collected.items():
                    with contextlib.suppress(ValueError, TypeError):
                        self._replica.peer_collected(peer_id, key,
                                                     clock.VectorClock.from_dict(ctx))
        return repaired

    async def _on_digest(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        tree = self._replica.tree
        level, nodes = body.get("level"), body.get("nodes")
        if not isinstance(level, int) or not isinstance(nodes, list) or len(nodes) > 65536:
            raise ValueError("repl.digest needs an int level and a list of at most 65536 nodes")
        if body.get("entries"):
            if level != tree.depth:
                raise ValueError("entries exist only at the leaf level")
            return {"entries": [[list(e) for e in leaf] for leaf in tree.entries(nodes)]}
        return {"hashes": tree.hashes(level, nodes)}

    async def _on_fetch(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        want = body.get("want", [])
        if not isinstance(want, list) or len(want) > 65536:
            raise ValueError("'want' must be a list of at most 65536 keys")
        await self._merge(self._parse_states(body.get("states", []), sender), sender)
        have = [k for k in want if isinstance(k, str) and k in self._replica.states]
        batch = next(self._batches(have, len(have)), []) if have else []
        sent = {k for k, _ in batch}
        return {"states": batch, "more": [k for k in have if k not in sent],
                "collected": self._replica.collected_contexts(want)}


def _parse_value(raw: object) -> values.ReplicatedValue:
    """A value from a caller, in either form, with every check a reload or a peer applies:
    what we acknowledge here must never be skipped on reload or refused by a peer."""
    if isinstance(raw, values.ReplicatedValue):
        return values.ReplicatedValue.validated(raw)
    if not isinstance(raw, Mapping):
        raise ValueError(f"a replicated value is a ReplicatedValue or a mapping, "
                         f"got {type(raw).__name__}")
    return values.ReplicatedValue.from_dict(raw)


def _default_resolver() -> resolver.ConflictResolver:
    return resolver.ConflictResolver(resolver.ConflictResolutionStrategy.LAST_WRITE_WINS)
