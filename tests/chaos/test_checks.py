"""The chaos checkers on histories written by hand: each finds what it is for, and only that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos import checks
from chaos.history import (
    DEFAULT,
    FAIL,
    INFO,
    NEMESIS,
    NOT_SENT,
    OK,
    STRONG,
    Event,
    History,
    classify,
)


class Script:
    """Builds a history one call at a time; ``t`` is the event's time in seconds."""

    def __init__(self) -> None:
        self.h = History()
        self.t = 0.0

    def _tick(self) -> float:
        self.t += 0.01
        return self.t

    def call(self, p: int | str, f: str, key: str, value: Any = None, *, mode: str = STRONG,
             node: str = "n1") -> Script:
        self.h.add(Event(p, "invoke", f, key, value if f == "write" else None, mode, node,
                         time=self._tick()))
        return self

    def done(self, p: int | str, f: str, key: str, outcome: str, value: Any = None,
             status: int | None = 200, error: str | None = None, *, mode: str = STRONG,
             node: str = "n1") -> Script:
        self.h.add(Event(p, outcome, f, key, value, mode, node, status, error,
                         time=self._tick()))
        return self

    def op(self, p: int | str, f: str, key: str, value: Any = None, outcome: str = OK, *,
           status: int | None = 200, error: str | None = None, mode: str = STRONG,
           node: str = "n1") -> Script:
        self.call(p, f, key, value, mode=mode, node=node)
        read = None if f == "write" else value
        return self.done(p, f, key, outcome, read, status, error, mode=mode, node=node)

    def replica(self, key: str, value: Any, node: str, mode: str = DEFAULT) -> Script:
        return self.op(f"final/{node}", "replica", key, value, mode=mode, node=node)

    def fault(self, what: str, kind: str, **extra: Any) -> Script:
        self.h.add(Event(NEMESIS, what, kind, time=self._tick(), extra=extra))
        return self

    def kinds(self) -> list[str]:
        return [v.kind for v in checks.check(self.h).violations]


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (200, None, OK), (404, "not_found", OK), (400, "invalid", FAIL),
    (409, "wrong_consistency", FAIL), (421, "not_leader", FAIL), (503, "overloaded", FAIL),
    (503, "unavailable", FAIL), (504, "outcome_unknown", INFO), (500, "internal", INFO),
    (502, "bad_gateway", INFO),
    (None, NOT_SENT, FAIL), (None, "client_timeout", INFO), (None, "ServerDisconnectedError", INFO),
])
def test_each_answer_classifies_as_the_api_contract_says(status: int | None, code: str | None,
                                                         outcome: str) -> None:
    assert classify(status, code) == outcome


def test_a_clean_history_has_no_violation() -> None:
    s = Script().op(1, "write", "k", "a").op(2, "read", "k", "a").op(1, "write", "k", "b")
    s.op("final", "read", "k", "b").replica("k", "b", "n1", STRONG).replica("k", "b", "n2", STRONG)
    assert s.kinds() == []


def test_a_refused_write_read_later_is_caught() -> None:
    # The defect of a committed write answered 421: its value is there after all.
    s = Script().op(1, "write", "k", "a").op(1, "write", "k", "b", FAIL, status=421,
                                             error="not_leader")
    s.op("final", "read", "k", "b")
    assert s.kinds() == ["refused_visible", "nonlinearizable"]


def test_a_write_of_unknown_outcome_may_have_happened() -> None:
    s = Script().op(1, "write", "k", "a").op(1, "write", "k", "b", INFO, status=504,
                                             error="outcome_unknown")
    s.op("final", "read", "k", "b")
    assert s.kinds() == []


def test_a_stale_strong_read_is_not_linearizable() -> None:
    s = Script().op(1, "write", "k", "a").op(1, "write", "k", "b").op(2, "read", "k", "a")
    s.op("final", "read", "k", "b")
    assert s.kinds() == ["nonlinearizable"]


def test_an_acknowledged_strong_write_overwritten_by_an_older_one_is_lost() -> None:
    s = Script().op(1, "write", "k", "a").op(1, "write", "k", "b").op("final", "read", "k", "a")
    kinds = s.kinds()
    assert kinds[0] == "lost" and "nonlinearizable" in kinds


def test_a_strong_key_that_ends_absent_lost_its_writes() -> None:
    s = Script().op(1, "write", "k", "a").op("final", "read", "k", None, status=404)
    assert s.kinds()[0] == "lost"


