"""RaftConsensus: the asyncio shell around the pure Raft core (``core.raft``).

The shell owns the clock (a ticker), the disk (``storage.DurableStore``), the
network (``transport.peer.PeerTransport``, or an in-process hub when neither
``bind_address`` nor ``transport`` is given) and the application callbacks.
Every input (peer message, tick, proposal, admin call) lands in one inbox;
a single loop task steps the core with everything queued, then carries out
each ``Ready`` in the documented order: leader appends out, the write queued
to the disk thread (one atomic, fsynced transaction; consecutive ones share an
fsync), committed entries applied, advance; a Ready's replies leave only once
its write is durable. Proposals that arrive meanwhile wait in the inbox and go
out together in the next append: batching comes from latency, with no timer.

Wiring: ``raft.*`` message kinds over ``transport.send`` (one-way); the apply
callback gets each committed command (any msgpack-able value) once, in log
order, and again after a restart for entries after the last snapshot (so a
state machine is either rebuilt from the log or restored by the snapshot
callbacks). ``NotLeaderError`` carries ``leader_id`` and ``leader_address`` for
redirects; ``MembershipError.code`` is ``exists``, ``not_member``, ``busy``,
``not_learner``, ``last_voter``, ``no_target``, ``transfer_failed`` (the chosen
voter did not take over within an election timeout; this node is still the leader),
``not_caught_up`` (a learner did not catch up in time; it stays a learner) or
``removed`` (a learner was removed while its addition waited for it).

The inbox is bounded (``max_inbox``): when the loop falls that far behind (a slow
disk or apply callback), peer messages are dropped (Raft tolerates loss; counted
in ``messages_dropped``) and proposals, reads and admin calls raise
``OverloadedError`` (counted in ``proposals_refused``) instead of queueing.

Durable layout in ``<storage_path>/raft.db``: namespace ``raft`` holds
``hard_state`` (term, vote and commit in one row, so one atomic write) and
``snapshot``; namespace ``raft.log`` holds one row per entry keyed by index.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import random
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from . import raft_storage, storage
from .core.raft import config as rconfig
from .core.raft import messages as rmsg
from .core.raft import node as rnode
from .core.raft import recovery
from .transport import peer, tls

log = logging.getLogger(__name__)

T = TypeVar("T")
ApplyCallback = Callable[[Any], Awaitable[Any] | Any]
TakeSnapshot = Callable[[], bytes]
RestoreSnapshot = Callable[[bytes], Awaitable[None] | None]

_MAX_WRITES_IN_FLIGHT = 8


class NotLeaderError(RuntimeError):
    """A leader-only call reached a non-leader; says where the leader is, if known."""

    def __init__(self, leader_id: str | None, leader_address: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id} at {leader_address})")
        self.leader_id = leader_id
        self.leader_address = leader_address


class OverloadedError(RuntimeError):
    """The node is too far behind to queue more work; nothing was proposed. Retry later."""


class MembershipError(ValueError):
    """A membership change that cannot be made; ``code``: exists, not_member, busy, ..."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Proposal:
    data: bytes
    request_id: str | None
    fut: asyncio.Future[bool]
    deadline: float  # loop time after which the caller gets False (outcome unknown)


@dataclass(frozen=True, slots=True)
class _Persisted:
    index: int
    term: int


@dataclass(slots=True)
class _Admin:
    fn: Callable[[rnode.RaftNode], Any]
    fut: asyncio.Future[Any]


class _LocalHub:
    """In-process delivery between RaftConsensus objects on one event loop (no network)."""

    members: dict[str, RaftConsensus] = {}

    @classmethod
    def send(cls, msg: rmsg.Message) -> None:
        target = cls.members.get(msg.to)
        if target is not None:
            kind, body = rmsg.to_wire(msg)
            asyncio.get_running_loop().call_soon(target._receive, kind, msg.frm, body)


