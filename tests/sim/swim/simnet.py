"""A seeded discrete-event simulator that drives real ``SwimNode`` cores.

Virtual time only: an event heap of timer deadlines and message deliveries,
a per-message delay drawn from ``latency``, independent loss with probability
``loss``, crashed nodes (no timers, messages to them vanish), slow nodes
(``slow``: every timer and every message handled ``delay`` seconds late, as a
starved event loop would) and backlogged nodes (``backlog``: timers on time,
but every message read ``delay`` seconds late, as with a receive queue the
node cannot keep up with). Nothing sleeps; a 1,000-node run takes seconds.

``epidemic_rounds`` is the dissemination-only model for large N: the same
``BroadcastQueue`` and ``retransmit_limit`` as the core, with synchronous
gossip rounds, so 10,000 nodes fit in CI.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass

from continuum.federation.distributed.core.swim import config as cfg
from continuum.federation.distributed.core.swim import dissemination
from continuum.federation.distributed.core.swim import swim_node as node
from continuum.federation.distributed.core.swim.membership import Status

# Heap entries: (at, seq, kind, target, due, sender, payload); kind is "tick" or "msg".
_Ev = tuple[float, int, str, str, float, str, object]


@dataclass(frozen=True)
class Observed:
    at: float
    observer: str
    event: node.Event


class SimCluster:
    def __init__(self, n: int, config: cfg.SwimConfig, seed: int, *, loss: float = 0.0,
                 latency: tuple[float, float] = (0.0005, 0.003), start: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.loss = loss
        self.latency = latency
        self.now = start
        self.nodes: dict[str, node.SwimNode] = {}
        self.crashed: set[str] = set()
        self.slow: dict[str, float] = {}
        self.backlog: dict[str, float] = {}
        self.kind_loss: dict[type, float] = {}  # extra loss for one message type
        self.observed: list[Observed] = []
        self.sent = 0
        self.dropped = 0
        self._heap: list[_Ev] = []
        self._seq = itertools.count()
        ids = [f"n{i}" for i in range(n)]
        for nid in ids:
            self.nodes[nid] = node.SwimNode(nid, nid, config, random.Random(self.rng.random()),
                                            self.now)
        # Start as a formed cluster: everyone knows everyone (joining is tested elsewhere).
        for nid, sw in self.nodes.items():
            for other in ids:
                sw.adopt(self.now, other, other)
            self._schedule(nid)

    # -- driving --------------------------------------------------------------------------

    def _schedule(self, nid: str) -> None:
        due = self.nodes[nid].next_deadline()
        at = due + self.slow.get(nid, 0.0)
        heapq.heappush(self._heap, (max(at, self.now), next(self._seq), "tick", nid, due, "", None))

    def _flush(self, nid: str) -> None:
        ready = self.nodes[nid].ready()
        for ev in ready.events:
            self.observed.append(Observed(self.now, nid, ev))
        for out in ready.messages:
            self.sent += 1
            dest = out.address
            loss = self.loss + self.kind_loss.get(type(out.message), 0.0)
            if dest in self.crashed or dest not in self.nodes or self.rng.random() < loss:
                self.dropped += 1
                continue
            at = (self.now + self.rng.uniform(*self.latency) + self.slow.get(dest, 0.0)
                  + self.backlog.get(dest, 0.0))
            heapq.heappush(self._heap, (at, next(self._seq), "msg", dest, 0.0, nid, out.message))
        self._schedule(nid)

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, kind, target, due, sender, payload = heapq.heappop(heap)
            if target in self.crashed:
                continue
            sw = self.nodes[target]
            self.now = at
            if kind == "tick":
                if sw.next_deadline() > due + 1e-9:
                    continue  # superseded by a later deadline
                sw.tick(at)
            else:
                sw.receive(at, sender, payload)  # type: ignore[arg-type]
            self._flush(target)
        self.now = t

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def crash(self, nid: str) -> None:
        self.crashed.add(nid)

    def update_state(self, nid: str, key: str, value: object) -> None:
        self.nodes[nid].update_state(self.now, key, value)
        self._flush(nid)

    # -- observations ---------------------------------------------------------------------

    def alive_nodes(self) -> list[str]:
        return [n for n in self.nodes if n not in self.crashed]

    def status_everywhere(self, subject: str, status: Status) -> bool:
        return all(self.nodes[o].members.get(subject) is not None
                   and self.nodes[o].members[subject].status == status
                   for o in self.alive_nodes() if o != subject)

    def deaths(self, *, since: float = 0.0) -> list[Observed]:
        return [o for o in self.observed if o.at >= since
                and isinstance(o.event, node.MemberChanged) and o.event.status == Status.DEAD]

    def false_deaths(self, since: float = 0.0) -> list[Observed]:
        """DEAD declarations about nodes that never crashed."""
        return [o for o in self.deaths(since=since)
                if isinstance(o.event, node.MemberChanged) and o.event.node not in self.crashed]

    def state_reached(self, origin: str, key: str) -> dict[str, float]:
        """Observer -> time it first learned ``origin``'s ``key``."""
        out: dict[str, float] = {}
        for o in self.observed:
            ev = o.event
            if isinstance(ev, node.StateChanged) and ev.node == origin and ev.key == key:
                out.setdefault(o.observer, o.at)
        return out


def epidemic_rounds(n: int, *, fanout: int, retransmit_mult: int, seed: int,
                    loss: float = 0.0, max_rounds: int = 200) -> int | None:
    """Synchronous gossip rounds until one update reaches all ``n`` nodes (None: never).

    Each informed node keeps the update in a ``BroadcastQueue`` and, every
    round, sends it to ``fanout`` random others until it has gone out
    ``retransmit_limit(mult, n)`` times, exactly as ``SwimNode`` gossips.
    """
    rng = random.Random(seed)
    limit = dissemination.retransmit_limit(retransmit_mult, n)
    queues: dict[int, dissemination.BroadcastQueue[str]] = {}
    informed = bytearray(n)

    def infect(i: int) -> None:
        informed[i] = 1
        q: dissemination.BroadcastQueue[str] = dissemination.BroadcastQueue(16, 1e9)
        q.push("k", "update", 0.0)
        queues[i] = q

    infect(0)
    count = 1
    for rnd in range(1, max_rounds + 1):
        newly: list[int] = []
        for i in list(queues):
            q = queues[i]
            for _ in range(fanout):
                if not q.take(1, limit, float(rnd)):
                    break
                j = rng.randrange(n - 1)
                j = j + 1 if j >= i else j  # never ourselves
                if rng.random() >= loss and not informed[j]:
                    informed[j] = 1
                    newly.append(j)
            if not len(q):
                del queues[i]
        for j in newly:
            informed[j] = 0
            infect(j)
        count += len(newly)
        if count == n:
            return rnd
        if not queues:
            return None
    return None


def epidemic_bound(n: int, fanout: int) -> float:
    """The target: ``log_fanout(N) + 3`` rounds."""
    return math.log(n, fanout) + 3
