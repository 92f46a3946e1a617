"""Faults, and the seeded schedules that inject them.

Every kind is a real mechanism, no hook in the node's code:

- ``kill``: SIGKILL the leader or a random node; start it again on its data at the heal.
- ``pause``: SIGSTOP the leader (a GC pause, a frozen VM); SIGCONT at the heal.
- ``isolate-leader``: iptables cuts the leader from every other node (clients still
  reach it).
- ``split``: iptables cuts a random majority from the minority (3/2 of 5 nodes).
- ``slow-disk``: every fsync of the leader, and of enough followers to make a
  majority with it, first sleeps 50-300 ms (LD_PRELOAD, faults.c).
- ``clock-skew``: the wall clocks of some nodes jump by up to two minutes either way
  (LD_PRELOAD, faults.c), and jump back at the heal.

Each is held for the fault's duration, then healed.
A fault's targets are drawn, from its own seed, when it starts (the leader is
whoever leads then). What it did, the evidence that it took effect (a process in
state T, packets dropped, fsyncs delayed, clock reads skewed), and each node's
role and term as it started and as it was healed, are logged as the "start" and
"stop" events of process "nemesis".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cluster import Cluster
from .history import NEMESIS, Event, History
from .network import Network

KINDS = ("kill", "pause", "isolate-leader", "split", "slow-disk", "clock-skew")
MAX_SKEW = 120.0  # seconds; node certificates are valid from 5 minutes before issue
# A kind's (inject, heal): each does its part and returns what it did.
Step = tuple[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]


@dataclass(frozen=True)
class Fault:
    kind: str
    duration: float  # seconds the fault is held
    quiet: float  # seconds of undisturbed workload after it is healed
    seed: int  # the fault's own random choices (targets, delays, offsets)


def schedule(seed: int, kinds: tuple[str, ...] = KINDS, total: float | None = None) -> list[Fault]:
    """Each kind once in a seeded order (``total`` None), or random faults that fill
    about ``total`` seconds.

    Clock skew may come anywhere: a node whose clock jumped, or differs from most of
    its peers, or whose hybrid clock still runs ahead after its clock was set right,
    refuses multi-master writes (core/clocks.py) rather than stamp them out of order,
    so the ``superseded`` check holds through it."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = random.Random(f"{seed}/schedule")
    if total is None:
        order = list(kinds)
        rng.shuffle(order)
        return [Fault(k, round(rng.uniform(4, 6), 2), round(rng.uniform(5, 7), 2),
                      rng.getrandbits(32)) for k in order]
    faults: list[Fault] = []
    spent = 0.0
    while spent < total:
        f = Fault(rng.choice(kinds), round(rng.uniform(3, 12), 2), round(rng.uniform(4, 10), 2),
                  rng.getrandbits(32))
        faults.append(f)
        spent += f.duration + f.quiet
    return faults


