"""The loop of the Raft shell: inbox -> core -> Ready -> disk, network, apply.

``RaftLoop`` is the machinery under ``consensus.RaftConsensus`` (which adds the
spec's API, the lifecycle and the views). Every input (peer message, tick,
proposal, admin call) lands in one inbox; a single task steps the core with
everything queued, then carries out each ``Ready`` in the documented order:
leader appends out, the write queued to the disk thread (one atomic, fsynced
transaction; consecutive ones share an fsync), committed entries applied,
advance; a Ready's replies leave only once its write is durable. Proposals
that arrive meanwhile wait in the inbox and go out together in the next
append: batching comes from latency, with no timer.

A proposal's fate is decided by what happens to its entry, never by who
leads when the answer is built: the entry applied in the term it was
proposed in is ``Applied(index, result)`` (what the state machine returned);
another entry committed at its index means it was overwritten (``NotLeader``:
not applied); a deadline that passes, or a stop, before either is known is
``OutcomeUnknown``. A leader that loses its leadership keeps waiting: the new
leader may still commit its entries.

The inbox is bounded (``max_inbox``): when the loop falls that far behind (a
slow disk or apply callback), peer messages are dropped (Raft tolerates loss;
counted in ``messages_dropped``) and new work raises ``errors.Overloaded``
(counted in ``proposals_refused``) instead of queueing.

Why one long file: the inbox, the Ready cycle, the disk thread's hand-off, the
timer and the waiters share one invariant (a reply leaves only once what it vouches
for is durable and applied in order); split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from . import errors, raft_storage, storage
from .core import load
from .core.raft import config as rconfig
from .core.raft import messages as rmsg
from .core.raft import raft_node as rnode
from .transport import link, peer

log = logging.getLogger(__name__)

T = TypeVar("T")
ApplyCallback = Callable[[Any], Awaitable[Any] | Any]
AdmissionCallback = Callable[[frozenset[str]], None]
TakeSnapshot = Callable[[], bytes]
RestoreSnapshot = Callable[[bytes], Awaitable[None] | None]
# A cheap copy of the state machine, and the function that packs it (on a thread).
FreezeSnapshot = Callable[[], Callable[[], bytes]]

_MAX_WRITES_IN_FLIGHT = 8
_SWEEP_SECONDS = 0.05
_TIMER_SLACK = 0.001  # past a tick's boundary, so the clock has reached it when we wake
# Liveness messages go ahead of queued appends in a peer's outbox (Raft tolerates the
# reordering): a busy link must not look like a dead leader or a lost quorum.
_URGENT = (rmsg.Heartbeat, rmsg.HeartbeatResponse, rmsg.VoteRequest, rmsg.VoteResponse,
           rmsg.TimeoutNow)


@dataclass(frozen=True, slots=True)
class Applied:
    """A proposal that took effect: its entry's index, and what applying it returned
    (None for a retried request id that had been applied before)."""

    index: int
    result: Any


@dataclass(slots=True)
class _Proposal:
    data: bytes
    request_id: str | None
    fut: asyncio.Future[Applied]
    deadline: float  # loop time after which the caller hears OutcomeUnknown


@dataclass(slots=True)
class _Waiter:
    """A proposed entry whose fate the caller awaits."""

    term: int
    request_id: str | None
    fut: asyncio.Future[Applied]
    deadline: float


@dataclass(frozen=True, slots=True)
class _Persisted:
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class _PeerLost:
    node_id: str


@dataclass(slots=True)
class _Admin:
    fn: Callable[[rnode.RaftNode], Any]
    fut: asyncio.Future[Any]


_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RaftLoop]] = (
    weakref.WeakKeyDictionary())


def in_process_members() -> dict[str, RaftLoop]:
    """The shells of this event loop that run without a network (the spec's snippets)."""
    return _HUBS.setdefault(asyncio.get_running_loop(), {})


class RaftLoop:
    """The loop's state and steps; see the module docstring."""

    def __init__(self, node_id: str, election_timeout_ms: tuple[int, int],
                 heartbeat_interval_ms: int, peer_link: link.PeerLink, *,
                 peers: dict[str, str], max_inbox: int, snapshot_threshold: int,
                 max_inflight_appends: int) -> None:
        self.node_id = node_id
        self._tick_s, self._config = rconfig.ticks_for(election_timeout_ms,
                                                       heartbeat_interval_ms,
                                                       max_inflight_appends)
        self._link = peer_link
        self.peers = dict(peers)
        self.max_inbox = max_inbox
        self.snapshot_threshold = snapshot_threshold
        self._node: rnode.RaftNode | None = None
        self._store: storage.DurableStore | None = None
        self._apply_cbs: list[ApplyCallback] = []
        self._take: TakeSnapshot | None = None
        self._restore: RestoreSnapshot | None = None
        self._freeze: FreezeSnapshot | None = None
        self._compaction: asyncio.Task[None] | None = None
        self._inbox: deque[tuple[str, str, dict[str, Any]] | _Proposal | _Admin | _Persisted
                           | _PeerLost] = deque()
        self._writes: deque[asyncio.Task[None]] = deque()  # in flight, oldest first
        # The clock: ticks follow the monotonic clock from _clock_origin; one timer is armed
        # for the next tick the core needs (none while it needs none), so an idle node
        # sleeps between heartbeats instead of waking every tick.
        self._clock_origin = 0.0
        # The loop we run on, from start: on 3.11 every asyncio.get_running_loop() is a
        # getpid() system call, and the hot paths (proposals, ticks) ask thousands of
        # times a second.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks_sent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._timer_late: float | None = None  # how late the last timer ran (seconds)
        self.loop_lag_ms = 0.0  # moving average of that lateness: this node's local health
        self._logged_leader: str | None = None
        self._wake = asyncio.Event()
        self._waiters: dict[int, _Waiter] = {}  # by log index
        self._next_sweep = 0.0
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_wait: list[tuple[int, asyncio.Future[int]]] = []
        self._watchers: list[asyncio.Future[None]] = []
        self._admission_cbs: list[AdmissionCallback] = []
        self._admitted: frozenset[str] | None = None
        self._running = False
        self._failed: BaseException | None = None
        self._last_pass = time.monotonic()  # when the loop last ran (liveness)
        self._leaderless_since: float | None = time.monotonic()
        self._disk_last = 0
        self._self_address: str | None = None
        self.stats = {"proposals": 0, "applied": 0, "writes": 0, "messages_sent": 0,
                      "messages_received": 0, "messages_rejected": 0, "snapshots_taken": 0,
                      "snapshots_installed": 0, "apply_errors": 0, "messages_dropped": 0,
                      "proposals_refused": 0}
        if peer_link.transport is not None:
            for kind in rmsg.KINDS:
                peer_link.transport.on(kind, functools.partial(self._receive, kind))
            peer_link.transport.on_peer_lost(self._peer_lost)

    # -- addresses --------------------------------------------------------------------------

    def address_of(self, node_id: str) -> str | None:
        if self._node is not None:
            addr = self._node.conf.addresses.get(node_id)
            if addr:
                return addr
        return self.peers.get(node_id)

    def leader_address(self) -> str | None:
        lid = self._node.leader_id if self._node is not None else None
        return self.address_of(lid) if lid is not None else None

    def not_leader(self) -> errors.NotLeader:
        lid = self._node.leader_id if self._node is not None else None
        return errors.NotLeader(lid, self.leader_address())

    # -- the loop ---------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _start_clock(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock_origin = self._loop.time()
        self._ticks_sent = 0
        self._stop_clock()

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at, self._timer_late = None, math.inf, None

    def _timer_fired(self) -> None:
        late = max(0.0, self._running_loop().time() - self._timer_at)
        self._timer, self._timer_at = None, math.inf
        self._timer_late = late if self._timer_late is None else max(self._timer_late, late)
        self._wake.set()

    def _deliver_ticks(self, node: rnode.RaftNode) -> None:
        """The ticks the clock says have passed; first, how late our own timer ran.

        Ticks follow the monotonic clock, not the count of wake-ups: a busy loop wakes
        late, and counting wake-ups would stretch every timeout by the same factor. How
        late it woke is what the core's local-health rule is fed."""
        if self._timer_late is not None:
            late, self._timer_late = self._timer_late, None
            node.note_lag(int(late / self._tick_s))
            self.loop_lag_ms = load.ewma(self.loop_lag_ms, late * 1000)
        due = int((self._running_loop().time() - self._clock_origin) / self._tick_s)
        for _ in range(due - self._ticks_sent):
            node.tick()
        self._ticks_sent = max(self._ticks_sent, due)

    def _arm_timer(self, node: rnode.RaftNode) -> None:
        """Wake for the next tick the core needs, or sooner to sweep expired waiters."""
        loop = self._running_loop()
        at = self._clock_origin + (self._ticks_sent + node.ticks_until_due()) * self._tick_s
        at += _TIMER_SLACK
        if self._waiters:
            at = min(at, loop.time() + _SWEEP_SECONDS)
        if at < self._timer_at - _TIMER_SLACK:  # a later timer armed already is kept
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = loop.call_at(at, self._timer_fired), at

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._last_pass = time.monotonic()
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
            self._fail_all("raft stopped after an internal failure")

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
            elif isinstance(item, _PeerLost):
                node.peer_unreachable(item.node_id)
            else:
                self._step(node, *item)
        # Ticks after the messages: when a busy loop wakes late, what arrived meanwhile
        # is evidence of a live leader (or quorum) that the overdue ticks must not outrun,
        # or a follower campaigns and a leader steps down with replies in its inbox.
        self._deliver_ticks(node)
        if props:
            self._propose(node, props)

    def _step(self, node: rnode.RaftNode, kind: str, sender: str, body: dict[str, Any]) -> None:
        try:
            msg = rmsg.from_wire(kind, sender, self.node_id, body)
        except ValueError as exc:
            self.stats["messages_rejected"] += 1
            log.warning("dropping malformed %s from %s: %s", kind, sender, exc)
            return
        if node.step(msg):  # only a sender the core admitted may tell us where it listens
            self._learn_address(sender, body.get("a"))

    def _run_admin(self, node: rnode.RaftNode, item: _Admin) -> None:
        if item.fut.done():
            return
        try:
            item.fut.set_result(item.fn(node))
        except errors.NotLeader:
            item.fut.set_exception(self.not_leader())  # with the leader's address
        except Exception as exc:
            item.fut.set_exception(exc)

    def _propose(self, node: rnode.RaftNode, props: list[_Proposal]) -> None:
        live = [p for p in props if not p.fut.done()]
        try:
            first = node.propose([p.data for p in live], [p.request_id for p in live])
        except errors.FederationError as exc:  # nothing was appended
            refusal = self.not_leader() if isinstance(exc, errors.NotLeader) else exc
            for p in live:
                p.fut.set_exception(refusal)
            return
        self.stats["proposals"] += len(live)
        for k, p in enumerate(live):
            self._waiters[first + k] = _Waiter(node.term, p.request_id, p.fut, p.deadline)

    async def _cycle(self, node: rnode.RaftNode) -> None:
        """One Ready, with asynchronous storage writes (see ``raft_node.Ready``).

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
            self._settle_waiters_below(rd.snapshot.index, node)
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
        ops, self._disk_last = raft_storage.ready_ops(rd, self._disk_last)
        task = self._running_loop().create_task(self._store.commit(ops))
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
            with contextlib.suppress(Exception):  # a failure is recorded by _written
                await self._writes[0]
            self._writes.popleft()

    def _after_cycles(self, node: rnode.RaftNode) -> None:
        self._note_admission(node)
        if node.leader_id is None:
            self._leaderless_since = self._leaderless_since or time.monotonic()
        else:
            self._leaderless_since = None
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
            err = self.not_leader()
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(err)
            self._reads.clear()
        if (self._take is not None and self._compaction is None
                and node.log.applied - node.log.snapshot_index >= self.snapshot_threshold):
            if self._freeze is not None:
                # Packing a large state takes long enough to starve heartbeats: only the
                # copy is made here, the packing runs on a thread (see _compact).
                self._compaction = asyncio.get_running_loop().create_task(self._compact())
            elif node.compact(self._take()) is not None:
                self.stats["snapshots_taken"] += 1
                self._wake.set()
        self._sweep()
        self._notify()
        self._arm_timer(node)

    def _note_admission(self, node: rnode.RaftNode) -> None:
        """Tell the other components when who may speak to us changed (see
        ``RaftNode.admitted``): gossip and replication follow Raft's membership."""
        admitted = node.admitted()
        if admitted == self._admitted:
            return
        self._admitted = admitted
        for cb in self._admission_cbs:
            try:
                cb(admitted)
            except Exception:
                log.exception("an admission callback failed")

    def _sweep(self) -> None:
        """Proposals whose caller's deadline passed: their outcome is unknown."""
        now = asyncio.get_running_loop().time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_SECONDS
        for idx, w in list(self._waiters.items()):
            if w.fut.done() or w.deadline <= now:
                del self._waiters[idx]
                if not w.fut.done():
                    w.fut.set_exception(errors.OutcomeUnknown())

    async def _capture(self, freeze: FreezeSnapshot) -> rmsg.Snapshot | None:
        """The state machine as of the last applied entry, as a Raft snapshot: a cheap copy
        in the loop, between Readies (so it holds exactly the entries up to its index), and
        the packing on a thread."""
        def at_applied(n: rnode.RaftNode) -> tuple[Any, Callable[[], bytes]] | None:
            point = n.capture_point()
            return None if point is None else (point, freeze())
        got = await self._call(at_applied)
        if got is None:
            return None
        (idx, term, conf, requests), pack = got

        def pack_all() -> bytes:
            return rnode.pack_snapshot(pack(), requests)
        return rmsg.Snapshot(idx, term, conf, await asyncio.to_thread(pack_all))

    async def _compact(self) -> None:
        """Log compaction in the background: capture, then drop the log up to it."""
        assert self._freeze is not None
        try:
            snap = await self._capture(self._freeze)
            if snap is not None and await self._call(lambda n: n.compact_to(snap)):
                self.stats["snapshots_taken"] += 1
        except errors.FederationError as exc:  # stopping, or overloaded: the next pass retries
            log.debug("raft %s: compaction skipped: %s", self.node_id, exc)
        finally:
            self._compaction = None

    async def _apply(self, rd: rnode.Ready) -> None:
        for e in rd.committed:
            result = None
            if e.kind == rmsg.NORMAL and e.index not in rd.duplicates and self._apply_cbs:
                command = msgpack.unpackb(e.data, raw=False)
                for k, cb in enumerate(self._apply_cbs):
                    try:
                        out = cb(command)
                        if inspect.isawaitable(out):
                            out = await out
                    except Exception:
                        self.stats["apply_errors"] += 1
                        log.exception("apply callback failed at index %d", e.index)
                        continue
                    if k == 0:  # the first callback's result is the proposer's
                        result = out
            self.stats["applied"] += 1
            w = self._waiters.pop(e.index, None)
            if w is None or w.fut.done():
                continue
            if w.term == e.term:
                w.fut.set_result(Applied(e.index, result))
            else:  # another leader's entry took the index: ours was never committed
                w.fut.set_exception(self.not_leader())

    def _settle_waiters_below(self, index: int, node: rnode.RaftNode) -> None:
        """A snapshot replaced the entries up to ``index``: the request table it carries
        tells which of our proposals were applied (those without an id stay unknown)."""
        for idx in [i for i in self._waiters if i <= index]:
            w = self._waiters.pop(idx)
            if w.fut.done():
                continue
            if w.request_id is not None and w.request_id in node.requests:
                w.fut.set_result(Applied(idx, None))
            else:
                w.fut.set_exception(errors.OutcomeUnknown())

    async def _restore_app(self, snap: rmsg.Snapshot) -> None:
        app, _ = rnode.unpack_snapshot(snap.data)
        if self._restore is not None:
            result = self._restore(app)
            if inspect.isawaitable(result):
                await result
        elif snap.index > 0:
            log.warning("snapshot %d installed but no restore callback is registered", snap.index)

    def _fail_all(self, why: str) -> None:
        """Stopping: every caller hears what became of its request, as far as we know."""
        for w in self._waiters.values():
            if not w.fut.done():
                w.fut.set_exception(errors.OutcomeUnknown(
                    f"{why} before this write was decided: it may or may not take effect; "
                    "retry it with the same Idempotency-Key"))
        self._waiters.clear()
        for rfut in [*self._reads.values(), *(f for _, f in self._read_wait)]:
            if not rfut.done():
                rfut.set_exception(errors.Unavailable(why))
        self._reads.clear()
        self._read_wait.clear()
        while self._inbox:  # never reached the core: not done
            item = self._inbox.popleft()
            if isinstance(item, _Proposal | _Admin) and not item.fut.done():
                item.fut.set_exception(errors.Unavailable(why))
        self._notify()

    # -- messaging --------------------------------------------------------------------------

    def _receive(self, kind: str, sender: str, body: dict[str, Any]) -> None:
        if not self._running:
            return
        self.stats["messages_received"] += 1
        if len(self._inbox) >= self.max_inbox:
            self.stats["messages_dropped"] += 1  # the sender retries: heartbeats, probes
            return
        self._inbox.append((kind, sender, body))
        self._wake.set()

    def _peer_lost(self, node_id: str) -> None:
        """The transport saw ``node_id``'s connection drop: the core decides what it means."""
        if self._running:
            self._inbox.append(_PeerLost(node_id))
            self._wake.set()

    def _send(self, msg: rmsg.Message) -> None:
        self.stats["messages_sent"] += 1
        transport = self._link.transport
        if transport is None:
            target = in_process_members().get(msg.to)
            if target is not None:
                kind, body = rmsg.to_wire(msg)
                asyncio.get_running_loop().call_soon(target._receive, kind, msg.frm, body)
            return
        addr = self.address_of(msg.to)
        if addr is None:
            log.debug("no address for %s; dropping %s", msg.to, type(msg).__name__)
            return
        kind, body = rmsg.to_wire(msg)
        if self._self_address:
            body["a"] = self._self_address  # so a joining node can answer its first probe
        transport.send(addr, kind, body, urgent=isinstance(msg, _URGENT))

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

    # -- liveness ---------------------------------------------------------------------------

    @property
    def failed(self) -> BaseException | None:
        """The internal failure (a failed write, a broken invariant) that stopped the loop."""
        return self._failed

    def seconds_since_progress(self) -> float:
        """How long ago the loop last ran (its timer wakes it at least once per election
        timeout, however widened, while it lives)."""
        return time.monotonic() - self._last_pass if self._running else 0.0

    def leaderless_seconds(self) -> float:
        """How long this node has known no leader (0 while it knows one)."""
        since = self._leaderless_since
        return time.monotonic() - since if since is not None and self._running else 0.0

    # -- helpers ----------------------------------------------------------------------------

    def _require_node(self) -> rnode.RaftNode:
        if self._node is None:
            raise errors.Unavailable(f"raft {self.node_id} is not started")
        return self._node

    async def _call(self, fn: Callable[[rnode.RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop, between Readies (never mid-cycle)."""
        if not self._running:
            raise errors.Unavailable(f"raft {self.node_id} is not running")
        self._check_room()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.append(_Admin(fn, fut))
        self._wake.set()
        return await fut

    def _check_room(self) -> None:
        # Completions of our own writes (_Persisted) are never refused: only new work.
        if len(self._inbox) >= self.max_inbox:
            self.stats["proposals_refused"] += 1
            raise errors.Overloaded(
                f"raft {self.node_id} is overloaded ({len(self._inbox)} queued inputs, "
                f"limit {self.max_inbox}); retry later")

    def _notify(self) -> None:
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers = []

    async def _wait_until(self, pred: Callable[[], bool], timeout: float | None) -> None:
        """Re-check ``pred`` after every loop pass until true (every change of the core's
        state happens in a pass)."""
        async with asyncio.timeout(timeout):
            while not pred():
                if not self._running:
                    raise errors.Unavailable(f"raft {self.node_id} stopped")
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._watchers.append(fut)
                await fut
