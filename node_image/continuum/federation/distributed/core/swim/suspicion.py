"""Lifeguard's dynamic suspicion timeout (Dadgar et al. 2017, section 4.2).

A suspicion starts long (``hi``) and shrinks towards ``lo`` as other members
independently confirm it: with ``k`` expected confirmations, each one cuts the
timeout logarithmically, so a truly dead member is declared fast while a
lone, possibly mistaken accuser waits long enough for a refutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def suspicion_bounds(mult: int, max_mult: int, n: int, interval: float) -> tuple[float, float]:
    """``(lo, hi)`` seconds: ``lo = mult * max(1, log10 n) * interval``, ``hi = max_mult * lo``."""
    lo = mult * max(1.0, math.log10(max(n, 1))) * interval
    return lo, max_mult * lo


def expected_confirmations(mult: int, n: int) -> int:
    """How many other members we wait to hear from before the timeout reaches ``lo``.

    ``n`` counts the whole cluster; the suspect and ourselves cannot confirm.
    """
    k = mult - 2
    return k if n - 2 >= k else 0


def suspicion_timeout(confirmations: int, k: int, lo: float, hi: float) -> float:
    """The whole timeout after ``confirmations`` independent confirmations."""
    if k <= 0 or hi <= lo:
        return lo
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(lo, hi - (hi - lo) * frac)


def remaining_suspicion_time(confirmations: int, k: int, elapsed: float,
                             lo: float, hi: float) -> float:
    """Seconds left before the suspect is declared dead (may be negative: overdue)."""
    return suspicion_timeout(confirmations, k, lo, hi) - elapsed


@dataclass(slots=True)
class Suspicion:
    started: float
    k: int
    lo: float
    hi: float
    accuser: str  # the first to suspect; does not count as a confirmation
    confirmers: set[str] = field(default_factory=set)
    _deadline: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._update()

    def confirm(self, node: str) -> bool:
        """Count ``node``'s independent suspicion; True when it is new (the deadline moved)."""
        if node == self.accuser or node in self.confirmers or len(self.confirmers) >= self.k:
            return False
        self.confirmers.add(node)
        self._update()
        return True

    def deadline(self) -> float:
        return self._deadline

    def _update(self) -> None:
        # Kept, not recomputed: a member asks for every deadline on every message it handles.
        self._deadline = self.started + suspicion_timeout(len(self.confirmers), self.k,
                                                          self.lo, self.hi)
