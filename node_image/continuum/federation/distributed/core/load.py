"""A node's self-reported load, as the coordinator's heartbeat expects it (pure).

``load_score`` in [0, 1] blends how busy the API is (requests in flight,
against a soft limit) with how late the event loop runs timers (a loop
lagging by ``lag_limit_ms`` counts as fully loaded): a node that cannot keep
time should not be handed more work.
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


def ewma(previous: float | None, sample: float, alpha: float = 0.2) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)
