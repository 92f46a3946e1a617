"""Tunables of the Raft core, in logical ticks, and the one rule for Raft's timing."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The timing rule, in milliseconds, that the node's settings, the shell and the
# operator's CRD all apply (the CRD states the same in CEL, with these messages).
# A fixed timeout (low == high) lets split votes repeat; fewer than two heartbeats
# per timeout lets one lost heartbeat start an election.
ELECTION_RULE = "election_timeout_ms must be (low, high) with 0 < low < high"
HEARTBEAT_RULE = "heartbeat_interval_ms must be positive and at most half the election timeout"


def timing_error(election_timeout_ms: tuple[int, int], heartbeat_interval_ms: int) -> str | None:
    """Which rule the settings break (its message), or None when they are sound."""
    lo, hi = election_timeout_ms
    if not 0 < lo < hi:
        return ELECTION_RULE
    if not 0 < heartbeat_interval_ms * 2 <= lo:
        return HEARTBEAT_RULE
    return None


@dataclass(frozen=True, slots=True)
class RaftConfig:
    # A follower campaigns after a random number of ticks in [min, max]
    # without hearing from a leader (the paper's randomized timeout).
    election_ticks_min: int = 15
    election_ticks_max: int = 30
    heartbeat_ticks: int = 5  # leader heartbeat period
    # Campaign within [1, hurry_ticks] instead of the full timeout while the leader is
    # known to be gone (its connection dropped) or none was seen since start; 0: never.
    # Safe with pre-vote: voters that still hear from a live leader refuse.
    hurry_ticks: int = 0
    # Lifeguard's local health: a node whose own timers fire late (its loop or machine
    # stalled) multiplies its election and quorum timeouts by up to 1 + this.
    max_local_health: int = 3
    pre_vote: bool = True  # thesis 9.6: a partitioned node cannot raise terms
    check_quorum: bool = True  # leader steps down without a live quorum; votes respect leases
    max_inflight: int = 64  # append messages in flight per follower (flow control)
    max_entries_per_message: int = 4096
    max_bytes_per_message: int = 4 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024
    # A leader without a quorum refuses proposals beyond this many uncommitted entries,
    # instead of growing its log (and memory) without bound.
    max_uncommitted_entries: int = 100_000
    # Request ids are remembered for this many log entries after they were applied;
    # a retry must arrive within that window to be deduplicated.
    request_window: int = 200_000
    # A candidate this many terms ahead of us is refused: each election takes a majority's
    # pre-vote, so an honest one cannot outrun its voters by anything near this; it keeps
    # a member that lost its mind from spending the term space (see ``messages.MAX_TERM``).
    max_election_gap: int = 100_000

    def __post_init__(self) -> None:
        if not 1 <= self.heartbeat_ticks < self.election_ticks_min <= self.election_ticks_max:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks_min <= election_ticks_max")
        if min(self.max_inflight, self.max_entries_per_message,
               self.max_uncommitted_entries) < 1:
            raise ValueError("max_inflight, max_entries_per_message and "
                             "max_uncommitted_entries must be positive")
        if self.snapshot_chunk_bytes < 1 or self.max_bytes_per_message < 1:
            raise ValueError("byte limits must be positive")
        if self.request_window < 1 or self.max_election_gap < 1:
            raise ValueError("request_window and max_election_gap must be positive")
        if not 0 <= self.hurry_ticks <= self.election_ticks_min or self.max_local_health < 0:
            raise ValueError("need 0 <= hurry_ticks <= election_ticks_min and "
                             "max_local_health >= 0")


def ticks_for(election_timeout_ms: tuple[int, int], heartbeat_interval_ms: int,
              max_inflight: int = 64) -> tuple[float, RaftConfig]:
    """The tick length (seconds) and the core's config for millisecond settings.

    Ticks are at most 10 ms, and at least two per heartbeat, so timeouts keep
    their resolution; a node in a hurry campaigns within a quarter of the shortest
    election timeout. ``ValueError`` when the settings break the timing rule."""
    problem = timing_error(election_timeout_ms, heartbeat_interval_ms)
    if problem is not None:
        raise ValueError(problem)
    lo, hi = election_timeout_ms
    tick_ms = min(10.0, heartbeat_interval_ms / 2)
    config = RaftConfig(
        election_ticks_min=max(2, math.ceil(lo / tick_ms)),
        election_ticks_max=max(2, math.ceil(hi / tick_ms)),
        heartbeat_ticks=max(1, round(heartbeat_interval_ms / tick_ms)),
        hurry_ticks=max(1, math.ceil(lo / tick_ms / 4)),
        max_inflight=max_inflight,
    )
    return tick_ms / 1000, config
