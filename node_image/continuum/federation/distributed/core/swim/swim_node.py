"""``SwimNode``: one member's SWIM protocol with Lifeguard, as a pure state machine.

Inputs: ``tick(now)`` when ``next_deadline()`` is reached, ``receive(now,
sender, message)`` for each message, and the application's calls
(``join``, ``forget``, ``update_state``, ``leave``). Effects accumulate until
the shell calls ``ready()``:

1. persist ``Ready.incarnation`` when it is not None (so a restart announces a higher one),
2. send ``Ready.messages`` (one-way; any may be lost),
3. deliver ``Ready.events`` to the application, in order.

The protocol, per probe interval (stretched by the local health multiplier):
ping one member (round-robin over a shuffled list); without an ack within
``probe_timeout`` ask ``indirect_checks`` others to ping it (ping-req; they
nack if it stays silent); without any ack by the interval's end, suspect it.
A suspicion becomes a death after a Lifeguard timeout that shrinks with
independent confirmations, unless the member refutes it with a higher
incarnation. Every update (membership and state) is piggybacked on probes and
sent in gossip rounds to ``fanout`` random members until it has gone out
``retransmit_limit`` times; push-pull full syncs repair whatever gossip missed.

Admission (``admit``): in a cluster, the mesh hears only from the members the
cluster's membership admits (Raft's configuration), and knows of no other node:
messages from anyone else are dropped and counted, news of other nodes is held
back until they are admitted (then they are joined at once), and a member that
stops being admitted is dropped as if it had left. Without it (``None``, a
standalone mesh) every node with a node certificate is heard.

Why one long file: ``SwimNode`` is one state machine (probe cycle, suspicion,
dissemination, sync) over shared member state; its pure pieces live in
``membership``, ``suspicion``, ``dissemination``, ``state`` and ``local_health``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import config as cfg
from . import dissemination, local_health, membership, messages, state, suspicion
from .membership import Status


@dataclass(frozen=True, slots=True)
class Outgoing:
    node: str  # "" when we only know an address (joining)
    address: str
    message: messages.Message


@dataclass(frozen=True, slots=True)
class MemberChanged:
    node: str
    address: str
    status: Status
    incarnation: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    node: str
    key: str
    value: Any
    version: int


Event = MemberChanged | StateChanged


@dataclass(frozen=True, slots=True)
class Ready:
    messages: tuple[Outgoing, ...]
    events: tuple[Event, ...]
    incarnation: int | None  # our new incarnation, to persist; None when unchanged


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    timeout_at: float
    end_at: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    origin_address: str
    origin_seq: int
    deadline: float


@dataclass(slots=True)
class _Join:
    address: str
    next_try: float
    backoff: float


@dataclass(slots=True)
class _Peers:
    """Member ids we may gossip to, with O(1) add, remove and random pick."""

    ids: list[str] = field(default_factory=list)
    pos: dict[str, int] = field(default_factory=dict)

    def add(self, node: str) -> None:
        if node not in self.pos:
            self.pos[node] = len(self.ids)
            self.ids.append(node)

    def remove(self, node: str) -> None:
        i = self.pos.pop(node, None)
        if i is None:
            return
        last = self.ids.pop()
        if i < len(self.ids):
            self.ids[i] = last
            self.pos[last] = i


class SwimNode:
    def __init__(self, node_id: str, address: str, config: cfg.SwimConfig, rng: random.Random,
                 now: float, *, incarnation: int = 0, version_base: int = 0) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.address = address
        self.config = config
        self._rng = rng
        self.members: dict[str, membership.Member] = {
            node_id: membership.Member(node_id, address, incarnation, Status.ALIVE, now)}
        self.state = state.StateMap()
        self.health = local_health.LocalHealth(config.awareness_max_multiplier)
        self._version = version_base
        self._queue: dissemination.BroadcastQueue[messages.Update] = (
            dissemination.BroadcastQueue(config.message_buffer_size, config.update_ttl))
        self._dedup = dissemination.DedupBuffer(config.message_buffer_size, config.dead_node_ttl)
        self._peers = _Peers()
        self._probe_order: list[str] = []
        self._probe_pos = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, suspicion.Suspicion] = {}
        # (deadline, node) of every suspicion's current deadline, and stale ones (refuted,
        # or moved earlier by a confirmation) that are skipped when they reach the top.
        self._suspicion_heap: list[tuple[float, str]] = []
        self._tombstones: dict[str, float] = {}
        self._joins: dict[str, _Join] = {}
        self._admit: frozenset[str] | None = None  # None: everyone (a standalone mesh)
        self._held: dict[str, str] = {}  # nodes we heard of, not admitted: id -> address
        self._seq = 0
        self._leaving = False
        # Stagger the first probe so members started together do not probe in lockstep.
        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_gossip = now + config.gossip_interval
        self._last_gossip = now - config.gossip_interval
        self._next_sync = now + rng.uniform(0.5, 1.0) * config.sync_interval
        self._out: list[Outgoing] = []
        self._events: list[Event] = []
        self._incarnation_dirty = False
        self.stats: dict[str, int] = dict.fromkeys((
            "messages_sent", "messages_received", "probes", "probe_failures", "indirect_probes",
            "nacks_sent", "suspicions", "confirmations", "refutations", "declared_dead",
            "state_updates", "duplicates", "gossip_rounds", "syncs_sent", "syncs_received",
            "late_timers", "rejected_pings", "refused"), 0)

    # -- the shell's interface ------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.node_id].incarnation

    @property
    def leaving(self) -> bool:
        return self._leaving

    def ready(self) -> Ready:
        inc = self.incarnation if self._incarnation_dirty else None
        r = Ready(tuple(self._out), tuple(self._events), inc)
        self._out.clear()
        self._events.clear()
        self._incarnation_dirty = False
        return r

    def next_deadline(self) -> float:
        times = [self._next_probe, self._next_sync]
        if len(self._queue):
            times.append(self._next_gossip)
        p = self._probe
        if p is not None:
            times.append(p.end_at if p.indirect_sent else p.timeout_at)
        times.extend(r.deadline for r in self._relays.values())
        first_suspicion = self._next_suspicion()
        if first_suspicion is not None:
            times.append(first_suspicion[0])
        times.extend(j.next_try for j in self._joins.values())
        return min(times)

    def tick(self, now: float) -> None:
        if not self._leaving and now - self._next_probe > self.config.late_timer_threshold:
            # The probe timer (always set ahead) fired late: our loop is starved, so we
            # are probably the slow one; probe more gently rather than accuse others.
            self.health.apply(1)
            self.stats["late_timers"] += 1
        self._reap(now)
        if not self._leaving:
            self._tick_probe(now)
            self._tick_relays(now)
            self._tick_suspicions(now)
            self._tick_joins(now)
            if now >= self._next_sync:
                self._next_sync = now + cfg.push_pull_interval(self.config.sync_interval,
                                                               self._cluster_size())
                self._sync_random(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            self._gossip_round(now)

    def receive(self, now: float, sender: str, msg: messages.Message) -> None:
        if not self.admits(sender):
            self.stats["refused"] += 1  # not a member: not a word of it is taken in,
            if isinstance(msg, messages.Sync) and not msg.reply:
                # but a node that asked to sync is held by its proven id: once admitted it
                # is joined at once, not after its own join back-off (up to the push-pull
                # interval), which left views incomplete for seconds after formation.
                self._hold(sender, msg.reply_to)
            return
        self.stats["messages_received"] += 1
        if isinstance(msg, messages.Sync):
            self._on_sync(now, msg)
            return
        if isinstance(msg, messages.Nack):
            if self._probe is not None and self._probe.seq == msg.seq:
                self._probe.nacks += 1
            return
        self._apply_updates(now, msg.updates)
        if isinstance(msg, messages.Ping):
            self._on_ping(now, sender, msg)
        elif isinstance(msg, messages.Ack):
            self._on_ack(now, msg)
        elif isinstance(msg, messages.PingReq):
            self._on_ping_req(now, msg)

    def admits(self, node: str) -> bool:
        return self._admit is None or node in self._admit

    def admit(self, now: float, members: frozenset[str] | None) -> None:
        """Hear from, and know of, only ``members`` (and us) from now on; ``None``: anyone.
        See the module docstring."""
        self._admit = None if members is None else frozenset(members) | {self.node_id}
        for node in [n for n in self.members if not self.admits(n)]:
            self._expel(node)
        for node, address in list(self._held.items()):
            if self.admits(node):
                del self._held[node]
                self.join(now, node, address)

    def _hold(self, node: str, address: str) -> None:
        if address:
            self._held.pop(node, None)
            self._held[node] = address
            while len(self._held) > self.config.message_buffer_size:
                del self._held[next(iter(self._held))]  # the oldest news goes first

    def _expel(self, node: str) -> None:
        """A member no longer admitted: forget it here (not gossiped: every member judges
        by its own configuration), and tell the application it left."""
        m = self.members.pop(node)
        self._peers.remove(node)
        self._suspicions.pop(node, None)
        self._tombstones.pop(node, None)
        self._joins.pop(node, None)
        self.state.drop(node)
        if self._probe is not None and self._probe.target == node:
            self._probe = None
        self._hold(node, m.address)
        if m.reachable:
            self._events.append(MemberChanged(node, m.address, Status.LEFT, m.incarnation))

    def join(self, now: float, node: str, address: str) -> None:
        """Push-pull with ``node`` at ``address``; retried with back-off until it answers.
        A node not admitted (yet) is held until it is."""
        if node == self.node_id:
            return
        if not self.admits(node):
            self._hold(node, address)
            return
        m = self.members.get(node)
        if m is not None and m.reachable:
            return
        self._joins[node] = _Join(address, now + self.config.probe_interval,
                                  self.config.probe_interval)
        self._send_sync(now, node, address, reply=False)

    def adopt(self, now: float, node: str, address: str, incarnation: int = 0) -> None:
        """Know ``node`` as alive without gossiping it (a restored snapshot, a simulation)."""
        if node == self.node_id or node in self.members:
            return
        if not self.admits(node):
            self._hold(node, address)
            return
        self.members[node] = membership.Member(node, address, incarnation, Status.ALIVE, now)
        self._peers.add(node)

    def forget(self, now: float, node: str) -> None:
        """Drop ``node`` cluster-wide (gossiped as left); a live node refutes and stays."""
        self._joins.pop(node, None)
        m = self.members.get(node)
        if m is None or node == self.node_id or not m.reachable:
            return
        self._apply_member(now, messages.MemberUpdate(node, m.address, m.incarnation,
                                                      Status.LEFT, self.node_id))

    def leave(self, now: float) -> None:
        """Announce a graceful leave: straight to up to 64 members, then by gossip."""
        if self._leaving:
            return
        me = self.members[self.node_id]
        update = messages.MemberUpdate(self.node_id, self.address, me.incarnation, Status.LEFT,
                                       self.node_id)
        self._leaving = True
        me.status = Status.LEFT
        me.since = now
        self._probe = None
        self._joins.clear()
        self._push(update, now)
        targets = [n for n in self._peers.ids if self.members[n].reachable]
        for n in self._rng.sample(targets, min(64, len(targets))):
            self._send(n, messages.Gossip((update,)))

    def update_state(self, now: float, key: str, value: Any) -> int:
        """Set our ``key``; returns its version. ``ValueError`` for bad input (nothing changes)."""
        if not isinstance(key, str) or not key or len(key) > 256:
            raise ValueError("state keys must be non-empty strings of at most 256 characters")
        state.check_value(value)
        self._version = max(self._version, self.state.max_version(self.node_id)) + 1
        entry = state.Entry(self.node_id, key, self._version, value)
        self.state.merge(entry)
        self._push(entry, now)
        self.stats["state_updates"] += 1
        self._events.append(StateChanged(self.node_id, key, value, entry.version))
        return entry.version

    # -- views ----------------------------------------------------------------------------

    def view(self) -> dict[str, dict[str, Any]]:
        """Each live node's state (dead and departed nodes left out)."""
        out: dict[str, dict[str, Any]] = {}
        for node in self.state.nodes():
            m = self.members.get(node)
            if m is None or m.reachable or node == self.node_id:
                out[node] = self.state.node_view(node)
        return out

    def joining(self) -> frozenset[str]:
        """Peers we were asked to join that have not answered yet."""
        return frozenset(self._joins)

    def buffered(self) -> int:
        """Updates waiting to be piggybacked (at most ``message_buffer_size``)."""
        return len(self._queue)

    def seen_updates(self) -> int:
        """Update ids remembered to drop duplicates (at most ``message_buffer_size``)."""
        return len(self._dedup)

    def counts(self) -> dict[str, int]:
        by = {s.name.lower(): 0 for s in Status}
        for m in self.members.values():
            by[m.status.name.lower()] += 1
        return by

    # -- probing --------------------------------------------------------------------------

    def _tick_probe(self, now: float) -> None:
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            self._send_indirect(now, p)
        if p is not None and now >= p.end_at:
            self._probe = None
            self._probe_failed(now, p)
        if now >= self._next_probe:
            self._next_probe = now + self.health.scale(self.config.probe_interval)
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        target = self._next_probe_target()
        if target is None:
            return
        self._seq += 1
        self._probe = _Probe(target, self._seq,
                             timeout_at=now + self.health.scale(self.config.probe_timeout),
                             end_at=now + self.health.scale(self.config.probe_interval))
        self.stats["probes"] += 1
        self._send(target, messages.Ping(self._seq, target, self.address, self._piggyback(now)))

    def _next_probe_target(self) -> str | None:
        for _ in range(2):
            while self._probe_pos < len(self._probe_order):
                node = self._probe_order[self._probe_pos]
                self._probe_pos += 1
                m = self.members.get(node)
                if m is not None and m.reachable and node != self.node_id:
                    return node
            self._probe_order = [n for n in self._peers.ids if self.members[n].reachable]
            self._rng.shuffle(self._probe_order)
            self._probe_pos = 0
        return None

    def _send_indirect(self, now: float, p: _Probe) -> None:
        p.indirect_sent = True
        target = self.members.get(p.target)
        if target is None or not target.reachable:
            return
        helpers = self._pick(self.config.indirect_checks,
                             lambda m: m.status == Status.ALIVE and m.node != p.target)
        p.expected_nacks = len(helpers)
        for h in helpers:
            self.stats["indirect_probes"] += 1
            self._send(h, messages.PingReq(p.seq, p.target, target.address, self.address,
                                           self._piggyback(now)))

    def _probe_failed(self, now: float, p: _Probe) -> None:
        self.stats["probe_failures"] += 1
        # Lifeguard: helpers that did not even nack suggest that we are the one cut off.
        missed = p.expected_nacks - p.nacks if p.expected_nacks else 1
        self.health.apply(missed)
        m = self.members.get(p.target)
        if m is not None and m.reachable:
            self._apply_member(now, messages.MemberUpdate(m.node, m.address, m.incarnation,
                                                          Status.SUSPECT, self.node_id))

    def _on_ping(self, now: float, sender: str, msg: messages.Ping) -> None:
        if msg.target != self.node_id:
            self.stats["rejected_pings"] += 1  # an old address of someone else
            return
        updates = self._piggyback(now)
        m = self.members.get(sender)
        if m is not None and m.status in (Status.SUSPECT, Status.DEAD):
            # It is pinging us, so it lives: tell it what it is accused of, so it refutes now
            # rather than whenever the accusation happens to reach it.
            updates = (messages.MemberUpdate(sender, m.address, m.incarnation, m.status,
                                             self.node_id), *updates)
        self._send_to_address(msg.reply_to, messages.Ack(msg.seq, updates))

    def _on_ack(self, now: float, msg: messages.Ack) -> None:
        p = self._probe
        if p is not None and p.seq == msg.seq:
            self._probe = None
            self.health.apply(-1)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send_to_address(relay.origin_address, messages.Ack(relay.origin_seq))

    def _on_ping_req(self, now: float, msg: messages.PingReq) -> None:
        self._seq += 1
        # Nack a little before the asker's probe ends so the nack still counts there.
        wait = self.health.scale(self.config.probe_timeout) * 0.8
        self._relays[self._seq] = _Relay(msg.reply_to, msg.seq, now + wait)
        self._send_to_address(msg.target_address,
                              messages.Ping(self._seq, msg.target, self.address,
                                            self._piggyback(now)))

    def _tick_relays(self, now: float) -> None:
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                self.stats["nacks_sent"] += 1
                self._send_to_address(relay.origin_address, messages.Nack(relay.origin_seq))

    # -- suspicion ------------------------------------------------------------------------

    def _next_suspicion(self) -> tuple[float, str] | None:
        """The earliest live suspicion deadline, dropping stale heap entries on the way."""
        heap = self._suspicion_heap
        while heap:
            deadline, node = heap[0]
            s = self._suspicions.get(node)
            if s is not None and s.deadline() == deadline:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _tick_suspicions(self, now: float) -> None:
        while (due := self._next_suspicion()) is not None and due[0] <= now:
            heapq.heappop(self._suspicion_heap)
            node = due[1]
            m = self.members[node]
            self.stats["declared_dead"] += 1
            self._apply_member(now, messages.MemberUpdate(node, m.address, m.incarnation,
                                                          Status.DEAD, self.node_id))

    def _start_suspicion(self, now: float, node: str, accuser: str) -> None:
        n = self._cluster_size()
        lo, hi = suspicion.suspicion_bounds(self.config.suspicion_mult,
                                            self.config.suspicion_max_timeout_mult, n,
                                            self.config.probe_interval)
        k = suspicion.expected_confirmations(self.config.suspicion_mult, n)
        s = self._suspicions[node] = suspicion.Suspicion(now, k, lo, hi, accuser)
        heapq.heappush(self._suspicion_heap, (s.deadline(), node))
        self.stats["suspicions"] += 1

    # -- applying updates -----------------------------------------------------------------

    def _apply_updates(self, now: float, updates: tuple[messages.Update, ...]) -> None:
        for u in updates:
            if isinstance(u, messages.MemberUpdate):
                self._apply_member(now, u)
            else:
                self._apply_entry(now, u)

    def _apply_member(self, now: float, u: messages.MemberUpdate) -> None:
        if self._dedup.seen(("m", u.node, u.incarnation, u.status, u.origin), now):
            self.stats["duplicates"] += 1
            return
        if u.node == self.node_id:
            self._about_me(now, u)
            return
        if not self.admits(u.node):
            if u.status in (Status.ALIVE, Status.SUSPECT):
                self._hold(u.node, u.address)
            return
        m = self.members.get(u.node)
        if m is None:
            if u.status not in (Status.ALIVE, Status.SUSPECT) or self._leaving:
                return  # news of the death or departure of a stranger: nothing to do
            # A suspicion also introduces a member: the suspect claim may have replaced the
            # alive one in every queue, and the member will refute it if it lives.
            self.members[u.node] = membership.Member(u.node, u.address, u.incarnation,
                                                     u.status, now)
            self._peers.add(u.node)
            # Probe newcomers soon, at a random place in the current round.
            self._probe_order.insert(self._rng.randint(self._probe_pos, len(self._probe_order)),
                                     u.node)
            self._joins.pop(u.node, None)
            if u.status == Status.SUSPECT:
                self._start_suspicion(now, u.node, u.origin)
            self._push(u, now)
            self._events.append(MemberChanged(u.node, u.address, u.status, u.incarnation))
            return
        if (m.status == Status.SUSPECT and u.status == Status.SUSPECT
                and u.incarnation == m.incarnation):
            s = self._suspicions.get(u.node)
            if s is not None and s.confirm(u.origin):
                self.stats["confirmations"] += 1
                heapq.heappush(self._suspicion_heap, (s.deadline(), u.node))
                self._push(u, now)  # spread the confirmation so others shorten their timers too
            return
        if not membership.supersedes(m.status, m.incarnation, u.status, u.incarnation):
            return
        old_status, old_address = m.status, m.address
        m.incarnation = u.incarnation
        if u.status == Status.ALIVE and u.address:
            m.address = u.address
        if u.status != old_status:
            m.status = u.status
            m.since = now
        if u.status == Status.SUSPECT:
            self._start_suspicion(now, u.node, u.origin)
        else:
            self._suspicions.pop(u.node, None)
        if u.status in (Status.DEAD, Status.LEFT):
            self._tombstones[u.node] = now
            if u.status == Status.LEFT:
                self._peers.remove(u.node)  # nobody to gossip to
            if self._probe is not None and self._probe.target == u.node:
                self._probe = None
        else:
            self._tombstones.pop(u.node, None)
            self._peers.add(u.node)
            if u.status == Status.ALIVE:
                self._joins.pop(u.node, None)
        self._push(u, now)
        if u.status != old_status or m.address != old_address:
            self._events.append(MemberChanged(u.node, m.address, u.status, u.incarnation))

    def _about_me(self, now: float, u: messages.MemberUpdate) -> None:
        me = self.members[self.node_id]
        if self._leaving:
            return
        if u.status == Status.ALIVE:
            if u.incarnation <= me.incarnation:
                return
            # An alive claim above ours: news from our previous life. Outbid it.
        elif u.incarnation < me.incarnation:
            return  # an old accusation, already refuted
        else:
            self.stats["refutations"] += 1
            self.health.apply(1)  # Lifeguard: being suspected hints that we are slow
        me.incarnation = u.incarnation + 1
        self._incarnation_dirty = True
        self._push(messages.MemberUpdate(self.node_id, self.address, me.incarnation,
                                         Status.ALIVE, self.node_id), now)

    def _apply_entry(self, now: float, e: state.Entry) -> None:
        if not self.admits(e.node):
            return  # the state of a node the membership does not admit
        if self._dedup.seen(("s", e.node, e.key, e.version), now):
            self.stats["duplicates"] += 1
            return
        if e.node == self.node_id:
            # Our own key from a previous life: write above it, keeping our current value.
            self._version = max(self._version, e.version)
            cur = self.state.get(self.node_id, e.key)
            if cur is not None and cur.version < e.version:
                self.update_state(now, e.key, cur.value)
                return
        if self.state.merge(e):
            self._push(e, now)
            self._events.append(StateChanged(e.node, e.key, e.value, e.version))

    def _reap(self, now: float) -> None:
        for node, since in list(self._tombstones.items()):
            if now - since >= self.config.dead_node_ttl:
                del self._tombstones[node]
                self.members.pop(node, None)
                self._peers.remove(node)
                self.state.drop(node)

    # -- dissemination --------------------------------------------------------------------

    def _push(self, u: messages.Update, now: float) -> None:
        # News is forwarded at once (at most 4 rounds per interval) rather than at the next
        # periodic round: each hop then costs a network delay, not half an interval.
        self._next_gossip = min(self._next_gossip,
                                max(now, self._last_gossip + self.config.gossip_interval / 4))
        key: tuple[str, ...] = (
            ("m", u.node) if isinstance(u, messages.MemberUpdate) else ("s", u.node, u.key))
        self._queue.push(key, u, now)

    def _piggyback(self, now: float) -> tuple[messages.Update, ...]:
        limit = dissemination.retransmit_limit(self.config.retransmit_mult, self._cluster_size())
        return tuple(self._queue.take(self.config.max_piggyback, limit, now))

    def _gossip_round(self, now: float) -> None:
        if not len(self._queue):
            return
        self._last_gossip = now
        self.stats["gossip_rounds"] += 1
        for node in self._pick(self.config.fanout, lambda m: m.status != Status.LEFT):
            updates = self._piggyback(now)
            if not updates:
                break
            self._send(node, messages.Gossip(updates))

    def _sync_random(self, now: float) -> None:
        picked = self._pick(1, lambda m: m.status == Status.ALIVE)
        if picked:
            self._send_sync(now, picked[0], self.members[picked[0]].address, reply=False)

    def _tick_joins(self, now: float) -> None:
        for node, j in list(self._joins.items()):
            if now >= j.next_try:
                j.backoff = min(j.backoff * 2, self.config.sync_interval)
                j.next_try = now + j.backoff
                self._send_sync(now, node, j.address, reply=False)

    def _send_sync(self, now: float, node: str, address: str, *, reply: bool) -> None:
        members = tuple(messages.MemberUpdate(m.node, m.address, m.incarnation, m.status,
                                              self.node_id) for m in self.members.values())
        self.stats["syncs_sent"] += 1
        self._out.append(Outgoing(node, address, messages.Sync(
            members, tuple(self.state.entries()), self.address, reply)))
        self.stats["messages_sent"] += 1

    def _on_sync(self, now: float, msg: messages.Sync) -> None:
        self.stats["syncs_received"] += 1
        for m in msg.members:
            self._apply_member(now, m)
        for e in msg.entries:
            self._apply_entry(now, e)
        if not msg.reply and not self._leaving:
            self._send_sync(now, "", msg.reply_to, reply=True)

    # -- helpers --------------------------------------------------------------------------

    def _cluster_size(self) -> int:
        return len(self._peers.ids) + 1

    def _pick(self, k: int, ok: Callable[[membership.Member], bool]) -> list[str]:
        """Up to ``k`` distinct random peers whose member passes ``ok``; O(k) expected."""
        ids = self._peers.ids
        if k <= 0 or not ids:
            return []
        if len(ids) <= 4 * k:
            pool = [n for n in ids if ok(self.members[n])]
            return self._rng.sample(pool, min(k, len(pool)))
        out: list[str] = []
        for _ in range(8 * k):
            n = ids[self._rng.randrange(len(ids))]
            if n not in out and ok(self.members[n]):
                out.append(n)
                if len(out) == k:
                    break
        return out

    def _send(self, node: str, msg: messages.Message) -> None:
        m = self.members.get(node)
        if m is not None:
            self._out.append(Outgoing(node, m.address, msg))
            self.stats["messages_sent"] += 1

    def _send_to_address(self, address: str, msg: messages.Message) -> None:
        self._out.append(Outgoing("", address, msg))
        self.stats["messages_sent"] += 1
