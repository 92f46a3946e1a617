"""Member states and which update may replace which (SWIM section 4.2, memberlist's rules).

Every claim about a member carries the member's incarnation number. Only the
member itself raises its incarnation (to refute a suspicion, or on restart),
so a higher incarnation is always newer news. At an equal incarnation the
worse news wins (suspect over alive, dead over suspect), which is what lets a
suspicion spread and forces the member to refute with a higher number.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Status(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3  # left gracefully: never suspected, never probed


def _newer(cur: int, new: int) -> bool:
    return new > cur


def _same_or_newer(cur: int, new: int) -> bool:
    return new >= cur


def _never(cur: int, new: int) -> bool:
    return False


Rule = Callable[[int, int], bool]

# (current status, claimed status) -> rule on (current incarnation, claimed incarnation).
TRANSITIONS: dict[tuple[Status, Status], Rule] = {
    (Status.ALIVE, Status.ALIVE): _newer,  # refutation or restart
    (Status.ALIVE, Status.SUSPECT): _same_or_newer,
    (Status.ALIVE, Status.DEAD): _same_or_newer,
    (Status.ALIVE, Status.LEFT): _same_or_newer,
    (Status.SUSPECT, Status.ALIVE): _newer,  # the member refuted
    (Status.SUSPECT, Status.SUSPECT): _newer,  # same incarnation = a confirmation, not a change
    (Status.SUSPECT, Status.DEAD): _same_or_newer,
    (Status.SUSPECT, Status.LEFT): _same_or_newer,
    (Status.DEAD, Status.ALIVE): _newer,  # rejoin after restart
    (Status.DEAD, Status.SUSPECT): _never,
    (Status.DEAD, Status.DEAD): _never,
    (Status.DEAD, Status.LEFT): _same_or_newer,
    (Status.LEFT, Status.ALIVE): _newer,  # rejoin after a graceful leave
    (Status.LEFT, Status.SUSPECT): _never,
    (Status.LEFT, Status.DEAD): _never,
    (Status.LEFT, Status.LEFT): _never,
}


def supersedes(cur_status: Status, cur_inc: int, new_status: Status, new_inc: int) -> bool:
    """Whether a claim ``(new_status, new_inc)`` replaces what we hold."""
    return TRANSITIONS[(cur_status, new_status)](cur_inc, new_inc)


@dataclass(slots=True)
class Member:
    node: str
    address: str
    incarnation: int
    status: Status
    since: float  # when the status last changed (local time)

    @property
    def reachable(self) -> bool:
        """Probed and gossiped to."""
        return self.status in (Status.ALIVE, Status.SUSPECT)
