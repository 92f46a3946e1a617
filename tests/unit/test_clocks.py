"""When a node's clock may stamp multi-master writes (core/clocks.py): jumps, peers, and a
hybrid clock left ahead by a clock that ran fast."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core import clocks

WALL0, MONO0 = 1_700_000_000.0, 100.0


def check() -> clocks.ClockCheck:
    c = clocks.ClockCheck(max_offset=0.5)
    assert c.verdict(WALL0, MONO0, WALL0, peers=2) is None  # the baseline
    return c


def sample(offset: float, at: float, rtt: float = 0.002) -> clocks.Sample:
    sent = WALL0 + at - MONO0
    return clocks.offset_sample(sent, sent + rtt, sent + rtt / 2 + offset, at)


def test_the_offset_estimate_is_ntps_with_half_the_round_trip_as_its_error() -> None:
    s = clocks.offset_sample(10.0, 10.2, 15.1, at=1.0)
    assert s.offset == pytest.approx(5.0) and s.error == pytest.approx(0.1)


def test_a_jump_makes_the_clock_unfit_until_a_majority_of_peers_agree_with_it() -> None:
    c = check()
    jumped = WALL0 + 90.0 + 1.0  # one second later, the wall clock says 91 s later
    assert "jumped by +90.000 s" in (c.verdict(jumped, MONO0 + 1, jumped, peers=2) or "")
    c.observe("b", sample(0.01, MONO0 + 2))  # b was measured before: it agrees
    c.observe("c", sample(-90.0, MONO0 + 2))  # measured after the jump: we are 90 s fast
    assert c.verdict(jumped + 1, MONO0 + 2, jumped + 1, peers=2) is not None
    # The clock is set right, and both peers now agree with it.
    c.observe("b", sample(0.0, MONO0 + 3))
    c.observe("c", sample(0.0, MONO0 + 3))
    right = WALL0 + 3.0
    assert c.verdict(right, MONO0 + 3, right, peers=2) is None


def test_a_majority_of_peers_far_off_makes_the_clock_unfit() -> None:
    c = check()
    c.observe("b", sample(2.0, MONO0 + 1))
    c.observe("c", sample(0.1, MONO0 + 1))
    assert c.verdict(WALL0 + 1, MONO0 + 1, WALL0 + 1, peers=2) is None  # one of two only
    c.observe("c", sample(2.5, MONO0 + 1))
    why = c.verdict(WALL0 + 1, MONO0 + 1, WALL0 + 1, peers=2)
    assert why is not None and "2 of 2 peers" in why


def test_an_offset_within_the_estimates_error_is_not_held_against_the_clock() -> None:
    c = check()
    for peer in ("b", "c"):
        c.observe(peer, sample(0.9, MONO0 + 1, rtt=1.0))  # 0.9 s off, give or take 0.5 s
    assert c.verdict(WALL0 + 1, MONO0 + 1, WALL0 + 1, peers=2) is None


def test_stale_samples_are_not_evidence() -> None:
    c = check()
    c.observe("b", sample(5.0, MONO0))
    later = MONO0 + clocks.SAMPLE_TTL + 1
    assert c.verdict(WALL0 + later - MONO0, later, WALL0, peers=1) is None


def test_a_hybrid_clock_left_ahead_is_unfit_until_the_wall_clock_catches_up() -> None:
    c = check()
    why = c.verdict(WALL0 + 1, MONO0 + 1, hlc_wall=WALL0 + 60, peers=2)
    assert why is not None and "59.000 s ahead" in why
    assert c.verdict(WALL0 + 60, MONO0 + 60, hlc_wall=WALL0 + 60, peers=2) is None


def test_a_node_without_peers_is_always_fit() -> None:
    c = check()
    assert c.verdict(WALL0 + 500, MONO0 + 1, WALL0 + 900, peers=0) is None
