"""The checkers: what a history must satisfy, and what it says about availability.

- ``linearizable``: strong reads and writes, per key, against a register
  (``checkers.linearizability``, the simulator's checker). A write answered with a
  refusal never happened; one with no definite answer may have, at any time after
  it was called.
- ``refused_visible``: a write answered "not done" (``history.OUTCOMES``: 421,
  409, 503, ...) whose value is later read anywhere. Done after all, so
  a client that sends it again applies it twice.
- ``lost`` (strong) and ``superseded`` (default): once every fault is healed, the
  value a key ends with came from a write that finished before an acknowledged
  write of the same key started. That acknowledged write is lost: for strong
  writes as plain data loss, for default writes as last-write-wins ordering them
  against real time.
- ``diverged``: after the heal, the replicas of some key differ.
- ``server_error``: a call answered 500.
- ``crashed``, ``no_failover``, ``unrecovered``: a node process that died on its
  own; a majority with no leader of a later term when a fault that took the leader
  away was healed; a cluster with no agreed leader, or a node that has not applied
  what the leader had committed, a minute after a heal.
- ``fault_missing``: a fault whose evidence (a stopped process, dropped packets,
  delayed fsyncs, skewed clock reads) is not in the history, so the run did not
  test what it says.

Real-time order is the order of events in the history (one process saw them all).
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from checkers.linearizability import Op, check_register

from . import nemesis
from .history import DEFAULT, FAIL, NEMESIS, OK, STRONG, Event, History, Operation, is_final


@dataclass(frozen=True)
class Violation:
    kind: str
    key: str | None
    message: str
    events: tuple[int, ...] = ()  # history indices to look at


@dataclass
class Result:
    violations: list[Violation]
    counts: dict[str, dict[str, int]]
    faults: list[dict[str, Any]] = field(default_factory=list)  # one per fault, with gaps

    @property
    def ok(self) -> bool:
        return not self.violations

    def operations_checked(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "operations": self.operations_checked(), "counts": self.counts,
                "violations": [asdict(v) for v in self.violations], "faults": self.faults}


def check(history: History) -> Result:
    ops = history.operations()
    violations = [*faults_missing(history), *liveness(history), *refused_visible(ops),
                  *lost(ops, STRONG), *lost(ops, DEFAULT), *diverged(ops), *server_errors(ops),
                  *linearizable(ops)]
    return Result(violations, counts(ops), unavailability(history))


def counts(ops: Iterable[Operation]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for o in ops:
        out[f"{o.mode} {o.f}"][o.outcome] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def _strong(ops: Iterable[Operation]) -> list[Operation]:
    return [o for o in ops if o.mode == STRONG and o.f in ("write", "read")]


def linearizable(ops: list[Operation]) -> list[Violation]:
    by_key: dict[str, list[Op]] = defaultdict(list)
    for o in _strong(ops):
        if o.f == "write" and o.outcome != FAIL:
            by_key[o.key].append(Op(o.call, o.ret if o.outcome == OK else None, "put", o.key,
                                    o.value))
        elif o.f == "read" and o.outcome == OK:
            by_key[o.key].append(Op(o.call, o.ret, "get", o.key, o.value))
    out = []
    for key in sorted(by_key):
        if not check_register(by_key[key]):
            out.append(Violation("nonlinearizable", key,
                                 f"the strong history of {key} is not linearizable "
                                 f"({len(by_key[key])} operations)",
                                 tuple(op.call for op in by_key[key])))
    return out


def _seen(ops: Iterable[Operation]) -> dict[tuple[str, Any], Operation]:
    """(key, value) -> the first successful read of it, replica reads included."""
    seen: dict[tuple[str, Any], Operation] = {}
    for o in ops:
        if o.f in ("read", "replica") and o.outcome == OK and o.value is not None:
            seen.setdefault((o.key, o.value), o)
    return seen


def refused_visible(ops: list[Operation]) -> list[Violation]:
    seen = _seen(ops)
    out = []
    for o in ops:
        if o.f != "write" or o.outcome != FAIL:
            continue
        read = seen.get((o.key, o.value))
        if read is not None:
            out.append(Violation(
                "refused_visible", o.key,
                f"{o.mode} write {o.key}={o.value!r} on {o.node} was answered {o.status} "
                f"{o.error} (not done) at event {o.ret}, yet {read.node} read it at event "
                f"{read.ret} ({'final ' if is_final(read.process) else ''}{read.f})",
                (o.call, o.ret or o.call, read.call)))
    return out


def _final_values(ops: list[Operation], mode: str) -> dict[str, Any]:
    """The value each key ended with: the last final strong read (strong), or the value
    every replica agrees on (default; keys whose replicas differ are left out)."""
    if mode == STRONG:
        return {o.key: o.value for o in ops
                if is_final(o.process) and o.mode == STRONG and o.f == "read" and o.outcome == OK}
    replicas: dict[str, set[Any]] = defaultdict(set)
    for o in ops:
        if o.f == "replica" and o.mode == DEFAULT and o.outcome == OK:
            replicas[o.key].add(o.value)
    return {k: v.pop() for k, v in replicas.items() if len(v) == 1}


def lost(ops: list[Operation], mode: str) -> list[Violation]:
    finals = _final_values(ops, mode)
    writes: dict[str, list[Operation]] = defaultdict(list)
    for o in ops:
        if o.f == "write" and o.mode == mode:
            writes[o.key].append(o)
    kind = "lost" if mode == STRONG else "superseded"
    out = []
    for key in sorted(writes):
        acked = [w for w in writes[key] if w.outcome == OK]
        if key not in finals:
            if acked and mode == STRONG:
                out.append(Violation("final_read_failed", key,
                                     f"no final strong read of {key} succeeded after the heal"))
            continue  # default: reported by ``diverged``
        final = finals[key]
        winner = next((w for w in writes[key] if w.value == final), None)
        if final is not None and winner is None:
            out.append(Violation("phantom", key, f"{key} ended as {final!r}, which no one wrote"))
            continue
        if winner is not None and (winner.outcome != OK or winner.ret is None):
            continue  # its end is unknown (or it was refused: ``refused_visible``)
        for w in acked:
            if winner is not None and w.call < winner.ret:
                continue  # w began before the winner returned: it may be ordered first
            ended = "absent" if winner is None else \
                f"{final!r}, written by a write that returned at event {winner.ret}"
            out.append(Violation(kind, key, f"acknowledged {mode} write {key}={w.value!r} "
                                 f"(events {w.call}-{w.ret}, on {w.node}) is gone: {key} "
                                 f"ended {ended}, before it was called",
                                 (w.call, *(() if winner is None else (winner.call,)))))
    return out


def diverged(ops: list[Operation]) -> list[Violation]:
    by_key: dict[str, dict[str, Any]] = defaultdict(dict)
    unread: list[Operation] = []
    for o in ops:
        if o.f != "replica":
            continue
        if o.outcome == OK:
            by_key[o.key][o.node or "?"] = o.value
        else:
            unread.append(o)
    out = [Violation("diverged", key, f"replicas of {key} differ after the heal: {nodes}")
           for key, nodes in sorted(by_key.items()) if len(set(map(repr, nodes.values()))) > 1]
    out += [Violation("diverged", o.key, f"{o.node} could not be read after the heal: "
                      f"{o.status} {o.error}", (o.call,)) for o in unread]
    return out


def server_errors(ops: list[Operation]) -> list[Violation]:
    return [Violation("server_error", o.key, f"{o.mode} {o.f} of {o.key} on {o.node} was "
                      f"answered {o.status} {o.error} at event {o.ret}", (o.call,))
            for o in ops if o.status == 500]


def fault_pairs(history: History) -> list[tuple[Event, Event | None]]:
    """Each fault's start with its stop (None if it was never healed), in order."""
    pairs: list[list[Any]] = []
    open_faults: dict[str, int] = {}
    for e in history.faults():
        if e.type == "start":
            open_faults[e.f] = len(pairs)
            pairs.append([e, None])
        elif e.type == "stop" and e.f in open_faults:
            pairs[open_faults.pop(e.f)][1] = e
    return [(start, stop) for start, stop in pairs]


