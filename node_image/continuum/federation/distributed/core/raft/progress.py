"""The leader's view of one follower, and the flow control that goes with it.

States, as in etcd raft: PROBE sends one append at a time until the
follower's position is known; REPLICATE streams appends optimistically
(pipelining) with at most ``max_inflight`` unacknowledged messages;
SNAPSHOT sends one snapshot chunk at a time and nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    next: int
    match: int = 0
    state: str = PROBE
    probe_sent: bool = False  # PROBE: an append is out; wait for its answer or a heartbeat
    inflight: deque[int] = field(default_factory=deque)  # last index of each message in flight
    recent_active: bool = True  # heard from since the last check-quorum round
    snap_index: int = 0  # SNAPSHOT: the snapshot being sent
    snap_offset: int = 0  # SNAPSHOT: bytes acknowledged so far
    sent_commit: int = 0  # the commit index we last told this follower
    # An append answer came since the last heartbeat answer: a full window is moving, not
    # lost (with a window of one, it is full almost all the time under load).
    answered: bool = False

    def paused(self, max_inflight: int) -> bool:
        if self.state == PROBE:
            return self.probe_sent
        if self.state == SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.snap_index + 1)
        else:
            self.next = self.match + 1
        self.state, self.probe_sent = PROBE, False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state, self.probe_sent = REPLICATE, False
        self.next = self.match + 1
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state, self.probe_sent = SNAPSHOT, False
        self.snap_index, self.snap_offset = index, 0
        self.inflight.clear()

    def sent(self, last: int) -> None:
        """An append up to ``last`` left (optimistic in REPLICATE)."""
        if self.state == REPLICATE:
            if last >= self.next:
                self.next = last + 1
                self.inflight.append(last)
        else:
            self.probe_sent = True

    def acked(self, index: int) -> bool:
        """The follower holds everything up to ``index``; True if that is news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        return True

    def rejected(self, rejected: int, next_hint: int) -> bool:
        """An append at ``rejected`` failed; move ``next`` back. False if the answer is stale."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(next_hint, rejected))
            return True
        if rejected != self.next - 1:
            return False
        self.next = max(self.match + 1, min(next_hint, rejected))
        self.probe_sent = False
        return True
