"""A node's self-reported load, as the coordinator's heartbeat expects it (pure).

``load_score`` in [0, 1] blends how busy the API is (requests in flight,
against a soft limit) with how late the event loop runs timers (a loop
lagging by ``lag_limit_ms`` counts as fully loaded): a node that cannot keep
time should not be handed more work.

A report is gossiped to every node, so it is sent only when it says something new
(``worth_reporting``) or, as a keep-alive, after ``KEEPALIVE_SECONDS`` of sameness.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadInputs:
    in_flight: int
    loop_lag_ms: float
    latency_ms: float  # smoothed API latency
    concepts: int


def load_score(inputs: LoadInputs, in_flight_limit: int = 256, lag_limit_ms: float = 100.0
               ) -> float:
    busy = min(1.0, max(0, inputs.in_flight) / in_flight_limit)
    lag = min(1.0, max(0.0, inputs.loop_lag_ms) / lag_limit_ms)
    return round(max(busy, lag), 4)


def heartbeat(inputs: LoadInputs) -> dict[str, object]:
    return {"load_score": load_score(inputs), "latency_ms": round(inputs.latency_ms, 3),
            "capacity": {"concepts": float(inputs.concepts)}}


KEEPALIVE_SECONDS = 10.0  # an unchanged report is repeated this often
SCORE_STEP = 0.05  # a change of the load score this large is news
LATENCY_STEP = 0.25  # and so is a relative change of the latency this large


def worth_reporting(previous: dict[str, object] | None, current: dict[str, object],
                    seconds_since: float) -> bool:
    """Should ``current`` be gossiped, ``previous`` being the last report sent?"""
    if previous is None or seconds_since >= KEEPALIVE_SECONDS:
        return True
    if previous.get("capacity") != current.get("capacity"):
        return True
    before, now = _number(previous, "load_score"), _number(current, "load_score")
    if abs(now - before) >= SCORE_STEP:
        return True
    before, now = _number(previous, "latency_ms"), _number(current, "latency_ms")
    return abs(now - before) > LATENCY_STEP * max(before, 1.0)


def _number(report: dict[str, object], key: str) -> float:
    value = report.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def ewma(previous: float | None, sample: float, alpha: float = 0.2) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)