def test_default_writes_ordered_against_real_time_are_superseded() -> None:
    # a finished before b started, yet the replicas all kept a (last write wins got it wrong).
    s = Script().op(1, "write", "d", "a", mode=DEFAULT, node="n1")
    s.op(2, "write", "d", "b", mode=DEFAULT, node="n2")
    s.replica("d", "a", "n1").replica("d", "a", "n2")
    assert s.kinds() == ["superseded"]


def test_concurrent_default_writes_may_resolve_either_way() -> None:
    s = Script().call(1, "write", "d", "a", mode=DEFAULT).call(2, "write", "d", "b", mode=DEFAULT)
    s.done(1, "write", "d", OK, mode=DEFAULT).done(2, "write", "d", OK, mode=DEFAULT)
    s.replica("d", "a", "n1").replica("d", "a", "n2")
    assert s.kinds() == []


def test_replicas_that_differ_after_the_heal_diverged() -> None:
    s = Script().op(1, "write", "d", "a", mode=DEFAULT).replica("d", "a", "n1")
    s.replica("d", None, "n2")
    assert s.kinds() == ["diverged"]


def test_an_internal_error_is_a_violation() -> None:
    s = Script().op(1, "read", "k", None, INFO, status=500, error="internal")
    assert s.kinds() == ["server_error"]


def test_a_pause_that_never_stopped_the_process_is_reported() -> None:
    s = Script().fault("start", "pause", nodes=["n1"], state="R", was_leader=True, roles={})
    s.fault("stop", "pause", nodes=["n1"], state_before_resume="R", roles={})
    assert s.kinds() == ["fault_missing"]


def test_a_majority_without_a_new_leader_is_no_failover() -> None:
    roles = {"n1": ["leader", 3], "n2": ["follower", 3], "n3": ["follower", 3]}
    s = Script().fault("start", "isolate-leader", nodes=["n1"], was_leader=True,
                       groups=[["n2", "n3"], ["n1"]], roles=roles)
    s.fault("stop", "isolate-leader", packets_dropped=10,
            roles={"n1": ["leader", 3], "n2": ["candidate", 9], "n3": ["follower", 9]})
    assert s.kinds() == ["no_failover"]
    s = Script().fault("start", "isolate-leader", nodes=["n1"], was_leader=True,
                       groups=[["n2", "n3"], ["n1"]], roles=roles)
    s.fault("stop", "isolate-leader", packets_dropped=10,
            roles={"n1": ["leader", 3], "n2": ["leader", 4], "n3": ["follower", 4]})
    assert s.kinds() == []


def test_unavailability_is_the_longest_time_without_an_acknowledged_write() -> None:
    h = History()
    for t, e in [(0.0, Event(1, "invoke", "write", "k", "a", STRONG)),
                 (0.1, Event(1, OK, "write", "k", None, STRONG, status=200)),
                 (1.0, Event(NEMESIS, "start", "pause")),
                 (1.1, Event(1, "invoke", "write", "k", "b", STRONG)),
                 (1.2, Event(1, OK, "write", "k", None, STRONG, status=200)),
                 (1.3, Event(1, "invoke", "write", "k", "c", STRONG)),
                 (3.8, Event(1, OK, "write", "k", None, STRONG, status=200)),
                 (4.0, Event(NEMESIS, "stop", "pause")),
                 (4.5, Event(1, "invoke", "write", "k", "d", STRONG)),
                 (4.6, Event(1, OK, "write", "k", None, STRONG, status=200))]:
        e.time = t
        h.add(e)
    rows = checks.unavailability(h)
    assert [r["kind"] for r in rows] == ["none", "pause"]
    assert rows[1][STRONG] == pytest.approx(2.6)  # from 1.2 to 3.8
    assert checks.summarize(rows)["pause"] == {"n": 1, "median": 2.6, "max": 2.6}


def test_a_saved_history_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    h = History(path)
    h.add(Event(1, "invoke", "write", "k", "a", STRONG, "n1", time=0.5))
    h.add(Event(1, FAIL, "write", "k", None, STRONG, "n1", 421, "not_leader", time=0.6))
    h.add(Event(NEMESIS, "start", "kill", time=0.7, extra={"nodes": ["n1"]}))
    h.close()
    again = History.load(path)
    assert [e.to_json() for e in again.events] == [e.to_json() for e in h.events]
    assert again.operations()[0].outcome == FAIL


def test_a_process_with_two_calls_open_is_a_broken_history() -> None:
    h = History()
    h.add(Event(1, "invoke", "write", "k", "a", STRONG))
    h.add(Event(1, "invoke", "write", "k", "b", STRONG))
    with pytest.raises(ValueError, match="before its call"):
        h.operations()
