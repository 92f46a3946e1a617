"""Timings and sizes of the SWIM core, in seconds and counts (the shell converts from ms)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SwimConfig:
    probe_interval: float = 0.5  # one member probed per interval (round-robin, SWIM 4.3)
    probe_timeout: float = 0.25  # direct ack wait before asking others (ping-req)
    indirect_checks: int = 3  # k members asked to ping a silent target for us
    suspicion_mult: int = 4  # suspicion lo = mult * max(1, log10 N) * probe_interval
    suspicion_max_timeout_mult: int = 6  # suspicion hi = this * lo (Lifeguard)
    retransmit_mult: int = 4  # each update is sent mult * ceil(log10(N+1)) times per member
    gossip_interval: float = 0.1  # a gossip round to `fanout` random members when news queued
    fanout: int = 3
    sync_interval: float = 30.0  # push-pull full state with one random member (scaled above 32)
    message_buffer_size: int = 1000  # queued broadcasts and remembered update ids
    max_piggyback: int = 32  # updates carried by one message
    awareness_max_multiplier: int = 8  # Lifeguard: probe timings stretch up to this factor
    late_timer_threshold: float = 0.25  # a timer this late (s) counts against our own health
    dead_node_ttl: float = 60.0  # dead/left tombstones kept (and dead gossiped to) this long
    update_ttl: float = 60.0  # a queued update older than this is dropped unsent

    def __post_init__(self) -> None:
        positive = {
            "probe_interval": self.probe_interval, "probe_timeout": self.probe_timeout,
            "gossip_interval": self.gossip_interval, "sync_interval": self.sync_interval,
            "late_timer_threshold": self.late_timer_threshold,
            "dead_node_ttl": self.dead_node_ttl, "update_ttl": self.update_ttl,
        }
        for name, v in positive.items():
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval")
        counts = {
            "fanout": self.fanout, "message_buffer_size": self.message_buffer_size,
            "max_piggyback": self.max_piggyback, "suspicion_mult": self.suspicion_mult,
            "suspicion_max_timeout_mult": self.suspicion_max_timeout_mult,
            "retransmit_mult": self.retransmit_mult,
            "awareness_max_multiplier": self.awareness_max_multiplier,
        }
        for name, n in counts.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        if not isinstance(self.indirect_checks, int) or self.indirect_checks < 0:
            raise ValueError("indirect_checks must be a non-negative integer")


def push_pull_interval(base: float, n: int) -> float:
    """Anti-entropy interval at cluster size ``n``: stretched log2-wise above 32 members.

    Every member starts one push-pull per interval, so the cluster's total
    full-state traffic would otherwise grow with N squared.
    """
    if n <= 32:
        return base
    return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)
