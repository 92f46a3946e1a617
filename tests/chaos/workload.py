"""The clients: closed loops of reads and writes, every invocation and completion recorded.

Each client process, one call at a time, writes a value no one else ever writes
(``<client>-<n>``) or reads a key, strongly (``?consistency=strong``, through
Raft) or by default (multi-master), on a small set of keys. The key set moves on
(Jepsen's independent keys) when a fault starts, when it is healed, and every
``key_epoch`` seconds in between: the keys written under a fault are written
under that fault only, so the value each ends with is decided there and the
final-state checks judge that fault; and no single register's history grows
without bound, so the linearizability search stays small however long the run.
Strong calls go to the node a status poller last saw leading in the highest term
(a client-side load balancer), one in five to a random node, so followers'
refusals and stale leaders are exercised too; default calls go to a random node.
A client never retries: a new call is a new operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from . import api
from .cluster import Cluster
from .history import DEFAULT, INFO, OK, STRONG, Event, History, classify

# (f, mode) -> weight
MIX = {("write", STRONG): 35, ("read", STRONG): 25, ("write", DEFAULT): 25, ("read", DEFAULT): 15}


@dataclass(frozen=True)
class WorkloadConfig:
    clients: int = 6
    keys: int = 3  # keys per consistency in use at a time
    key_epoch: float = 15.0  # seconds a key set is in use at most
    timeout: float = 12.0  # a call not answered by then completes as "info"
    patience: float = 0.5  # a worker waits this long before it goes on without the answer
    random_node_share: float = 0.2  # strong calls sent to a random node, not the leader


def key_name(mode: str, phase: int, epoch: int, slot: int) -> str:
    return f"{'s' if mode == STRONG else 'd'}{phase}.{epoch}-{slot}"


class LeaderView:
    """Which node to send strong calls to: the status poller's view, and 421 hints."""

    def __init__(self) -> None:
        self.leader: str | None = None

    async def poll(self, cluster: Cluster, stop: asyncio.Event, interval: float = 0.2) -> None:
        while not stop.is_set():
            found = await cluster.leader(timeout=0.5)
            if found is not None:
                self.leader = found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


class Workload:
    def __init__(self, cluster: Cluster, history: History, clock: Callable[[], float],
                 seed: int, config: WorkloadConfig | None = None) -> None:
        self.cluster = cluster
        self.history = history
        self.clock = clock
        self.seed = seed
        self.config = config or WorkloadConfig()
        self.view = LeaderView()
        self.run_id = f"{seed}-{int(time.time())}"
        self.phase = 0  # moves on as faults start and end: new keys
        self._phase_began = clock()

    def next_phase(self) -> None:
        self.phase += 1
        self._phase_began = self.clock()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; returns once every client's last call has completed."""
        ctx = self.cluster.client_context()
        poller = asyncio.create_task(self.view.poll(self.cluster, stop))
        try:
            await asyncio.gather(*(self._client(i, ctx, stop)
                                   for i in range(self.config.clients)))
        finally:
            await poller

    async def _client(self, number: int, ctx: object, stop: asyncio.Event) -> None:
        """One worker. A call still unanswered after ``patience`` is left to finish on its
        own (its answer is still recorded) and the worker goes on as a new process, as
        Jepsen does with a call that timed out: a node that swallows calls (paused, cut
        off) would otherwise hold every worker until its timeout, and the clients, not
        the cluster, would set the unavailability measured."""
        rng = random.Random(f"{self.seed}/client/{number}")
        kinds, weights = zip(*MIX.items(), strict=True)
        ids = self.cluster.ids
        process = number
        waiting: set[asyncio.Task[Event]] = set()
        async with api.session(ctx, limit=0) as http:  # type: ignore[arg-type]
            seq = 0
            while not stop.is_set():
                seq += 1
                f, mode = rng.choices(kinds, weights)[0]
                epoch = int((self.clock() - self._phase_began) // self.config.key_epoch)
                key = key_name(mode, self.phase, epoch, rng.randrange(self.config.keys))
                node = rng.choice(ids)
                if mode == STRONG and self.view.leader is not None \
                        and rng.random() >= self.config.random_node_share:
                    node = self.view.leader
                value = f"{number}-{seq}" if f == "write" else None
                call = asyncio.create_task(self.operation(
                    http, process, f, mode, key, value, node, f"{self.run_id}-{number}-{seq}"))
                done, _ = await asyncio.wait({call}, timeout=self.config.patience)
                if not done:
                    waiting.add(call)
                    call.add_done_callback(waiting.discard)
                    process += self.config.clients  # a new process id for this worker
            await asyncio.gather(*waiting)

    async def operation(self, http: aiohttp.ClientSession, process: int | str, f: str,
                        mode: str, key: str, value: str | None, node: str,
                        idempotency_key: str, timeout: float | None = None) -> Event:
        """One call, recorded as an invocation and a completion; the completion."""
        params = {"consistency": "strong"} if mode == STRONG else None
        path = f"/v1/concepts/{key}"
        self.history.add(Event(process, "invoke", f, key, value, mode, node, time=self.clock()))
        if f == "write":
            headers = {"Idempotency-Key": idempotency_key} if mode == STRONG else None
            answer = await api.call(http, self.cluster.nodes[node].url, "PUT", path, body=value,
                                    params=params, headers=headers,
                                    timeout=timeout or self.config.timeout)
        else:
            answer = await api.call(http, self.cluster.nodes[node].url, "GET", path,
                                    params=params, timeout=timeout or self.config.timeout)
        outcome = classify(answer.status, answer.code)
        read = None
        if f == "read" and outcome == OK and answer.status == 200:
            if isinstance(answer.body, dict):
                read = answer.body.get("value")
            else:  # a 200 without the concept: what was read is unknown
                outcome = INFO
        if answer.status == 421 and isinstance(answer.body, dict) and answer.body.get("leader_id"):
            self.view.leader = str(answer.body["leader_id"])
        return self.history.add(Event(process, outcome, f, key, read, mode, node, answer.status,
                                      answer.code, time=self.clock()))
