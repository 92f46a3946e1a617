"""A deterministic simulator for the Raft core: many nodes, one seeded RNG.

``SimNetwork`` delays, drops, duplicates and reorders messages and cuts links
(partitions); a few messages are held back for longer than two election
timeouts, so they arrive stale, after newer elections. ``SimNode`` runs one
``RaftNode`` with a ``SimDisk`` and a KV state machine, and processes every
``Ready`` the way the real shell does
(early messages, persist, send, apply, advance). A crash drops everything
that was not persisted, including a Ready caught between its early messages
and its fsync. Clients put and get keys (puts carry request ids and are
retried when their outcome is unknown; gets use ReadIndex), and their history
is checked for linearizability. ``Checker`` asserts the Raft safety
properties after every processed Ready, and log matching across every pair of
live logs after every step.

Everything derives from one seed: ``Sim(seed).run()`` is reproducible.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack

from checkers.linearizability import Op
from continuum.federation.distributed import errors
from continuum.federation.distributed.core.raft import config as rconfig
from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import raft_node as rnode


class SafetyViolation(AssertionError):
    pass


# -- durable state ---------------------------------------------------------------------------


@dataclass
class SimDisk:
    """What survives a crash: exactly what the node persisted, nothing more."""

    hs: m.HardState = field(default_factory=m.HardState)
    snapshot: m.Snapshot | None = None
    log: list[m.Entry] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.snapshot is None and not self.log and self.hs == m.HardState()

    def persist(self, rd: rnode.Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.log = [e for e in self.log if e.index > rd.snapshot.index]
        if rd.truncate_after is not None:
            self.log = [e for e in self.log if e.index <= rd.truncate_after]
        if rd.entries:
            first = rd.entries[0].index
            self.log = [e for e in self.log if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hs = rd.hard_state
        base = self.snapshot.index if self.snapshot else 0
        for k, e in enumerate(self.log):
            if e.index != base + 1 + k:
                raise SafetyViolation(f"persisted log has a gap at {e.index} (base {base})")


class KV:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, cmd: bytes) -> None:
        key, value = msgpack.unpackb(cmd)
        self.data[key] = value

    def snapshot(self) -> bytes:
        out: bytes = msgpack.packb(self.data)
        return out

    def restore(self, data: bytes) -> None:
        self.data = dict(msgpack.unpackb(data)) if data else {}


# -- network ---------------------------------------------------------------------------------


@dataclass
class Faults:
    loss: float = 0.05
    dup: float = 0.02
    max_delay: int = 3  # ticks; different delays reorder messages
    crash: float = 0.004  # per node per tick
    crash_mid_ready: float = 0.002  # per Ready: between early messages and fsync
    restart: float = 0.05  # per crashed node per tick
    partition: float = 0.01  # per tick
    heal: float = 0.05
    skip_tick: float = 0.05  # clock drift: a node misses a tick
    long_delay: float = 0.01  # held back beyond two election timeouts: arrives stale


class SimNetwork:
    def __init__(self, rng: random.Random, faults: Faults, stale_after: int) -> None:
        self.rng = rng
        self.faults = faults
        self.stale_after = stale_after  # ticks: 2x the longest election timeout
        self.queue: list[tuple[int, int, m.Message]] = []
        self.seq = 0
        self.cut: set[tuple[str, str]] = set()
        self.sent = self.dropped = 0

    def send(self, now: int, msg: m.Message) -> None:
        self.sent += 1
        if self.rng.random() < self.faults.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.faults.dup else 1
        for _ in range(copies):
            self.seq += 1
            if self.rng.random() < self.faults.long_delay:
                at = now + self.stale_after + self.rng.randint(1, self.stale_after)
            else:
                at = now + self.rng.randint(0, self.faults.max_delay)
            heapq.heappush(self.queue, (at, self.seq, msg))

    def due(self, now: int) -> list[m.Message]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            msg = heapq.heappop(self.queue)[2]
            if (msg.frm, msg.to) in self.cut:
                self.dropped += 1
            else:
                out.append(msg)
        self.rng.shuffle(out)
        return out

    def partition(self, ids: list[str]) -> None:
        """Cut one side from the other; a third of the time only one way (a node that
        can send but not hear, the case pre-vote and check-quorum exist for)."""
        side = set(self.rng.sample(ids, self.rng.randint(1, max(1, len(ids) // 2))))
        one_way = self.rng.random() < 0.33
        for a in ids:
            for b in ids:
                outbound = a in side and b not in side
                inbound = a not in side and b in side
                if outbound or (inbound and not one_way):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()


# -- the checker -----------------------------------------------------------------------------


class Checker:
    """Raft's safety properties, checked as the run goes."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> leader (election safety)
        self.applied: dict[int, tuple[int, int, bytes, str | None, bool]] = {}
        self.rid_at: dict[str, int] = {}
        self.entries: dict[tuple[int, int], tuple[int, bytes, str | None]] = {}

    def on_leader(self, node: rnode.RaftNode) -> None:
        prior = self.leaders.setdefault(node.term, node.id)
        if prior != node.id:
            raise SafetyViolation(f"two leaders in term {node.term}: {prior} and {node.id}")

    def on_new_leader(self, node: rnode.RaftNode) -> None:
        """Leader completeness: a new leader holds every entry applied anywhere."""
        log = node.log
        for idx, (term, *_rest) in self.applied.items():
            if idx > log.snapshot_index and log.term(idx) != term:
                raise SafetyViolation(
                    f"leader {node.id} (term {node.term}) lacks committed entry {idx}/{term}")

    def on_entries(self, entries: tuple[m.Entry, ...]) -> None:
        """Log matching: one (index, term) names one entry everywhere."""
        for e in entries:
            got = self.entries.setdefault((e.index, e.term), (e.kind, e.data, e.request_id))
            if got != (e.kind, e.data, e.request_id):
                raise SafetyViolation(f"two different entries at {e.index}/{e.term}")

    def on_apply(self, nid: str, e: m.Entry, dup: bool) -> None:
        """State-machine safety, and exactly-once application of request ids."""
        rec = (e.term, e.kind, e.data, e.request_id, dup)
        prior = self.applied.setdefault(e.index, rec)
        if prior != rec:
            raise SafetyViolation(f"{nid} applied {rec} at {e.index}, others applied {prior}")
        if e.request_id is not None and not dup:
            at = self.rid_at.setdefault(e.request_id, e.index)
            if at != e.index:
                raise SafetyViolation(f"request {e.request_id} applied at {at} and {e.index}")

    @staticmethod
    def logs_match(a: rnode.RaftNode, b: rnode.RaftNode) -> None:
        """Log matching, in full: equal (index, term) implies equal prefixes.

        Fast enough for every step: the highest index where the terms agree is found
        from the top (logs seldom differ for long there), and the prefixes below it are
        compared as lists (the entries are shared objects, so mostly identity checks)."""
        la, lb = a.log, b.log
        lo = max(la.snapshot_index, lb.snapshot_index) + 1
        hi = min(la.last_index, lb.last_index)
        if hi < lo:
            return
        ea = la.entries[lo - la.snapshot_index - 1:hi - la.snapshot_index]
        eb = lb.entries[lo - lb.snapshot_index - 1:hi - lb.snapshot_index]
        top = len(ea) - 1
        while top >= 0 and ea[top].term != eb[top].term:
            top -= 1
        if ea[:top + 1] != eb[:top + 1]:
            bad = next(k for k in range(top + 1) if ea[k] != eb[k])
            raise SafetyViolation(f"logs of {a.id} and {b.id} differ at {lo + bad} below "
                                  f"their match at {lo + top}")