class Nemesis:
    def __init__(self, cluster: Cluster, network: Network, history: History,
                 clock: Callable[[], float], on_change: Callable[[], None] = lambda: None
                 ) -> None:
        self.cluster = cluster
        self.network = network
        self.history = history
        self.clock = clock
        self.on_change = on_change  # called as each fault starts and as it is healed

    async def run(self, fault: Fault) -> None:
        """Inject ``fault``, hold it, heal it."""
        rng = random.Random(fault.seed)
        leader = await self.cluster.leader() or rng.choice(self.cluster.ids)
        inject, heal = getattr(self, "_" + fault.kind.replace("-", "_"))(rng, leader)
        roles = await self.cluster.roles()
        self._log("start", fault, {**inject(), "roles": roles})
        self.on_change()
        await asyncio.sleep(fault.duration)  # paced: the fault is held this long
        roles = await self.cluster.roles()  # who leads at the end of the fault: failed over?
        self._log("stop", fault, {**heal(), "roles": roles})
        self.on_change()

    def _log(self, what: str, fault: Fault, details: dict[str, Any]) -> None:
        self.history.add(Event(NEMESIS, what, fault.kind, time=self.clock(),
                               extra={"duration": fault.duration, **details}))

    def _kill(self, rng: random.Random, leader: str) -> Step:
        target = leader if rng.random() < 0.5 else rng.choice(self.cluster.ids)

        def inject() -> dict[str, Any]:
            self.cluster.kill(target)
            return {"nodes": [target], "was_leader": target == leader,
                    "exit_code": self.cluster.nodes[target].exit_codes[-1]}

        def heal() -> dict[str, Any]:
            self.cluster.start(target)
            return {"nodes": [target], "restarted": True}
        return inject, heal

    def _pause(self, rng: random.Random, leader: str) -> Step:
        def inject() -> dict[str, Any]:
            self.cluster.pause(leader)
            return {"nodes": [leader], "was_leader": True,
                    "state": self.cluster.stopped_state(leader)}

        def heal() -> dict[str, Any]:
            state = self.cluster.stopped_state(leader)
            self.cluster.resume(leader)
            return {"nodes": [leader], "state_before_resume": state}
        return inject, heal

    def _isolate_leader(self, rng: random.Random, leader: str) -> Step:
        def inject() -> dict[str, Any]:
            self.network.isolate(leader)
            return {"nodes": [leader], "was_leader": True,
                    "groups": [self._others(leader), [leader]]}
        return inject, self._heal_network

    def _split(self, rng: random.Random, leader: str) -> Step:
        ids = list(self.cluster.ids)
        rng.shuffle(ids)
        majority, minority = sorted(ids[:len(ids) // 2 + 1]), sorted(ids[len(ids) // 2 + 1:])

        def inject() -> dict[str, Any]:
            self.network.partition([majority, minority])
            return {"groups": [majority, minority], "leader_in_minority": leader in minority}
        return inject, self._heal_network

    def _heal_network(self) -> dict[str, Any]:
        dropped = self.network.dropped()
        self.network.heal()
        return {"packets_dropped": dropped}

    def _slow_disk(self, rng: random.Random, leader: str) -> Step:
        need = len(self.cluster.ids) // 2  # followers that make a majority with the leader
        targets = sorted([leader, *rng.sample(self._others(leader), need)])
        delay = round(rng.uniform(0.05, 0.3), 3)
        before = {n: self.cluster.nodes[n].control.counters()["fsyncs_delayed"] for n in targets}

        def inject() -> dict[str, Any]:
            for n in targets:
                self.cluster.nodes[n].control.set(fsync_delay=delay)
            return {"nodes": targets, "fsync_delay": delay}

        def heal() -> dict[str, Any]:
            delayed = {}
            for n in targets:
                control = self.cluster.nodes[n].control
                control.set(fsync_delay=0)
                delayed[n] = control.counters()["fsyncs_delayed"] - before[n]
            return {"nodes": targets, "fsyncs_delayed": delayed}
        return inject, heal

    def _clock_skew(self, rng: random.Random, leader: str) -> Step:
        ids = self.cluster.ids
        targets = sorted(rng.sample(ids, rng.randint(1, len(ids))))
        offsets = {n: round(rng.choice((-1, 1)) * rng.uniform(1, MAX_SKEW), 3) for n in targets}
        before = {n: self.cluster.nodes[n].control.counters()["clock_reads_skewed"]
                  for n in targets}

        def inject() -> dict[str, Any]:
            for n, offset in offsets.items():
                self.cluster.nodes[n].control.set(clock_offset=offset)
            return {"nodes": targets, "offsets": offsets}

        def heal() -> dict[str, Any]:
            reads = {}
            for n in targets:
                control = self.cluster.nodes[n].control
                control.set(clock_offset=0)
                reads[n] = control.counters()["clock_reads_skewed"] - before[n]
            return {"nodes": targets, "clock_reads_skewed": reads}
        return inject, heal

    def _others(self, node_id: str) -> list[str]:
        return [n for n in self.cluster.ids if n != node_id]


def took_effect(start: Event, stop: Event) -> str | None:
    """Why a fault did not happen as planned, or None if its evidence is there."""
    s, e = start.extra, stop.extra
    kind = start.f
    if kind == "kill" and s.get("exit_code") != -9:
        return f"the node was not killed by SIGKILL (exit code {s.get('exit_code')})"
    if kind == "pause" and (s.get("state") != "T" or e.get("state_before_resume") != "T"):
        return f"the node was not stopped (states {s.get('state')}, " \
               f"{e.get('state_before_resume')})"
    if kind in ("isolate-leader", "split") and not e.get("packets_dropped"):
        return "no packet was dropped"
    if kind == "slow-disk" and not any(e.get("fsyncs_delayed", {}).values()):
        return "no fsync was delayed"
    if kind == "clock-skew" and not all(e.get("clock_reads_skewed", {}).values()):
        return "a skewed node never read its clock"
    return None
