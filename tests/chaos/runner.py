"""One chaos run: a cluster, the clients, a fault schedule, the heal, the final reads, checks.

Everything in a run directory: ``history.jsonl`` (every event, written as it
happens), ``schedule.json``, ``summary.json`` (counts, violations, unavailability),
``cluster/logs/<node>.log``. ``check`` re-runs the checkers on a saved history.
Must run inside a private network namespace (``__main__`` puts it there).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import api, checks
from .cluster import Cluster, build_shim
from .history import DEFAULT, FINAL, NEMESIS, OK, STRONG, Event, History, classify, is_final
from .nemesis import KINDS, Nemesis, schedule
from .network import Network
from .workload import Workload, WorkloadConfig

HEALTHY_TIMEOUT = 60.0  # seconds a cluster has to agree on a leader after a heal
CONVERGE_TIMEOUT = 30.0  # seconds the replicas have to agree after the last heal


@dataclass
class RunConfig:
    seed: int
    out: Path
    nodes: int = 5
    kinds: tuple[str, ...] = KINDS
    total: float | None = None  # seconds of faults; None: each kind once
    warmup: float = 4.0
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    keep_data: bool = False  # keep the nodes' data directories after a clean run


def in_namespace() -> bool:
    return os.environ.get("CHAOS_NETNS") == "1"


class Run:
    """The parts of a run that the scenarios share: cluster, network, history, clock."""

    def __init__(self, out: Path, nodes: int) -> None:
        if not in_namespace():
            raise RuntimeError("a chaos run must be started inside its own network namespace "
                               "(python -m chaos does that)")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.cluster = Cluster(out / "cluster", nodes, build_shim(out.parent / ".shim"))
        self.network = Network({n.id: (n.ip, n.gid) for n in self.cluster.nodes.values()})
        self.history = History(out / "history.jsonl")
        self._t0 = time.monotonic()
        self.clock: Callable[[], float] = lambda: time.monotonic() - self._t0

    async def __aenter__(self) -> Run:
        self.network.setup()
        self.cluster.start_all()
        await self.cluster.open()
        await self.cluster.wait_healthy(HEALTHY_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            self.note_crashes()
            await self.cluster.close()
        finally:
            self.cluster.stop_all()
            self.history.close()

    def note(self, what: str, **details: Any) -> None:
        self.history.add(Event(NEMESIS, what, what, time=self.clock(), extra=details))

    def note_crashes(self) -> None:
        """A node process that ended without the nemesis killing it is a finding."""
        for node_id, code in self.cluster.exited().items():
            self.note("crashed", node=node_id, exit_code=code)

    async def recover(self) -> None:
        """Until the cluster is healthy again and every node has applied what the leader
        had committed by then; notes how long each took, or that it did not happen."""
        begin = self.clock()
        try:
            leader = await self.cluster.wait_healthy(HEALTHY_TIMEOUT)
            healthy = self.clock() - begin
            statuses = await self.cluster.statuses()
            target = int(statuses[leader]["commit_index"]) if leader in statuses else 0

            applied: dict[str, Any] = {}

            async def caught_up() -> bool:
                applied.clear()
                applied.update((n, s.get("last_applied"))
                               for n, s in (await self.cluster.statuses()).items())
                return len(applied) == len(self.cluster.nodes) and all(
                    isinstance(a, int) and a >= target for a in applied.values())
            try:
                await self.cluster.wait_for(f"every node to apply through index {target}",
                                            caught_up, HEALTHY_TIMEOUT)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; applied: {applied}") from None
        except TimeoutError as exc:
            self.note("unrecovered", seconds=HEALTHY_TIMEOUT, last=str(exc)[-500:])
        else:
            self.note("recovered", seconds=round(healthy, 3),
                      caught_up=round(self.clock() - begin, 3), commit_index=target)

    async def final_reads(self, workload: Workload) -> None:
        """A strong read of every strong key at the leader, retried until one succeeds."""
        keys = sorted({e.key for e in self.history.events
                       if e.mode == STRONG and e.key is not None and not is_final(e.process)})
        leader = await self.cluster.leader() or self.cluster.ids[0]
        async with api.session(self.cluster.client_context(), limit=8) as http:
            for key in keys:
                for attempt in range(5):
                    done = await workload.operation(http, FINAL, "read", STRONG, key, None,
                                                    leader, f"final-{key}-{attempt}")
                    if done.type == OK:
                        break
                    await asyncio.sleep(1.0)  # then ask again who leads
                    leader = await self.cluster.leader() or self.cluster.ids[0]

    async def converge(self) -> None:
        """Until every node holds the same value of every key (bounded), then one recorded
        read of each key on each node: the replicas' final state."""
        keys = {e.key: e.mode for e in self.history.events
                if e.key is not None and not is_final(e.process) and e.mode is not None}
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while time.monotonic() < deadline:
            values = await self._replica_values(sorted(keys))
            if all(len({repr(v) for v in per_node.values()}) == 1 for per_node in values.values()):
                break
            await asyncio.sleep(0.5)

        async def record(node: str) -> None:
            process = f"{FINAL}/{node}"
            for key in sorted(keys):
                self.history.add(Event(process, "invoke", "replica", key, None, keys[key], node,
                                       time=self.clock()))
                answer = await self._local_read(key, node)
                value = answer.body.get("value") if answer.status == 200 and \
                    isinstance(answer.body, dict) else None
                self.history.add(Event(process, classify(answer.status, answer.code), "replica",
                                       key, value, keys[key], node, answer.status, answer.code,
                                       time=self.clock()))
        await asyncio.gather(*(record(n) for n in self.cluster.ids))

    async def _local_read(self, key: str, node: str) -> api.Answer:
        return await self.cluster.call(node, "GET", f"/v1/concepts/{key}", timeout=5.0)

    async def _replica_values(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        limit = asyncio.Semaphore(16)

        async def one(key: str, node: str) -> tuple[str, str, Any]:
            async with limit:
                a = await self._local_read(key, node)
            return key, node, (a.body.get("value") if a.status == 200 and isinstance(a.body, dict)
                               else (a.status, a.code))
        found = await asyncio.gather(*(one(k, n) for k in keys for n in self.cluster.ids))
        out: dict[str, dict[str, Any]] = {k: {} for k in keys}
        for key, node, value in found:
            out[key][node] = value
        return out

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Check the history, write summary.json; the summary."""
        result = checks.check(self.history)
        summary = {**extra, **result.to_dict(), "dir": str(self.out),
                   "history": str(self.out / "history.jsonl"),
                   "seconds": round(self.clock(), 1)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary


async def run(config: RunConfig) -> dict[str, Any]:
    faults = schedule(config.seed, config.kinds, config.total)
    run = Run(config.out, config.nodes)
    (config.out / "schedule.json").write_text(json.dumps(
        {"seed": config.seed, "faults": [asdict(f) for f in faults]}, indent=1) + "\n")
    async with run:
        workload = Workload(run.cluster, run.history, run.clock, config.seed, config.workload)
        nemesis = Nemesis(run.cluster, run.network, run.history, run.clock,
                          on_change=workload.next_phase)
        stop = asyncio.Event()
        clients = asyncio.create_task(workload.run(stop))
        try:
            await asyncio.sleep(config.warmup)  # paced: the workload runs before any fault
            for fault in faults:
                await nemesis.run(fault)
                await run.recover()
                await asyncio.sleep(fault.quiet)  # paced: a quiet spell between faults
        finally:
            stop.set()
            await clients
        await run.recover()
        await run.final_reads(workload)
        await run.converge()
    summary = run.finish({"seed": config.seed, "nodes": config.nodes,
                          "clients": config.workload.clients,
                          "schedule": [asdict(f) for f in faults]})
    if summary["ok"] and not config.keep_data:
        for node in run.cluster.nodes:
            shutil.rmtree(run.cluster.root / node / "data", ignore_errors=True)
    return summary


def check_saved(directory: Path) -> dict[str, Any]:
    """The checkers again, on a saved history (no cluster needed)."""
    history = History.load(directory / "history.jsonl")
    return checks.check(history).to_dict()


def render(summary: dict[str, Any]) -> str:
    """What a person reads at the end of a run."""
    lines = [f"chaos seed {summary.get('seed')}: {summary['operations']} operations checked, "
             f"{len(summary['violations'])} violations, {summary.get('seconds', '?')} s"]
    for mode_f, outcomes in summary["counts"].items():
        lines.append(f"  {mode_f:<16} " + "  ".join(f"{k} {v}" for k, v in outcomes.items()))
    for row in summary["faults"]:
        lines.append(f"  fault {row['kind']:<15} at {row['start']:>7.1f}s: longest without an "
                     f"acknowledged write: strong {row[STRONG]:.2f}s, default {row[DEFAULT]:.2f}s")
    for v in summary["violations"][:30]:
        lines.append(f"  VIOLATION {v['kind']}: {v['message']}")
    if len(summary["violations"]) > 30:
        lines.append(f"  ... and {len(summary['violations']) - 30} more (summary.json)")
    lines.append(f"  history: {summary.get('history')}")
    return "\n".join(lines)