# -- nodes and clients -----------------------------------------------------------------------


@dataclass
class Attempt:
    op_id: int
    node: str
    index: int
    term: int
    deadline: int


@dataclass
class ClientOp:
    id: int
    kind: str
    key: str
    value: str | None
    rid: str | None
    call: int
    attempts: int = 0
    ret: int | None = None
    unknown: bool = False  # some attempt's outcome was never learned
    done: bool = False


class SimNode:
    def __init__(self, sim: Sim, nid: str, bootstrap: m.ClusterConfig | None) -> None:
        self.sim = sim
        self.id = nid
        self.disk = SimDisk()
        self.bootstrap = bootstrap
        self.alive = False
        self.core: rnode.RaftNode
        self.kv = KV()
        self.writes: deque[rnode.Ready] = deque()
        self.was_leader_in = 0

    def start(self) -> None:
        d = self.disk
        self.core = rnode.RaftNode(
            self.id, self.sim.raft_config, random.Random(self.sim.rng.random()),
            hard_state=d.hs, snapshot=d.snapshot, entries=list(d.log),
            bootstrap=self.bootstrap if d.empty else None)
        self.kv = KV()
        self.writes: deque[rnode.Ready] = deque()  # queued, not yet durable: lost in a crash
        if d.snapshot is not None:
            self.kv.restore(rnode.unpack_snapshot(d.snapshot.data)[0])
        self.alive = True
        self.was_leader_in = 0

    def crash(self) -> None:
        self.alive = False

    def process(self) -> None:
        """Carry out every pending Ready as the asyncio shell does: leader appends out,
        the write queued (it completes later, in order, in ``complete_writes``), apply,
        advance. Messages of a Ready leave only once its write completed."""
        sim = self.sim
        while self.alive and self.core.has_ready():
            rd = self.core.ready()
            for msg in rd.early_messages:
                sim.net.send(sim.now, msg)
            sim.checker.on_entries(rd.entries)
            # A reply may vouch for entries of an earlier write that is still in flight
            # (a repeated append): it waits behind every queued write.
            queued = rd.must_persist or bool(self.writes)
            if queued:
                self.writes.append(rd)
            else:
                for msg in rd.messages:
                    sim.net.send(sim.now, msg)
            if rd.snapshot_received and rd.snapshot is not None:
                self.kv.restore(rnode.unpack_snapshot(rd.snapshot.data)[0])
            for e in rd.committed:
                dup = e.index in rd.duplicates
                sim.checker.on_apply(self.id, e, dup)
                if e.kind == m.NORMAL and not dup:
                    self.kv.apply(e.data)
                sim.on_applied(self, e)
            for rs in rd.read_states:
                sim.on_read_state(self, rs)
            self.core.advance(rd, persisted=not queued)
            self._after_advance()

    def complete_writes(self, n: int) -> None:
        """The oldest ``n`` queued writes become durable; their messages leave."""
        sim = self.sim
        while n > 0 and self.writes and self.alive:
            n -= 1
            rd = self.writes.popleft()
            self.disk.persist(rd)
            for msg in rd.messages:
                sim.net.send(sim.now, msg)
            if rd.entries:
                self.core.persisted_to(rd.entries[-1].index, rd.entries[-1].term)
            self.process()

    def _after_advance(self) -> None:
        core, sim = self.core, self.sim
        if core.role == rnode.LEADER:
            sim.checker.on_leader(core)
            if self.was_leader_in != core.term:
                self.was_leader_in = core.term
                sim.checker.on_new_leader(core)
        if core.log.applied - core.log.snapshot_index >= sim.snapshot_every:
            core.compact(self.kv.snapshot())