def faults_missing(history: History) -> list[Violation]:
    out = []
    for start, stop in fault_pairs(history):
        why = "it was never healed" if stop is None else nemesis.took_effect(start, stop)
        if why:
            out.append(Violation("fault_missing", None, f"{start.f}: {why}", (start.index,)))
    return out


def failover(start: Event, stop: Event) -> str | None:
    """Why the nodes left with a majority had no new leader by the heal, or None.

    Applies when a fault took the leader away (killed, paused, cut off) or split the
    cluster: a majority that can talk must have elected a leader in a later term."""
    s = start.extra
    if start.f == "split":
        majority = s["groups"][0]
    elif start.f in ("kill", "pause", "isolate-leader") and s.get("was_leader"):
        majority = [n for n in s.get("roles", {}) if n not in s["nodes"]]
    else:
        return None
    term_before = max((t for _, t in s.get("roles", {}).values()), default=0)
    leaders = [n for n, (role, term) in stop.extra.get("roles", {}).items()
               if n in majority and role == "leader" and (term > term_before
                                                          or start.f == "split")]
    if leaders:
        return None
    return f"no node of {majority} led when {start.f} was healed " \
           f"(roles then: {stop.extra.get('roles')})"


def liveness(history: History) -> list[Violation]:
    """Nodes that died on their own; no failover while a fault was held; a cluster that
    found no leader after a heal."""
    out = [Violation("no_failover", None, why, (start.index,))
           for start, stop in fault_pairs(history)
           if stop is not None and nemesis.took_effect(start, stop) is None
           and (why := failover(start, stop))]
    for e in history.faults():
        if e.type == "crashed":
            out.append(Violation("crashed", None, f"{e.extra.get('node')} exited on its own "
                                 f"(code {e.extra.get('exit_code')})", (e.index,)))
        elif e.type == "unrecovered":
            out.append(Violation("unrecovered", None, "no healthy cluster within "
                                 f"{e.extra.get('seconds')}s of a heal: {e.extra.get('last')}",
                                 (e.index,)))
    return out