def ticks_for(election_timeout_ms: tuple[int, int], heartbeat_interval_ms: int
              ) -> tuple[float, rconfig.RaftConfig]:
    """The tick length (seconds) and the core's config for the spec's millisecond settings."""
    lo, hi = election_timeout_ms
    if not 0 < heartbeat_interval_ms < lo <= hi:
        raise ValueError("need 0 < heartbeat_interval_ms < election_timeout_ms[0] <= [1]")
    tick_ms = min(10.0, heartbeat_interval_ms / 2)
    cfg = rconfig.RaftConfig(
        election_ticks_min=max(2, math.ceil(lo / tick_ms)),
        election_ticks_max=max(2, math.ceil(hi / tick_ms)),
        heartbeat_ticks=max(1, round(heartbeat_interval_ms / tick_ms)),
    )
    return tick_ms / 1000, cfg


_OWNERS: weakref.WeakKeyDictionary[peer.PeerTransport, RaftConsensus] = (
    weakref.WeakKeyDictionary())


def _handler(t: peer.PeerTransport, kind: str) -> Callable[[str, dict[str, Any]], None]:
    ref = weakref.ref(t)

    def handle(sender: str, body: dict[str, Any]) -> None:
        tr = ref()
        owner = _OWNERS.get(tr) if tr is not None else None
        if owner is not None:
            owner._receive(kind, sender, body)
    return handle