class Sim:
    def __init__(self, seed: int, *, nodes: int = 3, spares: int = 2, ticks: int = 400,
                 clients: int = 3, keys: int = 3, faults: Faults | None = None,
                 membership: bool = True, check_quorum: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.checker = Checker()
        self.raft_config = rconfig.RaftConfig(
            election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2, max_inflight=4,
            max_entries_per_message=8, snapshot_chunk_bytes=64, request_window=1000,
            check_quorum=check_quorum)
        self.net = SimNetwork(self.rng, self.faults, 2 * self.raft_config.election_ticks_max)
        self.snapshot_every = self.rng.choice([15, 40, 10_000])
        self.ticks = ticks
        self.keys = [f"k{i}" for i in range(keys)]
        self.now = 0
        self.quiet = False
        self.clock = 0  # history timestamps: one counter, all distinct
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        boot = m.ClusterConfig(frozenset(ids), frozenset(), {i: f"{i}:1" for i in ids})
        self.nodes: dict[str, SimNode] = {i: SimNode(self, i, boot) for i in ids}
        self.spares = [f"s{i}" for i in range(1, spares + 1)] if membership else []
        self.membership = membership
        self.n_clients = clients
        self.ops: list[ClientOp] = []
        self.busy: dict[int, ClientOp] = {}  # client -> its op in progress
        self.attempts: dict[tuple[str, int], Attempt] = {}  # (node, index) -> put attempt
        self.reads: dict[tuple[str, int], tuple[ClientOp, int]] = {}  # (node, ctx) -> read
        self.pending_reads: list[tuple[SimNode, ClientOp, int]] = []
        self.history: list[Op] = []
        self.stats = {"ok": 0, "unknown": 0, "failed": 0, "reads": 0, "elections": 0}
        for n in self.nodes.values():
            n.start()

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.ticks):
            self.step(faults=True)
        self.net.heal()
        self.quiet = True
        for n in self.nodes.values():
            if not n.alive:
                n.start()
        for _ in range(self.ticks // 2 + 100):
            self.step(faults=False)
        self.finish()

    def step(self, *, faults: bool) -> None:
        self.now += 1
        if faults:
            self._faults()
        live = [n for n in self.nodes.values() if n.alive]
        for n in live:
            if self.rng.random() >= self.faults.skip_tick or not faults:
                n.core.tick()
                n.process()
        for msg in self.net.due(self.now):
            n = self.nodes.get(msg.to)
            if n is not None and n.alive:
                n.core.step(msg)
                n.process()
        self._clients()
        if self.membership and faults:
            self._admin()
        self._complete_writes()
        self._expire_attempts()
        self._serve_reads()
        self._check_logs()

    def _check_logs(self) -> None:
        live = [n.core for n in self.nodes.values() if n.alive]
        for i, a in enumerate(live):
            for b in live[i + 1:]:
                Checker.logs_match(a, b)

    def _complete_writes(self) -> None:
        for n in list(self.nodes.values()):
            if not n.writes:
                continue
            if self.quiet or self.rng.random() < 0.6:
                n.complete_writes(len(n.writes))
            elif self.rng.random() < self.faults.crash_mid_ready * 10:
                n.crash()  # the fsync never finished: everything queued is gone
            else:
                n.complete_writes(self.rng.randint(0, len(n.writes)))

    def _faults(self) -> None:
        f, rng = self.faults, self.rng
        for n in list(self.nodes.values()):
            if n.alive and rng.random() < f.crash:
                n.crash()
            elif not n.alive and rng.random() < f.restart:
                n.start()
        if rng.random() < f.partition:
            self.net.partition(sorted(self.nodes))
        elif self.net.cut and rng.random() < f.heal:
            self.net.heal()

    def leader(self) -> SimNode | None:
        cands = [n for n in self.nodes.values() if n.alive and n.core.is_leader]
        return max(cands, key=lambda n: n.core.term) if cands else None

    # -- clients -----------------------------------------------------------------------------

    def tick_clock(self) -> int:
        self.clock += 1
        return self.clock

    def _clients(self) -> None:
        for c in range(self.n_clients):
            op = self.busy.get(c)
            if op is None and self.rng.random() < 0.3:
                kind = "put" if self.rng.random() < 0.6 else "get"
                key = self.rng.choice(self.keys)
                oid = len(self.ops)
                value = f"v{oid}" if kind == "put" else None
                op = ClientOp(oid, kind, key, value, f"r{oid}" if kind == "put" else None,
                              self.tick_clock())
                self.ops.append(op)
                self.busy[c] = op
                self._attempt(op)
            elif op is not None and op.done:
                del self.busy[c]
            elif op is not None and op.kind == "put" and not self._in_flight(op):
                self._attempt(op)

    def _in_flight(self, op: ClientOp) -> bool:
        return any(a.op_id == op.id for a in self.attempts.values())

    def _attempt(self, op: ClientOp) -> None:
        # The client asks a random node; only a leader accepts (others redirect).
        live = [n for n in self.nodes.values() if n.alive]
        n = self.rng.choice(live) if live else None
        if n is None or not n.core.is_leader:
            if op.kind == "get":
                self._finish(op, None, failed=True)
            return
        if op.kind == "get":
            try:
                ctx = n.core.read_index()
            except errors.NotLeader:
                self._finish(op, None, failed=True)
                return
            self.reads[(n.id, ctx)] = (op, n.core.term)
            n.process()
            return
        op.attempts += 1
        try:
            idx = n.core.propose([msgpack.packb([op.key, op.value])], [op.rid])
        except (errors.NotLeader, errors.Overloaded):
            self._give_up_maybe(op)
            return
        self.attempts[(n.id, idx)] = Attempt(op.id, n.id, idx, n.core.term, self.now + 40)
        n.process()

    def _give_up_maybe(self, op: ClientOp) -> None:
        if op.attempts >= 6:
            self._finish(op, None, failed=not op.unknown)

    def on_applied(self, node: SimNode, e: m.Entry) -> None:
        a = self.attempts.pop((node.id, e.index), None)
        if a is None:
            return
        op = self.ops[a.op_id]
        if op.done:
            return
        if e.term == a.term:
            self._finish(op, op.value)
        else:  # our entry was overwritten: this attempt failed for sure; retry
            self._give_up_maybe(op)

    def _expire_attempts(self) -> None:
        for key, a in list(self.attempts.items()):
            node = self.nodes[a.node]
            lost = not node.alive or node.core.term != a.term or self.now > a.deadline
            if lost:
                del self.attempts[key]
                op = self.ops[a.op_id]
                op.unknown = True
                if not op.done:
                    self._give_up_maybe(op)
        for key, (op, term) in list(self.reads.items()):
            node = self.nodes[key[0]]
            if not node.alive or node.core.term != term or not node.core.is_leader:
                del self.reads[key]
                if not op.done:
                    self._finish(op, None, failed=True)
        self.pending_reads = [(n, op, idx) for n, op, idx in self.pending_reads
                              if n.alive and not op.done]

    def on_read_state(self, node: SimNode, rs: rnode.ReadState) -> None:
        got = self.reads.pop((node.id, rs.ctx), None)
        if got is not None:
            self.pending_reads.append((node, got[0], rs.index))

    def _serve_reads(self) -> None:
        still = []
        for n, op, idx in self.pending_reads:
            if n.core.log.applied >= idx:
                self._finish(op, n.kv.data.get(op.key))
            else:
                still.append((n, op, idx))
        self.pending_reads = still

    def _finish(self, op: ClientOp, value: str | None, *, failed: bool = False) -> None:
        op.done = True
        if failed:
            self.stats["failed"] += 1
            if op.kind == "put":  # never proposed anywhere we know of: no effect
                return
            return
        if op.kind == "get":
            self.stats["reads"] += 1
            self.history.append(Op(op.call, self.tick_clock(), "get", op.key, value))
        elif value is None:
            self.stats["unknown"] += 1
            self.history.append(Op(op.call, None, "put", op.key, op.value))
        else:
            self.stats["ok"] += 1
            self.history.append(Op(op.call, self.tick_clock(), "put", op.key, op.value))

    # -- membership and leadership ------------------------------------------------------------

    def _admin(self) -> None:
        if self.rng.random() > 0.02:
            return
        ld = self.leader()
        if ld is None:
            return
        core = ld.core
        conf = core.conf
        choice = self.rng.random()
        try:
            if choice < 0.3 and self.spares:
                nid = self.spares.pop(0)
                self.nodes[nid] = SimNode(self, nid, None)
                self.nodes[nid].start()
                core.change_config(rnode.ADD_LEARNER, nid, f"{nid}:1")
            elif choice < 0.6 and conf.learners:
                nid = sorted(conf.learners)[0]
                if core.progress[nid].match >= core.log.commit:
                    core.change_config(rnode.PROMOTE, nid)
            elif choice < 0.75 and len(conf.voters) > 3:
                nid = self.rng.choice(sorted(conf.voters))
                core.change_config(rnode.REMOVE, nid)
            else:
                core.transfer_leader(None)
        except (errors.MembershipError, errors.NotLeader, errors.Overloaded):
            return
        ld.process()

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        ld = self.leader()
        if ld is None:
            raise SafetyViolation("no leader after the network healed (liveness)")
        for op in self.ops:
            if not op.done:
                self._finish(op, None, failed=op.kind == "get" or not (
                    op.unknown or self._in_flight(op)))

    def live_nodes(self) -> Iterator[SimNode]:
        return (n for n in self.nodes.values() if n.alive)
