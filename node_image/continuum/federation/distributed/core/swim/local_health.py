"""Lifeguard's local health (the "awareness" score, Dadgar et al. 2017, section 4.1).

A node that misses nacks, has to refute suspicions of itself, or sees its own
timers fire late is probably the slow one. It then stretches its probe
interval and timeouts by ``score + 1`` instead of accusing healthy peers.
"""

from __future__ import annotations


class LocalHealth:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be at least 1")
        self.max_score = max_multiplier - 1
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max_score, max(0, self.score + delta))

    @property
    def multiplier(self) -> int:
        return self.score + 1

    def scale(self, seconds: float) -> float:
        return seconds * (self.score + 1)
