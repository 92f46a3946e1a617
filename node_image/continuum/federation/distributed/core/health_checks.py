"""Per-node health as a transition table, plus the guard against mass eviction.

A node's status moves on *events* derived from one observation (a probe that
answered or not) and the node's consecutive-result counters::

    event       when
    ok          the observation succeeded, successes < healthy_threshold
    ok_limit    the observation succeeded, successes >= healthy_threshold
    fail        the observation failed, failures < unhealthy_threshold
    fail_limit  the observation failed, failures >= unhealthy_threshold

``TRANSITIONS`` maps ``(status, event)`` to the next status; read it against
the flap-damping rules of Envoy and Consul (``healthy_threshold`` /
``unhealthy_threshold``): a node leaves rotation only after
``unhealthy_threshold`` consecutive failures and comes back only after
``healthy_threshold`` consecutive successes. A brand-new node needs a single
success (as Envoy does at startup) so that a fresh cluster routes at once.

DEGRADED means "missed probes, not yet past the threshold": the node stays in
rotation (that is the point of the threshold) but shows up in the stats.

Panic guard (Eureka's self-preservation): when, in one round, more than
``panic_threshold`` of the registered nodes fail at once, the likelier story
is that *we* are cut off. Such a round marks no node UNHEALTHY; the nodes stay
in rotation, their counters keep growing, and they are evicted by the first
round that is not in panic. The guard needs at least ``PANIC_MIN_NODES``
registered nodes: one or two failing nodes say nothing about the observer.
The known cost: if most nodes really die at once they stay listed until the
survivors are the majority again (callers must retry elsewhere).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class NodeStatus(enum.StrEnum):
    UNKNOWN = "unknown"  # registered, no observation yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # failing, below unhealthy_threshold: still routed
    UNHEALTHY = "unhealthy"  # out of rotation until healthy_threshold successes
    # The original module's names for the same states (aliases, never listed apart):
    JOINING = "unknown"  # registered, not yet heard from
    DEAD = "unhealthy"  # unhealthy_threshold checks failed in a row


class Event(enum.StrEnum):
    OK = "ok"
    OK_LIMIT = "ok_limit"
    FAIL = "fail"
    FAIL_LIMIT = "fail_limit"


S, E = NodeStatus, Event

TRANSITIONS: Mapping[tuple[NodeStatus, Event], NodeStatus] = {
    (S.UNKNOWN, E.OK): S.HEALTHY,  # startup: one success is enough
    (S.UNKNOWN, E.OK_LIMIT): S.HEALTHY,
    (S.UNKNOWN, E.FAIL): S.UNKNOWN,
    (S.UNKNOWN, E.FAIL_LIMIT): S.UNHEALTHY,
    (S.HEALTHY, E.OK): S.HEALTHY,
    (S.HEALTHY, E.OK_LIMIT): S.HEALTHY,
    (S.HEALTHY, E.FAIL): S.DEGRADED,
    (S.HEALTHY, E.FAIL_LIMIT): S.UNHEALTHY,
    (S.DEGRADED, E.OK): S.HEALTHY,  # never left rotation: one success restores it
    (S.DEGRADED, E.OK_LIMIT): S.HEALTHY,
    (S.DEGRADED, E.FAIL): S.DEGRADED,
    (S.DEGRADED, E.FAIL_LIMIT): S.UNHEALTHY,
    (S.UNHEALTHY, E.OK): S.UNHEALTHY,  # recovering: needs healthy_threshold in a row
    (S.UNHEALTHY, E.OK_LIMIT): S.HEALTHY,
    (S.UNHEALTHY, E.FAIL): S.UNHEALTHY,
    (S.UNHEALTHY, E.FAIL_LIMIT): S.UNHEALTHY,
}

# Where a node that should be evicted waits while the panic guard holds it.
HELD: Mapping[NodeStatus, NodeStatus] = {
    S.UNKNOWN: S.UNKNOWN,
    S.HEALTHY: S.DEGRADED,
    S.DEGRADED: S.DEGRADED,
    S.UNHEALTHY: S.UNHEALTHY,
}

SELECTABLE: frozenset[NodeStatus] = frozenset({S.HEALTHY, S.DEGRADED})

PANIC_MIN_NODES = 3


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    unhealthy_threshold: int = 3  # consecutive failures before a node leaves rotation
    healthy_threshold: int = 2  # consecutive successes before it comes back
    panic_threshold: float = 0.5  # fraction of nodes failing in one round that means "it's us"

    def __post_init__(self) -> None:
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError("unhealthy_threshold and healthy_threshold must be >= 1")
        if not 0.0 < self.panic_threshold <= 1.0:
            raise ValueError("panic_threshold must be in (0, 1]; 1.0 disables the guard")


@dataclass(frozen=True, slots=True)
class Counters:
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive


ZERO = Counters()


def record(counters: Counters, ok: bool) -> Counters:
    return Counters(0, counters.successes + 1) if ok else Counters(counters.failures + 1, 0)


def classify(counters: Counters, ok: bool, policy: HealthPolicy) -> Event:
    """The event for an observation; ``counters`` already include it."""
    if ok:
        return E.OK_LIMIT if counters.successes >= policy.healthy_threshold else E.OK
    return E.FAIL_LIMIT if counters.failures >= policy.unhealthy_threshold else E.FAIL


def step(
    status: NodeStatus, counters: Counters, ok: bool, policy: HealthPolicy
) -> tuple[NodeStatus, Counters]:
    """One observation for one node: the next status and counters."""
    counters = record(counters, ok)
    return TRANSITIONS[(status, classify(counters, ok, policy))], counters


def in_panic(failing: int, registered: int, policy: HealthPolicy) -> bool:
    """Whether a round with ``failing`` failures among ``registered`` nodes suspends evictions."""
    if registered < PANIC_MIN_NODES or policy.panic_threshold >= 1.0:
        return False
    return failing / registered > policy.panic_threshold


@dataclass(frozen=True, slots=True)
class RoundResult:
    changes: dict[str, NodeStatus]  # node id -> new status (only nodes whose status changed)
    panic: bool
    held: frozenset[str]  # nodes the guard kept from UNHEALTHY this round


@dataclass(slots=True)
class HealthMonitor:
    """Consecutive-result counters of every node; statuses themselves live in the registry.

    Keeping status out of here lets the registry (replicated) stay the single
    source of truth: a round reads the current statuses and proposes changes;
    if a proposal is not committed the next round simply proposes it again.
    """

    policy: HealthPolicy = field(default_factory=HealthPolicy)
    counters: dict[str, Counters] = field(default_factory=dict)

    def observe(
        self,
        results: Mapping[str, bool],
        statuses: Mapping[str, NodeStatus],
    ) -> RoundResult:
        """Feed one round of observations. ``statuses`` holds every registered node."""
        failing = sum(1 for nid, ok in results.items() if not ok and nid in statuses)
        panic = in_panic(failing, len(statuses), self.policy)
        changes: dict[str, NodeStatus] = {}
        held: set[str] = set()
        for nid in sorted(results):
            status = statuses.get(nid)
            if status is None:
                continue  # deregistered while the probe was in flight
            nxt, self.counters[nid] = step(status, self.counters.get(nid, ZERO),
                                           results[nid], self.policy)
            if panic and nxt is S.UNHEALTHY and status is not S.UNHEALTHY:
                nxt = HELD[status]
                held.add(nid)
            if nxt is not status:
                changes[nid] = nxt
        return RoundResult(changes, panic, frozenset(held))

    def forget(self, node_id: str) -> None:
        self.counters.pop(node_id, None)

    def reset(self) -> None:
        """Forget every counter (e.g. on becoming the active coordinator)."""
        self.counters.clear()
