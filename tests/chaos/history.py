"""A run's history: every invocation and completion the clients saw, and every fault.

One event per line of ``history.jsonl``, in the order the harness saw them, in
Jepsen's shape: a client ``process`` invokes an operation (``type`` "invoke"),
which later completes as "ok" (it happened), "fail" (it certainly did not) or
"info" (the client cannot tell). The event's position in the file is the one
clock the checkers trust for real-time order; ``time`` (seconds since the run
started, monotonic) is for people and for measuring unavailability. The
nemesis logs its faults as events of process "nemesis".

``OUTCOMES`` turns an API answer into ok / fail / info, after docs/api.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"
STRONG, DEFAULT = "strong", "default"
NEMESIS = "nemesis"
FINAL = "final"  # the reads after every fault was healed ("final" or "final/<node>")

# What an answer says about an operation, per the table at the top of docs/api.md:
# (HTTP status, error code) first, then (status, None). Anything not listed is INFO:
# the client cannot tell whether the operation took effect, so the checkers let it go
# either way. A FAIL must never have taken effect: a refused write that is later read
# is a violation ("refused_visible").
OUTCOMES: dict[tuple[int, str | None], str] = {
    (200, None): OK,
    (404, None): OK,  # a read: the concept is absent
    (400, None): FAIL,  # malformed: nothing changed
    (409, None): FAIL,  # a conflict (wrong_consistency, busy, ...): nothing changed
    (421, None): FAIL,  # not_leader: not carried out, send it again
    (503, None): FAIL,  # unavailable, overloaded: nothing was done
    (504, None): INFO,  # outcome_unknown: it may or may not take effect
    (500, None): INFO,  # internal: a bug, and no promise ("server_error")
}
# No answer because the connection could not be opened: nothing was sent.
NOT_SENT = "not_sent"


def is_final(process: int | str) -> bool:
    return isinstance(process, str) and process.split("/")[0] == FINAL


def classify(status: int | None, code: str | None) -> str:
    """ok / fail / info for an answer; ``status`` None: no answer (code says why)."""
    if status is None:
        return FAIL if code == NOT_SENT else INFO
    return OUTCOMES.get((status, code)) or OUTCOMES.get((status, None)) or INFO


@dataclass(slots=True)
class Event:
    process: int | str  # a client number, NEMESIS or FINAL
    type: str  # "invoke", OK, FAIL, INFO
    f: str  # "write", "read"; for the nemesis the fault's kind
    key: str | None = None
    value: Any = None  # written value; read value on completion (None: absent)
    mode: str | None = None  # STRONG or DEFAULT
    node: str | None = None  # the node the client called
    status: int | None = None  # the HTTP status of the answer
    error: str | None = None  # the error code of the answer, or why there was none
    time: float = 0.0  # seconds since the run started
    index: int = -1  # position in the history
    extra: dict[str, Any] = field(default_factory=dict)  # nemesis details

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        return json.dumps(d, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls(**json.loads(line))


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion."""

    process: int | str
    f: str
    mode: str
    key: str
    value: Any  # the value written, or read (None: absent or no answer)
    node: str | None
    outcome: str  # OK, FAIL or INFO
    call: int  # index of the invocation
    ret: int | None  # index of the completion; None if it never completed
    call_time: float
    ret_time: float | None
    status: int | None = None
    error: str | None = None


class History:
    """Events in order, appended to ``path`` as they happen (a crash keeps what was seen)."""

    def __init__(self, path: Path | None = None) -> None:
        self.events: list[Event] = []
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def add(self, event: Event) -> Event:
        event.index = len(self.events)
        self.events.append(event)
        if self._file is not None:
            self._file.write(event.to_json() + "\n")
        return event

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    history.add(Event.from_json(line))
        return history

    def operations(self) -> list[Operation]:
        return list(pair(self.events))

    def faults(self) -> list[Event]:
        return [e for e in self.events if e.process == NEMESIS]


def pair(events: Iterable[Event]) -> Iterator[Operation]:
    """Each client invocation with its completion, in invocation order."""
    open_calls: dict[int | str, Event] = {}
    done: list[Operation] = []
    for e in events:
        if e.process == NEMESIS:
            continue
        if e.type == "invoke":
            if e.process in open_calls:
                raise ValueError(f"process {e.process} invoked at {e.index} before its "
                                 f"call at {open_calls[e.process].index} completed")
            open_calls[e.process] = e
            continue
        call = open_calls.pop(e.process, None)
        if call is None:
            raise ValueError(f"completion at {e.index} of process {e.process} with no call")
        value = call.value if call.f == "write" else (e.value if e.type == OK else None)
        assert call.mode is not None and call.key is not None
        done.append(Operation(call.process, call.f, call.mode, call.key, value, call.node,
                              e.type, call.index, e.index, call.time, e.time, e.status,
                              e.error))
    for call in open_calls.values():  # never completed: the run ended while it waited
        assert call.mode is not None and call.key is not None
        done.append(Operation(call.process, call.f, call.mode, call.key,
                              call.value if call.f == "write" else None, call.node, INFO,
                              call.index, None, call.time, None))
    done.sort(key=lambda o: o.call)
    return iter(done)