def unavailability(history: History) -> list[dict[str, Any]]:
    """For each fault, the longest time with no acknowledged write, strong and default,
    from the fault's start until the next fault starts (or the clients stop): the fault,
    the heal, and the settling after it; and how long after the heal every node agreed on
    a leader. A window before the first fault is the baseline, kind "none"."""
    client = [e for e in history.events if e.process != NEMESIS and not is_final(e.process)]
    if not client:
        return []
    faults = fault_pairs(history)
    end = client[-1].time
    windows: list[tuple[str, float, float, Event | None]] = [
        ("none", client[0].time, faults[0][0].time if faults else end, None)]
    for i, (start, stop) in enumerate(faults):
        finish = faults[i + 1][0].time if i + 1 < len(faults) else end
        windows.append((start.f, start.time, finish, stop))
    acks = {mode: sorted(e.time for e in client if e.type == OK and e.f == "write"
                         and e.mode == mode) for mode in (STRONG, DEFAULT)}
    notes = [e for e in history.faults() if e.type in ("recovered", "unrecovered")]
    out = []
    for kind, begin, finish, stop in windows:
        row: dict[str, Any] = {"kind": kind, "start": round(begin, 3), "end": round(finish, 3),
                               "healed": None if stop is None else round(stop.time, 3)}
        if stop is not None:  # how long after the heal the cluster agreed on a leader again
            note = next((e for e in notes if e.index > stop.index), None)
            recovered = note is not None and note.type == "recovered"
            row["recovery"] = note.extra.get("seconds") if recovered else None
            row["caught_up"] = note.extra.get("caught_up") if recovered else None
        for mode, times in acks.items():
            row[mode] = round(longest_gap(times, begin, finish), 3)
        out.append(row)
    return out


def longest_gap(times: list[float], begin: float, end: float) -> float:
    points = [begin, *(t for t in times if begin < t < end), end]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def summarize(rows: Iterable[dict[str, Any]], mode: str = STRONG) -> dict[str, dict[str, float]]:
    """Per fault kind: how many, median and max of the unavailability."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r[mode])
    return {k: {"n": len(v), "median": round(statistics.median(v), 3), "max": max(v)}
            for k, v in sorted(by_kind.items())}
