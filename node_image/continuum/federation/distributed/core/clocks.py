"""Whether this node's wall clock is fit to stamp multi-master writes (pure).

Last-write-wins orders concurrent writes by their hybrid logical clock stamps,
so it keeps real-time order (a write that finished before another began never
wins over it) only while every writer's wall clock is within ``max_offset`` of
the others'. A node that cannot vouch for its clock refuses multi-master writes
(nothing done; the client writes elsewhere) rather than stamp them wrongly.
Three rules, each from evidence the shell feeds in:

* **a jump**: the wall clock moved against the monotonic clock by more than
  ``max_offset`` (an NTP step, a manual change). Unfit until peers measured
  after the jump agree with the new time; then the new time is the baseline;
* **the peers**: round-trip offset samples (NTP's estimate, with its error of
  half the round trip) against the mesh members: unfit while more than half of
  the peers with a fresh sample differ from us by more than ``max_offset``
  beyond the sample's error;
* **the hybrid clock**: it never runs backwards, so after a clock that ran fast
  is set right it stays ahead of the wall clock for as long as it ran fast; its
  stamps would beat honest later writes. Unfit while it is ahead by more than
  ``max_offset``.

A node without peers orders only its own writes, which its hybrid clock keeps in
order whatever the wall clock does: it is always fit.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_TTL = 30.0  # seconds a peer's offset sample counts as fresh


@dataclass(frozen=True, slots=True)
class Sample:
    offset: float  # the peer's wall clock minus ours, seconds
    error: float  # the estimate's uncertainty: half the round trip
    at: float  # monotonic time of the measurement


def offset_sample(sent_wall: float, received_wall: float, remote_wall: float,
                  at: float) -> Sample:
    """NTP's estimate from one round trip: the peer read ``remote_wall`` half-way."""
    rtt = max(0.0, received_wall - sent_wall)
    return Sample(remote_wall - (sent_wall + rtt / 2), rtt / 2, at)


class ClockCheck:
    def __init__(self, max_offset: float, sample_ttl: float = SAMPLE_TTL) -> None:
        if max_offset <= 0 or sample_ttl <= 0:
            raise ValueError("max_offset and sample_ttl must be positive")
        self.max_offset = max_offset
        self.sample_ttl = sample_ttl
        self._samples: dict[str, Sample] = {}
        self._baseline: float | None = None  # wall minus monotonic, when last trusted
        self._jumped_at: float | None = None  # monotonic time of an unconfirmed jump

    def observe(self, peer: str, sample: Sample) -> None:
        self._samples[peer] = sample

    def forget(self, peer: str) -> None:
        self._samples.pop(peer, None)

    def verdict(self, wall: float, mono: float, hlc_wall: float, peers: int) -> str | None:
        """None when this node may stamp writes now; else why not. ``peers``: how many
        other members the node replicates to."""
        drift = wall - mono
        if peers == 0 or self._baseline is None:
            self._baseline, self._jumped_at = drift, None
            return None
        if self._jumped_at is None and abs(drift - self._baseline) > self.max_offset:
            self._jumped_at = mono
        fresh = [s for s in self._samples.values() if mono - s.at <= self.sample_ttl]
        off = [s for s in fresh if abs(s.offset) - s.error > self.max_offset]
        if self._jumped_at is not None:
            after = [s for s in fresh if s.at >= self._jumped_at]
            agree = [s for s in after if abs(s.offset) - s.error <= self.max_offset]
            if 2 * len(agree) <= len(after) or not after:
                return (f"the wall clock jumped by {drift - self._baseline:+.3f} s and no "
                        "majority of peers has confirmed the new time yet")
            self._baseline, self._jumped_at = drift, None
        if fresh and 2 * len(off) > len(fresh):
            worst = max(off, key=lambda s: abs(s.offset))
            return (f"this node's clock differs from {len(off)} of {len(fresh)} peers by more "
                    f"than {self.max_offset:g} s (by {-worst.offset:+.3f} s from one)")
        ahead = hlc_wall - wall
        if ahead > self.max_offset:
            return (f"this node's hybrid clock runs {ahead:.3f} s ahead of its wall clock "
                    "(a clock that ran fast was set right); its stamps would beat later "
                    "writes until the wall clock catches up")
        return None
