"""``GossipMesh``: SWIM membership and state dissemination over the mutual-TLS peer transport.

A thin asyncio shell around ``core.swim.swim_node.SwimNode``: one timer
(``loop.call_at`` at the core's next deadline), one handler per ``swim.*``
message kind, and a dispatcher task that hands state and membership changes
to the application's callbacks in order. The protocol lives in the core.

Message kinds, all one-way over the peer streams: ``swim.ping``, ``swim.ack``,
``swim.ping_req``, ``swim.nack``, ``swim.gossip``, ``swim.sync``. (A probe was once
a call, ``swim.ping_call``, whose HTTP reply was the ack; two messages on streams
that are open anyway cost a fraction of an HTTP request, so probes go one-way, and
the call is still answered for peers of that older version.) A newly seen member's
connection is opened at once (``peer.ping``) so the first gossip to it does not
wait for a TLS handshake.

Three ways to run, as every component here (``transport.link``): a shared
``transport=``, its own with ``bind_address=``, or neither (in-process only, the
spec's snippets: nothing is sent).

In a cluster (the node daemon) ``set_admitted`` names the members the cluster's
membership admits, and the core hears only them (``SwimNode.admit``); a
standalone mesh hears every node whose certificate carries the node role.

``storage_path`` keeps the incarnation number (raised on every start, so a
restarted node outbids its own old death at once) and the known peers (so a
restarted node rejoins without discovery) in ``<storage_path>/mesh.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import storage
from .core import clocks
from .core.swim import config as swim_config
from .core.swim import membership, messages, swim_node
from .core.swim.membership import Status
from .transport import link, peer

log = logging.getLogger(__name__)

StateCallback = Callable[..., Awaitable[None] | None]
MembershipCallback = Callable[[str, str, str], Awaitable[None] | None]
ClockCallback = Callable[[str, clocks.Sample], None]
WALL_KEY = "w"  # the answering member's wall clock on a probe's answer
_PROBES_REMEMBERED = 64  # probes awaiting their ack, for the clock sample it brings

# Probes of older versions: a call whose HTTP reply is the ack (still answered).
PING_CALL = "swim.ping_call"

_NS = "mesh"
_NS_PEERS = "mesh.peers"

# The original module's names: a gossip message is one of the SWIM messages here, and a
# peer's state is its membership record (id, address, incarnation, status).
GossipMessage = messages.Message
PeerState = membership.Member


class GossipMessageType(enum.StrEnum):
    """The message kinds on the wire, under the original names where one fits."""

    PING = "swim.ping"
    ACK = "swim.ack"
    PING_REQ = "swim.ping_req"
    NACK = "swim.nack"
    GOSSIP = "swim.gossip"
    SYNC = "swim.sync"  # push-pull: both sides' members and state
    PONG = "swim.ack"
    PUSH = "swim.gossip"
    PULL = "swim.sync"
    PUSH_PULL = "swim.sync"


@dataclass(frozen=True, slots=True)
class MeshConfig:
    fanout: int = 3  # members sent each gossip round
    gossip_interval_ms: float = 100  # gossip round period (only while there is news)
    sync_interval_seconds: float = 30.0  # push-pull full sync with one member (x log2 above 32)
    message_buffer_size: int = 1000  # queued updates and remembered update ids
    probe_interval_ms: float = 500  # one member probed per interval
    probe_timeout_ms: float = 250  # direct ack wait before indirect ping-req
    indirect_checks: int = 3  # members asked to ping a silent target for us
    suspicion_mult: int = 4  # suspicion lo = mult * max(1, log10 N) * probe interval
    suspicion_max_timeout_mult: int = 6  # Lifeguard: a lone suspicion waits up to this x lo
    retransmit_mult: int = 4  # each update sent mult * ceil(log10(N+1)) times per member
    awareness_max_multiplier: int = 8  # Lifeguard: a slow node stretches its probing up to this
    late_timer_ms: float = 250  # our timer this late counts against our own health
    dead_node_ttl_seconds: float = 60.0  # dead/left members remembered (and gossiped to)
    max_piggyback: int = 32  # updates carried by one message
    seed: int | None = None  # seed the member's random choices (tests, simulations)
    # The original module's fields that SWIM has no place for (see docs/migration.md).
    peer_timeout_seconds: float | None = None  # no effect: probes and suspicion decide
    max_ttl: int | None = None  # no effect: updates are resent retransmit_mult x log(N) times
    enable_anti_entropy: bool = True  # push-pull sync cannot be turned off

    def __post_init__(self) -> None:
        if not self.enable_anti_entropy:
            raise ValueError("anti-entropy cannot be turned off here: it repairs the gossip "
                             "that loss drops. To sync less often, raise sync_interval_seconds")
        for name, governed_by in (("peer_timeout_seconds", "probe_interval_ms, probe_timeout_ms "
                                   "and suspicion_mult"), ("max_ttl", "retransmit_mult")):
            if getattr(self, name) is not None:
                log.info("MeshConfig.%s has no effect: SWIM's %s govern it", name, governed_by)
        self.swim()  # validates, with the core's messages

    def swim(self) -> swim_config.SwimConfig:
        return swim_config.SwimConfig(
            probe_interval=self.probe_interval_ms / 1000,
            probe_timeout=self.probe_timeout_ms / 1000,
            indirect_checks=self.indirect_checks,
            suspicion_mult=self.suspicion_mult,
            suspicion_max_timeout_mult=self.suspicion_max_timeout_mult,
            retransmit_mult=self.retransmit_mult,
            gossip_interval=self.gossip_interval_ms / 1000,
            fanout=self.fanout,
            sync_interval=self.sync_interval_seconds,
            message_buffer_size=self.message_buffer_size,
            max_piggyback=self.max_piggyback,
            awareness_max_multiplier=self.awareness_max_multiplier,
            late_timer_threshold=self.late_timer_ms / 1000,
            dead_node_ttl=self.dead_node_ttl_seconds,
            update_ttl=self.dead_node_ttl_seconds,
        )

    @classmethod
    def lan(cls, **overrides: Any) -> MeshConfig:
        """One data centre or Kubernetes cluster: the defaults."""
        return cls(**overrides)

    @classmethod
    def local(cls, **overrides: Any) -> MeshConfig:
        """One machine (tests, a local cluster): short timings, quick detection."""
        base: dict[str, Any] = dict(
            gossip_interval_ms=50, sync_interval_seconds=5.0, probe_interval_ms=300,
            probe_timeout_ms=150, suspicion_mult=3, dead_node_ttl_seconds=20.0,
        )
        base.update(overrides)
        return cls(**base)


class GossipMesh:
    def __init__(
        self,
        node_id: str,
        config: MeshConfig | None = None,
        *,
        bind_address: str | None = None,
        advertise_address: str | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        peer_domain: str | None = None,
        transport: peer.PeerTransport | None = None,
        insecure: bool = False,  # plain HTTP on bind_address: tests only (transport.link)
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.config = config or MeshConfig()
        self.bind_address = bind_address
        self.advertise_address = advertise_address
        self.storage_path = storage_path
        self._link = link.PeerLink.build(node_id, transport=transport, bind_address=bind_address,
                                         tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                         peer_domain=peer_domain, insecure=insecure)
        self._transport = self._link.transport
        if self._transport is not None:
            for kind in messages.KINDS.values():
                self._transport.on(kind, self._handler(kind))
            self._transport.on(PING_CALL, self._on_ping_call)
        self._rng = random.Random(self.config.seed)
        self._core: swim_node.SwimNode | None = None
        self._store: storage.DurableStore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pending_peers: dict[str, str] = {}
        self._admitted: frozenset[str] | None = None
        self._state_callbacks: list[tuple[StateCallback, int]] = []
        self._member_callbacks: list[MembershipCallback] = []
        self._clock_callbacks: list[ClockCallback] = []
        self._probes_sent: dict[int, tuple[str, float]] = {}  # seq -> (member, wall time)
        self._events: asyncio.Queue[swim_node.Event] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._warmed: set[str] = set()
        self._running = False
        self._sent = 0
        self._send_dropped = 0
        self._rejected = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        loop = asyncio.get_running_loop()
        incarnation, stored_peers = 0, {}
        if self.storage_path is not None:
            self._store = storage.DurableStore(os.path.join(self.storage_path, "mesh.db"))
            raw = self._store.get(_NS, "incarnation")
            incarnation = int(raw.decode()) + 1 if raw is not None else 0
            # Durable before announced: a crash right after never reuses this number.
            await self._store.commit([storage.Put(_NS, "incarnation", str(incarnation).encode())])
            stored_peers = {str(k): v.decode() for k, v in self._store.scan(_NS_PEERS)}
        await self._link.start()
        address = (self.advertise_address
                   or (self._transport.address if self._transport is not None else None)
                   or self.bind_address or self.node_id)
        self._core = swim_node.SwimNode(self.node_id, address, self.config.swim(), self._rng,
                                   loop.time(), incarnation=incarnation,
                                   version_base=incarnation << 32)
        self._events = asyncio.Queue()
        self._dispatcher = loop.create_task(self._dispatch(), name=f"mesh-callbacks:{self.node_id}")
        self._running = True
        self._core.admit(loop.time(), self._admitted)
        for peer_id, addr in {**stored_peers, **self._pending_peers}.items():
            self._core.join(loop.time(), peer_id, addr)
        self._pending_peers.clear()
        self._flush()

    async def stop(self) -> None:
        """Stop without a goodbye (members will detect it); call ``leave()`` first to say one."""
        if not self._running:
            return
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._link.stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def leave(self, timeout: float = 1.0) -> None:
        """Announce a graceful leave (members mark us LEFT, not dead) and stop.

        Returns once the announcement is written to every member it was sent to,
        or after ``timeout`` seconds if some link cannot take it (it is then lost
        there, and that member detects us as dead instead).
        """
        core = self._require()
        core.leave(asyncio.get_running_loop().time())
        self._flush()
        if self._transport is not None and not await self._transport.drain(timeout):
            log.info("mesh %s: leave announcement not written to every member within %.1fs",
                     self.node_id, timeout)
        await self.stop()

    # -- the spec's API -------------------------------------------------------------------

    async def add_peer(self, node_id: str, address: str) -> None:
        """Contact ``node_id`` at ``address`` and merge our views (retried until it answers)."""
        if not node_id or not isinstance(node_id, str):
            raise ValueError("node_id must be a non-empty string")
        peer.split_address(address)
        if self._core is None:
            self._pending_peers[node_id] = address
            return
        self._core.join(asyncio.get_running_loop().time(), node_id, address)
        self._flush()

    def set_admitted(self, members: frozenset[str] | None) -> None:
        """Hear only from ``members`` (the cluster's, as its membership says) from now on;
        ``None``: from every node with a node certificate. See ``SwimNode.admit``."""
        self._admitted = members
        if self._core is not None and self._running:
            self._core.admit(asyncio.get_running_loop().time(), members)
            self._flush()

    async def remove_peer(self, node_id: str) -> None:
        """Drop ``node_id`` cluster-wide (gossiped as left; a live node refutes and stays)."""
        self._pending_peers.pop(node_id, None)
        if self._core is None:
            return
        self._core.forget(asyncio.get_running_loop().time(), node_id)
        self._flush()
        if self._store is not None:
            self._write([storage.Delete(_NS_PEERS, node_id)])

    async def update_state(self, key: str, value: Any) -> None:
        """Set our ``key`` to ``value`` (plain msgpack-able data) and gossip it."""
        core = self._require()
        core.update_state(asyncio.get_running_loop().time(), key, value)
        self._flush()

    async def get_state(self) -> dict[str, dict[str, Any]]:
        """The merged view: ``{node_id: {key: value}}`` for us and every live member."""
        return self._require().view()

    def register_state_update_callback(self, callback: StateCallback) -> None:
        """``callback(key, value)`` or ``callback(node_id, key, value)``, sync or async.

        Called once per new value, on every node (ours included), in the order learned.
        """
        self._state_callbacks.append((callback, _arity(callback)))

    def register_membership_callback(self, callback: MembershipCallback) -> None:
        """``callback(node_id, status, address)`` on every membership change; status is
        ``"alive"``, ``"suspect"``, ``"dead"`` or ``"left"``."""
        self._member_callbacks.append(callback)

    def get_stats(self) -> dict[str, Any]:
        """Counts. The original module's keys are there too: ``total_peers`` (every other
        member known, whatever its status, and peers added that have not answered yet;
        ``active_peers`` counts those alive or suspect), ``state_version`` (our state
        updates so far), ``state_keys``, ``messages_buffered`` (updates waiting to be
        piggybacked), ``seen_messages`` (update ids remembered against duplicates) and
        ``sync_count`` (push-pull syncs received)."""
        core = self._core
        if core is None:
            return {"node_id": self.node_id, "running": False, "active_peers": 0,
                    "total_peers": len(self._pending_peers), "messages_sent": self._sent,
                    "messages_received": 0, "messages_dropped": self._send_dropped,
                    "messages_buffered": 0, "seen_messages": 0, "state_version": 0,
                    "state_keys": 0, "sync_count": 0}
        counts = core.counts()
        stats: dict[str, Any] = {
            "node_id": self.node_id,
            "running": self._running,
            "address": core.address,
            "active_peers": sum(1 for m in core.members.values()
                                if m.reachable and m.node != self.node_id),
            "messages_sent": self._sent,
            "messages_received": core.stats["messages_received"],
            "messages_dropped": self._send_dropped,
            "messages_rejected": self._rejected,
            "messages_refused": core.stats["refused"],  # from nodes not admitted
            "members": counts,
            "incarnation": core.incarnation,
            "health_multiplier": core.health.multiplier,
            "state_keys": len(core.state),
            "total_peers": len((core.members.keys() | core.joining()) - {self.node_id}),
            "state_version": core.stats["state_updates"],
            "messages_buffered": core.buffered(),
            "seen_messages": core.seen_updates(),
            "sync_count": core.stats["syncs_received"],
        }
        stats.update({k: v for k, v in core.stats.items()
                      if k not in ("messages_sent", "messages_received")})
        if self._transport is not None:
            t = self._transport.stats
            stats["transport_dropped"] = t["messages_dropped"]
            stats["transport_send_failures"] = t["send_failures"]
        return stats

    # -- extras for the node daemon -------------------------------------------------------

    @property
    def address(self) -> str | None:
        return self._core.address if self._core is not None else None

    @property
    def incarnation(self) -> int:
        return self._require().incarnation

    def members(self) -> list[dict[str, Any]]:
        """Every member we know (ourselves included), dead and left ones until their TTL."""
        return [{"id": m.node, "address": m.address, "status": m.status.name.lower(),
                 "incarnation": m.incarnation} for m in self._require().members.values()]

    def alive_peers(self) -> dict[str, str]:
        """``{node_id: address}`` of the other members not (yet) declared dead or gone."""
        return {m.node: m.address for m in self._require().members.values()
                if m.reachable and m.node != self.node_id}

    # -- plumbing -------------------------------------------------------------------------

    def _require(self) -> swim_node.SwimNode:
        if self._core is None:
            raise RuntimeError("the mesh is not started")
        return self._core

    def _handler(self, kind: str) -> peer.Handler:
        def handle(sender: str, body: dict[str, Any]) -> None:
            if not self._running or self._core is None:
                return
            try:
                msg = messages.decode(kind, body)
            except ValueError as exc:
                self._rejected += 1
                log.debug("rejected %s from %s: %s", kind, sender, exc)
                return
            if isinstance(msg, messages.Ack):
                probe = self._probes_sent.pop(msg.seq, None)
                if probe is not None and probe[0] == sender:  # not a relay's ack
                    self._clock_sample(sender, probe[1], body.get(WALL_KEY))
            self._core.receive(asyncio.get_running_loop().time(), sender, msg)
            self._flush()
        return handle

    def _on_timer(self) -> None:
        self._timer = None
        if not self._running or self._core is None:
            return
        self._core.tick(asyncio.get_running_loop().time())
        self._flush()

    def _flush(self, reply_to: tuple[str, int] | None = None) -> messages.Ack | None:
        """Carry out the core's effects; with ``reply_to=(address, seq)``, hold back and
        return the ack for that ping (it becomes the reply of the call it came in)."""
        core = self._core
        if core is None:
            return None
        ready = core.ready()
        held: messages.Ack | None = None
        if ready.incarnation is not None and self._store is not None:
            self._write([storage.Put(_NS, "incarnation", str(ready.incarnation).encode())])
        for out in ready.messages:
            msg = out.message
            if (reply_to is not None and held is None and isinstance(msg, messages.Ack)
                    and (out.address, msg.seq) == reply_to):
                held = msg
                continue
            if self._transport is None or out.address == core.address:
                continue
            body = messages.encode(msg)
            if isinstance(msg, messages.Ping) and out.node:
                self._note_probe(out.node, msg.seq)
            elif isinstance(msg, messages.Ack):
                body[WALL_KEY] = time.time()  # the prober learns its clock's offset to ours
            if self._transport.send(out.address, messages.kind(msg), body):
                self._sent += 1
            else:
                self._send_dropped += 1
        if ready.events and self._events is not None:
            for ev in ready.events:
                self._events.put_nowait(ev)
                if isinstance(ev, swim_node.MemberChanged) and ev.status == Status.ALIVE:
                    self._warm(ev.address)
            self._persist_members(ready.events)
        if self._running:
            self._schedule(core.next_deadline())
        return held

    def _warm(self, address: str) -> None:
        """Open the mutual-TLS connection to a new member now, so that the first gossip
        to it does not wait for (or time out in) a handshake."""
        transport = self._transport
        if transport is None or address in self._warmed or address == self.address:
            return
        self._warmed.add(address)

        async def call() -> None:
            with contextlib.suppress(peer.PeerError):
                await transport.request(address, "peer.ping", {}, timeout=5.0)

        task = asyncio.get_running_loop().create_task(call())
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _on_ping_call(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self._running or self._core is None:
            return {}
        msg = messages.decode("swim.ping", body)  # ValueError: the transport answers 400
        if not isinstance(msg, messages.Ping):
            raise ValueError("not a ping")
        self._core.receive(asyncio.get_running_loop().time(), sender, msg)
        if not self._core.admits(sender):  # refused and counted by the core: no ack
            raise PermissionError(f"{sender} is not a member this mesh admits")
        ack = self._flush(reply_to=(msg.reply_to, msg.seq))
        # Our wall clock rides on the answer: the prober learns its offset to us.
        return {**messages.encode(ack), WALL_KEY: time.time()} if ack is not None else {}

    def _note_probe(self, node_id: str, seq: int) -> None:
        """When we pinged ``node_id``: its ack, carrying its wall clock, makes a sample."""
        self._probes_sent[seq] = (node_id, time.time())
        while len(self._probes_sent) > _PROBES_REMEMBERED:  # lost acks: forget the oldest
            del self._probes_sent[next(iter(self._probes_sent))]

    def _clock_sample(self, node_id: str, sent: float, remote: Any) -> None:
        if not self._clock_callbacks or isinstance(remote, bool) \
                or not isinstance(remote, int | float):
            return
        sample = clocks.offset_sample(sent, time.time(), float(remote), time.monotonic())
        for cb in self._clock_callbacks:
            cb(node_id, sample)

    def register_clock_sample_callback(self, callback: ClockCallback) -> None:
        """``callback(node_id, sample)``: our wall clock against a member's, measured on
        each probe's round trip (``core.clocks.offset_sample``)."""
        self._clock_callbacks.append(callback)

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_at == deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _persist_members(self, events: tuple[swim_node.Event, ...]) -> None:
        if self._store is None:
            return
        ops: list[storage.Op] = []
        for ev in events:
            if isinstance(ev, swim_node.MemberChanged):
                if ev.status == Status.ALIVE:
                    ops.append(storage.Put(_NS_PEERS, ev.node, ev.address.encode()))
                elif ev.status == Status.LEFT:
                    ops.append(storage.Delete(_NS_PEERS, ev.node))
        if ops:
            self._write(ops)

    def _write(self, ops: list[storage.Op]) -> None:
        store = self._store
        if store is None:
            return

        async def commit() -> None:
            try:
                await store.commit(ops)
            except storage.StorageError as exc:
                log.warning("mesh state not persisted: %s", exc)

        task = asyncio.get_running_loop().create_task(commit())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _dispatch(self) -> None:
        assert self._events is not None
        while True:
            ev = await self._events.get()
            try:
                await self._deliver(ev)
            except Exception:
                log.exception("a mesh callback failed")

    async def _deliver(self, ev: swim_node.Event) -> None:
        if isinstance(ev, swim_node.StateChanged):
            for cb, arity in self._state_callbacks:
                r = cb(ev.node, ev.key, ev.value) if arity >= 3 else cb(ev.key, ev.value)
                if inspect.isawaitable(r):
                    await r
        else:
            for mcb in self._member_callbacks:
                r = mcb(ev.node, ev.status.name.lower(), ev.address)
                if inspect.isawaitable(r):
                    await r


def _arity(fn: Callable[..., Any]) -> int:
    """Required positional parameters of ``fn`` (3 selects ``(node_id, key, value)``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


