"""A paused leader with writes in flight: its answers must match what became of the writes.

Sixteen clients write strongly to the leader of three nodes, each write a key
of its own, until the leader is stopped (SIGSTOP) with writes in flight. Some of
those reached the followers before the stop; the follower elected next commits
them. The old leader is woken once the new one leads, answers its waiting
clients, and then every key is read strongly. A write answered "not done" (421
not_leader, or any refusal) whose value is read back is the defect this scenario
exists to catch; it fails the run like any other violation.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from . import api
from .history import NEMESIS, OK, STRONG, Event
from .runner import Run
from .workload import Workload, WorkloadConfig

WRITERS = 16
NODES = 3
ANSWER_TIMEOUT = 15.0  # longer than the node's own strong-write timeout (10 s)
HOLD = 1.0  # seconds the old leader stays stopped once another leads
ROUNDS = 4  # leaders paused, one after another
LOAD_BEFORE_PAUSE = 40  # acknowledged writes before the pause: the load is flowing


async def run(out: Path, seed: int, hold: float = HOLD, rounds: int = ROUNDS) -> dict[str, Any]:
    r = Run(out, NODES)
    async with r:
        target = [await r.cluster.wait_healthy(60)]  # where the writers send: the leader
        workload = Workload(r.cluster, r.history, r.clock, seed,
                            WorkloadConfig(timeout=ANSWER_TIMEOUT))
        stop = asyncio.Event()
        ctx = r.cluster.client_context()

        async def writer(number: int) -> None:
            async with api.session(ctx, limit=1) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    key = f"p{number}-{n}"
                    await workload.operation(http, number, "write", STRONG, key, key, target[0],
                                             f"{seed}-{key}")

        writers = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
        try:
            for _ in range(rounds):
                target[0] = await _pause_round(r, target[0], hold)
        finally:
            stop.set()
            await asyncio.gather(*writers)
        await r.recover()
        await r.final_reads(workload)
    faults = [e.index for e in r.history.faults() if e.type in ("start", "stop")]
    in_flight = [o for o in r.history.operations() for paused, resumed in zip(
        faults[::2], faults[1::2], strict=True)
                 if o.f == "write" and o.call < paused and (o.ret is None or o.ret > resumed)]
    answers = Counter(f"{o.status} {o.error or ''}".strip() for o in in_flight)
    summary = r.finish({"seed": seed, "nodes": NODES, "clients": WRITERS, "rounds": rounds,
                        "hold": hold, "in_flight_at_pause": len(in_flight),
                        "in_flight_answers": dict(answers)})
    if not in_flight:  # nothing was tested: fail rather than pass
        summary["ok"] = False
        summary["violations"].append({"kind": "fault_missing", "key": None, "events": [],
                                      "message": "no write was in flight when the leader "
                                                 "was paused"})
    return summary


async def _pause_round(r: Run, leader: str, hold: float) -> str:
    """Load flowing, pause the leader, a new one elected, hold, resume; the new leader."""
    acked = sum(1 for e in r.history.events if e.type == OK)
    await r.cluster.wait_for(f"{LOAD_BEFORE_PAUSE} more acknowledged writes",
                             lambda: _acked(r, acked + LOAD_BEFORE_PAUSE), 30)
    roles = await r.cluster.roles()
    r.cluster.pause(leader)
    r.history.add(Event(NEMESIS, "start", "pause", time=r.clock(), extra={
        "nodes": [leader], "was_leader": True, "state": r.cluster.stopped_state(leader),
        "roles": roles}))
    successor: str = await r.cluster.wait_for("a new leader", lambda: _new_leader(r, leader), 30)
    await asyncio.sleep(hold)  # paced: the old leader stays paused this long
    roles = await r.cluster.roles()
    state = r.cluster.stopped_state(leader)
    r.cluster.resume(leader)
    r.history.add(Event(NEMESIS, "stop", "pause", time=r.clock(), extra={
        "nodes": [leader], "state_before_resume": state, "successor": successor,
        "roles": roles}))
    await r.recover()
    return successor


async def _acked(r: Run, n: int) -> bool:
    return sum(1 for e in r.history.events if e.type == OK) >= n


async def _new_leader(r: Run, old: str) -> str | None:
    found = await r.cluster.leader()
    return found if found not in (None, old) else None
