"""docs/reliability.md, written from one run's summary and history (scripts/chaos report)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from . import checks
from .history import DEFAULT, STRONG, History
from .nemesis import __doc__ as FAULTS_DOC

CHECKERS = [
    ("nonlinearizable", "strong reads and writes, per key, linearizable as a register "
                        "(the simulator's checker, tests/checkers)"),
    ("refused_visible", "no write answered \"not done\" (421, 409, 503) is "
                        "ever read"),
    ("lost", "no acknowledged strong write is gone after the heal: the final value did "
             "not come from a write that finished before it started"),
    ("superseded", "the same for default (multi-master) writes: last-write-wins never "
                   "orders an acknowledged write before one that finished before it started"),
    ("phantom", "no key ends with a value no one wrote"),
    ("final_read_failed", "every strong key can be read strongly after the heal"),
    ("diverged", "after the heal, every node holds the same value of every key"),
    ("server_error", "no call is answered 500"),
    ("no_failover", "while the leader is away (killed, paused, cut off) or the cluster is "
                    "split, the majority elects a leader in a later term"),
    ("unrecovered", "within a minute of each heal, every node agrees on one leader and "
                    "has applied every entry that leader had committed"),
    ("crashed", "no node process dies unless the nemesis killed it"),
    ("fault_missing", "every fault took effect (process stopped, packets dropped, fsyncs "
                      "delayed, skewed clock read)"),
]


def write(summary: dict[str, Any], doc: Path, command: str) -> None:
    history = History.load(Path(summary["history"]))
    doc.write_text(render(summary, history, command))


def _context(history: History, violations: list[dict[str, Any]]) -> None:
    """Adds to each violation the last three faults started before its first event, and
    any clock skew forward by more than the time since it started (a hybrid logical
    clock stays that far ahead)."""
    starts = [e for e in history.faults() if e.type == "start"]
    for v in violations:
        if not v.get("events"):
            continue
        first = min(v["events"])
        at = history.events[first].time
        before = [e for e in starts if e.index <= first]
        ahead = [e for e in before if e.f == "clock-skew"
                 and max(e.extra["offsets"].values()) > at - e.time]
        before = sorted({e.index: e for e in [*ahead, *before[-3:]]}.values(),
                        key=lambda e: e.index)
        if before:
            v["context"] = " (after " + ", ".join(
                f"{e.f} at {e.time:.0f} s" + (f" {_what(e.f, e.extra)}" if e.f == "clock-skew"
                                              else "") for e in before) + ")"


def render(summary: dict[str, Any], history: History, command: str) -> str:
    day = dt.date.today().isoformat()
    violations = [dict(v) for v in summary["violations"]]
    _context(history, violations)
    out = [
        "# Reliability under faults",
        "",
        f"Written by `scripts/chaos {command}` on {day} ({platform.machine()}, "
        f"{os.cpu_count()} cores); run it again to regenerate this page. The harness is "
        "`tests/chaos` (`python -m chaos --help`); CI runs each fault kind once "
        "(`tests/chaos/test_chaos.py`).",
        "",
        f"**{summary['operations']:,} operations checked, {len(violations)} violations**, "
        f"{summary['nodes']} node processes, {summary['clients']} clients, "
        f"{len(summary['schedule'])} faults in {summary['seconds']:.0f} s (seed "
        f"{summary['seed']}).",
        "",
        "## How a run works",
        "",
        f"{summary['nodes']} `continuum-federation node run` processes (mutual TLS, fsync "
        "on, the local cluster's settings) run in a private network and PID namespace "
        "(`unshare --net --pid`), each under its own group id, so that iptables can cut "
        "any link between two of them. Clients call the HTTP API without retries and "
        "record every invocation and completion; an answer is ok, fail (certainly not "
        "done) or info (unknown) per `tests/chaos/history.py`, after docs/api.md. About "
        "60% of calls are strong (`?consistency=strong`, to the node that leads), 40% "
        "default (to a random node); writes 60%, reads 40%; three keys of each kind at a "
        "time, new ones as each fault starts and as it is healed (and every 15 s "
        "between), so the keys written under a fault end with the value that fault left "
        "them. After the last fault every node is healed and restarted if down, every "
        "strong key is read strongly, and each node's replica of every key is read once "
        "they agree (or after 30 s).",
        "",
        "### Faults",
        "",
        _fault_kinds(),
        "",
        "### This run's schedule",
        "",
        "| # | at (s) | fault | held (s) | what | evidence it took effect |",
        "|---|---|---|---|---|---|",
        *_schedule_rows(history),
        "",
        "## Operations checked",
        "",
        "| operation | ok | fail | info |",
        "|---|---|---|---|",
        *(f"| {name} | {c.get('ok', 0):,} | {c.get('fail', 0):,} | {c.get('info', 0):,} |"
          for name, c in summary["counts"].items()),
        "",
        "\"replica\" reads are the final reads of each node's own copy.",
        "",
        "## Checks",
        "",
        "| check | what must hold | violations |",
        "|---|---|---|",
        *(f"| `{kind}` | {what} | {sum(1 for v in violations if v['kind'] == kind)} |"
          for kind, what in CHECKERS),
        "",
        *_violation_lines(violations),
        "## Unavailability after each fault kind",
        "",
        "The longest time without an acknowledged write, from the fault's start until the "
        "next fault starts: the fault, its heal and the settling after it. Recovery is "
        "the time from the heal until every node agreed on one leader again (a killed "
        "node restarts in that time), then until every node had applied all the leader "
        "had committed by then. A worker whose call is not answered in 0.5 s goes "
        "on as a new client (the call still completes in the history), so a node that "
        "swallows calls does not hold up the clients; gaps shorter than that are below "
        "what the clients can tell. \"none\" is the time before the first fault.",
        "",
        "| fault | n | strong writes: median / max (s) | default writes: median / max (s) "
        "| one leader after the heal: median / max (s) | all caught up: median / max (s) |",
        "|---|---|---|---|---|---|",
        *_unavailability_rows(summary["faults"]),
        "",
    ]
    return "\n".join(out)


def _fault_kinds() -> str:
    assert FAULTS_DOC is not None
    text = FAULTS_DOC.split("no hook in the node's code:", 1)[1]
    return text.split("A fault's targets", 1)[0].strip().replace("``", "`")


def _schedule_rows(history: History) -> list[str]:
    rows = []
    for i, (start, stop) in enumerate(checks.fault_pairs(history), 1):
        s, e = start.extra, (stop.extra if stop is not None else {})
        what = _what(start.f, s)
        evidence = _evidence(start.f, s, e)
        rows.append(f"| {i} | {start.time:.1f} | {start.f} | {s.get('duration', 0):.1f} | "
                    f"{what} | {evidence} |")
    return rows


def _what(kind: str, s: dict[str, Any]) -> str:
    leader = " (the leader)" if s.get("was_leader") else ""
    if kind in ("kill", "pause", "isolate-leader"):
        return f"{', '.join(s.get('nodes', []))}{leader}"
    if kind == "split":
        side = "minority" if s.get("leader_in_minority") else "majority"
        return f"{' '.join(s['groups'][0])} / {' '.join(s['groups'][1])} (leader in the {side})"
    if kind == "slow-disk":
        return f"fsync +{s['fsync_delay'] * 1000:.0f} ms on {', '.join(s['nodes'])}"
    if kind == "clock-skew":
        return ", ".join(f"{n} {o:+.0f} s" for n, o in s["offsets"].items())
    return ""


def _evidence(kind: str, s: dict[str, Any], e: dict[str, Any]) -> str:
    if kind == "kill":
        return f"exit {s.get('exit_code')}, restarted"
    if kind == "pause":
        return f"state {e.get('state_before_resume')} until resumed"
    if kind in ("isolate-leader", "split"):
        return f"{e.get('packets_dropped', 0):,} packets dropped"
    if kind == "slow-disk":
        return f"{sum(e.get('fsyncs_delayed', {}).values()):,} fsyncs delayed"
    if kind == "clock-skew":
        return f"{sum(e.get('clock_reads_skewed', {}).values()):,} skewed clock reads"
    return ""


def _violation_lines(violations: list[dict[str, Any]], each: int = 4) -> list[str]:
    if not violations:
        return []
    lines = [f"Violations found (up to {each} of each kind; all are in the run's "
             "`summary.json`), each with the faults started before it:", ""]
    shown: dict[str, int] = {}
    for v in violations:
        shown[v["kind"]] = shown.get(v["kind"], 0) + 1
        if shown[v["kind"]] <= each:
            lines.append(f"- `{v['kind']}`: {v['message']}{v.get('context', '')}")
    return [*lines, ""]


def _unavailability_rows(rows: list[dict[str, Any]]) -> list[str]:
    strong = checks.summarize(rows, STRONG)
    default = checks.summarize(rows, DEFAULT)
    out = []
    for kind in sorted(strong, key=lambda k: (k != "none", k)):
        out.append(f"| {kind} | {strong[kind]['n']} | {strong[kind]['median']:.2f} / "
                   f"{strong[kind]['max']:.2f} | {default[kind]['median']:.2f} / "
                   f"{default[kind]['max']:.2f} | {_spread(rows, kind, 'recovery')} | "
                   f"{_spread(rows, kind, 'caught_up')} |")
    return out


def _spread(rows: list[dict[str, Any]], kind: str, column: str) -> str:
    values = [r[column] for r in rows if r["kind"] == kind and r.get(column) is not None]
    return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-"