class RaftConsensus:
    def __init__(
        self,
        node_id: str,
        cluster_nodes: list[str],
        election_timeout_ms: tuple[int, int] = (150, 300),
        heartbeat_interval_ms: int = 50,
        *,
        bind_address: str | None = None,
        peers: dict[str, str] | None = None,
        storage_path: str | Path | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        transport: peer.PeerTransport | None = None,
        join: bool = False,
        fsync: bool = True,
        snapshot_threshold: int = 20_000,
        max_inbox: int = 10_000,
        advertise_address: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if not join and node_id not in cluster_nodes:
            raise ValueError(f"cluster_nodes must include this node ({node_id!r}) unless join=True")
        if snapshot_threshold < 1:
            raise ValueError("snapshot_threshold must be positive")
        if max_inbox < 1:
            raise ValueError("max_inbox must be positive")
        self.max_inbox = max_inbox
        self.node_id = node_id
        self.cluster_nodes = list(cluster_nodes)
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._tick_s, self._config = ticks_for(election_timeout_ms, heartbeat_interval_ms)
        self.peers = dict(peers or {})
        self.join = join
        self.snapshot_threshold = snapshot_threshold
        self._storage_path = Path(storage_path) if storage_path is not None else None
        self._fsync = fsync
        self._tls = tls.TLSFiles.optional(tls_cert, tls_key, tls_ca)
        self._bind_address = bind_address
        self._advertise = advertise_address
        self._transport = transport
        self._owns_transport = transport is None and bind_address is not None
        self._rng = rng or random.Random()
        self._store: storage.DurableStore | None = None
        self._node: rnode.RaftNode | None = None
        self._apply_cb: ApplyCallback | None = None
        self._take: TakeSnapshot | None = None
        self._restore: RestoreSnapshot | None = None
        self._inbox: deque[tuple[str, str, dict[str, Any]] | _Proposal | _Admin | _Persisted
                           ] = deque()
        self._writes: deque[asyncio.Task[None]] = deque()  # in flight, oldest first
        self._ticks = 0
        self._logged_leader: str | None = None
        self._wake = asyncio.Event()
        # index -> (term, future, deadline): resolved when that index is applied
        self._waiters: dict[int, tuple[int, asyncio.Future[bool], float]] = {}
        self._config_lock = asyncio.Lock()  # one configuration change at a time
        self._next_sweep = 0.0
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_wait: list[tuple[int, asyncio.Future[int]]] = []
        self._watchers: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._failed: BaseException | None = None
        self._disk_last = 0
        self._self_address: str | None = None
        self.stats = {"proposals": 0, "applied": 0, "writes": 0, "messages_sent": 0,
                      "messages_received": 0, "messages_rejected": 0, "snapshots_taken": 0,
                      "snapshots_installed": 0, "apply_errors": 0, "messages_dropped": 0,
                      "proposals_refused": 0}

    # -- configuration -------------------------------------------------------------------------

    def register_apply_callback(self, callback: ApplyCallback) -> None:
        """``callback(command)`` (sync or async) runs for each committed command, in log order.

        Register before ``start()`` to also see the entries replayed after a restart.
        """
        self._apply_cb = callback

    def register_snapshot_callbacks(self, take: TakeSnapshot, restore: RestoreSnapshot) -> None:
        """Let Raft compact its log: ``take()`` serializes the state machine as of the last
        applied command; ``restore(data)`` replaces it (on restart or when a leader sends a
        snapshot). Without them the log is never compacted."""
        self._take, self._restore = take, restore

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._failed, self._ticks, self._disk_last = None, 0, 0
        if self._owns_transport:
            self._transport = peer.PeerTransport(
                self.node_id, self._bind_address, self._tls, insecure=self._tls is None)
            await self._transport.start()
        self._register_handlers()
        self._self_address = self._advertise or (
            self._transport.address if self._transport is not None else None)
        if self._storage_path is not None:
            self._store = storage.DurableStore(self._storage_path / "raft.db", fsync=self._fsync)
        self._node = self._load()
        snap = self._node.log.snapshot
        if snap is not None and snap.index > 0:
            await self._restore_app(snap)
        if self._transport is None:
            _LocalHub.members[self.node_id] = self
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"raft:{self.node_id}"),
                       loop.create_task(self._ticker(), name=f"raft-tick:{self.node_id}")]
        if self._node.conf.voters == {self.node_id}:
            await self._call(lambda n: n.campaign())
            with contextlib.suppress(TimeoutError):
                await self._wait_until(lambda: self.is_leader, 5.0)

    async def stop(self) -> None:
        if not self._running and not self._tasks:
            return  # never started, or stopped already (a failed node still needs closing)
        self._running = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if _LocalHub.members.get(self.node_id) is self:
            del _LocalHub.members[self.node_id]
        await self._flush_writes()
        if self._store is not None and self._node is not None and self._failed is None:
            # The commit index is persisted only along with other state, so it trails; a
            # clean stop records the latest, which offline recovery keeps as committed.
            with contextlib.suppress(storage.StorageError):
                await self._store.commit([raft_storage.hard_state_row(self._node.hard_state())])
        self._fail_all()
        if self._owns_transport and self._transport is not None:
            await self._transport.stop()
            self._transport = None
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None

    def _fail_all(self) -> None:
        for _, fut, _ in self._waiters.values():
            if not fut.done():
                fut.set_result(False)
        self._waiters.clear()
        err = NotLeaderError(self.leader_id, self.leader_address())
        for rfut in [*self._reads.values(), *(f for _, f in self._read_wait)]:
            if not rfut.done():
                rfut.set_exception(err)
        self._reads.clear()
        self._read_wait.clear()
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, (_Proposal, _Admin)) and not item.fut.done():
                if isinstance(item, _Proposal):
                    item.fut.set_result(False)
                else:
                    item.fut.set_exception(RuntimeError("raft stopped"))
        self._notify()

    # -- public API ----------------------------------------------------------------------------

    async def append_entry(self, command: Any, request_id: str | None = None,
                           timeout: float = 30.0) -> bool:
        """Replicate ``command``; True once a majority committed it and it was applied here.

        False on a non-leader, or when the outcome is not known in ``timeout`` (then
        retry with the same ``request_id`` to have it applied exactly once).
        """
        try:
            data = msgpack.packb(command, use_bin_type=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"command is not serializable: {exc}") from None
        if not self._running or self._node is None or not self._node.is_leader:
            return False
        self._check_room()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        # No timer per call (a timer heap entry each is measurable at thousands per
        # second): the loop sweeps expired waiters every few ticks instead.
        self._inbox.append(_Proposal(data, request_id, fut, loop.time() + timeout))
        self._wake.set()
        return await fut

    async def read_index(self, timeout: float = 5.0) -> int:
        """A linearizable read barrier: returns once this (leader) node has applied every
        entry committed before the call; raises ``NotLeaderError`` elsewhere."""
        async with asyncio.timeout(timeout):
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            def start(n: rnode.RaftNode) -> None:
                self._reads[n.read_index()] = fut
            await self._call(start)
            return await fut

    async def add_member(self, node_id: str, address: str, timeout: float = 60.0) -> None:
        """Add ``node_id`` as a learner, wait until it caught up, promote it to voter.

        Resumable and idempotent, so a caller whose earlier call ran out of time simply
        calls again: a learner already there is not added twice, only caught up and
        promoted, and a voter is left as it is. ``MembershipError`` ``not_caught_up`` when
        the learner has not caught up within ``timeout`` (it stays a learner), and
        ``removed`` when it is removed while this call waits for it.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(deadline):
            conf = self._require_leader_node().conf
            if node_id in conf.voters:
                return
            if node_id not in conf.learners:
                await self._change(rnode.ADD_LEARNER, node_id, address)
        # One catch-up round (thesis 4.2.1): the learner must hold everything that was
        # committed when it was added; under load it never quite matches a moving commit.
        target = self._require_leader_node().log.commit

        def caught_up() -> bool:
            n = self._require_leader_node()
            if node_id not in n.conf.learners:
                if node_id in n.conf.voters:  # promoted by a concurrent call
                    return True
                raise MembershipError("removed", f"{node_id} was removed before it caught up")
            pr = n.progress.get(node_id)
            return pr is not None and pr.match >= target
        try:
            await self._wait_until(caught_up, deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            raise MembershipError(
                "not_caught_up", f"{node_id} did not catch up within {timeout:g} s; it stays "
                "a learner, and adding it again resumes") from None
        async with asyncio.timeout_at(deadline):
            if node_id in self._require_leader_node().conf.learners:
                await self._change(rnode.PROMOTE, node_id, None)

    async def remove_member(self, node_id: str, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._change(rnode.REMOVE, node_id, None)

    async def transfer_leadership(self, target: str | None = None, timeout: float = 10.0,
                                  *, wait_for_successor: bool = True) -> str:
        """Hand leadership to ``target`` (default: the most up-to-date voter); returns the
        new leader's id once it has taken over. Without ``wait_for_successor`` it returns
        the chosen voter's id as soon as this node has stepped down (the chosen one has
        started its election): enough for a node that is leaving anyway."""
        async with asyncio.timeout(timeout):
            try:
                chosen = await self._call(lambda n: n.transfer_leader(target))
            except rnode.ConfigChangeError as exc:
                raise MembershipError(exc.code, str(exc)) from None

            def abandoned() -> bool:  # the core gives up after an election timeout
                n = self._node
                return n is not None and n.is_leader and n.lead_transferee is None

            if wait_for_successor:
                await self._wait_until(
                    lambda: self.leader_id not in (None, self.node_id) or abandoned(), None)
            else:
                await self._wait_until(lambda: not self.is_leader or abandoned(), None)
            if abandoned():
                raise MembershipError("transfer_failed", f"{chosen} did not take over within "
                                      "an election timeout; this node is still the leader")
            if not wait_for_successor:
                return chosen
            assert self.leader_id is not None
            if self.leader_id != chosen:
                log.info("leadership went to %s instead of %s", self.leader_id, chosen)
            return self.leader_id

    async def force_new_cluster(self, timeout: float = 10.0) -> recovery.Recovered:
        """Quorum is lost for good: make this node the sole voter of a new cluster.

        Runs in the loop like any admin call: the core rewrites its log in place (the
        committed prefix stays, and so does the applied state machine) and elects itself;
        the rewrite is persisted by the next Ready in one fsynced transaction. Returns
        once this node leads and has committed an entry of its own term (ReadIndex and
        writes work). ``MembershipError`` ``has_leader`` while a leader is known, and
        ``refused`` for a node without committed data or configuration.
        """
        def rewrite(n: rnode.RaftNode) -> recovery.Recovered:
            try:
                r = n.force_new_cluster(self._self_address)
            except rnode.ConfigChangeError as exc:
                raise MembershipError(exc.code, str(exc)) from None
            except ValueError as exc:
                raise MembershipError("refused", str(exc)) from None
            n.campaign()  # the sole voter wins at once; the same write carries its vote
            return r

        async with asyncio.timeout(timeout):
            async with self._config_lock:
                result = await self._call(rewrite)
            log.warning("raft %s: forced a new cluster with itself as the sole voter (kept "
                        "entries up to %d, discarded %d uncommitted; old voters: %s)",
                        self.node_id, result.truncated_after, result.discarded,
                        ", ".join(sorted(result.old_config.voters)))
            await self._wait_until(
                lambda: self._node is not None and self._node.is_leader
                and self._node.committed_in_term(), None)
            return result

    # -- backup hooks (used by backup.source) -----------------------------------------------

    async def capture_snapshot(self, freeze: Callable[[], Callable[[], bytes]] | None = None
                               ) -> rmsg.Snapshot | None:
        """The state machine as of the last applied entry, packed as a Raft snapshot (what
        log compaction stores) without compacting; None before anything was applied.

        Taken inside the loop between Readies, so the state machine holds exactly the
        entries up to the snapshot's index, all of them committed. With ``freeze`` (a cheap
        copy of the state, returning the function that packs it) only the copy is made in
        the loop, and the packing runs on a thread: the loop is not held up by it."""
        take = self._take
        if take is None:
            raise RuntimeError("no snapshot callbacks are registered")
        if freeze is None:
            return await self._call(lambda n: n.capture(take()))
        frozen = freeze

        def at_applied(n: rnode.RaftNode) -> tuple[Any, Callable[[], bytes]] | None:
            point = n.capture_point()
            return None if point is None else (point, frozen())
        got = await self._call(at_applied)
        if got is None:
            return None
        (idx, term, conf, requests), pack = got
        app = await asyncio.to_thread(pack)
        return rmsg.Snapshot(idx, term, conf, rnode.pack_snapshot(app, requests))

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Return once this node has applied ``index``; ``TimeoutError`` otherwise."""
        await self._wait_until(
            lambda: self._node is not None and self._node.log.applied >= index, timeout)

    async def _change(self, op: str, node_id: str, address: str | None) -> None:
        """Propose one configuration change and wait for its commit. Changes queue here,
        one at a time, rather than fail ``busy`` on each other; the wait for a learner to
        catch up is outside, so a removal never waits behind an addition."""
        def propose(n: rnode.RaftNode) -> tuple[int, int]:
            return n.change_config(op, node_id, address), n.term
        async with self._config_lock:
            try:
                idx, term = await self._call(propose)
            except rnode.ConfigChangeError as exc:
                raise MembershipError(exc.code, str(exc)) from None
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters[idx] = (term, fut, math.inf)
            if not await fut:
                raise NotLeaderError(self.leader_id, self.leader_address())

    def set_peer_address(self, node_id: str, address: str) -> None:
        """Tell Raft where a node listens (e.g. learned by discovery). Addresses carried by
        the membership configuration take precedence."""
        peer.split_address(address)
        self.peers[node_id] = address

    # -- views ---------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._node is not None and self._node.is_leader

    @property
    def leader_id(self) -> str | None:
        return self._node.leader_id if self._node is not None else None

    def address_of(self, node_id: str) -> str | None:
        if self._node is not None:
            addr = self._node.conf.addresses.get(node_id)
            if addr:
                return addr
        return self.peers.get(node_id)

    def leader_address(self) -> str | None:
        lid = self.leader_id
        return self.address_of(lid) if lid is not None else None

    def members(self) -> list[dict[str, Any]]:
        n = self._node
        if n is None:
            return []
        conf = n.conf
        out = []
        for mid in sorted(conf.members):
            pr = n.progress.get(mid) if n.is_leader else None
            match = n.log.persisted if mid == self.node_id else (pr.match if pr else None)
            out.append({"id": mid, "address": self.address_of(mid),
                        "voter": mid in conf.voters, "match_index": match})
        return out

    def membership_committed(self) -> bool:
        """True when the configuration ``members()`` reports is committed on this node (its
        entry is at or below ``commit_index``); False while a change is in flight."""
        return self._node is not None and self._node.conf_committed()

    def role(self) -> str:
        n = self._node
        if n is None:
            return "follower"
        if n.role in (rnode.CANDIDATE, rnode.PRE_CANDIDATE):
            return "candidate"
        if n.role == rnode.FOLLOWER and not n.promotable():
            return "learner"
        return n.role

    def get_stats(self) -> dict[str, Any]:
        n = self._node
        role = self.role()
        base: dict[str, Any] = {
            "node_id": self.node_id, "role": role, "state": role,
            "current_term": n.term if n else 0, "voted_for": n.vote if n else None,
            "leader_id": self.leader_id, "leader_address": self.leader_address(),
            "log_size": (n.log.last_index - n.log.snapshot_index) if n else 0,
            "last_log_index": n.log.last_index if n else 0,
            "last_log_term": n.log.last_term if n else 0,
            "commit_index": n.log.commit if n else 0,
            "last_applied": n.log.applied if n else 0,
            "snapshot_index": n.log.snapshot_index if n else 0,
            "cluster_size": len(n.conf.voters) if n else len(self.cluster_nodes),
            "learners": sorted(n.conf.learners) if n else [],
            "config_index": n.conf_index if n else 0,
            "membership_committed": self.membership_committed(),
            "running": self._running,
        }
        base.update(self.stats)
        return base

    # -- the loop ------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        # Ticks follow the monotonic clock, not the count of sleeps: a busy loop oversleeps,
        # and counting sleeps would stretch every timeout by the same factor.
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while True:
            await asyncio.sleep(self._tick_s)
            due = int((loop.time() - start) / self._tick_s)
            if due > sent:
                self._ticks += due - sent
                sent = due
                self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._drain()
                node = self._require_node()
                while node.has_ready():
                    await self._cycle(node)
                    self._drain()
                self._after_cycles(node)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failed fsync or a broken invariant: stop serving
            log.exception("raft %s stopped", self.node_id)
            self._failed = exc
            self._running = False
            self._fail_all()

    def _drain(self) -> None:
        if self._failed is not None:
            raise self._failed  # a write failed: nothing after it may be acknowledged
        node = self._require_node()
        props: list[_Proposal] = []
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, _Proposal):
                props.append(item)
            elif isinstance(item, _Admin):
                self._run_admin(node, item)
            elif isinstance(item, _Persisted):
                node.persisted_to(item.index, item.term)
            else:
                self._step(node, *item)
        # Ticks after the messages: when a busy loop wakes late, what arrived meanwhile
        # is evidence of a live leader (or quorum) that the overdue ticks must not outrun,
        # or a follower campaigns and a leader steps down with replies in its inbox.
        for _ in range(self._ticks):
            node.tick()
        self._ticks = 0
        if props:
            self._propose(node, props)

    def _step(self, node: rnode.RaftNode, kind: str, sender: str, body: dict[str, Any]) -> None:
        try:
            msg = rmsg.from_wire(kind, sender, self.node_id, body)
        except ValueError as exc:
            self.stats["messages_rejected"] += 1
            log.warning("dropping malformed %s from %s: %s", kind, sender, exc)
            return
        node.step(msg)

    def _run_admin(self, node: rnode.RaftNode, item: _Admin) -> None:
        if item.fut.done():
            return
        try:
            item.fut.set_result(item.fn(node))
        except (rnode.NotLeader, rnode.ProposalDropped):
            item.fut.set_exception(NotLeaderError(node.leader_id, self.leader_address()))
        except Exception as exc:
            item.fut.set_exception(exc)

    def _propose(self, node: rnode.RaftNode, props: list[_Proposal]) -> None:
        live = [p for p in props if not p.fut.done()]
        try:
            first = node.propose([p.data for p in live], [p.request_id for p in live])
        except (rnode.NotLeader, rnode.ProposalDropped):
            for p in live:
                p.fut.set_result(False)
            return
        self.stats["proposals"] += len(live)
        for k, p in enumerate(live):
            self._waiters[first + k] = (node.term, p.fut, p.deadline)

    async def _cycle(self, node: rnode.RaftNode) -> None:
        """One Ready, with asynchronous storage writes (see ``node.Ready``).

        The write is queued to the disk thread and the loop moves on: committed entries
        are applied meanwhile (they are durable on a majority already) and the next
        Ready can be prepared, so consecutive writes share fsyncs. A Ready's messages
        leave, and the core hears its entries are durable, only when its write (and so
        every earlier one: the disk thread keeps order) has completed.
        """
        rd = node.ready()
        for msg in rd.early_messages:
            self._send(msg)
        queued = self._store is not None and (rd.must_persist or bool(self._writes))
        if not queued:
            for msg in rd.messages:
                self._send(msg)
        elif rd.must_persist:
            await self._write(rd)
        else:  # a reply that may vouch for entries still being written waits behind them
            self._writes[-1].add_done_callback(functools.partial(self._written, rd))
        if rd.snapshot_received and rd.snapshot is not None:
            await self._flush_writes()
            await self._restore_app(rd.snapshot)
            self.stats["snapshots_installed"] += 1
        await self._apply(rd)
        node.advance(rd, persisted=not queued)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.ctx, None)
            if fut is not None:
                self._read_wait.append((rs.index, fut))

    async def _write(self, rd: rnode.Ready) -> None:
        assert self._store is not None
        while self._writes and self._writes[0].done():
            self._writes.popleft()
        if len(self._writes) >= _MAX_WRITES_IN_FLIGHT:
            await self._writes[0]
        task = asyncio.get_running_loop().create_task(self._store.commit(self._ops(rd)))
        task.add_done_callback(functools.partial(self._written, rd))
        self._writes.append(task)
        self.stats["writes"] += 1
        await asyncio.sleep(0)  # hand the batch to the disk thread before applying

    def _written(self, rd: rnode.Ready, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._failed = self._failed or task.exception() or RuntimeError("write cancelled")
            self._wake.set()
            return
        if self._failed is not None:
            # An earlier write failed (or the loop died): this later write may have landed,
            # but its replies vouch for the whole log prefix, which is not on disk.
            return
        for msg in rd.messages:
            self._send(msg)
        if rd.entries:
            last = rd.entries[-1]
            self._inbox.append(_Persisted(last.index, last.term))
            self._wake.set()

    async def _flush_writes(self) -> None:
        while self._writes:
            with contextlib.suppress(Exception):
                await self._writes[0]
            self._writes.popleft()

    def _after_cycles(self, node: rnode.RaftNode) -> None:
        if node.leader_id != self._logged_leader:
            # One line per change of leader: what an operator reads first after a hiccup.
            if node.leader_id is None:
                log.info("raft %s: no leader in term %d (was %s)", self.node_id, node.term,
                         self._logged_leader)
            else:
                log.info("raft %s: %s is leader in term %d", self.node_id,
                         "this node" if node.is_leader else node.leader_id, node.term)
            self._logged_leader = node.leader_id
        if self._read_wait:
            still = []
            for idx, fut in self._read_wait:
                if fut.done():
                    continue
                if node.log.applied >= idx:
                    fut.set_result(idx)
                else:
                    still.append((idx, fut))
            self._read_wait = still
        if self._reads and not node.is_leader:  # reads in progress died with our leadership
            err = NotLeaderError(node.leader_id, self.leader_address())
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(err)
            self._reads.clear()
        if (self._take is not None
                and node.log.applied - node.log.snapshot_index >= self.snapshot_threshold
                and node.compact(self._take()) is not None):
            self.stats["snapshots_taken"] += 1
            self._wake.set()
        self._sweep()
        self._notify()

    def _sweep(self) -> None:
        """Answer False to proposals whose caller's timeout passed (outcome unknown)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 0.05
        for idx, (_, fut, deadline) in list(self._waiters.items()):
            if fut.done() or deadline <= now:
                del self._waiters[idx]
                if not fut.done():
                    fut.set_result(False)

    async def _apply(self, rd: rnode.Ready) -> None:
        cb = self._apply_cb
        for e in rd.committed:
            if e.kind == rmsg.NORMAL and e.index not in rd.duplicates and cb is not None:
                try:
                    result = cb(msgpack.unpackb(e.data, raw=False))
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.stats["apply_errors"] += 1
                    log.exception("apply callback failed at index %d", e.index)
            self.stats["applied"] += 1
            w = self._waiters.pop(e.index, None)
            if w is not None and not w[1].done():
                w[1].set_result(w[0] == e.term)

    # -- persistence ---------------------------------------------------------------------------

    def _ops(self, rd: rnode.Ready) -> list[storage.Op]:
        ops, self._disk_last = raft_storage.ready_ops(rd, self._disk_last)
        return ops

    def _load(self) -> rnode.RaftNode:
        hs = rmsg.HardState()
        snap: rmsg.Snapshot | None = None
        entries: list[rmsg.Entry] = []
        if self._store is not None:
            hs, snap, entries = raft_storage.read_durable(self._store, self.node_id)
            base = snap.index if snap else 0
            self._disk_last = entries[-1].index if entries else base
        fresh = snap is None and not entries and hs == rmsg.HardState()
        bootstrap = None
        if fresh and not self.join:
            addrs = {nid: a for nid in self.cluster_nodes if (a := self.peers.get(nid))}
            me = self._self_address
            if me:
                addrs[self.node_id] = me
            bootstrap = rmsg.ClusterConfig(frozenset(self.cluster_nodes), frozenset(), addrs)
        return rnode.RaftNode(self.node_id, self._config, random.Random(self._rng.random()),
                              hard_state=hs, snapshot=snap, entries=entries, bootstrap=bootstrap)

    async def _restore_app(self, snap: rmsg.Snapshot) -> None:
        app, _ = rnode.unpack_snapshot(snap.data)
        if self._restore is not None:
            result = self._restore(app)
            if inspect.isawaitable(result):
                await result
        elif snap.index > 0:
            log.warning("snapshot %d installed but no restore callback is registered", snap.index)

    # -- messaging -----------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        """Route ``raft.*`` to us. A shared transport keeps its handlers for its life, so a
        later RaftConsensus on the same transport (a node that rejoined) takes them over."""
        t = self._transport
        if t is None:
            return
        first = t not in _OWNERS
        _OWNERS[t] = self
        if first:
            for kind in rmsg.KINDS:
                t.on(kind, _handler(t, kind))

    def _receive(self, kind: str, sender: str, body: dict[str, Any]) -> None:
        if not self._running:
            return
        self.stats["messages_received"] += 1
        if len(self._inbox) >= self.max_inbox:
            self.stats["messages_dropped"] += 1  # the sender retries: heartbeats, probes
            return
        self._learn_address(sender, body.get("a") if isinstance(body, dict) else None)
        self._inbox.append((kind, sender, body))
        self._wake.set()

    def _send(self, msg: rmsg.Message) -> None:
        self.stats["messages_sent"] += 1
        if self._transport is None:
            _LocalHub.send(msg)
            return
        addr = self.address_of(msg.to)
        if addr is None:
            log.debug("no address for %s; dropping %s", msg.to, type(msg).__name__)
            return
        kind, body = rmsg.to_wire(msg)
        if self._self_address:
            body["a"] = self._self_address  # so a joining node can answer its first probe
        self._transport.send(addr, kind, body)

    def _learn_address(self, sender: str, addr: Any) -> None:
        """Remember where an authenticated sender listens, if nothing else told us.

        A node that joins knows no addresses until the configuration reaches it, yet
        must answer the leader's first probes; every message carries its sender's
        address (the sender is the TLS identity, so it can only speak for itself)."""
        if not isinstance(addr, str) or sender in self.peers or self.address_of(sender):
            return
        try:
            peer.split_address(addr)
        except ValueError:
            return
        self.peers[sender] = addr

    # -- helpers -------------------------------------------------------------------------------

    def _require_node(self) -> rnode.RaftNode:
        if self._node is None:
            raise RuntimeError("RaftConsensus is not started")
        return self._node

    def _require_leader_node(self) -> rnode.RaftNode:
        n = self._require_node()
        if not n.is_leader:
            raise NotLeaderError(n.leader_id, self.leader_address())
        return n

    async def _call(self, fn: Callable[[rnode.RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop, between Readies (never mid-cycle)."""
        if not self._running:
            raise RuntimeError("RaftConsensus is not running")
        self._check_room()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.append(_Admin(fn, fut))
        self._wake.set()
        return await fut

    def _check_room(self) -> None:
        # Completions of our own writes (_Persisted) are never refused: only new work.
        if len(self._inbox) >= self.max_inbox:
            self.stats["proposals_refused"] += 1
            raise OverloadedError(
                f"raft {self.node_id} is overloaded ({len(self._inbox)} queued inputs, "
                f"limit {self.max_inbox}); retry later")

    def _notify(self) -> None:
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers = []

    async def _wait_until(self, pred: Callable[[], bool], timeout: float | None) -> None:
        """Re-check ``pred`` after every loop pass (ticks guarantee passes) until true."""
        async with asyncio.timeout(timeout):
            while not pred():
                if not self._running:
                    raise RuntimeError("raft stopped")
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._watchers.append(fut)
                await fut
