"""The health state machine and the panic guard, as table tests (pure, no I/O)."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core import health_checks as health
from continuum.federation.distributed.core.health_checks import Event, HealthMonitor, HealthPolicy
from continuum.federation.distributed.core.health_checks import NodeStatus as S

POLICY = HealthPolicy(unhealthy_threshold=3, healthy_threshold=2, panic_threshold=0.5)


def test_transition_table_is_total() -> None:
    for status in S:
        for event in Event:
            assert (status, event) in health.TRANSITIONS


@pytest.mark.parametrize(
    ("start", "observations", "expected"),
    [
        # a new node routes after a single success (Envoy's startup rule)
        (S.UNKNOWN, "o", [S.HEALTHY]),
        # a node that never answers is unhealthy after exactly 3 failures
        (S.UNKNOWN, "xxx", [S.UNKNOWN, S.UNKNOWN, S.UNHEALTHY]),
        # flap damping: misses below the threshold keep the node in rotation
        (S.HEALTHY, "xxo", [S.DEGRADED, S.DEGRADED, S.HEALTHY]),
        (S.HEALTHY, "xxx", [S.DEGRADED, S.DEGRADED, S.UNHEALTHY]),
        # alternating results never evict: failures must be consecutive
        (S.HEALTHY, "xoxoxo", [S.DEGRADED, S.HEALTHY] * 3),
        # recovery needs healthy_threshold consecutive successes
        (S.UNHEALTHY, "oo", [S.UNHEALTHY, S.HEALTHY]),
        (S.UNHEALTHY, "oxoo", [S.UNHEALTHY, S.UNHEALTHY, S.UNHEALTHY, S.HEALTHY]),
        (S.UNHEALTHY, "xxxxx", [S.UNHEALTHY] * 5),
    ],
)
def test_sequences(start: S, observations: str, expected: list[S]) -> None:
    status, counters = start, health.ZERO
    seen = []
    for ch in observations:
        status, counters = health.step(status, counters, ch == "o", POLICY)
        seen.append(status)
    assert seen == expected


@pytest.mark.parametrize(("unhealthy", "healthy"), [(1, 1), (2, 3), (5, 1)])
def test_thresholds_are_exact(unhealthy: int, healthy: int) -> None:
    policy = HealthPolicy(unhealthy, healthy)
    status, counters = S.HEALTHY, health.ZERO
    for i in range(unhealthy):
        assert status is not S.UNHEALTHY, f"unhealthy after {i} failures"
        status, counters = health.step(status, counters, False, policy)
    assert status is S.UNHEALTHY
    for i in range(healthy):
        assert status is S.UNHEALTHY, f"recovered after {i} successes"
        status, counters = health.step(status, counters, True, policy)
    assert status is S.HEALTHY


@pytest.mark.parametrize(
    ("failing", "registered", "threshold", "panic"),
    [
        (1, 1, 0.5, False),  # too few nodes to say anything about the observer
        (2, 2, 0.5, False),
        (1, 3, 0.5, False),
        (2, 3, 0.5, True),
        (2, 4, 0.5, False),  # exactly half is not "most"
        (3, 4, 0.5, True),
        (5, 5, 1.0, False),  # 1.0 disables the guard
        (3, 10, 0.25, True),
    ],
)
def test_in_panic(failing: int, registered: int, threshold: float, panic: bool) -> None:
    assert health.in_panic(failing, registered, HealthPolicy(panic_threshold=threshold)) is panic


def _round(mon: HealthMonitor, statuses: dict[str, S], failing: set[str]) -> health.RoundResult:
    result = mon.observe({n: n not in failing for n in statuses}, statuses)
    statuses.update(result.changes)
    return result


def test_partitioned_observer_evicts_nobody_then_evicts_the_dead_once_it_can_see() -> None:
    mon = HealthMonitor(POLICY)
    statuses = {f"n{i}": S.HEALTHY for i in range(5)}
    # We are cut off: every probe fails for many rounds.
    for _ in range(6):
        result = _round(mon, statuses, set(statuses))
        assert result.panic
    assert S.UNHEALTHY not in statuses.values()
    assert all(s is S.DEGRADED for s in statuses.values())  # still routable
    assert mon.counters["n0"].failures == 6
    # We can see again; only n4 is really dead: it goes at once, its counters are ripe.
    result = _round(mon, statuses, {"n4"})
    assert not result.panic
    assert statuses == {"n0": S.HEALTHY, "n1": S.HEALTHY, "n2": S.HEALTHY, "n3": S.HEALTHY,
                        "n4": S.UNHEALTHY}


def test_guard_holds_only_evictions_recoveries_continue() -> None:
    mon = HealthMonitor(POLICY)
    statuses = {"a": S.UNHEALTHY, "b": S.HEALTHY, "c": S.HEALTHY, "d": S.HEALTHY}
    _round(mon, statuses, {"b", "c", "d"})
    result = _round(mon, statuses, {"b", "c", "d"})
    assert result.panic
    assert statuses["a"] is S.HEALTHY  # two successes in a row


def test_minority_failure_is_evicted_and_held_nodes_are_reported() -> None:
    mon = HealthMonitor(POLICY)
    statuses = {f"n{i}": S.HEALTHY for i in range(5)}
    for _ in range(3):
        result = _round(mon, statuses, {"n1", "n2"})
    assert not result.panic and result.held == frozenset()
    assert statuses["n1"] is S.UNHEALTHY and statuses["n2"] is S.UNHEALTHY
    mon2 = HealthMonitor(POLICY)
    statuses2 = {f"n{i}": S.HEALTHY for i in range(5)}
    for _ in range(3):
        result = _round(mon2, statuses2, {"n1", "n2", "n3"})
    assert result.panic and result.held == {"n1", "n2", "n3"}


def test_results_for_unregistered_nodes_are_ignored() -> None:
    mon = HealthMonitor(POLICY)
    result = mon.observe({"gone": False, "a": True}, {"a": S.UNKNOWN})
    assert result.changes == {"a": S.HEALTHY}
    assert "gone" not in mon.counters


@pytest.mark.parametrize(
    "kwargs",
    [{"unhealthy_threshold": 0}, {"healthy_threshold": 0}, {"panic_threshold": 0.0},
     {"panic_threshold": 1.5}],
)
def test_policy_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]
