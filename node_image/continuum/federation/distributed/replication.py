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

The wire messages (``repl.push``, ``repl.digest``, ``repl.fetch``) and the
top-down comparison of the trees are the core's (``core.crdt.messages`` and
``core.crdt.antientropy``); this shell sends, merges and persists.

Without ``bind_address`` or ``transport`` the replicator runs in-process
only, as in the spec's snippets. In a cluster ``set_admitted`` names the
members the cluster's membership admits: pushes, digests and fetches from any
other node are refused (counted in ``refused``), and only admitted peers are
pushed to or synced with.

Why one long file: it is the spec's ``MultiMasterReplicator``: writes, pushes,
anti-entropy and persistence share one replica and its dirty set; the CRDT,
the Merkle tree, the wire messages and the descent are in ``core.crdt``.
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
from .core.crdt import antientropy, clock, messages, replica, resolver, updates, values
from .transport import link, peer

log = logging.getLogger(__name__)

# The original module's names, importable from here as before; ReplicationLog (a key's
# operations and resolved value) is a key's state here: its causal context and siblings.
VectorClock = clock.VectorClock
ReplicatedValue = values.ReplicatedValue
ConflictResolver = resolver.ConflictResolver
ConflictResolutionStrategy = resolver.ConflictResolutionStrategy
ReplicationLog = replica.KeyState
Updates = updates.Updates

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
        insecure: bool = False,  # plain HTTP on bind_address: tests only (transport.link)
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
        self._admitted: frozenset[str] | None = None  # None: any node (standalone)
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
                      "anti_entropy_bytes": 0, "anti_entropy_keys_repaired": 0,
                      "refused": 0}
        self._store: storage.DurableStore | None = None
        if storage_path is not None:
            self._store = storage.DurableStore(Path(storage_path) / DB_FILE, fsync=fsync)
            self._load()
        self._link = link.PeerLink.build(node_id, transport=transport, bind_address=bind_address,
                                         tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                         peer_domain=peer_domain, insecure=insecure)
        self.transport = transport = self._link.transport
        if transport is not None:
            transport.on(messages.PUSH, self._on_push)
            transport.on(messages.DIGEST, self._on_digest)
            transport.on(messages.FETCH, self._on_fetch)
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
        await self._link.start()
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
        await self._link.stop()
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

    def set_admitted(self, members: frozenset[str] | None) -> None:
        """Exchange data only with ``members`` from now on (``None``: with any node); a
        peer newly admitted gets an anti-entropy round at once."""
        before = self._admitted
        self._admitted = members
        for node_id in self._peers:
            if self.admits(node_id) and before is not None and node_id not in before:
                self._met(node_id)

    def admits(self, node_id: str) -> bool:
        return self._admitted is None or node_id in self._admitted

    def _refuse(self, sender: str, kind: str) -> None:
        if not self.admits(sender):
            self.stats["refused"] += 1
            log.debug("replication: refused %s from %s, not a member", kind, sender)
            raise PermissionError(f"{sender} is not a member this replica admits")

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

    @property
    def vector_clock(self) -> clock.VectorClock:
        """Every event this replica holds (a copy): what ``get_updates_since`` takes."""
        return self._replica.vclock.copy()

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
            state = _state_of(value)
        except (ValueError, TypeError) as exc:
            self.stats["rejected_values"] += 1
            raise ReplicationError(f"value for {key!r} from {node_id!r}: {exc}") from None
        return await self._merge({key: state}, node_id) > 0

    async def get_updates_since(self, vector_clock: clock.VectorClock | Mapping[str, int] | None
                                ) -> updates.Updates:
        """Every key state holding an event ``vector_clock`` has not seen.

        A list of ``(key, ReplicatedValue)`` pairs that feed ``replicate_from`` one by
        one, as in the original module; ``merge_state`` takes it whole, key states
        and all, which is the cheaper way (see ``core.crdt.updates``).
        """
        since = (vector_clock if isinstance(vector_clock, clock.VectorClock)
                 else clock.VectorClock.from_dict(vector_clock or {}))
        return updates.Updates(self.node_id, self._replica.vclock.to_dict(),
                               self._replica.updates_since(since))

    async def merge_state(self, state: Mapping[str, Any] | updates.Updates
                          | list[tuple[str, Any]], from_node: str | None = None) -> int:
        """Merge ``get_updates_since`` output, its wire form, ``get_replication_state``
        output (``{key: value}``), or ``(key, value)`` pairs; returns keys changed.

        Every entry is checked first; one corrupt entry rejects the whole call.
        """
        if isinstance(state, updates.Updates):
            # Key states of a replica in this process, checked when they reached it.
            return await self._merge(state.states, from_node or state.node_id)
        if isinstance(state, list):
            return await self._merge(self._parse_pairs(state), from_node)
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
                    parsed[key] = _state_of(raw)
            except (ValueError, TypeError) as exc:
                self.stats["rejected_values"] += 1
                raise ReplicationError(f"state for {key!r}: {exc}") from None
        return await self._merge(parsed, from_node)

    def _parse_pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, replica.KeyState]:
        checked: list[tuple[str, replica.KeyState]] = []
        for item in pairs:
            try:
                key, raw = item
                checked.append((replica.check_key(key), _state_of(raw)))
            except (ValueError, TypeError) as exc:
                self.stats["rejected_values"] += 1
                raise ReplicationError(f"pair {item!r:.80}: {exc}") from None
        return updates.join_per_key(checked)

    async def get_replication_state(self, keys: Iterable[str] | None = None
                                    ) -> dict[str, values.ReplicatedValue]:
        """``{key: ReplicatedValue}``: the value a read sees, for every live key or ``keys``.

        ``merge_state`` on another replicator takes it as it is (a value resolved from
        concurrent writes brings those writes along). The replica's own figures
        (vector clock, Merkle root, known replicas) are in ``get_stats``.
        """
        r = self._replica
        wanted = r.states.keys() if keys is None else [replica.check_key(k) for k in keys]
        out = {}
        for key in wanted:
            rv = r.resolved(key)
            if rv is not None:
                out[key] = rv
        return out

    def get_stats(self) -> dict[str, Any]:
        r = self._replica
        stats: dict[str, Any] = {
            "keys_stored": r.live_keys, "tombstones": r.tombstones, **r.stats, **self.stats,
            "peers": len(self._peers), "pending_pushes": len(self._pending),
            "replication_lag_seconds": self._lag}
        # The original module's keys, with its meanings: every remote write merged
        # (changed or not), conflicts counted once each, this replica's vector clock.
        stats.update(
            node_id=self.node_id, vector_clock=r.vclock.to_dict(),
            writes_replicated=r.stats["writes_remote"] + r.stats["merges_unchanged"],
            total_conflicts=r.stats["conflicts_resolved"],
            resolution_strategy=self.resolver.strategy.value,
            merkle_root=f"{r.tree.root:016x}", known_replicas=sorted(r.known_replicas))
        return stats

    def hybrid_clock_seconds(self) -> float:
        """The wall part of this replica's hybrid logical clock, in seconds."""
        return self._replica.hlc.last.wall / 1000

    @property
    def live_keys(self) -> int:
        """Keys a read would find (what ``get_stats()["keys_stored"]`` says, without the rest)."""
        return self._replica.live_keys

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
                body = messages.encode_push(batch)
                for node_id, address in self._peers.items():
                    if self.admits(node_id):
                        self.transport.send(address, messages.PUSH, body)
                self.stats["pushes_sent"] += 1

    def _batches(self, keys: list[str], max_keys: int
                 ) -> Iterator[list[tuple[str, replica.KeyState]]]:
        """Lists of (key, state) of at most ``max_keys`` keys and ~MESSAGE_BUDGET bytes."""
        states = self._replica.states
        batch: list[tuple[str, replica.KeyState]] = []
        size = 0
        for k in keys:
            st = states.get(k)
            if st is None:
                continue
            n = _state_size(st)
            if batch and (len(batch) >= max_keys or size + n > MESSAGE_BUDGET):
                yield batch
                batch, size = [], 0
            batch.append((k, st))
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
        self._refuse(sender, messages.PUSH)
        self.stats["push_messages_received"] += 1
        push = messages.decode_push(body)
        await self._merge(self._accepted(push.states, sender), sender, durable=False)

    def _accepted(self, received: messages.States, sender: str) -> dict[str, replica.KeyState]:
        """The valid states a peer sent; corrupt ones were dropped: count and log them."""
        for why in received.rejected:
            self.stats["rejected_values"] += 1
            log.warning("replication: rejected a state from %s: %s", sender, why)
        return received.states

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
            met = [p for p in self._first_contact if p in self._peers and self.admits(p)]
            self._first_contact.clear()
            peers = sorted(p for p in self._peers if self.admits(p))
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
        if address is None or self.transport is None or not self.admits(peer_id):
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
        descent = antientropy.Descent(self._replica.tree)
        while (req := descent.next_request()) is not None:
            reply = await self._call(address, peer_id, messages.DIGEST,
                                     messages.encode_digest_request(req), counter)
            descent.on_reply(messages.decode_digest_reply(reply, req))
        return descent.differing_keys

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
            raw = await self._call(address, peer_id, messages.FETCH,
                                   messages.encode_fetch_request(ours, want), counter)
            reply = messages.decode_fetch_reply(raw, want)
            todo += list(reply.more)  # theirs that did not fit: ask again
            repaired += await self._merge(self._accepted(reply.states, peer_id), peer_id)
            for key, context in reply.collected.items():
                self._replica.peer_collected(peer_id, key, context)
        return repaired

    async def _on_digest(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        self._refuse(sender, messages.DIGEST)
        req = messages.decode_digest_request(body)
        reply = antientropy.answer_digest(self._replica.tree, req)
        return messages.encode_digest_reply(reply, entries=req.entries)

    async def _on_fetch(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        self._refuse(sender, messages.FETCH)
        req = messages.decode_fetch_request(body)
        await self._merge(self._accepted(req.states, sender), sender)
        have = [k for k in req.want if k in self._replica.states]
        batch = next(self._batches(have, len(have)), []) if have else []
        sent = {k for k, _ in batch}
        return messages.encode_fetch_reply(batch, [k for k in have if k not in sent],
                                           self._replica.collected_contexts(req.want))


def _state_of(raw: object) -> replica.KeyState:
    """The state one incoming value stands for, held to every check ``_parse_value`` makes."""
    if isinstance(raw, values.ReplicatedValue) and raw.resolved_from:
        return updates.state_of(raw)
    return replica.KeyState.single(_parse_value(raw))


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
